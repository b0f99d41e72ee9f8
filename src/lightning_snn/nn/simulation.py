"""Sequence driver: runs neuron populations over time with one-step synaptic delays.

The caller computes the feed-forward drive for all time steps at once (one matmul or convolution over
the whole sequence), so only the recurrence runs in the Python loop here. Every connection delays by
one step: the neurons integrate at step ``t + 1`` the drive ``X_t`` that presynaptic spikes of step
``t`` produce.

A single ``LIF``, ``AdaptiveLIF``, ``LearnableAdaptiveLIF`` or ``LeakyReadout`` population runs through
a fused sequence kernel from :mod:`lightning_snn.kernels` instead of the loop when the selected backend
allows it and the kernel supports every feature in use. On a CUDA device with Triton installed, a LIF
population without recurrence runs its whole sequence in one Triton launch. Spikes and states are the
same, and gradients agree up to float rounding.
"""

from typing import Callable, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from lightning_snn.kernels import LinearRecurrence, lif_sequence, readout_sequence, supports_surrogate
from lightning_snn.kernels.adaptive import adaptive_lif_sequence
from lightning_snn.kernels.backend import fused_required, kernels_enabled
from lightning_snn.nn.neurons.adaptive import AdaptiveLIF, AdaptiveLIFState, LearnableAdaptiveLIF
from lightning_snn.nn.neurons.base import Neuron
from lightning_snn.nn.neurons.lif import LIF, LIFState
from lightning_snn.nn.neurons.readout import LeakyReadout, ReadoutState

#: Drive of one population: one tensor (or None for no input) per receptor of its neuron model.
Drive = Sequence[Optional[Tensor]]
#: Recurrent drive function: transmitted outputs of all populations at step t -> drive of each.
RecurrentFn = Callable[[list[Tensor]], list[Drive]]


class LinearRecurrentInput(NamedTuple):
    """A population's recurrence written as one bias-free linear map, which the fused kernels can run.

    The map takes the transmitted spikes of the population at step ``t`` to drive of its first receptor
    at step ``t + 1``.
    """

    recurrence: LinearRecurrence
    weight: Tensor


class SimulationResult(NamedTuple):
    outputs: list[Tensor]
    """Per population, the output sequence ``(batch, time, *shape)`` (spikes, or readout potential)."""
    transmitted: list[Tensor]
    """Per population, what downstream connections receive: the outputs after dropout."""


def _add(first: Optional[Tensor], second: Optional[Tensor]) -> Optional[Tensor]:
    if first is None:
        return second
    if second is None:
        return first
    return first + second


