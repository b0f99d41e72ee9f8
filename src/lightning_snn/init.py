"""Weight initializers, including fluctuation-driven initialization (Rossbroich, Gygax & Zenke 2022).

Fluctuation-driven initialization picks the weight distribution of each population from the presynaptic
rate ``nu``. Driven at that rate, the membrane potential ``U`` settles at a chosen mean ``mu_U`` below the
firing threshold ``theta`` and fluctuates with a chosen standard deviation ``sigma_U``. Shot-noise
theory (reset ignored) gives, for ``N`` inputs whose weights have mean ``mu_w`` and variance
``sigma_w**2``::

    mu_U      = N * mu_w * nu * eps_bar
    sigma_U^2 = N * (mu_w**2 + sigma_w**2) * nu * eps_hat

where ``eps_bar`` and ``eps_hat`` are the integrals of the postsynaptic potential kernel and of its
square (:func:`psp_integrals`). The target is written as ``theta - mu_U = xi * sigma_U``: the mean sits
``xi`` standard deviations below the threshold.

Every initializer has ``initialize(target, data=None)``, which accepts a built
:class:`~lightning_snn.nn.SpikingNetwork`, one of its layers, or a single connection. Fluctuation-driven
initializers need the postsynaptic neuron, so they accept an :class:`~lightning_snn.nn.Afferent`
(from ``layer.afferents()``) in place of a bare connection. With ``nu=None`` they measure the
presynaptic rates on a data batch, layer by layer (see :class:`FluctuationDrivenNormal`).
"""

import functools
import logging
import math
from collections.abc import Sequence
from typing import Callable, Literal, NamedTuple, Optional, Union

import torch
from torch import Tensor

from lightning_snn.nn import Afferent, Connection, NetworkLayer, Neuron, SpikingNetwork, StatefulModule

logger = logging.getLogger("lightning_snn.init")

EpsilonMode = Literal["numerical", "analytical"]
Scaling = Optional[Union[Literal["1/sqrt(k)", "1/k"], float]]
Target = Union[SpikingNetwork, NetworkLayer, Connection, Afferent]


# --------------------------------------------------------------------------------------------------
# Closed-form pieces
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def psp_integrals(
    tau_mem: float, tau_syn: float, dt: float, mode: EpsilonMode = "numerical"
) -> tuple[float, float]:
    """Compute the integrals of the PSP kernel and of its square.

    ``"numerical"`` uses the discrete kernel of :class:`~lightning_snn.nn.LIF` with its one-step lag:
    a unit current ``I = 1`` decays by ``lambda_syn`` per step while the membrane ``U`` (starting at 0)
    follows the previous step's current. The kernel is recorded for ``int(10 * max(tau) / dt)`` steps.
    ``"analytical"`` uses the continuous-time kernel, ``eps_bar = tau_syn`` and
    ``eps_hat = tau_syn**2 / (2 * (tau_syn + tau_mem))``.

    Args:
        tau_mem: Membrane time constant in seconds.
        tau_syn: Synaptic time constant in seconds.
        dt: Simulation time step in seconds (used by ``"numerical"`` only).
        mode: ``"numerical"`` (matches the simulation) or ``"analytical"``.

    Returns:
        ``(eps_bar, eps_hat)``: the kernel integral in seconds and the integral of its square.
    """
    for name, value in (("tau_mem", tau_mem), ("tau_syn", tau_syn), ("dt", dt)):
        if not value > 0:
            raise ValueError(f"{name} must be a positive time in seconds, got {value}.")
    if mode == "analytical":
        return tau_syn, tau_syn**2 / (2.0 * (tau_syn + tau_mem))
    if mode != "numerical":
        raise ValueError(f"mode must be 'numerical' or 'analytical', got {mode!r}.")

    decay_mem = math.exp(-dt / tau_mem)
    decay_syn = math.exp(-dt / tau_syn)
    current, membrane = 1.0, 0.0
    kernel = []
    for _ in range(int(10 * max(tau_mem, tau_syn) / dt)):
        kernel.append(membrane)
        membrane = decay_mem * membrane + (1.0 - decay_mem) * current
        current = decay_syn * current

    # fsum keeps the two sums exact to the last bit, whatever the kernel length.
    eps_bar = dt * math.fsum(kernel)
    eps_hat = dt * math.fsum(value * value for value in kernel)
    return eps_bar, eps_hat


class AfferentInput(NamedTuple):
    """Statistics of one afferent connection that the fluctuation-driven formulas need."""

    fan_in: int
    """Number of presynaptic inputs of each postsynaptic neuron."""
    rate: float
    """Mean presynaptic firing rate in Hz."""
    eps_bar: float
    """Integral of the PSP kernel through this connection's receptor, in seconds."""
    eps_hat: float
    """Integral of the squared PSP kernel."""
    recurrent: bool = False
    """True for connections within the layer."""


