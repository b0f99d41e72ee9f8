"""Tests for the spike nonlinearities and their surrogate gradients.

Expected values come from the closed-form surrogates, evaluated by hand or with ``math``.
"""

import math

import pytest
import torch

from lightning_snn.surrogate import (
    EscapeNoiseSpike,
    EsserSpike,
    HardTanhSpike,
    MultiSpike,
    SigmoidSpike,
    SuperSpike,
    SuperSpikeAsymptote,
    SuperSpikeMemClamp,
    SuperSpikeNormalized,
    SuperSpikeRescaled,
    SurrogateSpike,
    TanhSpike,
)


def backward_factor(surrogate: SurrogateSpike, values) -> torch.Tensor:
    """Return the gradient of sum(surrogate(x)) at ``values``, which equals the surrogate."""
    x = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    surrogate(x).sum().backward()
    return x.grad


def sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value))


# ----------------------------------------------------------------------------------------
# Forward pass


HEAVISIDE_SURROGATES = [
    SuperSpike(),
    SuperSpikeMemClamp(),
    SuperSpikeRescaled(),
    SuperSpikeAsymptote(),
    SuperSpikeNormalized(),
    SigmoidSpike(),
    EsserSpike(),
    TanhSpike(),
    HardTanhSpike(),
    EscapeNoiseSpike(noise="step"),
]


