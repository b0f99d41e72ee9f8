"""Tests of the weight initializers.

Expected numbers come from closed forms worked out by hand or from the values that Stork's
fluctuation-driven initializers print in its example notebooks (SHD: 700 inputs, 15.8 Hz, dt 2 ms).
"""

import logging
import math

import pytest
import torch

from lightning_snn.init import (
    AfferentInput,
    DistInitializer,
    FluctuationDrivenCenteredNormal,
    FluctuationDrivenExponential,
    FluctuationDrivenNormal,
    KaimingNormalInitializer,
    exponential_rates,
    measure_presynaptic_rates,
    normal_weight_moments,
    psp_integrals,
)
from lightning_snn.nn import (
    LIF,
    Conv1dLayer,
    DalesLayer,
    DenseLayer,
    ExcInhLIF,
    LeakyReadout,
    ReadoutLayer,
    SpikingNetwork,
)

# PSP integrals of tau_mem 20 ms, tau_syn 10 ms at dt 2 ms, as printed by Stork.
EPS_BAR_2MS = 0.0110323
EPS_HAT_2MS = 0.00203561


def poisson(batch, steps, units, rate_hz, dt, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, steps, units, generator=generator) < rate_hz * dt).float()


def dense_network(inputs=100, hidden=64, recurrent=False, dt=1e-3, readout=10):
    layers = [DenseLayer(hidden, LIF(tau_mem=20e-3, tau_syn=10e-3), recurrent=recurrent, name="hidden")]
    return SpikingNetwork(
        layers, ReadoutLayer(readout, LeakyReadout(tau_mem=0.2, tau_syn=10e-3)), input_shape=inputs, dt=dt
    )


def dales_network(dt=2e-3):
    neuron = lambda: ExcInhLIF(tau_mem=20e-3, tau_exc=10e-3, tau_inh=20e-3)  # noqa: E731
    layer = DalesLayer(128, ei_ratio=4, recurrent=True, exc_neuron=neuron(), inh_neuron=neuron(), name="hid")
    return SpikingNetwork([layer], ReadoutLayer(20), input_shape=700, dt=dt)


# --------------------------------------------------------------------------------------------------
# PSP integrals
# --------------------------------------------------------------------------------------------------


def test_psp_integrals_numerical_1ms():
    eps_bar, eps_hat = psp_integrals(20e-3, 10e-3, 1e-3)
    assert eps_bar == pytest.approx(0.010507353352192265, rel=1e-12)
    assert eps_hat == pytest.approx(0.001841948059032449, rel=1e-12)


def test_psp_integrals_numerical_2ms():
    eps_bar, eps_hat = psp_integrals(20e-3, 10e-3, 2e-3)
    assert eps_bar == pytest.approx(EPS_BAR_2MS, abs=5e-8)
    assert eps_hat == pytest.approx(EPS_HAT_2MS, abs=5e-9)


def test_psp_integrals_analytical():
    eps_bar, eps_hat = psp_integrals(20e-3, 10e-3, 1e-3, mode="analytical")
    assert eps_bar == pytest.approx(10e-3)
    assert eps_hat == pytest.approx(10e-3**2 / (2 * 30e-3))


def test_psp_integrals_invalid_mode():
    with pytest.raises(ValueError, match="mode"):
        psp_integrals(20e-3, 10e-3, 1e-3, mode="exact")


# --------------------------------------------------------------------------------------------------
# Normal weight moments
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fan_in", "nu", "expected"),
    [(700, 15.8, 0.2108), (128, 15.8, 0.4929), (20, 5.0, 2.216)],
    ids=["shd_input", "shd_hidden", "randman_input"],
)
def test_normal_moments_stork_table(fan_in, nu, expected):
    mu_w, sigmas = normal_weight_moments([AfferentInput(fan_in, nu, EPS_BAR_2MS, EPS_HAT_2MS)])
    assert mu_w == 0.0
    assert sigmas[0] == pytest.approx(expected, rel=5e-4)


