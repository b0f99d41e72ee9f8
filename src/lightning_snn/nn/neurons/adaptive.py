"""LIF neurons with a spike-triggered adaptation current.

On top of the LIF dynamics (see :mod:`lightning_snn.nn.neurons.lif`) each neuron keeps an adaptation
trace ``A`` that its own spikes charge and that is subtracted from the synaptic current::

    A_{t+1} = lambda_ada * A_t + c * S_{t-1}
    U_{t+1} = (lambda_mem * U_t + (1 - lambda_mem) * (I_t - a * A_t)) * (1 - S_t)

``c = 1`` for :class:`AdaptiveLIF` and ``c = 1 - lambda_ada`` for :class:`LearnableAdaptiveLIF`. The trace
is charged by the spike of the *previous* step, so a spike at step ``t`` first lowers the membrane at
``t + 3``. This is Stork's timing. Although Stork's docstring speaks of an adaptive threshold, the model
is an adaptation current: the threshold stays fixed.
"""

from typing import NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from lightning_snn.nn.neurons.base import LearnTimescales, SpikingNeuron
from lightning_snn.surrogate import SurrogateSpike


class AdaptiveLIFState(NamedTuple):
    """State of an adaptive LIF population before a time step."""

    mem: Tensor
    syn: Tensor
    ada: Tensor
    """Adaptation trace ``A``."""
    last_spikes: Tensor
    """Spikes of the previous step, which charge ``A`` at this step."""


class AdaptiveDecays(NamedTuple):
    mem: Union[float, Tensor]
    syn: Union[float, Tensor]
    ada: Union[float, Tensor]
    ada_input_scale: Union[float, Tensor]
    """Factor ``c`` that multiplies a spike entering the adaptation trace."""
    strength: Union[float, Tensor]
    """Adaptation strength ``a`` (or the per-neuron ``b``)."""


class _AdaptiveBase(SpikingNeuron):
    state_type = AdaptiveLIFState
    learnable_time_constants = ("mem", "syn")

    def initial_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> AdaptiveLIFState:
        zeros = torch.zeros((batch_size, *self.shape), device=device, dtype=dtype)
        return AdaptiveLIFState(mem=zeros, syn=zeros, ada=zeros, last_spikes=zeros)

    def step(
        self, state: AdaptiveLIFState, drive: tuple[Tensor, ...], params: AdaptiveDecays
    ) -> tuple[Tensor, AdaptiveLIFState]:
        spikes, keep = self.spike_and_reset(state.mem)

        syn = params.syn * state.syn + drive[0]
        ada = params.ada * state.ada + params.ada_input_scale * state.last_spikes

        current = state.syn - params.strength * state.ada
        mem = (params.mem * state.mem + (1.0 - params.mem) * current) * keep
        mem = self.clamp(mem)

        return spikes, AdaptiveLIFState(mem=mem, syn=syn, ada=ada, last_spikes=spikes)


class AdaptiveLIF(_AdaptiveBase):
    """LIF neurons with a spike-triggered adaptation current (Stork's ``AdaptiveLIFGroup``).

    Each spike adds 1 to the adaptation trace, which decays with ``tau_ada`` and lowers the drive by
    ``adapt_a`` per unit. Stork charges the trace with the spikes after dropout. Here the trace receives
    the neuron's own spikes, because dropout models transmission to other neurons.

    Args:
        tau_mem: Membrane time constant in seconds.
        tau_syn: Synaptic time constant in seconds.
        tau_ada: Adaptation time constant in seconds.
        adapt_a: Adaptation strength ``a`` (current units per spike).
        threshold, surrogate, diff_reset, clamp_mem, dropout, learn_timescales, sigma_tau,
        stateful, record: As for :class:`~lightning_snn.nn.neurons.lif.LIF`; learned time constants
            are ``tau_mem`` and ``tau_syn``.
    """

    def __init__(
        self,
        tau_mem: float = 10e-3,
        tau_syn: float = 5e-3,
        tau_ada: float = 100e-3,
        adapt_a: float = 0.1,
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
        self._add_time_constant("ada", tau_ada)
        self.adapt_a = float(adapt_a)

    def step_parameters(self) -> AdaptiveDecays:
        return AdaptiveDecays(
            mem=self.decay("mem"),
            syn=self.decay("syn"),
            ada=self.decay("ada"),
            ada_input_scale=1.0,
            strength=self.adapt_a,
        )


class LearnableAdaptiveLIF(_AdaptiveBase):
    """Adaptive LIF neurons with per-neuron learnable adaptation (Stork's ``AdaptLearnLIFGroup``).

    Each neuron ``i`` learns its adaptation strength ``b_i`` and its adaptation time constant
    ``tau_ada * sigmoid(q_i)``, so the learned time constant lies in ``(0, tau_ada)``. As in Stork, ``q``
    starts from ``N(0, 1)`` and ``b`` from ``U(0, 1)``, which makes the population heterogeneous from the
    start. Stork leaves ``b`` unconstrained, so it can turn negative and excite; here
    :meth:`apply_constraints` (called after every optimizer step by the training module) clips it at 0.

    Args:
        tau_mem: Membrane time constant in seconds.
        tau_syn: Synaptic time constant in seconds.
        tau_ada: Upper bound of the learned adaptation time constants, in seconds.
        threshold, surrogate, diff_reset, clamp_mem, dropout, learn_timescales, sigma_tau,
        stateful, record: As for :class:`~lightning_snn.nn.neurons.lif.LIF`.
    """

    def __init__(
        self,
        tau_mem: float = 10e-3,
        tau_syn: float = 5e-3,
        tau_ada: float = 1.0,
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
        self._add_time_constant("ada", tau_ada)
        self.adapt_strength: Optional[nn.Parameter] = None
        self.ada_timescale_param: Optional[nn.Parameter] = None

    def build(self, shape, dt: float) -> None:
        was_built = self.is_built
        super().build(shape, dt)
        if not was_built:
            self.adapt_strength = nn.Parameter(torch.rand(self.shape))
            self.ada_timescale_param = nn.Parameter(torch.randn(self.shape))

    def step_parameters(self) -> AdaptiveDecays:
        self._require_built()
        tau_ada = self.tau("ada") * torch.sigmoid(self.ada_timescale_param)
        decay_ada = torch.exp(-self.dt / tau_ada)
        return AdaptiveDecays(
            mem=self.decay("mem"),
            syn=self.decay("syn"),
            ada=decay_ada,
            ada_input_scale=1.0 - decay_ada,
            strength=self.adapt_strength,
        )

    @torch.no_grad()
    def apply_constraints(self) -> None:
        """Clip the adaptation strengths at 0 so adaptation never excites."""
        if self.adapt_strength is not None:
            self.adapt_strength.clamp_(min=0.0)
