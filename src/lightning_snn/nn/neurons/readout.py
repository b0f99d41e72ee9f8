"""Non-spiking leaky integrator that reads a network out.

With ``Y_t``, ``I_t`` the state before step ``t`` and ``X_{t-1}`` the drive arriving at step ``t``::

    I_{t+1} = lambda_syn * I_t + X_{t-1}
    Y_{t+1} = lambda_mem * Y_t + (1 - lambda_mem) * I_t

The output at step ``t`` is the updated ``Y_{t+1}``, so a presynaptic spike at step ``t`` first changes
the output at ``t + 2``. ``Y_0`` is ``initial_state``.
"""

from typing import NamedTuple, Sequence, Union

import torch
from torch import Tensor

from lightning_snn.nn.neurons.base import LearnTimescales, Neuron


class ReadoutState(NamedTuple):
    """State of a readout population before a time step."""

    mem: Tensor
    """Readout potential ``Y``."""
    syn: Tensor
    """Synaptic current ``I``."""


class ReadoutDecays(NamedTuple):
    mem: Union[float, Tensor]
    syn: Union[float, Tensor]


class LeakyReadout(Neuron):
    """Leaky integrator readout units (Stork's ``ReadoutGroup``).

    Stork's ``weight_scale`` argument had no effect and is left out. The examples set ``tau_mem`` to the
    trial duration (0.2 s to 1 s) and ``tau_syn`` to 10 ms.

    Args:
        tau_mem: Time constant of the readout potential in seconds.
        tau_syn: Synaptic time constant in seconds.
        initial_state: Readout potential ``Y_0`` at the start of every sequence.
        learn_timescales: ``"none"``, ``"layer"`` or ``"neuron"`` learnable ``tau_mem`` and ``tau_syn``.
        sigma_tau: Log-normal per-unit spread of both time constants.
        stateful: Carry the detached state across batches.
        record: State variables to record (``"mem"``, ``"syn"``).
    """

    state_type = ReadoutState
    learnable_time_constants = ("mem", "syn")

    def __init__(
        self,
        tau_mem: float = 10e-3,
        tau_syn: float = 5e-3,
        initial_state: float = -1e-3,
        learn_timescales: LearnTimescales = "none",
        sigma_tau: float = 0.0,
        stateful: bool = False,
        record: Sequence[str] = (),
    ) -> None:
        super().__init__(
            learn_timescales=learn_timescales, sigma_tau=sigma_tau, stateful=stateful, record=record
        )
        self._add_time_constant("mem", tau_mem)
        self._add_time_constant("syn", tau_syn)
        self.initial_value = float(initial_state)

    def initial_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> ReadoutState:
        shape = (batch_size, *self.shape)
        return ReadoutState(
            mem=torch.full(shape, self.initial_value, device=device, dtype=dtype),
            syn=torch.zeros(shape, device=device, dtype=dtype),
        )

    def step_parameters(self) -> ReadoutDecays:
        return ReadoutDecays(mem=self.decay("mem"), syn=self.decay("syn"))

    def step(
        self, state: ReadoutState, drive: tuple[Tensor, ...], params: ReadoutDecays
    ) -> tuple[Tensor, ReadoutState]:
        syn = params.syn * state.syn + drive[0]
        mem = params.mem * state.mem + (1.0 - params.mem) * state.syn
        return mem, ReadoutState(mem=mem, syn=syn)