def normal_weight_moments(
    inputs: Sequence[AfferentInput],
    mu_u: float = 0.0,
    xi: float = 1.0,
    theta: float = 1.0,
    alpha: float = 0.9,
) -> tuple[float, list[float]]:
    """Compute the normal weight distribution of every afferent of one population.

    All afferents share one mean ``mu_w``, chosen so that their summed drive gives the mean membrane
    potential ``mu_u``. The membrane variance ``((theta - mu_u) / xi)**2`` is split into a share
    ``alpha`` for feed-forward and ``1 - alpha`` for recurrent input when both exist, and each share is
    divided equally among the connections of its kind. A population with only one kind of input gives
    it the whole variance.

    Args:
        inputs: The population's afferents.
        mu_u: Target mean membrane potential.
        xi: Distance from ``mu_u`` to ``theta`` in standard deviations of the membrane potential.
        theta: Firing threshold of the population.
        alpha: Feed-forward share of the membrane variance when recurrent input exists.

    Returns:
        ``(mu_w, sigma_w)``: the common mean and the standard deviation for each afferent.

    Raises:
        ValueError: If a variance comes out negative, which happens when ``mu_u`` is too large for the
            requested fluctuations.
    """
    if not inputs:
        raise ValueError("normal_weight_moments needs at least one afferent.")
    if not xi > 0:
        raise ValueError(f"xi must be positive, got {xi}.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}.")

    num_recurrent = sum(1 for item in inputs if item.recurrent)
    num_feedforward = len(inputs) - num_recurrent
    if num_recurrent == 0:
        feedforward_share = 1.0
    elif num_feedforward == 0:
        feedforward_share = 0.0
    else:
        feedforward_share = alpha

    # The mean drive of all afferents together sets mu_U. With one common rate and kernel this is
    # Stork's mu_w = mu_U / (N_total * nu * eps_bar).
    mean_drive_per_weight = sum(item.fan_in * item.rate * item.eps_bar for item in inputs)
    if not all(item.eps_hat > 0 for item in inputs) or not mean_drive_per_weight > 0:
        raise ValueError(
            f"The PSP integrals or input rates are zero for afferents {list(inputs)}. This happens when "
            f"dt is far longer than the time constants; dt and every tau are in seconds, so check "
            f"that none was given in milliseconds."
        )
    mu_w = mu_u / mean_drive_per_weight

    total_variance = ((theta - mu_u) / xi) ** 2
    sigmas = []
    for item in inputs:
        if item.recurrent:
            share = (1.0 - feedforward_share) / num_recurrent
        else:
            share = feedforward_share / num_feedforward
        variance = share * total_variance / (item.fan_in * item.rate * item.eps_hat) - mu_w**2
        if variance < 0:
            raise ValueError(
                f"The weight variance is negative ({variance:.3g}): mu_u={mu_u} is too large for "
                f"sigma_U={(theta - mu_u) / xi:.3g} with fan-in {item.fan_in} at {item.rate:.3g} Hz. "
                f"Lower mu_u or xi."
            )
        sigmas.append(math.sqrt(variance))
    return mu_w, sigmas


class ExponentialRates(NamedTuple):
    """Rates ``lambda`` of the exponential weight distributions of an E/I population."""

    feedforward: float
    """Rate of the excitatory feed-forward weights (mean weight ``1 / lambda``)."""
    recurrent: float
    """Rate of the excitatory recurrent weights."""
    inhibitory: float
    """Rate of the inhibitory weights."""
    delta_rec: Optional[float]
    """Ratio ``lambda_rec / lambda_ff``, or None without excitatory recurrence."""
    delta_ei: float
    """Ratio ``lambda_inh / lambda_exc``, taking feed-forward excitation when recurrence exists."""