@pytest.mark.parametrize("surrogate", HEAVISIDE_SURROGATES, ids=lambda s: type(s).__name__)
def test_forward_strict_heaviside(surrogate):
    x = torch.tensor([-1.0, -1e-7, 0.0, 1e-7, 2.0])

    spikes = surrogate(x)

    assert torch.equal(spikes, torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_forward_keeps_dtype(dtype):
    x = torch.tensor([-0.5, 0.0, 0.5], dtype=dtype)

    spikes = SuperSpike()(x)

    assert spikes.dtype == dtype
    assert torch.equal(spikes, torch.tensor([0.0, 0.0, 1.0], dtype=dtype))


def test_forward_keeps_shape():
    x = torch.randn(3, 4, 5)

    assert SuperSpike()(x).shape == (3, 4, 5)


def test_forward_rejects_integer_input():
    with pytest.raises(TypeError, match="floating-point"):
        SuperSpike()(torch.tensor([1, 0, -1]))


def test_grad_keeps_dtype():
    x = torch.tensor([0.1, -0.2], dtype=torch.float32, requires_grad=True)

    SuperSpike()(x).sum().backward()

    assert x.grad.dtype == torch.float32


# ----------------------------------------------------------------------------------------
# Surrogates at chosen points


def test_superspike_grad_points():
    grad = backward_factor(SuperSpike(beta=20.0), [0.1, 0.0, -0.05])

    # 1 / (20 * |x| + 1)^2 at x = 0.1, 0, -0.05.
    assert grad[0].item() == pytest.approx(1.0 / 9.0)
    assert grad[1].item() == pytest.approx(1.0)
    assert grad[2].item() == pytest.approx(0.25)


def test_superspike_mem_clamp_grad_points():
    grad = backward_factor(SuperSpikeMemClamp(beta=20.0), [0.1, 5.0, 0.0, -0.1])

    # 1 / (20 * relu(-x) + 1)^2: 1 on and above threshold, SuperSpike below.
    assert grad[0].item() == pytest.approx(1.0)
    assert grad[1].item() == pytest.approx(1.0)
    assert grad[2].item() == pytest.approx(1.0)
    assert grad[3].item() == pytest.approx(1.0 / 9.0)


def test_superspike_rescaled_grad_points():
    grad = backward_factor(SuperSpikeRescaled(beta=20.0), [-1.0, 0.0, 0.1])

    # 21^2 / (20 * |x| + 1)^2 = 441 / 441, 441 / 1, 441 / 9.
    assert grad[0].item() == pytest.approx(1.0)
    assert grad[1].item() == pytest.approx(441.0)
    assert grad[2].item() == pytest.approx(49.0)


def test_superspike_asymptote_grad_points():
    grad = backward_factor(SuperSpikeAsymptote(beta=100.0), [0.0, 0.01, -0.09])

    # 100 / (100 * |x| + 1)^2 = 100 / 1, 100 / 4, 100 / 100.
    assert grad[0].item() == pytest.approx(100.0)
    assert grad[1].item() == pytest.approx(25.0)
    assert grad[2].item() == pytest.approx(1.0)


def test_superspike_normalized_grad_single_unit():
    x = torch.tensor([[0.0], [0.01]], dtype=torch.float64, requires_grad=True)

    SuperSpikeNormalized(beta=100.0, xi=1e-2)(x).sum().backward()

    # s = [1, 1/4], batch mean 0.625, norm 0.625, denominator 0.01 + 0.625 = 0.635.
    assert x.grad[0, 0].item() == pytest.approx(1.0 / 0.635)
    assert x.grad[1, 0].item() == pytest.approx(0.25 / 0.635)


def test_superspike_normalized_grad_two_units():
    x = torch.tensor([[0.0, 0.01], [0.01, 0.03]], dtype=torch.float64, requires_grad=True)

    SuperSpikeNormalized(beta=100.0, xi=1e-2)(x).sum().backward()

    # s = [[1, 1/4], [1/4, 1/16]], batch mean [0.625, 0.15625].
    denominator = 1e-2 + math.sqrt(0.625**2 + 0.15625**2)
    expected = torch.tensor([[1.0, 0.25], [0.25, 0.0625]], dtype=torch.float64) / denominator
    assert torch.allclose(x.grad, expected)


def test_superspike_normalized_rejects_scalar():
    with pytest.raises(ValueError, match="batch dimension"):
        SuperSpikeNormalized().grad(torch.tensor(0.1))


def test_sigmoid_spike_grad_points():
    grad = backward_factor(SigmoidSpike(beta=10.0), [0.0, 0.1, -0.3])

    # 10 * sigma(10 x) * (1 - sigma(10 x)).
    assert grad[0].item() == pytest.approx(2.5)
    assert grad[1].item() == pytest.approx(10.0 * sigmoid(1.0) * (1.0 - sigmoid(1.0)))
    assert grad[2].item() == pytest.approx(10.0 * sigmoid(-3.0) * (1.0 - sigmoid(-3.0)))


def test_esser_spike_grad_points():
    grad = backward_factor(EsserSpike(beta=1.0), [0.25, -0.5, 1.5, 0.0])

    # max(0, 1 - |x|).
    assert grad[0].item() == pytest.approx(0.75)
    assert grad[1].item() == pytest.approx(0.5)
    assert grad[2].item() == 0.0
    assert grad[3].item() == pytest.approx(1.0)


def test_esser_spike_grad_beta_two():
    grad = backward_factor(EsserSpike(beta=2.0), [0.25, -0.6])

    # max(0, 1 - |2 x|).
    assert grad[0].item() == pytest.approx(0.5)
    assert grad[1].item() == 0.0


def test_tanh_spike_grad_points():
    grad = backward_factor(TanhSpike(beta=100.0), [0.0, 0.01, 0.1])

    # 1 - tanh^2(100 x): a bump that vanishes far from threshold (no +1 offset).
    assert grad[0].item() == pytest.approx(1.0)
    assert grad[1].item() == pytest.approx(1.0 - math.tanh(1.0) ** 2)
    assert grad[2].item() == pytest.approx(0.0, abs=1e-7)


def test_hard_tanh_spike_grad_points():
    grad = backward_factor(HardTanhSpike(beta=100.0), [0.0, 0.005, -0.009, 0.0125, -0.5])

    # Box: 1 where |100 x| < 1, else 0.
    assert grad.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_multi_spike_grad_points():
    grad = backward_factor(MultiSpike(beta=100.0), [1.0, 1.01, -0.01, 2.49, -0.7])

    # 1 / (100 * distance to the nearest non-negative integer + 1)^2.
    assert grad[0].item() == pytest.approx(1.0)
    assert grad[1].item() == pytest.approx(0.25)
    assert grad[2].item() == pytest.approx(0.25)
    assert grad[3].item() == pytest.approx(1.0 / 50.0**2)
    assert grad[4].item() == pytest.approx(1.0 / 71.0**2)


def test_backward_scales_incoming_gradient():
    x = torch.tensor([0.1, 0.0], dtype=torch.float64, requires_grad=True)
    upstream = torch.tensor([3.0, -2.0], dtype=torch.float64)

    SuperSpike(beta=20.0)(x).backward(upstream)

    assert x.grad[0].item() == pytest.approx(3.0 / 9.0)
    assert x.grad[1].item() == pytest.approx(-2.0)


# ----------------------------------------------------------------------------------------
# Surrogates as derivatives of known primitives, on random float64 inputs


def derivative_of(primitive, x: torch.Tensor) -> torch.Tensor:
    """Return d primitive(x) / dx elementwise by autograd through plain torch ops."""
    x = x.clone().requires_grad_(True)
    primitive(x).sum().backward()
    return x.grad


PRIMITIVES = {
    # fast sigmoid x / (1 + beta |x|)
    "superspike": (SuperSpike(beta=7.0), lambda x: x / (1.0 + 7.0 * x.abs())),
    "asymptote": (SuperSpikeAsymptote(beta=7.0), lambda x: 7.0 * x / (1.0 + 7.0 * x.abs())),
    "rescaled": (SuperSpikeRescaled(beta=7.0), lambda x: 64.0 * x / (1.0 + 7.0 * x.abs())),
    "sigmoid": (SigmoidSpike(beta=3.0), lambda x: torch.sigmoid(3.0 * x)),
    "tanh": (TanhSpike(beta=4.0), lambda x: torch.tanh(4.0 * x) / 4.0),
}


@pytest.mark.parametrize("name", PRIMITIVES)
def test_backward_matches_primitive_derivative(name):
    surrogate, primitive = PRIMITIVES[name]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, dtype=torch.float64, generator=generator)
    upstream = torch.randn(64, dtype=torch.float64, generator=generator)
    x_leaf = x.clone().requires_grad_(True)

    surrogate(x_leaf).backward(upstream)

    assert torch.allclose(x_leaf.grad, upstream * derivative_of(primitive, x))


