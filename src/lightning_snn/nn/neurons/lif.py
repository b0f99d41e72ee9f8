"""Leaky integrate-and-fire neuron with an exponentially decaying synaptic current.

Discrete-time dynamics, with ``U_t``, ``I_t`` the state before step ``t`` and ``X_{t-1}`` the synaptic
drive that arrives at step ``t`` (every connection delays by one step)::

    S_t     = H(U_t - threshold)
    I_{t+1} = lambda_syn * I_t + X_{t-1}
    U_{t+1} = (lambda_mem * U_t + (1 - lambda_mem) * I_t) * (1 - S_t)

with ``lambda = exp(-dt / tau)``. The drive is not scaled by ``1 - lambda_syn``, so a weight ``w`` adds
``w`` to the current, and the membrane follows the *old* current, so the DC gain from ``I`` to ``U`` is 1.
A presynaptic spike at step ``t`` reaches ``I`` at ``t + 2``, ``U`` at ``t + 3`` and can make a spike at
``t + 3`` at the earliest.
"""

from typing import NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from lightning_snn.nn.neurons.base import LearnTimescales, SpikingNeuron
from lightning_snn.surrogate import SurrogateSpike


class LIFState(NamedTuple):
    """State of a LIF population before a time step."""

    mem: Tensor
    """Membrane potential ``U`` (threshold units)."""
    syn: Tensor
    """Synaptic current ``I``."""


class LIFDecays(NamedTuple):
    """Per-step decay factors ``exp(-dt / tau)``; floats or tensors broadcastable to the population."""

    mem: Union[float, Tensor]
    syn: Union[float, Tensor]


class LIF(SpikingNeuron):
    """Current-based leaky integrate-and-fire neurons (Stork's ``LIFGroup``).

    Each step spikes where ``U > threshold``, then updates
    ``I <- exp(-dt/tau_syn) I + X`` and ``U <- (exp(-dt/tau_mem) U + (1 - exp(-dt/tau_mem)) I_old) (1 - S)``:
    the resting potential is 0 and a spike resets ``U`` to 0 (see the module docstring for the timing).

    Args:
        tau_mem: Membrane time constant in seconds.
        tau_syn: Synaptic time constant in seconds.
        threshold: Firing threshold.
        surrogate: Spike function with its surrogate gradient; ``SuperSpike(beta=20)`` when omitted.
        diff_reset: Backpropagate through the reset.
        clamp_mem: Clip the membrane at ``threshold + 0.01`` after each update.
        dropout: Dropout probability of the transmitted spikes during training.
        learn_timescales: ``"none"``, ``"layer"`` (one learnable ``tau_mem`` and ``tau_syn`` per
            population, as in Stork) or ``"neuron"`` (one per neuron).
        sigma_tau: Log-normal per-neuron spread of both time constants.
        stateful: Carry the detached state across batches.
        record: State variables to record (``"mem"``, ``"syn"``).
    """

    state_type = LIFState
    learnable_time_constants = ("mem", "syn")

    def __init__(
        self,
        tau_mem: float = 10e-3,
        tau_syn: float = 5e-3,
        threshold: float = 1.0,
        surrogate: Optional[SurrogateSpike] = None,
        diff_reset: bool = False,
        clamp_mem: bool = False,
        dropout: float = 0.0,
        learn_timescales: LearnTimescales = "none",
        sigma_tau: float = 0.0,
        stateful: bool = False,
        record: Sequence[str] = (),
    ) -> None:
        super().__init__(
            threshold=threshold,
            surrogate=surrogate,
            diff_reset=diff_reset,
            clamp_mem=clamp_mem,
            dropout=dropout,
            learn_timescales=learn_timescales,
            sigma_tau=sigma_tau,
            stateful=stateful,
            record=record,
        )
        self._add_time_constant("mem", tau_mem)
        self._add_time_constant("syn", tau_syn)

    def initial_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> LIFState:
        zeros = torch.zeros((batch_size, *self.shape), device=device, dtype=dtype)
        return LIFState(mem=zeros, syn=zeros)

    def step_parameters(self) -> LIFDecays:
        return LIFDecays(mem=self.decay("mem"), syn=self.decay("syn"))

    def step(self, state: LIFState, drive: tuple[Tensor, ...], params: LIFDecays) -> tuple[Tensor, LIFState]:
        spikes, keep = self.spike_and_reset(state.mem)

        syn = params.syn * state.syn + drive[0]

        # The membrane integrates the current of the previous step, then resets where it spiked.
        mem = (params.mem * state.mem + (1.0 - params.mem) * state.syn) * keep
        mem = self.clamp(mem)

        return spikes, LIFState(mem=mem, syn=syn)
