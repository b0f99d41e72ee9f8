"""LIF neurons with separate excitatory and inhibitory synaptic traces (for Dale's-law networks).

Connections add positive weights into either the ``"exc"`` or the ``"inh"`` receptor; the neuron
subtracts inhibition itself, so sign-constrained (non-negative) weights suffice for Dale's law::

    E_{t+1} = lambda_exc * E_t + X^exc_{t-1}
    G_{t+1} = lambda_inh * G_t + X^inh_{t-1}
    U_{t+1} = (lambda_mem * U_t + (1 - lambda_mem) * (E_t - G_t)) * (1 - S_t)

Unlike Stork, these models also accept ``diff_reset``, ``clamp_mem``, ``learn_timescales`` and a
choice of surrogate.
"""

from typing import NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from lightning_snn.nn.neurons.base import LearnTimescales, SpikingNeuron
from lightning_snn.surrogate import SurrogateSpike


class ExcInhState(NamedTuple):
    mem: Tensor
    exc: Tensor
    """Excitatory synaptic trace ``E``."""
    inh: Tensor
    """Inhibitory synaptic trace ``G`` (positive; subtracted from the drive)."""


class ExcInhAdaptiveState(NamedTuple):
    mem: Tensor
    exc: Tensor
    inh: Tensor
    ada: Tensor
    last_spikes: Tensor


class ReceptorState(NamedTuple):
    mem: Tensor
    ampa: Tensor
    nmda: Tensor
    gaba: Tensor


class ExcInhDecays(NamedTuple):
    mem: Union[float, Tensor]
    exc: Union[float, Tensor]
    inh: Union[float, Tensor]


class ExcInhAdaptiveDecays(NamedTuple):
    mem: Union[float, Tensor]
    exc: Union[float, Tensor]
    inh: Union[float, Tensor]
    ada: Union[float, Tensor]


class ReceptorDecays(NamedTuple):
    mem: Union[float, Tensor]
    ampa: Union[float, Tensor]
    nmda: Union[float, Tensor]
    gaba: Union[float, Tensor]


