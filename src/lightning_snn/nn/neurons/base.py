"""Base classes of all neuron models: time constants, decays, shapes, learnable timescales, spiking."""

import math
import warnings
from typing import Any, Literal, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from lightning_snn.nn.state import StatefulModule
from lightning_snn.surrogate import SuperSpike, SurrogateSpike

LearnTimescales = Literal["none", "layer", "neuron"]


class Neuron(StatefulModule):
    """Base of every neuron population: a shape, a time step and a set of time constants.

    A neuron model lists its time constants in ``self.time_constants`` (name to seconds) and turns each
    into a per-step decay factor ``lambda = exp(-dt / tau)``. The population's shape and the simulation
    time step ``dt`` are fixed by :meth:`build`, which the enclosing layer calls.

    Subclasses implement :meth:`initial_state` and :meth:`step`. A sequence driver
    (:func:`lightning_snn.nn.simulation.simulate`) calls ``step`` once per time step with the synaptic
    drive that arrived at that step, one tensor per receptor in ``receptors``.

    Args:
        learn_timescales: ``"none"`` keeps the time constants fixed; ``"layer"`` learns one scalar
            per time constant for the whole population, ``"neuron"`` one per neuron. A learnable time
            constant is ``tau_eff = 2 * tau * sigmoid(p)`` with ``p`` initialised to 0, so training
            starts at exactly ``tau`` and ``tau_eff`` stays in ``(0, 2 * tau)``.
        sigma_tau: Standard deviation of log-normal per-neuron heterogeneity: each time constant
            becomes ``tau * exp(sigma_tau * N(0, 1))``, drawn once when the population is built.
        stateful: Carry the detached final state of one batch into the next.
        record: Names of state variables to keep as sequences after each forward pass, readable from
            :attr:`recorded` as ``(batch, time, *shape)`` tensors. Recording costs nothing when empty.
    """

    #: Names of the synaptic inputs this model receives; connections target one of them.
    receptors: tuple[str, ...] = ("input",)
    #: Whether the model emits spikes (False for the leaky readout).
    spiking: bool = False
    #: Time constants that ``learn_timescales`` applies to; subclasses narrow it.
    learnable_time_constants: tuple[str, ...] = ()

    def __init__(
        self,
        learn_timescales: LearnTimescales = "none",
        sigma_tau: float = 0.0,
        stateful: bool = False,
        record: Sequence[str] = (),
    ) -> None:
        super().__init__(stateful=stateful)
        if learn_timescales not in ("none", "layer", "neuron"):
            raise ValueError(
                f"learn_timescales must be 'none', 'layer' or 'neuron', got {learn_timescales!r}."
            )
        if sigma_tau < 0:
            raise ValueError(f"sigma_tau must be 0 or positive, got {sigma_tau}.")
        if isinstance(record, str):
            raise TypeError(f"record must be a sequence of state names, e.g. ({record!r},), got the string {record!r}.")
        self.learn_timescales = learn_timescales
        self.sigma_tau = sigma_tau
        self.record = tuple(record)
        self.time_constants: dict[str, float] = {}
        self.shape: Optional[tuple[int, ...]] = None
        self.dt: Optional[float] = None
        self.timescale_params = nn.ParameterDict()
        self.recorded: dict[str, Tensor] = {}

    def _add_time_constant(self, name: str, tau: float) -> None:
        if not tau > 0:
            raise ValueError(f"tau_{name} must be a positive time in seconds, got {tau}.")
        self.time_constants[name] = float(tau)

    @property
    def is_built(self) -> bool:
        return self.shape is not None

    def build(self, shape: Union[int, Sequence[int]], dt: float) -> None:
        """Fix the population shape and the simulation time step ``dt`` (seconds)."""
        shape = (shape,) if isinstance(shape, int) else tuple(int(size) for size in shape)
        if not shape or any(size < 1 for size in shape):
            raise ValueError(f"A neuron population needs a non-empty positive shape, got {shape}.")
        if not dt > 0:
            raise ValueError(f"dt must be a positive time step in seconds, got {dt}.")
        if self.is_built:
            if shape != self.shape or dt != self.dt:
                raise ValueError(
                    f"{type(self).__name__} is already built with shape {self.shape} and dt "
                    f"{self.dt}; got shape {shape} and dt {dt}. Use a new instance per layer."
                )
            return

        unknown = set(self.record) - set(self.state_names())
        if unknown:
            raise ValueError(
                f"Cannot record {sorted(unknown)} on {type(self).__name__}; "
                f"its state variables are {list(self.state_names())}."
            )
        self.shape = shape
        self.dt = float(dt)

        # dt and the time constants share one unit (seconds). A time constant far below the step, or
        # one of many seconds, usually means a value was given in milliseconds.
        suspicious = {
            name: tau for name, tau in self.time_constants.items() if tau < 0.1 * dt or tau > 10.0
        }
        if suspicious:
            warnings.warn(
                f"{type(self).__name__} has time constants {suspicious} (seconds) for a time step "
                f"dt={dt} s. Both are in seconds; check that neither was given in milliseconds.",
                stacklevel=3,
            )

        if self.sigma_tau > 0:
            for name in self.time_constants:
                scale = torch.exp(self.sigma_tau * torch.randn(shape))
                self.register_buffer(f"tau_scale_{name}", scale)

        if self.learn_timescales != "none":
            param_shape = () if self.learn_timescales == "layer" else shape
            for name in self.learnable_time_constants:
                self.timescale_params[name] = nn.Parameter(torch.zeros(param_shape))

    def _require_built(self) -> None:
        if not self.is_built:
            raise RuntimeError(
                f"{type(self).__name__} has no shape yet: put it in a layer, or call "
                f".build(shape, dt) before using it on its own."
            )

    def tau(self, name: str) -> Union[float, Tensor]:
        """Return the effective time constant ``name`` in seconds (a tensor when heterogeneous or learned)."""
        tau: Union[float, Tensor] = self.time_constants[name]
        scale = getattr(self, f"tau_scale_{name}", None)
        if scale is not None:
            tau = tau * scale
        if name in self.timescale_params:
            tau = 2.0 * tau * torch.sigmoid(self.timescale_params[name])
        return tau

    def decay(self, name: str) -> Union[float, Tensor]:
        """Return the per-step decay factor ``exp(-dt / tau)`` of the time constant ``name``."""
        self._require_built()
        tau = self.tau(name)
        if isinstance(tau, Tensor):
            return torch.exp(-self.dt / tau)
        return math.exp(-self.dt / tau)

    @classmethod
    def state_names(cls) -> tuple[str, ...]:
        return cls.state_type._fields

    def psp_time_constants(self, receptor: str) -> tuple[float, float]:
        """Return the nominal ``(tau_mem, tau_syn)`` in seconds that shape a PSP through ``receptor``.

        Initializers use these to compute PSP integrals.
        """
        return self.time_constants["mem"], self.time_constants["syn"]

    def initial_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> NamedTuple:
        raise NotImplementedError

    def step_parameters(self) -> Any:
        """Return the per-call parameters of :meth:`step` (decays computed once per forward pass)."""
        raise NotImplementedError

    def step(self, state: Any, drive: tuple[Tensor, ...], params: Any) -> tuple[Tensor, Any]:
        """Advance one time step; ``drive`` has one tensor per receptor. Return ``(output, new_state)``."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        taus = ", ".join(f"tau_{name}={tau:g}" for name, tau in self.time_constants.items())
        return f"shape={self.shape}, dt={self.dt}, {taus}"


class SpikingNeuron(Neuron):
    """Base of the spiking models: threshold, surrogate gradient, reset, clamp and dropout.

    A neuron spikes when its membrane potential ``U`` exceeds ``threshold``; the surrogate turns
    ``U - threshold`` into a spike with a pseudo-derivative. The reset is multiplicative (to zero) and,
    unless ``diff_reset``, detached from the graph so that gradients flow only through the spike output.

    Args:
        threshold: Firing threshold in units of the membrane potential.
        surrogate: Spike function with its surrogate gradient; ``SuperSpike(beta=20)`` when omitted.
        diff_reset: Backpropagate through the reset term as well.
        clamp_mem: Clip the membrane potential from above at ``threshold + 0.01`` after each update
            (Stork clips at 1.01 with its fixed threshold of 1).
        dropout: Probability of dropping each transmitted spike during training. Dropped-out spikes
            are scaled by ``1 / (1 - dropout)``; the population's own spike output, which losses and
            regularizers see, keeps every spike.
    """

    spiking = True

    def __init__(
        self,
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
            learn_timescales=learn_timescales, sigma_tau=sigma_tau, stateful=stateful, record=record
        )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be at least 0 and below 1, got {dropout}.")
        if not threshold > 0:
            raise ValueError(f"threshold must be positive (the resting potential is 0), got {threshold}.")
        self.threshold = float(threshold)
        self.surrogate = surrogate if surrogate is not None else SuperSpike(beta=20.0)
        self.diff_reset = diff_reset
        self.clamp_mem = clamp_mem
        self.dropout = float(dropout)

    def spike_and_reset(self, mem: Tensor) -> tuple[Tensor, Tensor]:
        """Return the spikes of membrane ``mem`` and the reset factor ``1 - spikes`` to multiply by."""
        spikes = self.surrogate(mem - self.threshold)
        reset = spikes if self.diff_reset else spikes.detach()
        return spikes, 1.0 - reset

    def clamp(self, mem: Tensor) -> Tensor:
        if self.clamp_mem:
            return mem.clamp(max=self.threshold + 0.01)
        return mem

    def transmission_mask(self, shape: tuple[int, ...], device, dtype) -> Optional[Tensor]:
        """Draw the dropout mask of the transmitted spikes, or return None when nothing is dropped."""
        if not self.training or self.dropout == 0.0:
            return None
        keep = 1.0 - self.dropout
        return torch.bernoulli(torch.full(shape, keep, device=device, dtype=dtype)) / keep

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, threshold={self.threshold:g}"