def test_normal_moments_conv_recurrent():
    # First recurrent conv layer of Stork's SHD example: kernel 21 feed-forward, 16 x 5 recurrent.
    inputs = [
        AfferentInput(21, 15.8, EPS_BAR_2MS, EPS_HAT_2MS, recurrent=False),
        AfferentInput(80, 15.8, EPS_BAR_2MS, EPS_HAT_2MS, recurrent=True),
    ]
    _, (sigma_ff, sigma_rec) = normal_weight_moments(inputs, alpha=0.9)
    assert sigma_ff == pytest.approx(1.154, rel=1e-3)
    assert sigma_rec == pytest.approx(0.197, rel=3e-3)


def test_normal_moments_nonzero_mean():
    # mu_w = mu_U / (N nu eps_bar); sigma_w^2 = (theta - mu_U)^2 / (xi^2 N nu eps_hat) - mu_w^2.
    mu_w, (sigma,) = normal_weight_moments([AfferentInput(200, 20.0, 0.01, 0.002)], mu_u=0.5, xi=2.0)
    expected_mean = 0.5 / (200 * 20.0 * 0.01)
    assert mu_w == pytest.approx(expected_mean)
    assert sigma == pytest.approx(math.sqrt(0.25 / (4 * 200 * 20.0 * 0.002) - expected_mean**2))


def test_normal_moments_recurrent_only():
    # With no feed-forward input the recurrent afferent carries the whole variance.
    _, (sigma,) = normal_weight_moments([AfferentInput(128, 15.8, EPS_BAR_2MS, EPS_HAT_2MS, recurrent=True)])
    assert sigma == pytest.approx(0.4929, rel=5e-4)


def test_normal_moments_negative_variance():
    with pytest.raises(ValueError, match="mu_u"):
        normal_weight_moments([AfferentInput(700, 15.8, EPS_BAR_2MS, EPS_HAT_2MS)], mu_u=0.99)


def test_fluctuation_negative_variance_names_population():
    network = dense_network()
    with pytest.raises(ValueError, match="hidden"):
        FluctuationDrivenNormal(mu_u=0.99, xi=1.0, nu=20.0).initialize(network)


# --------------------------------------------------------------------------------------------------
# Exponential (Dale's law) rates
# --------------------------------------------------------------------------------------------------


def test_exponential_rates_stork_dales():
    nu = 15.8
    rates = exponential_rates(
        700 * nu, 128 * nu, 32 * nu, psp_integrals(20e-3, 10e-3, 2e-3), psp_integrals(20e-3, 20e-3, 2e-3),
        sigma_u=1.0, alpha=0.9,
    )
    assert rates.delta_rec == pytest.approx(1.2829, rel=1e-4)
    assert rates.delta_ei == pytest.approx(0.07618, rel=1e-4)
    assert rates.feedforward == pytest.approx(31.84, rel=2e-4)
    assert rates.recurrent == pytest.approx(40.84, rel=2e-4)
    assert rates.inhibitory == pytest.approx(2.425, rel=2e-4)


def test_exponential_rates_recurrent_balance():
    eps_e, eps_i = (0.011, 0.002), (0.015, 0.003)
    ff, rec, inh, alpha = 700 * 15.8, 128 * 15.8, 32 * 15.8, 0.9
    rates = exponential_rates(ff, rec, inh, eps_e, eps_i, sigma_u=0.5, alpha=alpha)

    # Mean weights are 1 / lambda and second moments 2 / lambda^2.
    mean_exc = ff * eps_e[0] / rates.feedforward + rec * eps_e[0] / rates.recurrent
    mean_inh = inh * eps_i[0] / rates.inhibitory
    var_ff = 2 * ff * eps_e[1] / rates.feedforward**2
    var_rec = 2 * rec * eps_e[1] / rates.recurrent**2
    var_inh = 2 * inh * eps_i[1] / rates.inhibitory**2
    assert mean_exc == pytest.approx(mean_inh)
    assert var_ff + var_rec + var_inh == pytest.approx(0.5**2)
    assert var_rec / var_ff == pytest.approx((1 - alpha) / alpha)


