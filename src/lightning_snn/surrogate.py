"""Spike nonlinearities with surrogate gradients.

A spiking neuron emits a spike when its membrane potential U crosses the threshold theta.
The forward pass is therefore a step function of ``x = U - theta``, whose true derivative is
zero almost everywhere. Surrogate-gradient training keeps the step in the forward pass and
replaces its derivative in the backward pass by a smooth pseudo-derivative ``grad(x)``
(Neftci, Mostafa & Zenke 2019, "Surrogate gradient learning in spiking neural networks").

Every class here is an ``nn.Module`` that stores its own hyper-parameters, so layers with
different ``beta`` can coexist in one model. ``grad`` is a plain tensor function without
autograd, so a fused kernel can call it in its own backward pass.

The classes follow the activations of Stork (github.com/fmi-basel/stork, file
``stork/activations.py``), which keeps hyper-parameters as class attributes. Each class
docstring states where its formula differs from Stork's.

Example:
    >>> spike_fn = SuperSpike(beta=20.0)
    >>> spike_fn(torch.tensor([-0.5, 0.0, 0.2]))
    tensor([0., 0., 1.])
"""

import math
from typing import Literal, Optional

import torch
from torch import Tensor, nn

__all__ = [
    "SurrogateSpike",
    "SuperSpike",
    "SuperSpikeMemClamp",
    "SuperSpikeRescaled",
    "SuperSpikeAsymptote",
    "SuperSpikeNormalized",
    "SigmoidSpike",
    "EsserSpike",
    "TanhSpike",
    "HardTanhSpike",
    "MultiSpike",
    "EscapeNoiseSpike",
]


def _check_positive(name: str, value: float) -> float:
    """Return ``value`` as a float, or raise ValueError unless it is finite and > 0."""
    value = float(value)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
    return value


def _heaviside(x: Tensor) -> Tensor:
    """Strict Heaviside step: 1 where x > 0, else 0 (also at x == 0), in the dtype of x."""
    return (x > 0).to(x.dtype)


def _fast_sigmoid_derivative(x: Tensor, beta: float) -> Tensor:
    """SuperSpike pseudo-derivative 1 / (beta * |x| + 1)^2 (Zenke & Ganguli 2018)."""
    return 1.0 / (beta * x.abs() + 1.0) ** 2


def _sigmoid_derivative(x: Tensor, beta: float) -> Tensor:
    """Derivative of sigmoid(beta * x): beta * sigma * (1 - sigma)."""
    sigma = torch.sigmoid(beta * x)
    return beta * sigma * (1.0 - sigma)


class _SurrogateSpikeFunction(torch.autograd.Function):
    """Step forward, surrogate backward, shared by every ``SurrogateSpike``.

    The module is passed in so that forward and backward use its own hyper-parameters;
    ``torch.compile(fullgraph=True)`` traces through it and treats them as constants.
    """

    @staticmethod
    def forward(ctx, x: Tensor, surrogate: "SurrogateSpike") -> Tensor:
        spikes = surrogate._fire(x)

        # Most surrogates need only x. Spikes are saved only when the backward reads them,
        # because in a time loop every saved tensor is kept for all steps.
        ctx.surrogate = surrogate
        if surrogate._backward_uses_spikes:
            ctx.save_for_backward(x, spikes)
        else:
            ctx.save_for_backward(x)
        return spikes

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        surrogate = ctx.surrogate
        if surrogate._backward_uses_spikes:
            x, spikes = ctx.saved_tensors
        else:
            (x,) = ctx.saved_tensors
            spikes = None

        grad_input = grad_output * surrogate._pseudo_derivative(x, spikes)
        return grad_input, None