@pytest.mark.parametrize("name", PRIMITIVES)
def test_grad_is_smooth(name):
    surrogate, _ = PRIMITIVES[name]
    # Away from x = 0, where |x| has a kink, each surrogate is smooth.
    x = torch.tensor([-0.9, -0.3, 0.2, 0.7], dtype=torch.float64, requires_grad=True)

    assert torch.autograd.gradcheck(surrogate.grad, (x,))


def test_backward_matches_formula_random():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, dtype=torch.float64, generator=generator)
    x_leaf = x.clone().requires_grad_(True)

    MultiSpike(beta=9.0)(x_leaf * 3.0).sum().backward()

    distance = (3.0 * x - torch.relu(torch.round(3.0 * x))).abs()
    expected = 3.0 / (9.0 * distance + 1.0) ** 2
    assert torch.allclose(x_leaf.grad, expected)


# ----------------------------------------------------------------------------------------
# Per-instance hyper-parameters


def test_instances_keep_own_beta():
    steep = SuperSpike(beta=20.0)
    shallow = SuperSpike(beta=5.0)

    grad_steep = backward_factor(steep, [0.1])
    grad_shallow = backward_factor(shallow, [0.1])

    assert grad_steep.item() == pytest.approx(1.0 / 9.0)
    assert grad_shallow.item() == pytest.approx(1.0 / 2.25)