def test_exponential_rates_no_recurrence():
    eps_e, eps_i = (0.011, 0.002), (0.015, 0.003)
    exc, inh = 700 * 10.0, 32 * 10.0
    rates = exponential_rates(exc, 0.0, inh, eps_e, eps_i, sigma_u=1.0)

    mean_exc = exc * eps_e[0] / rates.feedforward
    mean_inh = inh * eps_i[0] / rates.inhibitory
    variance = 2 * exc * eps_e[1] / rates.feedforward**2 + 2 * inh * eps_i[1] / rates.inhibitory**2
    assert rates.delta_rec is None
    assert mean_exc == pytest.approx(mean_inh)
    assert variance == pytest.approx(1.0)


def test_exponential_dales_layer_means():
    torch.manual_seed(0)
    network = dales_network()
    FluctuationDrivenExponential(sigma_u=1.0, nu=15.8, alpha=0.9).initialize(network)
    synapses = network.layers[0].synapses

    # Stork's mean weights for this setting: ff 0.0314, rec 0.0245, inh 0.412.
    assert synapses["xe"].weight.mean().item() == pytest.approx(0.0314, rel=0.03)
    assert synapses["ee"].weight.mean().item() == pytest.approx(0.0245, rel=0.04)
    assert synapses["ie"].weight.mean().item() == pytest.approx(0.412, rel=0.08)
    assert synapses["xi"].weight.mean().item() == pytest.approx(0.0314, rel=0.04)


def test_exponential_readout_normal():
    torch.manual_seed(0)
    network = dales_network()
    FluctuationDrivenExponential(nu=15.8).initialize(network)
    weight = network.readout.connection.weight
    assert weight.mean().item() == pytest.approx(0.0, abs=0.01)
    assert weight.std().item() == pytest.approx(1 / math.sqrt(128), rel=0.05)


def test_exponential_rejects_missing_inhibition():
    network = SpikingNetwork([DenseLayer(16, ExcInhLIF(), name="exc_only")], input_shape=8, dt=1e-3)
    with pytest.raises(ValueError, match="exc_only"):
        FluctuationDrivenExponential(nu=10.0).initialize(network)


def test_normal_rejects_dales_layer():
    with pytest.raises(ValueError, match="FluctuationDrivenExponential"):
        FluctuationDrivenCenteredNormal(nu=15.8).initialize(dales_network())


# --------------------------------------------------------------------------------------------------
# Fluctuation-driven normal on networks
# --------------------------------------------------------------------------------------------------


def test_centered_normal_randman_network():
    # Stork's Randman example: 20 inputs at 5 Hz, 128 LIF, readout tau_mem 0.2 s, dt 2 ms.
    torch.manual_seed(0)
    network = dense_network(inputs=20, hidden=128, dt=2e-3)
    FluctuationDrivenCenteredNormal(sigma_u=1.0, nu=5.0).initialize(network)
    hidden = network.layers[0].connection.weight
    readout = network.readout.connection.weight
    assert hidden.std().item() == pytest.approx(2.216, rel=0.05)
    assert readout.std().item() == pytest.approx(2.32, rel=0.07)


def test_centered_normal_conv_recurrent():
    # Stork's first recurrent conv layer on SHD: 16 filters of kernel 21, recurrent kernel 5.
    torch.manual_seed(0)
    layer = Conv1dLayer(16, 21, stride=10, recurrent=True, neuron=LIF(tau_mem=20e-3, tau_syn=10e-3))
    network = SpikingNetwork([layer], input_shape=700, dt=2e-3)
    FluctuationDrivenCenteredNormal(sigma_u=1.0, nu=15.8, alpha=0.9).initialize(network)
    assert layer.connection.weight.std().item() == pytest.approx(1.154, rel=0.12)
    assert layer.recurrent_connection.weight.std().item() == pytest.approx(0.197, rel=0.08)