def exponential_rates(
    input_rate_ff: float,
    input_rate_rec: float,
    input_rate_inh: float,
    eps_exc: tuple[float, float],
    eps_inh: tuple[float, float],
    sigma_u: float = 1.0,
    alpha: float = 0.9,
    theta: float = 1.0,
) -> ExponentialRates:
    """Compute exponential weight distributions that balance excitation and inhibition.

    Weights ``w ~ Exponential(lambda)`` are non-negative with mean ``1 / lambda`` and
    ``E[w**2] = 2 / lambda**2``. The rates are chosen so that the mean excitatory and inhibitory drives
    cancel (``mu_U = 0``), the membrane standard deviation is ``theta * sigma_u``, and recurrent
    excitation carries ``1 - alpha`` of the excitatory feed-forward plus recurrent variance.

    Each input is given as its total presynaptic rate, ``sum(fan_in * nu)`` over the connections of
    that kind. With one common rate ``nu`` this reproduces Stork's formulas with ``N * nu``.

    Args:
        input_rate_ff: Total presynaptic rate through excitatory feed-forward synapses, in Hz.
        input_rate_rec: Total presynaptic rate through excitatory recurrent synapses, in Hz (0 if none).
        input_rate_inh: Total presynaptic rate through inhibitory synapses, in Hz.
        eps_exc: ``(eps_bar, eps_hat)`` of the excitatory receptor.
        eps_inh: ``(eps_bar, eps_hat)`` of the inhibitory receptor.
        sigma_u: Target membrane standard deviation in units of the threshold.
        alpha: Feed-forward share of the excitatory variance when recurrent excitation exists.
        theta: Firing threshold.

    Returns:
        The three rates, and the ratios ``delta_rec`` and ``delta_ei`` between them.
    """
    if not input_rate_inh > 0:
        raise ValueError(f"An E/I population needs inhibitory input, got total rate {input_rate_inh} Hz.")
    if not input_rate_ff + input_rate_rec > 0:
        raise ValueError("An E/I population needs excitatory input, got a total excitatory rate of 0 Hz.")
    if not sigma_u > 0:
        raise ValueError(f"sigma_u must be positive, got {sigma_u}.")
    eps_bar_e, eps_hat_e = eps_exc
    eps_bar_i, eps_hat_i = eps_inh
    xi = 1.0 / sigma_u

    if input_rate_ff == 0 or input_rate_rec == 0:
        # One excitatory group: the excitatory variance needs no split, so alpha plays no role.
        input_rate_exc = input_rate_ff + input_rate_rec
        delta_ei = input_rate_inh * eps_bar_i / (input_rate_exc * eps_bar_e)
        variance_sum = delta_ei**2 * input_rate_exc * eps_hat_e + input_rate_inh * eps_hat_i
        rate_exc = xi * math.sqrt(2.0 * variance_sum) / (delta_ei * theta)
        return ExponentialRates(rate_exc, rate_exc, delta_ei * rate_exc, None, delta_ei)

    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1 with recurrent excitation, got {alpha}.")
    delta_rec = math.sqrt(alpha * input_rate_rec / ((1.0 - alpha) * input_rate_ff))
    delta_ei = (
        delta_rec * eps_bar_i * input_rate_inh
        / (delta_rec * eps_bar_e * input_rate_ff + eps_bar_e * input_rate_rec)
    )
    variance_sum = (
        delta_ei**2 * eps_hat_e * input_rate_rec
        + delta_rec**2 * (input_rate_ff * delta_ei**2 * eps_hat_e + eps_hat_i * input_rate_inh)
    )
    rate_ff = xi * math.sqrt(2.0 * variance_sum) / (theta * delta_ei * delta_rec)
    return ExponentialRates(rate_ff, delta_rec * rate_ff, delta_ei * rate_ff, delta_rec, delta_ei)


# --------------------------------------------------------------------------------------------------
# Tensor helpers
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def _assign_weight(connection: Connection, sample: Callable[[Tensor], Tensor]) -> None:
    """Fill the weight in place with ``sample(empty_like(weight))``, keeping its device and dtype."""
    weight = connection.weight
    weight.copy_(sample(torch.empty_like(weight)))


@torch.no_grad()
def _fill_bias_uniform(connection: Connection, mean: float, half_width: float) -> None:
    if connection.bias is not None:
        connection.bias.uniform_(mean - half_width, mean + half_width)


@torch.no_grad()
def _zero_bias(connection: Connection) -> None:
    if connection.bias is not None:
        connection.bias.zero_()


def _group_by_population(afferents: Sequence[Afferent]) -> dict[str, list[Afferent]]:
    groups: dict[str, list[Afferent]] = {}
    for afferent in afferents:
        groups.setdefault(afferent.population, []).append(afferent)
    return groups


def _afferents_of(target: Target) -> list[Afferent]:
    if isinstance(target, SpikingNetwork):
        if not target.is_built:
            raise RuntimeError("The network is not built; call build(input_shape, dt) before initializing.")
        return target.afferents()
    if isinstance(target, NetworkLayer):
        if not target.is_built:
            raise RuntimeError(f"Layer {target.name!r} is not built; build it before initializing.")
        return target.afferents()
    if isinstance(target, Afferent):
        return [target]
    raise TypeError(
        f"Cannot initialize a {type(target).__name__}; pass a SpikingNetwork, a NetworkLayer, a "
        f"Connection or an Afferent."
    )


# --------------------------------------------------------------------------------------------------
# Plain distributions
# --------------------------------------------------------------------------------------------------


class Initializer:
    """Base of all initializers: dispatches a network, layer or connection to per-connection work.

    Subclasses implement :meth:`initialize_connection`; fluctuation-driven initializers override
    :meth:`initialize` because they need every afferent of a population at once.
    """

    def initialize(self, target: Target, data: Optional[Tensor] = None) -> None:
        """Initialize the weights of ``target`` in place and apply their constraints.

        Args:
            target: A built network, layer, connection or afferent.
            data: Unused by initializers with fixed distributions.
        """
        if isinstance(target, Connection):
            self.initialize_connection(target)
            return
        for afferent in _afferents_of(target):
            self.initialize_connection(afferent.connection)

    def __call__(self, target: Target, data: Optional[Tensor] = None) -> None:
        self.initialize(target, data)

    def initialize_connection(self, connection: Connection) -> None:
        raise NotImplementedError