def simulate(
    populations: Sequence[Neuron],
    feedforward: Sequence[Drive],
    recurrent: Optional[RecurrentFn] = None,
    linear_recurrence: Optional[LinearRecurrentInput] = None,
) -> SimulationResult:
    """Run ``populations`` over the sequences in ``feedforward``, coupled through ``recurrent``.

    Args:
        populations: Built neuron modules, simulated side by side.
        feedforward: For each population, one ``(batch, time, *shape)`` drive sequence per receptor (or
            None). Element ``[:, t]`` is the drive produced by presynaptic spikes of step ``t``; the
            neurons integrate it at step ``t + 1``.
        recurrent: Function mapping the transmitted outputs of every population at step ``t`` to
            additional drive for each population, delivered at step ``t + 1`` as well.
        linear_recurrence: The same recurrence as ``recurrent``, given as a linear map of a single
            population's spikes; with it the fused kernels can run recurrent populations. It must
            describe exactly what ``recurrent`` computes.

    Returns:
        The output and transmitted sequences of every population.
    """
    reference = next((drive for drives in feedforward for drive in drives if drive is not None), None)
    if reference is None:
        raise ValueError("simulate() needs at least one feed-forward drive sequence.")
    batch_size, num_steps = reference.shape[:2]
    device, dtype = reference.device, reference.dtype

    for population, drives in zip(populations, feedforward):
        population._require_built()
        if len(drives) != len(population.receptors):
            raise ValueError(
                f"{type(population).__name__} has receptors {population.receptors} but got "
                f"{len(drives)} drive sequences."
            )
        for receptor, drive in zip(population.receptors, drives):
            expected = (batch_size, num_steps, *population.shape)
            if drive is not None and tuple(drive.shape) != expected:
                raise ValueError(
                    f"Drive for receptor {receptor!r} of {type(population).__name__} has shape "
                    f"{tuple(drive.shape)}, expected {expected}."
                )

    reason = _unfused_reason(populations, feedforward, recurrent, linear_recurrence)
    if reason is None and kernels_enabled():
        return _simulate_fused(populations[0], feedforward[0], linear_recurrence, batch_size, num_steps)
    if reason is not None and fused_required():
        raise NotImplementedError(f"The fused kernel backend cannot run this simulation: {reason}.")

    # Each population starts from a fresh state and an empty delay line, or from what it carried over.
    states, pending = [], []
    for population in populations:

        def make_fresh(population=population):
            state = population.initial_state(batch_size, device, dtype)
            zeros = torch.zeros((batch_size, *population.shape), device=device, dtype=dtype)
            return state, tuple(zeros for _ in population.receptors)

        state, delayed = population.begin_state(batch_size, make_fresh)
        states.append(state)
        pending.append(delayed)

    params = [population.step_parameters() for population in populations]
    masks = [
        population.transmission_mask((batch_size, num_steps, *population.shape), device, dtype)
        if population.spiking
        else None
        for population in populations
    ]
    outputs: list[list[Tensor]] = [[] for _ in populations]
    records: list[dict[str, list[Tensor]]] = [{name: [] for name in p.record} for p in populations]

    # Split every drive into its steps once. Indexing drive[:, t] in the loop instead would make the
    # backward pass fill a full-size zero gradient for every step, which costs O(T^2) memory traffic.
    drive_steps = [[None if drive is None else drive.unbind(1) for drive in drives] for drives in feedforward]

    for t in range(num_steps):
        transmitted_now = []
        for index, population in enumerate(populations):
            output, states[index] = population.step(states[index], pending[index], params[index])
            outputs[index].append(output)
            for name in population.record:
                records[index][name].append(getattr(states[index], name))
            mask = masks[index]
            transmitted_now.append(output if mask is None else output * mask[:, t])

        # The drive produced now arrives at the next step.
        recurrent_drive = recurrent(transmitted_now) if recurrent is not None else None
        for index, drives in enumerate(drive_steps):
            new_pending = []
            for receptor_index, steps in enumerate(drives):
                total = steps[t] if steps is not None else None
                if recurrent_drive is not None:
                    total = _add(total, recurrent_drive[index][receptor_index])
                if total is None:
                    total = torch.zeros_like(pending[index][receptor_index])
                new_pending.append(total)
            pending[index] = tuple(new_pending)

    result_outputs, result_transmitted = [], []
    for index, population in enumerate(populations):
        sequence = torch.stack(outputs[index], dim=1)
        result_outputs.append(sequence)
        mask = masks[index]
        result_transmitted.append(sequence if mask is None else sequence * mask)
        population.recorded = {name: torch.stack(values, dim=1) for name, values in records[index].items()}
        population.end_state((states[index], pending[index]))

    return SimulationResult(outputs=result_outputs, transmitted=result_transmitted)


_FUSED_TYPES = (LIF, AdaptiveLIF, LearnableAdaptiveLIF, LeakyReadout)