def test_fluctuation_rejects_bare_connection():
    network = dense_network()
    with pytest.raises(TypeError, match="Afferent"):
        FluctuationDrivenCenteredNormal(nu=10.0).initialize(network.layers[0].connection)


def test_fluctuation_afferent_target():
    torch.manual_seed(0)
    network = dense_network(inputs=700, hidden=128, dt=2e-3)
    afferent = network.layers[0].afferents()[0]
    FluctuationDrivenCenteredNormal(nu=15.8).initialize(afferent)
    assert afferent.connection.weight.std().item() == pytest.approx(0.2108, rel=0.02)


def test_fluctuation_needs_rate_or_data():
    with pytest.raises(ValueError, match="data"):
        FluctuationDrivenCenteredNormal().initialize(dense_network())


def test_fluctuation_membrane_statistics():
    # 2000 LIF neurons that never spike, driven by 200 Poisson inputs at 20 Hz. The spread of the
    # per-neuron means is about 1.1 sigma_U here, so a target mu_U of 2 sigma_U keeps the grand
    # mean's sampling error near 1 %.
    torch.manual_seed(0)
    threshold, mu_u, sigma_u, nu, dt = 1e3, 1.0, 0.5, 20.0, 1e-3
    neuron = LIF(tau_mem=20e-3, tau_syn=10e-3, threshold=threshold, record=("mem",))
    layer = DenseLayer(2000, neuron, name="probe", input_shape=200, dt=dt)
    FluctuationDrivenNormal(mu_u=mu_u, xi=(threshold - mu_u) / sigma_u, nu=nu).initialize(layer)

    # Spike counts per step are Poisson, as in the shot-noise theory behind the initializer.
    generator = torch.Generator().manual_seed(1)
    counts = torch.poisson(torch.full((1, 4000, 200), nu * dt), generator=generator)
    with torch.no_grad():
        layer([counts])
    membrane = neuron.recorded["mem"][0, 200:]

    # Each neuron draws its own weights, so sigma_U is the temporal std of one neuron, averaged.
    assert membrane.mean().item() == pytest.approx(mu_u, rel=0.05)
    assert membrane.std(dim=0).mean().item() == pytest.approx(sigma_u, rel=0.05)


# --------------------------------------------------------------------------------------------------
# Data-driven rates
# --------------------------------------------------------------------------------------------------


def test_measured_rate_poisson():
    network = dense_network(inputs=100)
    data = poisson(4, 500, 100, 20.0, 1e-3)
    (rate,) = measure_presynaptic_rates(network, data, [network.layers[0].connection])
    assert rate == pytest.approx(20.0, rel=0.05)


def test_data_driven_matches_fixed_rate():
    # Input at 20 Hz should give sigma_w = sqrt(1 / (N nu eps_hat)) with eps_hat at dt 1 ms.
    torch.manual_seed(0)
    network = dense_network(inputs=100)
    FluctuationDrivenCenteredNormal().initialize(network, poisson(4, 500, 100, 20.0, 1e-3))
    expected = math.sqrt(1 / (100 * 20.0 * 0.001841948059032449))
    assert network.layers[0].connection.weight.std().item() == pytest.approx(expected, rel=0.05)


def test_data_driven_logs_rates(caplog):
    torch.manual_seed(0)
    network = dense_network(inputs=100)
    with caplog.at_level(logging.INFO, logger="lightning_snn.init"):
        FluctuationDrivenCenteredNormal().initialize(network, poisson(4, 300, 100, 20.0, 1e-3))
    assert "'hidden'" in caplog.text
    assert "'readout'" in caplog.text