class DistInitializer(Initializer):
    """Draw weights from a fixed distribution, scaled by the fan-in.

    Args:
        distribution: ``"normal"`` or ``"uniform"``; ``mean`` and ``std`` are the moments of either
            (the uniform one spans ``mean +- sqrt(3) * std``).
        mean: Mean of the unscaled distribution.
        std: Standard deviation of the unscaled distribution.
        scaling: Factor applied to the sample: ``"1/sqrt(k)"`` or ``"1/k"`` with ``k`` the fan-in, a
            number, or None for no scaling.
        sparseness: Probability of keeping each weight. Kept weights are divided by ``sqrt(sparseness)``,
            which preserves ``E[w**2]`` but scales the mean by ``sqrt(sparseness)``.
        bias_scale: Biases are drawn from ``U(bias_mean +- bias_scale / sqrt(fan_in))``.
        bias_mean: Centre of the bias distribution.
    """

    def __init__(
        self,
        distribution: Literal["normal", "uniform"] = "normal",
        mean: float = 0.0,
        std: float = 1.0,
        scaling: Scaling = "1/sqrt(k)",
        sparseness: float = 1.0,
        bias_scale: float = 1.0,
        bias_mean: float = 0.0,
    ) -> None:
        if distribution not in ("normal", "uniform"):
            raise ValueError(f"distribution must be 'normal' or 'uniform', got {distribution!r}.")
        if std < 0:
            raise ValueError(f"std must be 0 or positive, got {std}.")
        named_scalings = ("1/sqrt(k)", "1/k")
        if scaling is not None and not isinstance(scaling, (int, float)) and scaling not in named_scalings:
            raise ValueError(f"scaling must be '1/sqrt(k)', '1/k', a number or None, got {scaling!r}.")
        if not 0.0 < sparseness <= 1.0:
            raise ValueError(
                f"sparseness is the probability of keeping a weight and must lie in (0, 1], got {sparseness}."
            )
        if bias_scale < 0:
            raise ValueError(f"bias_scale must be 0 or positive, got {bias_scale}.")
        self.distribution = distribution
        self.mean = mean
        self.std = std
        self.scaling = scaling
        self.sparseness = sparseness
        self.bias_scale = bias_scale
        self.bias_mean = bias_mean

    def _scale(self, fan_in: int) -> float:
        if self.scaling is None:
            return 1.0
        if self.scaling == "1/sqrt(k)":
            return 1.0 / math.sqrt(fan_in)
        if self.scaling == "1/k":
            return 1.0 / fan_in
        return float(self.scaling)

    def _sample(self, empty: Tensor, fan_in: int) -> Tensor:
        if self.distribution == "normal":
            weights = empty.normal_(self.mean, self.std)
        else:
            half_width = math.sqrt(3.0) * self.std
            weights = empty.uniform_(self.mean - half_width, self.mean + half_width)
        weights = weights * self._scale(fan_in)
        if self.sparseness < 1.0:
            keep = torch.empty_like(weights).bernoulli_(self.sparseness)
            weights = weights * keep / math.sqrt(self.sparseness)
        return weights

    def initialize_connection(self, connection: Connection) -> None:
        fan_in = connection.fan_in
        _assign_weight(connection, lambda empty: self._sample(empty, fan_in))
        _fill_bias_uniform(connection, self.bias_mean, self.bias_scale / math.sqrt(fan_in))
        connection.apply_constraints()


class KaimingNormalInitializer(DistInitializer):
    """Draw weights from ``N(0, gain / sqrt(fan_in))``.

    Args:
        gain: Standard deviation times ``sqrt(fan_in)``.
        bias_scale: Biases are drawn from ``U(bias_mean +- bias_scale / sqrt(fan_in))``.
        bias_mean: Centre of the bias distribution.
    """

    def __init__(self, gain: float = 1.0, bias_scale: float = 1.0, bias_mean: float = 0.0) -> None:
        super().__init__("normal", 0.0, gain, "1/sqrt(k)", 1.0, bias_scale, bias_mean)
        self.gain = gain


# --------------------------------------------------------------------------------------------------
# Rate measurement
# --------------------------------------------------------------------------------------------------


def _time_step(afferents: Sequence[Afferent]) -> float:
    dt = afferents[0].neuron.dt
    if dt is None:
        raise RuntimeError("The postsynaptic neurons are not built; build the network before initializing.")
    return dt


def _reset_carried_state(module: torch.nn.Module) -> None:
    for submodule in module.modules():
        if isinstance(submodule, StatefulModule):
            submodule.reset_state()