def test_default_betas():
    assert SuperSpike().beta == 20.0
    assert SuperSpikeMemClamp().beta == 20.0
    assert SuperSpikeRescaled().beta == 20.0
    assert SuperSpikeAsymptote().beta == 100.0
    assert SuperSpikeNormalized().beta == 100.0
    assert SuperSpikeNormalized().xi == 1e-2
    assert SigmoidSpike().beta == 10.0
    assert EsserSpike().beta == 1.0
    assert TanhSpike().beta == 100.0
    assert HardTanhSpike().beta == 100.0
    assert MultiSpike().beta == 100.0
    assert MultiSpike().max_spikes == 10


def test_extra_repr_shows_beta():
    assert "beta=20.0" in repr(SuperSpike())
    assert "beta=3.0" in repr(SigmoidSpike(beta=3.0))
    assert "max_spikes=4" in repr(MultiSpike(max_spikes=4))
    assert "surrogate='spike_train'" in repr(EscapeNoiseSpike(surrogate="spike_train"))


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan"), float("inf")])
def test_invalid_beta_raises(beta):
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        SuperSpike(beta=beta)


def test_base_grad_not_implemented():
    with pytest.raises(NotImplementedError):
        SurrogateSpike().grad(torch.zeros(2))


# ----------------------------------------------------------------------------------------
# MultiSpike counts


def test_multi_spike_counts():
    spikes = MultiSpike(max_spikes=10)(torch.tensor([1.7, -0.3, 0.0, 0.2, 1.0, 3.0, 25.0]))

    # n spikes for n - 1 < x <= n, capped at 10.
    assert spikes.tolist() == [2.0, 0.0, 0.0, 1.0, 1.0, 3.0, 10.0]


def test_multi_spike_custom_cap():
    spikes = MultiSpike(max_spikes=3)(torch.tensor([2.5, 7.2]))

    assert spikes.tolist() == [3.0, 3.0]


@pytest.mark.parametrize("max_spikes", [0, -2, 2.5, True])
def test_multi_spike_invalid_cap_raises(max_spikes):
    with pytest.raises(ValueError, match="max_spikes"):
        MultiSpike(max_spikes=max_spikes)


# ----------------------------------------------------------------------------------------
# Escape noise


def firing_rate(surrogate: SurrogateSpike, value: float, draws: int = 100_000) -> float:
    torch.manual_seed(0)
    spikes = surrogate(torch.full((draws,), value))
    return spikes.mean().item()


def test_escape_sigmoid_firing_probability():
    rate = firing_rate(EscapeNoiseSpike(noise="sigmoid", beta=10.0), 0.05)

    # sigma(10 * 0.05) = sigma(0.5). The binomial standard error is about 0.0015.
    assert rate == pytest.approx(sigmoid(0.5), abs=0.01)


def test_escape_sigmoid_fires_below_threshold():
    rate = firing_rate(EscapeNoiseSpike(noise="sigmoid", beta=10.0), -0.1)

    assert rate == pytest.approx(sigmoid(-1.0), abs=0.01)


def test_escape_exponential_firing_probability():
    rule = EscapeNoiseSpike(noise="exponential", p0=0.2, delta_u=0.5)

    rate = firing_rate(rule, 0.5)

    # 0.2 * exp(0.5 / 0.5) = 0.2 e.
    assert rate == pytest.approx(0.2 * math.e, abs=0.01)


def test_escape_exponential_default_rate_at_threshold():
    rate = firing_rate(EscapeNoiseSpike(noise="exponential"), 0.0)

    assert rate == pytest.approx(0.01, abs=0.002)


def test_escape_exponential_saturates():
    rate = firing_rate(EscapeNoiseSpike(noise="exponential", p0=0.2, delta_u=0.5), 2.0, draws=1000)

    assert rate == 1.0


def test_escape_noise_reproducible_with_seed():
    rule = EscapeNoiseSpike(noise="sigmoid", beta=10.0)
    x = torch.zeros(1000)

    torch.manual_seed(123)
    first = rule(x)
    torch.manual_seed(123)
    second = rule(x)

    assert torch.equal(first, second)