def test_data_driven_two_layers_fire():
    torch.manual_seed(0)
    layers = [
        DenseLayer(64, LIF(tau_mem=20e-3, tau_syn=10e-3), name="first"),
        DenseLayer(64, LIF(tau_mem=20e-3, tau_syn=10e-3), recurrent=True, name="second"),
    ]
    network = SpikingNetwork(layers, ReadoutLayer(5), input_shape=100, dt=1e-3)
    data = poisson(2, 300, 100, 20.0, 1e-3)
    FluctuationDrivenCenteredNormal(sigma_u=1.0).initialize(network, data)

    with torch.no_grad():
        spikes = network(data).spikes
    for name in ("first", "second"):
        rate = spikes[name].mean().item() / 1e-3
        assert 1.0 < rate < 100.0, f"{name} fires at {rate:.3g} Hz"


def test_data_driven_silent_input():
    network = dense_network(inputs=100)
    with pytest.raises(ValueError, match="silent"):
        FluctuationDrivenCenteredNormal().initialize(network, torch.zeros(2, 100, 100))


def test_data_driven_keeps_float64():
    torch.manual_seed(0)
    network = dense_network(inputs=50, hidden=32).double()
    FluctuationDrivenCenteredNormal().initialize(network, poisson(2, 300, 50, 30.0, 1e-3))
    for connection in network.connections():
        assert connection.weight.dtype == torch.float64


def test_data_driven_dales_network():
    torch.manual_seed(0)
    network = dales_network()
    FluctuationDrivenExponential().initialize(network, poisson(1, 150, 700, 15.8, 2e-3))
    for key, connection in network.layers[0].synapses.items():
        assert connection.weight.min().item() >= 0.0, key
        assert torch.isfinite(connection.weight).all(), key


# --------------------------------------------------------------------------------------------------
# Plain distributions
# --------------------------------------------------------------------------------------------------


def test_dist_normal_scaling():
    torch.manual_seed(0)
    network = dense_network(inputs=400, hidden=100)
    DistInitializer().initialize(network)
    assert network.layers[0].connection.weight.std().item() == pytest.approx(1 / 20, rel=0.03)


def test_dist_uniform_bounds():
    torch.manual_seed(0)
    network = dense_network(inputs=100, hidden=100)
    DistInitializer("uniform", mean=0.0, std=1.0, scaling=None).initialize(network)
    weight = network.layers[0].connection.weight
    assert weight.abs().max().item() <= math.sqrt(3)
    assert weight.std().item() == pytest.approx(1.0, rel=0.03)


def test_dist_sparseness():
    torch.manual_seed(0)
    network = dense_network(inputs=400, hidden=100)
    DistInitializer(sparseness=0.25, scaling=None).initialize(network)
    weight = network.layers[0].connection.weight
    assert (weight != 0).float().mean().item() == pytest.approx(0.25, rel=0.05)
    assert weight.pow(2).mean().item() == pytest.approx(1.0, rel=0.05)


def test_dist_bias_range():
    torch.manual_seed(0)
    layer = DenseLayer(200, bias=True, input_shape=25, dt=1e-3)
    DistInitializer(bias_scale=2.0, bias_mean=1.0).initialize(layer)
    bias = layer.connection.bias
    assert bias.min().item() >= 1.0 - 2.0 / 5
    assert bias.max().item() <= 1.0 + 2.0 / 5


def test_dist_applies_dales_constraint():
    torch.manual_seed(0)
    network = dales_network()
    DistInitializer().initialize(network)
    for key, connection in network.layers[0].synapses.items():
        assert connection.weight.min().item() >= 0.0, key


def test_kaiming_normal_gain():
    torch.manual_seed(0)
    connection = dense_network(inputs=400, hidden=100).layers[0].connection
    KaimingNormalInitializer(gain=2.0).initialize(connection)
    assert connection.weight.std().item() == pytest.approx(2.0 / 20, rel=0.03)


def test_dist_keeps_float64():
    network = dense_network().double()
    DistInitializer().initialize(network)
    assert network.layers[0].connection.weight.dtype == torch.float64