@torch.no_grad()
def measure_presynaptic_rates(
    target: Union[SpikingNetwork, NetworkLayer], data: Tensor, connections: Sequence[Connection]
) -> list[Optional[float]]:
    """Run ``target`` on ``data`` and return the mean presynaptic rate of each connection in Hz.

    The run uses evaluation mode (no dropout) and no gradients, and afterwards resets any state carried
    across batches. A rate is averaged over the batch, the time steps and the presynaptic neurons.

    Args:
        target: A built network, or a layer without skip connections (it receives ``data`` directly).
        data: Input batch ``(batch, time, *input_shape)``.
        connections: Connections of ``target`` to measure.

    Returns:
        One rate per connection, or None for a connection that received nothing during the run.
    """
    if isinstance(target, NetworkLayer) and target.skip_from:
        raise ValueError(
            f"Layer {target.name!r} has skip connections, so its rates can only be measured inside its "
            f"network: initialize the network instead."
        )
    dt = _time_step(target.afferents())
    reference = next(target.parameters())
    data = data.to(device=reference.device, dtype=reference.dtype)

    was_training = target.training
    target.eval()
    for connection in connections:
        connection.start_probe()
    try:
        if isinstance(target, SpikingNetwork):
            target(data)
        else:
            target([data])
    finally:
        activities = [connection.stop_probe() for connection in connections]
        target.train(was_training)
        _reset_carried_state(target)
    return [None if activity is None else activity / dt for activity in activities]


# --------------------------------------------------------------------------------------------------
# Fluctuation-driven initializers
# --------------------------------------------------------------------------------------------------