def _unfused_reason(
    populations: Sequence[Neuron],
    feedforward: Sequence[Drive],
    recurrent: Optional[RecurrentFn],
    linear_recurrence: Optional[LinearRecurrentInput],
) -> Optional[str]:
    """Return why the fused kernels cannot run this simulation, or None when they can."""
    if len(populations) != 1:
        return "it couples several populations"
    population = populations[0]
    if type(population) not in _FUSED_TYPES:
        names = ", ".join(kind.__name__ for kind in _FUSED_TYPES)
        return f"{type(population).__name__} has no fused kernel ({names} have)"
    if population.record:
        return "state variables are recorded"
    drive = feedforward[0][0]
    if drive is None or not drive.is_floating_point():
        return "the population has no floating-point feed-forward drive"
    if recurrent is not None:
        if linear_recurrence is None:
            return "the recurrence is not a bias-free dense or convolutional connection"
        if not population.spiking:
            return "a non-spiking population is recurrent"
    if population.spiking and not supports_surrogate(population.surrogate):
        return f"the surrogate {type(population.surrogate).__name__} does not fire with a Heaviside step"
    return None


def _simulate_fused(
    population: Neuron,
    drives: Drive,
    linear_recurrence: Optional[LinearRecurrentInput],
    batch_size: int,
    num_steps: int,
) -> SimulationResult:
    """Run one LIF, adaptive LIF or readout population through its fused sequence kernel."""
    drive = drives[0]
    device, dtype = drive.device, drive.dtype

    def make_fresh():
        state = population.initial_state(batch_size, device, dtype)
        zeros = torch.zeros((batch_size, *population.shape), device=device, dtype=dtype)
        return state, (zeros,)

    state, (pending,) = population.begin_state(batch_size, make_fresh)
    decays = population.step_parameters()

    if not population.spiking:
        result = readout_sequence(drive, state.mem, state.syn, pending, decays.mem, decays.syn)
        population.recorded = {}
        population.end_state((ReadoutState(mem=result.mem, syn=result.syn), (result.pending,)))
        return SimulationResult(outputs=[result.output], transmitted=[result.output])

    # Drawn at the same point as in the plain loop, so a seeded run draws the same mask.
    mask = population.transmission_mask((batch_size, num_steps, *population.shape), device, dtype)
    recurrence = weight = None
    if linear_recurrence is not None:
        recurrence, weight = linear_recurrence.recurrence, linear_recurrence.weight
    options = dict(
        threshold=population.threshold,
        surrogate=population.surrogate,
        diff_reset=population.diff_reset,
        clamp_max=population.threshold + 0.01 if population.clamp_mem else None,
    )
    if isinstance(population, LIF):
        if recurrence is None and _triton_runs(drive):
            from lightning_snn.kernels.triton_lif import lif_sequence_triton

            # The mask scales only what a recurrence receives, so without one the kernel needs none.
            result = lif_sequence_triton(drive, state.mem, state.syn, pending, decays.mem, decays.syn, **options)
        else:
            result = lif_sequence(
                drive, state.mem, state.syn, pending, decays.mem, decays.syn,
                recurrence=recurrence, recurrent_weight=weight, mask=mask, **options,
            )
        final_state = LIFState(mem=result.mem, syn=result.syn)
    else:
        result = adaptive_lif_sequence(
            drive, state.mem, state.syn, state.ada, state.last_spikes, pending, *decays,
            recurrence=recurrence, recurrent_weight=weight, mask=mask, **options,
        )
        final_state = AdaptiveLIFState(mem=result.mem, syn=result.syn, ada=result.ada, last_spikes=result.last_spikes)

    outputs = result.spikes
    transmitted = outputs if mask is None else outputs * mask
    population.recorded = {}
    population.end_state((final_state, (result.pending,)))
    return SimulationResult(outputs=[outputs], transmitted=[transmitted])


def _triton_runs(drive: Tensor) -> bool:
    """Return True when the Triton kernel can run on ``drive`` (a CUDA tensor, Triton installed)."""
    if not drive.is_cuda:
        return False
    from lightning_snn.kernels.triton_lif import triton_available

    return triton_available(drive) and drive.dtype in (torch.float16, torch.float32, torch.float64)
