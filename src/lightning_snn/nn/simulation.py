"""Sequence driver: runs neuron populations over time with one-step synaptic delays.

Feed-forward drive is computed for all time steps at once by the caller (one matmul or convolution over
the whole sequence); only the recurrence runs in the Python loop here. Every connection delays by one
step: the drive ``X_t`` that the presynaptic spikes of step ``t`` produce is what the neurons integrate at
step ``t + 1``.
"""

from typing import Callable, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from lightning_snn.nn.neurons.base import Neuron

#: Drive of one population: one tensor (or None for no input) per receptor of its neuron model.
Drive = Sequence[Optional[Tensor]]
#: Recurrent drive function: transmitted outputs of all populations at step t -> drive of each.
RecurrentFn = Callable[[list[Tensor]], list[Drive]]


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
) -> SimulationResult:
    """Run ``populations`` over the sequences in ``feedforward``, coupled through ``recurrent``.

    Args:
        populations: Built neuron modules, simulated side by side.
        feedforward: For each population, one ``(batch, time, *shape)`` drive sequence per receptor (or
            None). Element ``[:, t]`` is the drive produced by presynaptic spikes of step ``t``; the
            neurons integrate it at step ``t + 1``.
        recurrent: Function mapping the transmitted outputs of every population at step ``t`` to
            additional drive for each population, delivered at step ``t + 1`` as well.

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
        for index, drives in enumerate(feedforward):
            new_pending = []
            for receptor_index, drive in enumerate(drives):
                total = drive[:, t] if drive is not None else None
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