def test_escape_step_is_deterministic():
    spikes = EscapeNoiseSpike(noise="step")(torch.tensor([-0.2, 0.0, 0.3]))

    assert spikes.tolist() == [0.0, 0.0, 1.0]


def test_escape_superspike_surrogate():
    rule = EscapeNoiseSpike(noise="step", surrogate="superspike", surrogate_beta=10.0)

    grad = backward_factor(rule, [0.1, 0.0])

    # 1 / (10 * |x| + 1)^2.
    assert grad[0].item() == pytest.approx(0.25)
    assert grad[1].item() == pytest.approx(1.0)


def test_escape_sigmoid_surrogate():
    rule = EscapeNoiseSpike(noise="sigmoid", surrogate="sigmoid", surrogate_beta=4.0)

    grad = backward_factor(rule, [0.0, 0.5])

    # 4 * sigma(4 x) * (1 - sigma(4 x)).
    assert grad[0].item() == pytest.approx(1.0)
    assert grad[1].item() == pytest.approx(4.0 * sigmoid(2.0) * (1.0 - sigmoid(2.0)))


def test_escape_exponential_surrogate():
    rule = EscapeNoiseSpike(noise="exponential", surrogate="exponential", p0=0.01, delta_u=0.133)

    grad = backward_factor(rule, [0.0, 0.133])

    # (p0 / delta_u) * exp(x / delta_u).
    assert grad[0].item() == pytest.approx(0.01 / 0.133)
    assert grad[1].item() == pytest.approx(0.01 / 0.133 * math.e)


def test_escape_spike_train_surrogate_step():
    rule = EscapeNoiseSpike(noise="step", surrogate="spike_train")

    grad = backward_factor(rule, [-0.7, 0.4, 2.0])

    # The gradient passes only where a spike was emitted, and is not scaled by x.
    assert grad.tolist() == [0.0, 1.0, 1.0]


def test_escape_spike_train_surrogate_follows_spikes():
    rule = EscapeNoiseSpike(noise="sigmoid", beta=2.0, surrogate="spike_train")
    x = torch.full((2000,), 0.3, dtype=torch.float64, requires_grad=True)

    torch.manual_seed(7)
    spikes = rule(x)
    spikes.sum().backward()

    assert 0.0 < spikes.mean().item() < 1.0
    assert torch.equal(x.grad, spikes.detach())


def test_escape_spike_train_grad_needs_spikes():
    rule = EscapeNoiseSpike(surrogate="spike_train")

    with pytest.raises(ValueError, match="spikes"):
        rule.grad(torch.zeros(3))


def test_escape_invalid_noise_raises():
    with pytest.raises(ValueError, match="noise must be one of"):
        EscapeNoiseSpike(noise="gaussian")


def test_escape_invalid_surrogate_raises():
    with pytest.raises(ValueError, match="surrogate must be one of"):
        EscapeNoiseSpike(surrogate="MultilayerSpiker")


# ----------------------------------------------------------------------------------------
# torch.compile


# Marked slow: compiling took 12.6 s with an empty inductor cache on 2 shared CPU cores.
@pytest.mark.slow
def test_compile_fullgraph_matches_eager():
    spike_fn = SuperSpike(beta=20.0)

    def step(inputs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        membrane = inputs @ weight
        return spike_fn(membrane - 0.5)

    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(4, 3, generator=generator)
    weight = torch.randn(3, 5, generator=generator)
    upstream = torch.randn(4, 5, generator=generator)

    weight_eager = weight.clone().requires_grad_(True)
    spikes_eager = step(inputs, weight_eager)
    spikes_eager.backward(upstream)

    compiled_step = torch.compile(step, fullgraph=True)
    weight_compiled = weight.clone().requires_grad_(True)
    spikes_compiled = compiled_step(inputs, weight_compiled)
    spikes_compiled.backward(upstream)

    assert torch.equal(spikes_compiled, spikes_eager)
    assert torch.allclose(weight_compiled.grad, weight_eager.grad, atol=1e-6)