class SurrogateSpike(nn.Module):
    """Base class: a spike nonlinearity with a surrogate gradient.

    ``forward(x)`` takes ``x = U - threshold`` (any shape) and returns the spikes. By default
    the forward pass is the strict Heaviside step H(x) = 1 where x > 0, else 0, in the dtype
    of x. The backward pass multiplies the incoming gradient by ``self.grad(x)``.

    Subclasses implement ``grad``. Subclasses with another firing rule (several spikes per
    step, stochastic firing) override ``_fire``.
    """

    # True when the pseudo-derivative depends on the emitted spikes, not only on x.
    _backward_uses_spikes: bool = False

    def forward(self, x: Tensor) -> Tensor:
        """Emit spikes for ``x = U - threshold``.

        Args:
            x: Membrane potential minus threshold, any shape, floating point.

        Returns:
            Spikes with the shape and dtype of ``x``. The gradient with respect to ``x`` is
            the incoming gradient times ``self.grad(x)``.
        """
        if not x.is_floating_point():
            raise TypeError(
                f"{type(self).__name__} expects a floating-point tensor, got dtype {x.dtype}. "
                "Convert the membrane potential with .float() first."
            )
        return _SurrogateSpikeFunction.apply(x, self)

    def grad(self, x: Tensor) -> Tensor:
        """Compute the pseudo-derivative d spikes / d x used in the backward pass.

        Args:
            x: Membrane potential minus threshold, any shape.

        Returns:
            A tensor shaped like ``x``. It is computed without autograd.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement grad(x).")

    def _fire(self, x: Tensor) -> Tensor:
        """Compute the forward spikes. The default is the strict Heaviside step."""
        return _heaviside(x)

    def _pseudo_derivative(self, x: Tensor, spikes: Optional[Tensor]) -> Tensor:
        """Compute the factor for the incoming gradient.

        ``spikes`` is None unless ``_backward_uses_spikes`` is True.
        """
        return self.grad(x)


class SuperSpike(SurrogateSpike):
    """Heaviside spike with the SuperSpike surrogate 1 / (beta * |x| + 1)^2.

    This is the derivative of the fast sigmoid x / (1 + beta * |x|) up to the factor beta
    (Zenke & Ganguli 2018). It peaks at 1 at the threshold.

    Args:
        beta: Steepness, in 1 / (units of x). Larger values give a narrower surrogate.
    """

    def __init__(self, beta: float = 20.0) -> None:
        super().__init__()
        self.beta = _check_positive("beta", beta)

    def grad(self, x: Tensor) -> Tensor:
        return _fast_sigmoid_derivative(x, self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class SuperSpikeMemClamp(SurrogateSpike):
    """Heaviside spike with the one-sided surrogate 1 / (beta * relu(-x) + 1)^2.

    Below threshold it equals SuperSpike. Above threshold it stays at 1, so the gradient
    does not decay for strongly depolarised neurons.

    Args:
        beta: Steepness below threshold, in 1 / (units of x).
    """

    def __init__(self, beta: float = 20.0) -> None:
        super().__init__()
        self.beta = _check_positive("beta", beta)

    def grad(self, x: Tensor) -> Tensor:
        return 1.0 / (self.beta * torch.relu(-x) + 1.0) ** 2

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class SuperSpikeRescaled(SurrogateSpike):
    """Heaviside spike with the surrogate (beta + 1)^2 / (beta * |x| + 1)^2.

    This is SuperSpike scaled so that it equals 1 at x = -1, which is the resting
    potential U = 0 for a threshold of 1. Its peak at the threshold is (beta + 1)^2.

    Args:
        beta: Steepness, in 1 / (units of x).
    """

    def __init__(self, beta: float = 20.0) -> None:
        super().__init__()
        self.beta = _check_positive("beta", beta)

    def grad(self, x: Tensor) -> Tensor:
        return (self.beta + 1.0) ** 2 * _fast_sigmoid_derivative(x, self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class SuperSpikeAsymptote(SurrogateSpike):
    """Heaviside spike with the surrogate beta / (beta * |x| + 1)^2.

    The integral over the real line is 2 for every beta, so as beta grows the surrogate
    approaches twice the Dirac delta, the true derivative of the step.

    Args:
        beta: Steepness, in 1 / (units of x).
    """

    def __init__(self, beta: float = 100.0) -> None:
        super().__init__()
        self.beta = _check_positive("beta", beta)

    def grad(self, x: Tensor) -> Tensor:
        return self.beta * _fast_sigmoid_derivative(x, self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class SuperSpikeNormalized(SurrogateSpike):
    """Heaviside spike with a batch-normalised SuperSpike surrogate.

    With s = 1 / (beta * |x| + 1)^2, the surrogate is s / (xi + ||mean_0(s)||_2). The mean
    runs over dim 0 (the batch), and the L2 norm runs over all remaining elements. The
    surrogate of one sample therefore depends on the other samples in the batch. Inside a
    time loop each step is normalised on its own.

    NOTE: Stork's ``SuperSpike_norm`` normalises the product of the incoming gradient and s,
    so its scale also depends on the incoming gradient. Here the norm uses s alone, which
    keeps ``grad`` a function of x.

    Args:
        beta: Steepness, in 1 / (units of x).
        xi: Constant added to the norm, which bounds the surrogate when all s are small.
    """

    def __init__(self, beta: float = 100.0, xi: float = 1e-2) -> None:
        super().__init__()
        self.beta = _check_positive("beta", beta)
        self.xi = _check_positive("xi", xi)

    def grad(self, x: Tensor) -> Tensor:
        if x.dim() == 0:
            raise ValueError(
                "SuperSpikeNormalized needs a batch dimension (dim 0) to normalise over, "
                "got a 0-d tensor; pass x with shape (batch, ...)."
            )
        surrogate = _fast_sigmoid_derivative(x, self.beta)
        batch_mean_norm = torch.linalg.vector_norm(surrogate.mean(dim=0))
        return surrogate / (self.xi + batch_mean_norm)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, xi={self.xi}"


class SigmoidSpike(SurrogateSpike):
    """Heaviside spike with the sigmoid surrogate beta * sigma(beta x) * (1 - sigma(beta x)).

    This is the derivative of sigma(beta x), so it peaks at beta / 4 at the threshold and
    integrates to 1. It equals the "sigmoid" surrogate of Stork's ``CustomSpike``. Older
    Stork releases also have a ``SigmoidSpike`` that omits the factor beta and defaults to
    beta = 100.

    Args:
        beta: Steepness, in 1 / (units of x).
    """

    def __init__(self, beta: float = 10.0) -> None:
        super().__init__()
        self.beta = _check_positive("beta", beta)

    def grad(self, x: Tensor) -> Tensor:
        return _sigmoid_derivative(x, self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class EsserSpike(SurrogateSpike):
    """Heaviside spike with the triangular surrogate max(0, 1 - |beta x|) (Esser et al. 2016).

    The surrogate peaks at 1 at the threshold and is zero for |x| >= 1 / beta.

    Args:
        beta: Inverse half-width of the triangle, in 1 / (units of x).
    """

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = _check_positive("beta", beta)

    def grad(self, x: Tensor) -> Tensor:
        return torch.relu(1.0 - (self.beta * x).abs())

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class TanhSpike(SurrogateSpike):
    """Heaviside spike with the surrogate 1 - tanh^2(beta x).

    This is the derivative of tanh(beta x) divided by beta: a bump that peaks at 1 at the
    threshold and decays to 0 on both sides. Stork's ``TanhSpike`` returns
    1 + (1 - tanh^2(beta x)) instead, which adds a constant 1 everywhere, so far from the
    threshold its gradient is 1 where this one is 0.

    Args:
        beta: Steepness, in 1 / (units of x).
    """

    def __init__(self, beta: float = 100.0) -> None:
        super().__init__()
        self.beta = _check_positive("beta", beta)

    def grad(self, x: Tensor) -> Tensor:
        return 1.0 - torch.tanh(self.beta * x) ** 2

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class HardTanhSpike(SurrogateSpike):
    """Heaviside spike with a box surrogate: 1 where |beta x| < 1, else 0.

    This is the derivative of hardtanh(beta x) divided by beta, i.e. a straight-through
    estimator restricted to a window of half-width 1 / beta around the threshold.
    Stork's ``HardTanhSpike`` returns 1 + hardtanh(beta x) instead, a ramp from 0 to 2
    that is 0 far below threshold and 2 far above it, which is not a bump.

    Args:
        beta: Inverse half-width of the box, in 1 / (units of x).
    """

    def __init__(self, beta: float = 100.0) -> None:
        super().__init__()
        self.beta = _check_positive("beta", beta)

    def grad(self, x: Tensor) -> Tensor:
        return ((self.beta * x).abs() < 1.0).to(x.dtype)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class MultiSpike(SurrogateSpike):
    """Several spikes per time step, returned as counts, with a periodic SuperSpike surrogate.

    The forward pass returns ceil(x) clamped to [0, max_spikes]: n spikes for n - 1 < x <= n.
    Stork writes this as clamp(round(x + 0.5), 0, max_spikes). Both agree except at integer
    x >= 1, where torch.round rounds half to even and so gives 2 spikes at x = 1, 2 at x = 2
    and 4 at x = 3. Using ceil keeps one rule everywhere, and x = 0 gives 0 spikes as in
    the strict Heaviside step.

    The surrogate is 1 / (beta * |x - relu(round(x))| + 1)^2, a SuperSpike bump around
    every non-negative integer, where round is torch.round. The distance to the nearest
    integer does not depend on how ties are rounded.

    Args:
        beta: Steepness of each bump, in 1 / (units of x).
        max_spikes: Maximum number of spikes per element and time step.
    """

    def __init__(self, beta: float = 100.0, max_spikes: int = 10) -> None:
        super().__init__()
        self.beta = _check_positive("beta", beta)
        if isinstance(max_spikes, bool) or not isinstance(max_spikes, int) or max_spikes < 1:
            raise ValueError(f"max_spikes must be an integer >= 1, got {max_spikes!r}.")
        self.max_spikes = max_spikes

    def _fire(self, x: Tensor) -> Tensor:
        return torch.clamp(torch.ceil(x), min=0.0, max=float(self.max_spikes))

    def grad(self, x: Tensor) -> Tensor:
        # NOTE: the bumps continue above max_spikes although the forward count is capped there.
        distance = (x - torch.relu(torch.round(x))).abs()
        return _fast_sigmoid_derivative(distance, self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, max_spikes={self.max_spikes}"


EscapeNoise = Literal["step", "sigmoid", "exponential"]
EscapeSurrogate = Literal["superspike", "sigmoid", "exponential", "spike_train"]
_ESCAPE_NOISES = ("step", "sigmoid", "exponential")
_ESCAPE_SURROGATES = ("superspike", "sigmoid", "exponential", "spike_train")


class EscapeNoiseSpike(SurrogateSpike):
    """Stochastic spikes from an escape-noise neuron, with a selectable surrogate.

    Forward rules, with u drawn from U(0, 1) independently for every element and step:

    * ``"sigmoid"``: spike where sigmoid(beta * x) > u, so P(spike) = sigmoid(beta * x).
    * ``"exponential"``: spike where p0 * exp(x / delta_u) > u, so
      P(spike) = min(1, p0 * exp(x / delta_u)).
    * ``"step"``: deterministic strict Heaviside step, no noise.

    The draw uses ``torch.rand_like``, so ``torch.manual_seed`` makes it reproducible.

    Surrogates (the factor for the incoming gradient):

    * ``"superspike"``: 1 / (surrogate_beta * |x| + 1)^2.
    * ``"sigmoid"``: surrogate_beta * sigma(surrogate_beta x) * (1 - sigma(surrogate_beta x)).
    * ``"exponential"``: (p0 / delta_u) * exp(x / delta_u), the derivative of the
      exponential escape rate.
    * ``"spike_train"``: the emitted spikes, so the gradient passes only where a spike
      occurred (Gardner, Sporea & Gruening 2015). Stork multiplies by the input x here
      instead of by the spikes.

    Args:
        noise: Firing rule, one of "sigmoid", "exponential" or "step".
        beta: Steepness of the sigmoid escape rate, in 1 / (units of x).
        p0: Firing probability per step at the threshold for the exponential rule.
        delta_u: Voltage scale of the exponential rule, in units of x.
        surrogate: Surrogate, one of "superspike", "sigmoid", "exponential" or "spike_train".
        surrogate_beta: Steepness of the "superspike" and "sigmoid" surrogates.
    """

    def __init__(
        self,
        noise: EscapeNoise = "sigmoid",
        beta: float = 10.0,
        p0: float = 0.01,
        delta_u: float = 0.133,
        surrogate: EscapeSurrogate = "superspike",
        surrogate_beta: float = 10.0,
    ) -> None:
        super().__init__()
        if noise not in _ESCAPE_NOISES:
            raise ValueError(f"noise must be one of {_ESCAPE_NOISES}, got {noise!r}.")
        if surrogate not in _ESCAPE_SURROGATES:
            raise ValueError(f"surrogate must be one of {_ESCAPE_SURROGATES}, got {surrogate!r}.")
        self.noise = noise
        self.beta = _check_positive("beta", beta)
        self.p0 = _check_positive("p0", p0)
        self.delta_u = _check_positive("delta_u", delta_u)
        self.surrogate = surrogate
        self.surrogate_beta = _check_positive("surrogate_beta", surrogate_beta)

        # Instance attribute, read by the autograd function, so only spike_train saves spikes.
        self._backward_uses_spikes = surrogate == "spike_train"

    def _fire(self, x: Tensor) -> Tensor:
        if self.noise == "step":
            return _heaviside(x)

        if self.noise == "sigmoid":
            firing_probability = torch.sigmoid(self.beta * x)
        else:
            firing_probability = self.p0 * torch.exp(x / self.delta_u)
        uniform = torch.rand_like(x)
        return (firing_probability > uniform).to(x.dtype)

    def grad(self, x: Tensor, spikes: Optional[Tensor] = None) -> Tensor:
        """Compute the selected surrogate.

        Args:
            x: Membrane potential minus threshold, any shape.
            spikes: Spikes emitted for ``x``. Required only for the "spike_train" surrogate.

        Returns:
            A tensor shaped like ``x``.
        """
        if self.surrogate == "superspike":
            return _fast_sigmoid_derivative(x, self.surrogate_beta)
        if self.surrogate == "sigmoid":
            return _sigmoid_derivative(x, self.surrogate_beta)
        if self.surrogate == "exponential":
            # NOTE: grows without bound, so x far above threshold can overflow to inf.
            return (self.p0 / self.delta_u) * torch.exp(x / self.delta_u)

        if spikes is None:
            raise ValueError(
                "The spike_train surrogate needs the emitted spikes, got spikes=None. "
                "Call grad(x, spikes) or choose another surrogate."
            )
        return spikes

    def _pseudo_derivative(self, x: Tensor, spikes: Optional[Tensor]) -> Tensor:
        return self.grad(x, spikes)

    def extra_repr(self) -> str:
        return (
            f"noise={self.noise!r}, beta={self.beta}, p0={self.p0}, delta_u={self.delta_u}, "
            f"surrogate={self.surrogate!r}, surrogate_beta={self.surrogate_beta}"
        )