class _FluctuationDriven(Initializer):
    """Shared machinery: per-population initialization with fixed or measured presynaptic rates."""

    def __init__(
        self,
        nu: Optional[float],
        alpha: float,
        epsilon_mode: EpsilonMode,
        readout: Literal["fluctuation", "normal"],
    ) -> None:
        if nu is not None and not nu > 0:
            raise ValueError(f"nu is a presynaptic firing rate in Hz and must be positive, got {nu}.")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}.")
        if epsilon_mode not in ("numerical", "analytical"):
            raise ValueError(f"epsilon_mode must be 'numerical' or 'analytical', got {epsilon_mode!r}.")
        if readout not in ("fluctuation", "normal"):
            raise ValueError(f"readout must be 'fluctuation' or 'normal', got {readout!r}.")
        self.nu = nu
        self.alpha = alpha
        self.epsilon_mode = epsilon_mode
        self.readout = readout

    # Subclasses implement these two.

    def _needs_rates(self, afferents: Sequence[Afferent]) -> bool:
        raise NotImplementedError

    def _initialize_population(
        self, name: str, afferents: Sequence[Afferent], rates: Sequence[float]
    ) -> None:
        raise NotImplementedError

    # Shared helpers.

    def _epsilons(self, afferent: Afferent) -> tuple[float, float]:
        # NOTE: the kernels use the nominal time constants, so per-neuron spread (sigma_tau) and
        # learned time constants are ignored.
        tau_mem, tau_syn = afferent.neuron.psp_time_constants(afferent.connection.target)
        return psp_integrals(tau_mem, tau_syn, _time_step([afferent]), self.epsilon_mode)

    def _is_readout(self, afferents: Sequence[Afferent]) -> bool:
        return not afferents[0].neuron.spiking

    @staticmethod
    def _threshold(neuron: Neuron) -> float:
        # Non-spiking readouts have no threshold, so they use 1, the value Stork used everywhere.
        return float(getattr(neuron, "threshold", 1.0)) if neuron.spiking else 1.0

    @staticmethod
    def _initialize_readout_normal(afferents: Sequence[Afferent]) -> None:
        for afferent in afferents:
            std = 1.0 / math.sqrt(afferent.connection.fan_in)
            _assign_weight(afferent.connection, lambda empty: empty.normal_(0.0, std))
            _zero_bias(afferent.connection)
            afferent.connection.apply_constraints()

    def _initialize_normal(
        self,
        name: str,
        afferents: Sequence[Afferent],
        rates: Sequence[float],
        mu_u: float,
        xi: float,
    ) -> None:
        if any(afferent.inhibitory for afferent in afferents):
            raise ValueError(
                f"Population {name!r} has inhibitory afferents, which a normal weight distribution "
                f"cannot sign-constrain; use FluctuationDrivenExponential for Dale's-law layers."
            )
        inputs = [
            AfferentInput(afferent.connection.fan_in, rate, *self._epsilons(afferent), afferent.recurrent)
            for afferent, rate in zip(afferents, rates)
        ]
        try:
            mu_w, sigmas = normal_weight_moments(
                inputs, mu_u, xi, self._threshold(afferents[0].neuron), self.alpha
            )
        except ValueError as error:
            raise ValueError(f"Population {name!r}: {error}") from error

        for afferent, sigma in zip(afferents, sigmas):
            _assign_weight(afferent.connection, lambda empty, sigma=sigma: empty.normal_(mu_w, sigma))
            # A bias would shift the mean membrane potential away from mu_U.
            _zero_bias(afferent.connection)
            afferent.connection.apply_constraints()

    # Dispatch.

    def initialize(self, target: Target, data: Optional[Tensor] = None) -> None:
        """Initialize ``target`` population by population and apply the weight constraints.

        Args:
            target: A built network, a layer, or an :class:`~lightning_snn.nn.Afferent` (a bare
                connection does not know its postsynaptic neuron and is rejected).
            data: Input batch ``(batch, time, *input_shape)`` from which to measure presynaptic rates;
                required when ``nu`` is None. For an ``Afferent`` it is the presynaptic activity
                itself, ``(batch, time, *presynaptic_shape)``.
        """
        if isinstance(target, Connection):
            raise TypeError(
                f"{type(self).__name__} needs the postsynaptic neuron's time constants, which a bare "
                f"connection lacks: pass the network, the layer, or an Afferent from layer.afferents()."
            )
        if self.nu is None and data is None:
            raise ValueError(
                f"{type(self).__name__} has nu=None, so it measures presynaptic rates from data: pass a "
                f"batch (batch, time, *input_shape) as data, or set nu in Hz."
            )

        if isinstance(target, Afferent):
            self._initialize_afferent(target, data)
            return
        _afferents_of(target)  # Checks that the target is built.
        layers = target.all_layers() if isinstance(target, SpikingNetwork) else [target]
        for layer in layers:
            self._initialize_layer(layer, target, data)

    def _initialize_afferent(self, afferent: Afferent, data: Optional[Tensor]) -> None:
        rate = self.nu
        if rate is None:
            rate = float(data.float().mean()) / _time_step([afferent])
            if rate == 0:
                raise ValueError(
                    f"The presynaptic data of population {afferent.population!r} contains no spikes; "
                    f"pass spiking data or set nu in Hz."
                )
        self._initialize_population(afferent.population, [afferent], [rate])

    def _initialize_layer(
        self, layer: NetworkLayer, runner: Union[SpikingNetwork, NetworkLayer], data: Optional[Tensor]
    ) -> None:
        groups = _group_by_population(layer.afferents())
        if not groups:
            return

        data_driven = self.nu is None and any(self._needs_rates(afferents) for afferents in groups.values())
        if not data_driven:
            for name, afferents in groups.items():
                self._initialize_population(name, afferents, [self.nu or math.nan] * len(afferents))
            return

        # Feed-forward inputs come from layers initialized before this one, so one run fixes them.
        afferents = [afferent for group in groups.values() for afferent in group]
        measured = measure_presynaptic_rates(runner, data, [a.connection for a in afferents])
        rates: dict[int, float] = {}
        feedforward_drive, feedforward_fan_in = 0.0, 0
        for afferent, rate in zip(afferents, measured):
            if afferent.recurrent:
                continue
            if not rate:
                raise ValueError(
                    f"The feed-forward input of population {afferent.population!r} was silent on the data "
                    f"batch, so its rate cannot be measured: pass a batch with input spikes, check that "
                    f"earlier layers fire, or set nu in Hz."
                )
            rates[id(afferent)] = rate
            feedforward_drive += rate * afferent.connection.fan_in
            feedforward_fan_in += afferent.connection.fan_in

        # Recurrent input depends on this layer's own weights: start from the feed-forward rate, then
        # measure the layer's firing once and initialize again.
        recurrent = [afferent for afferent in afferents if afferent.recurrent]
        guess = feedforward_drive / feedforward_fan_in if feedforward_fan_in else None
        if recurrent and guess is None:
            raise ValueError(
                f"Layer {layer.name!r} has only recurrent afferents, so no rate can be guessed from its "
                f"input; set nu in Hz."
            )
        for afferent in recurrent:
            rates[id(afferent)] = guess
        self._initialize_groups(groups, rates)

        if recurrent:
            measured = measure_presynaptic_rates(runner, data, [a.connection for a in recurrent])
            for afferent, rate in zip(recurrent, measured):
                if rate:
                    rates[id(afferent)] = rate
                else:
                    logger.warning(
                        "Population %r: recurrent input was silent after the first pass; keeping the "
                        "feed-forward rate %.3g Hz as its rate.",
                        afferent.population,
                        guess,
                    )
            self._initialize_groups(groups, rates)

        for name, group in groups.items():
            summary = ", ".join(
                f"{'recurrent' if a.recurrent else 'feed-forward'} {rates[id(a)]:.3g} Hz" for a in group
            )
            logger.info("Population %r: measured presynaptic rates %s.", name, summary)

    def _initialize_groups(self, groups: dict[str, list[Afferent]], rates: dict[int, float]) -> None:
        for name, afferents in groups.items():
            self._initialize_population(name, afferents, [rates[id(afferent)] for afferent in afferents])