class _ExcInhBase(SpikingNeuron):
    receptors = ("exc", "inh")

    def __init__(
        self,
        threshold: float,
        surrogate: Optional[SurrogateSpike],
        diff_reset: bool,
        clamp_mem: bool,
        dropout: float,
        learn_timescales: LearnTimescales,
        sigma_tau: float,
        stateful: bool,
        record: Sequence[str],
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

    def _zeros_state(self, batch_size: int, device: torch.device, dtype: torch.dtype):
        zeros = torch.zeros((batch_size, *self.shape), device=device, dtype=dtype)
        return self.state_type(*([zeros] * len(self.state_type._fields)))

    def initial_state(self, batch_size: int, device: torch.device, dtype: torch.dtype):
        return self._zeros_state(batch_size, device, dtype)

    def _integrate(self, state_mem: Tensor, decay_mem, net_current: Tensor, keep: Tensor) -> Tensor:
        mem = (decay_mem * state_mem + (1.0 - decay_mem) * net_current) * keep
        return self.clamp(mem)

    def psp_time_constants(self, receptor: str) -> tuple[float, float]:
        if receptor not in self.receptors:
            raise ValueError(f"{type(self).__name__} has receptors {self.receptors}, not {receptor!r}.")
        return self.time_constants["mem"], self.time_constants[receptor]


class ExcInhLIF(_ExcInhBase):
    """LIF neurons with separate excitatory and inhibitory traces (Stork's ``ExcInhLIFGroup``).

    Args:
        tau_mem: Membrane time constant in seconds.
        tau_exc: Excitatory synaptic time constant in seconds.
        tau_inh: Inhibitory synaptic time constant in seconds.
        sigma_tau: Log-normal per-neuron spread of every time constant, ``tau * exp(sigma_tau * N(0, 1))``.
        threshold, surrogate, diff_reset, clamp_mem, dropout, learn_timescales, stateful, record:
            As for :class:`~lightning_snn.nn.neurons.lif.LIF`; state variables are ``mem``, ``exc``
            and ``inh``.
    """

    state_type = ExcInhState
    learnable_time_constants = ("mem", "exc", "inh")

    def __init__(
        self,
        tau_mem: float = 10e-3,
        tau_exc: float = 5e-3,
        tau_inh: float = 5e-3,
        sigma_tau: float = 0.0,
        threshold: float = 1.0,
        surrogate: Optional[SurrogateSpike] = None,
        diff_reset: bool = False,
        clamp_mem: bool = False,
        dropout: float = 0.0,
        learn_timescales: LearnTimescales = "none",
        stateful: bool = False,
        record: Sequence[str] = (),
    ) -> None:
        super().__init__(
            threshold, surrogate, diff_reset, clamp_mem, dropout, learn_timescales, sigma_tau, stateful, record
        )
        self._add_time_constant("mem", tau_mem)
        self._add_time_constant("exc", tau_exc)
        self._add_time_constant("inh", tau_inh)

    def step_parameters(self) -> ExcInhDecays:
        return ExcInhDecays(mem=self.decay("mem"), exc=self.decay("exc"), inh=self.decay("inh"))

    def step(self, state: ExcInhState, drive: tuple[Tensor, ...], params: ExcInhDecays):
        spikes, keep = self.spike_and_reset(state.mem)

        exc = params.exc * state.exc + drive[0]
        inh = params.inh * state.inh + drive[1]

        mem = self._integrate(state.mem, params.mem, state.exc - state.inh, keep)
        return spikes, ExcInhState(mem=mem, exc=exc, inh=inh)


class ExcInhAdaptiveLIF(_ExcInhBase):
    """E/I LIF neurons with a spike-triggered adaptation current (Stork's ``ExcInhAdaptiveLIFGroup``).

    The adaptation trace follows ``A_{t+1} = lambda_ada * A_t + S_{t-1}`` and lowers the net drive by
    ``adapt_a * A_t`` (see :mod:`lightning_snn.nn.neurons.adaptive`). Stork stored the adaptation trace
    under the wrong key when resetting and ignored the choice of surrogate; both work here.

    Args:
        tau_mem: Membrane time constant in seconds.
        tau_exc: Excitatory synaptic time constant in seconds.
        tau_inh: Inhibitory synaptic time constant in seconds.
        tau_ada: Adaptation time constant in seconds.
        adapt_a: Adaptation strength per spike.
        sigma_tau: Log-normal per-neuron spread of every time constant (``tau_ada`` included).
        threshold, surrogate, diff_reset, clamp_mem, dropout, learn_timescales, stateful, record:
            As for :class:`~lightning_snn.nn.neurons.lif.LIF`.
    """

    state_type = ExcInhAdaptiveState
    learnable_time_constants = ("mem", "exc", "inh")

    def __init__(
        self,
        tau_mem: float = 10e-3,
        tau_exc: float = 5e-3,
        tau_inh: float = 5e-3,
        tau_ada: float = 100e-3,
        adapt_a: float = 0.5,
        sigma_tau: float = 0.0,
        threshold: float = 1.0,
        surrogate: Optional[SurrogateSpike] = None,
        diff_reset: bool = False,
        clamp_mem: bool = False,
        dropout: float = 0.0,
        learn_timescales: LearnTimescales = "none",
        stateful: bool = False,
        record: Sequence[str] = (),
    ) -> None:
        super().__init__(
            threshold, surrogate, diff_reset, clamp_mem, dropout, learn_timescales, sigma_tau, stateful, record
        )
        self._add_time_constant("mem", tau_mem)
        self._add_time_constant("exc", tau_exc)
        self._add_time_constant("inh", tau_inh)
        self._add_time_constant("ada", tau_ada)
        self.adapt_a = float(adapt_a)

    def step_parameters(self) -> ExcInhAdaptiveDecays:
        return ExcInhAdaptiveDecays(
            mem=self.decay("mem"), exc=self.decay("exc"), inh=self.decay("inh"), ada=self.decay("ada")
        )

    def step(self, state: ExcInhAdaptiveState, drive: tuple[Tensor, ...], params: ExcInhAdaptiveDecays):
        spikes, keep = self.spike_and_reset(state.mem)

        exc = params.exc * state.exc + drive[0]
        inh = params.inh * state.inh + drive[1]
        ada = params.ada * state.ada + state.last_spikes

        net_current = state.exc - state.inh - self.adapt_a * state.ada
        mem = self._integrate(state.mem, params.mem, net_current, keep)
        return spikes, ExcInhAdaptiveState(mem=mem, exc=exc, inh=inh, ada=ada, last_spikes=spikes)


class AmpaNmdaGabaLIF(_ExcInhBase):
    """LIF neurons with AMPA, NMDA and GABA synapses (Stork's ``Exc2InhLIFGroup``).

    Excitatory input enters the fast AMPA trace, NMDA low-pass filters AMPA, and inhibitory input enters
    the GABA trace::

        AMPA_{t+1} = lambda_ampa * AMPA_t + X^exc_{t-1}
        GABA_{t+1} = lambda_gaba * GABA_t + X^inh_{t-1}
        NMDA_{t+1} = lambda_nmda * NMDA_t + (1 - lambda_nmda) * AMPA_t
        net_t      = (AMPA_t + NMDA_t) / 2 - GABA_t

    and the membrane integrates ``net_t`` as in :class:`ExcInhLIF`.

    Args:
        tau_mem: Membrane time constant in seconds.
        tau_ampa: AMPA time constant in seconds.
        tau_nmda: NMDA time constant in seconds.
        tau_gaba: GABA time constant in seconds.
        sigma_tau: Log-normal per-neuron spread of every time constant.
        threshold, surrogate, diff_reset, clamp_mem, dropout, learn_timescales, stateful, record:
            As for :class:`~lightning_snn.nn.neurons.lif.LIF`.
    """

    state_type = ReceptorState
    learnable_time_constants = ("mem", "ampa", "nmda", "gaba")

    def __init__(
        self,
        tau_mem: float = 10e-3,
        tau_ampa: float = 5e-3,
        tau_nmda: float = 100e-3,
        tau_gaba: float = 10e-3,
        sigma_tau: float = 0.0,
        threshold: float = 1.0,
        surrogate: Optional[SurrogateSpike] = None,
        diff_reset: bool = False,
        clamp_mem: bool = False,
        dropout: float = 0.0,
        learn_timescales: LearnTimescales = "none",
        stateful: bool = False,
        record: Sequence[str] = (),
    ) -> None:
        super().__init__(
            threshold, surrogate, diff_reset, clamp_mem, dropout, learn_timescales, sigma_tau, stateful, record
        )
        self._add_time_constant("mem", tau_mem)
        self._add_time_constant("ampa", tau_ampa)
        self._add_time_constant("nmda", tau_nmda)
        self._add_time_constant("gaba", tau_gaba)

    def psp_time_constants(self, receptor: str) -> tuple[float, float]:
        # NOTE: the PSP through "exc" also has a slow NMDA part; initializers use the AMPA time constant.
        synaptic = {"exc": "ampa", "inh": "gaba"}
        if receptor not in synaptic:
            raise ValueError(f"{type(self).__name__} has receptors {self.receptors}, not {receptor!r}.")
        return self.time_constants["mem"], self.time_constants[synaptic[receptor]]

    def step_parameters(self) -> ReceptorDecays:
        return ReceptorDecays(
            mem=self.decay("mem"), ampa=self.decay("ampa"), nmda=self.decay("nmda"), gaba=self.decay("gaba")
        )

    def step(self, state: ReceptorState, drive: tuple[Tensor, ...], params: ReceptorDecays):
        spikes, keep = self.spike_and_reset(state.mem)

        ampa = params.ampa * state.ampa + drive[0]
        gaba = params.gaba * state.gaba + drive[1]
        nmda = params.nmda * state.nmda + (1.0 - params.nmda) * state.ampa

        net_current = 0.5 * (state.ampa + state.nmda) - state.gaba
        mem = self._integrate(state.mem, params.mem, net_current, keep)
        return spikes, ReceptorState(mem=mem, ampa=ampa, nmda=nmda, gaba=gaba)