class FluctuationDrivenNormal(_FluctuationDriven):
    """Normal weights that set the mean and fluctuations of the membrane potential.

    Each population is initialized with all its afferents together. Every weight has the mean
    ``mu_w``, and afferent ``c`` gets the standard deviation ``sigma_c``::

        mu_w       = mu_u / sum_c(N_c * nu_c * eps_bar_c)
        sigma_c**2 = share_c * (theta - mu_u)**2 / (xi**2 * N_c * nu_c * eps_hat_c) - mu_w**2

    where ``N_c`` is the fan-in and ``theta`` the population's threshold (1 for a readout). The share is
    ``alpha`` of the variance for feed-forward and ``1 - alpha`` for recurrent input, split equally
    among the connections of each kind (a population with one kind takes all of it). Biases are set to 0.

    Presynaptic rates: a number ``nu`` applies to every afferent. With ``nu=None`` the rates are measured
    on ``data``, one layer at a time in network order, so each layer receives the activity of the
    layers initialized before it. Recurrent afferents are first initialized with the layer's
    feed-forward rate as their rate. The layer's own rate is then measured and the layer initialized
    once more. If the recurrent input is still silent, the feed-forward rate is kept (with a warning).
    Measured rates are logged at INFO level on the ``lightning_snn.init`` logger.

    Args:
        mu_u: Target mean membrane potential.
        xi: Number of membrane standard deviations between ``mu_u`` and the threshold.
        nu: Presynaptic firing rate in Hz, or None to measure it from data.
        alpha: Feed-forward share of the membrane variance in populations with recurrent input.
        epsilon_mode: ``"numerical"`` (the simulated kernel) or ``"analytical"`` PSP integrals.
        readout: ``"fluctuation"`` treats the readout like any population (threshold 1);
            ``"normal"`` draws its weights from ``N(0, 1 / sqrt(fan_in))``.
    """

    def __init__(
        self,
        mu_u: float = 0.0,
        xi: float = 1.0,
        nu: Optional[float] = None,
        alpha: float = 0.9,
        epsilon_mode: EpsilonMode = "numerical",
        readout: Literal["fluctuation", "normal"] = "fluctuation",
    ) -> None:
        super().__init__(nu, alpha, epsilon_mode, readout)
        if not xi > 0:
            raise ValueError(f"xi must be positive, got {xi}.")
        self.mu_u = mu_u
        self.xi = xi

    def _needs_rates(self, afferents: Sequence[Afferent]) -> bool:
        return not (self._is_readout(afferents) and self.readout == "normal")

    def _initialize_population(
        self, name: str, afferents: Sequence[Afferent], rates: Sequence[float]
    ) -> None:
        if not self._needs_rates(afferents):
            self._initialize_readout_normal(afferents)
            return
        self._initialize_normal(name, afferents, rates, self.mu_u, self.xi)


class FluctuationDrivenCenteredNormal(FluctuationDrivenNormal):
    """Zero-mean normal weights that set the membrane fluctuations (``mu_u = 0``, ``xi = 1 / sigma_u``).

    Afferent ``c`` gets ``N(0, sigma_c)`` with ``sigma_c**2 = share_c * (theta * sigma_u)**2 /
    (N_c * nu_c * eps_hat_c)``, where ``theta`` is the postsynaptic threshold, ``N_c`` the fan-in,
    ``nu_c`` the presynaptic rate in Hz and ``eps_hat_c`` the integral of the squared PSP kernel in
    seconds (:func:`psp_integrals`). :class:`FluctuationDrivenNormal` explains the shares and the rates.
    The readout defaults to the same rule (``readout="fluctuation"``), as in Stork's first two examples;
    :class:`FluctuationDrivenExponential` defaults to ``readout="normal"``, as in its Dale's-law example.

    Args:
        sigma_u: Target membrane standard deviation in units of the threshold.
        nu: Presynaptic firing rate in Hz, or None to measure it from data.
        alpha: Feed-forward share of the membrane variance in populations with recurrent input.
        epsilon_mode: ``"numerical"`` or ``"analytical"`` PSP integrals.
        readout: ``"fluctuation"`` or ``"normal"`` (``N(0, 1 / sqrt(fan_in))``) for the readout.
    """

    def __init__(
        self,
        sigma_u: float = 1.0,
        nu: Optional[float] = None,
        alpha: float = 0.9,
        epsilon_mode: EpsilonMode = "numerical",
        readout: Literal["fluctuation", "normal"] = "fluctuation",
    ) -> None:
        if not sigma_u > 0:
            raise ValueError(f"sigma_u must be positive, got {sigma_u}.")
        super().__init__(0.0, 1.0 / sigma_u, nu, alpha, epsilon_mode, readout)
        self.sigma_u = sigma_u


class FluctuationDrivenExponential(_FluctuationDriven):
    """Exponential (non-negative) weights for Dale's-law populations with balanced E/I input.

    The afferents of each population with ``"exc"`` and ``"inh"`` receptors are split into inhibitory,
    excitatory feed-forward and excitatory recurrent ones. Each group shares one ``Exponential(lambda)``
    distribution from :func:`exponential_rates`. The rates make the mean excitation and inhibition
    cancel and the membrane standard deviation ``theta * sigma_u``, and recurrent excitation carries
    ``1 - alpha`` of the excitatory variance. Spiking populations without E/I receptors get
    :class:`FluctuationDrivenCenteredNormal`'s rule, and the readout the ``readout`` rule. Rates are
    fixed or measured as in :class:`FluctuationDrivenNormal`.

    Args:
        sigma_u: Target membrane standard deviation in units of the threshold.
        nu: Presynaptic firing rate in Hz, or None to measure it from data.
        alpha: Feed-forward share of the excitatory membrane variance.
        epsilon_mode: ``"numerical"`` or ``"analytical"`` PSP integrals.
        readout: ``"normal"`` (``N(0, 1 / sqrt(fan_in))``, as in Stork's Dale's-law example) or
            ``"fluctuation"`` (the centered normal rule with threshold 1).
    """

    def __init__(
        self,
        sigma_u: float = 1.0,
        nu: Optional[float] = None,
        alpha: float = 0.9,
        epsilon_mode: EpsilonMode = "numerical",
        readout: Literal["fluctuation", "normal"] = "normal",
    ) -> None:
        super().__init__(nu, alpha, epsilon_mode, readout)
        if not sigma_u > 0:
            raise ValueError(f"sigma_u must be positive, got {sigma_u}.")
        self.sigma_u = sigma_u

    @staticmethod
    def _is_exc_inh(afferents: Sequence[Afferent]) -> bool:
        return set(afferents[0].neuron.receptors) == {"exc", "inh"}

    def _needs_rates(self, afferents: Sequence[Afferent]) -> bool:
        return not (self._is_readout(afferents) and self.readout == "normal")

    def _initialize_population(
        self, name: str, afferents: Sequence[Afferent], rates: Sequence[float]
    ) -> None:
        if not self._needs_rates(afferents):
            self._initialize_readout_normal(afferents)
            return
        if not self._is_exc_inh(afferents):
            self._initialize_normal(name, afferents, rates, 0.0, 1.0 / self.sigma_u)
            return

        # Presynaptic rates are summed per group, and every connection of a group shares its lambda.
        groups: dict[str, list[Afferent]] = {"feedforward": [], "recurrent": [], "inhibitory": []}
        input_rates = {"feedforward": 0.0, "recurrent": 0.0, "inhibitory": 0.0}
        for afferent, rate in zip(afferents, rates):
            if afferent.inhibitory:
                group = "inhibitory"
            elif afferent.recurrent:
                group = "recurrent"
            else:
                group = "feedforward"
            groups[group].append(afferent)
            input_rates[group] += afferent.connection.fan_in * rate
        if not groups["inhibitory"] or not (groups["feedforward"] or groups["recurrent"]):
            raise ValueError(
                f"Population {name!r} needs both excitatory and inhibitory afferents for "
                f"FluctuationDrivenExponential; it has {len(groups['inhibitory'])} inhibitory and "
                f"{len(groups['feedforward']) + len(groups['recurrent'])} excitatory ones."
            )

        neuron = afferents[0].neuron
        dt = _time_step(afferents)
        eps_exc = psp_integrals(*neuron.psp_time_constants("exc"), dt, self.epsilon_mode)
        eps_inh = psp_integrals(*neuron.psp_time_constants("inh"), dt, self.epsilon_mode)
        try:
            lambdas = exponential_rates(
                input_rates["feedforward"],
                input_rates["recurrent"],
                input_rates["inhibitory"],
                eps_exc,
                eps_inh,
                self.sigma_u,
                self.alpha,
                self._threshold(neuron),
            )
        except ValueError as error:
            raise ValueError(f"Population {name!r}: {error}") from error

        rate_of_group = {
            "feedforward": lambdas.feedforward,
            "recurrent": lambdas.recurrent,
            "inhibitory": lambdas.inhibitory,
        }
        for group, members in groups.items():
            for afferent in members:
                rate = rate_of_group[group]
                _assign_weight(afferent.connection, lambda empty, rate=rate: empty.exponential_(rate))
                _zero_bias(afferent.connection)
                afferent.connection.apply_constraints()


__all__ = [
    "AfferentInput",
    "DistInitializer",
    "ExponentialRates",
    "FluctuationDrivenCenteredNormal",
    "FluctuationDrivenExponential",
    "FluctuationDrivenNormal",
    "Initializer",
    "KaimingNormalInitializer",
    "exponential_rates",
    "measure_presynaptic_rates",
    "normal_weight_moments",
    "psp_integrals",
]
