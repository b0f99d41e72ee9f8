"""Compare whole networks with the independent step-by-step simulation in ``stork_reference``.

Random weights and Poisson inputs in float64: spike trains must be identical and membrane traces equal
up to float64 rounding.
"""

import numpy as np
import pytest
import torch

import stork_reference as ref
from lightning_snn.nn import (
    LIF,
    AdaptiveLIF,
    AmpaNmdaGabaLIF,
    DalesLayer,
    DenseLayer,
    ExcInhLIF,
    LeakyReadout,
    ReadoutLayer,
    SpikingNetwork,
)

DT = 1e-3


def poisson_input(batch, steps, units, rate=0.05, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, steps, units, generator=generator, dtype=torch.float64) < rate).double()


def randomize(network, scale, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for connection in network.connections():
            weight = connection.weight
            weight.copy_(torch.randn(weight.shape, generator=generator, dtype=weight.dtype) * scale / weight.shape[1] ** 0.5)
        network.apply_constraints()


def numpy_weight(connection):
    return connection.weight.detach().numpy().copy()


def assert_same_activity(ours_spikes, ours_mem, reference_record):
    np.testing.assert_array_equal(ours_spikes.detach().numpy(), reference_record["out"])
    np.testing.assert_allclose(ours_mem.detach().numpy(), reference_record["mem"], rtol=1e-12, atol=1e-12)


def test_feedforward_lif_matches_reference():
    neurons = [LIF(20e-3, 10e-3, record=("mem",)) for _ in range(3)]
    readout_neuron = LeakyReadout(0.2, 10e-3, initial_state=-1e-2, record=("mem",))
    network = SpikingNetwork(
        [DenseLayer(30, neuron) for neuron in neurons],
        ReadoutLayer(5, readout_neuron),
        input_shape=40,
        dt=DT,
    ).double()
    randomize(network, scale=6.0)
    x = poisson_input(4, 60, 40)
    output = network(x)

    groups = [ref.InputGroup(40, DT)]
    groups += [ref.LIFGroup(30, DT, 20e-3, 10e-3) for _ in range(3)]
    groups.append(ref.ReadoutGroup(5, DT, 0.2, 10e-3, initial_state=-1e-2))
    layers = list(network.layers) + [network.readout]
    connections = [
        ref.Connection(groups[i], groups[i + 1], numpy_weight(layer.connection)) for i, layer in enumerate(layers)
    ]
    record = ref.run(groups, connections, x.numpy())

    for index, neuron in enumerate(neurons):
        spikes = output.spikes[f"layer{index + 1}"]
        assert spikes.sum() > 0, "the test needs activity in every layer"
        assert_same_activity(spikes, neuron.recorded["mem"], record[id(groups[index + 1])])
    np.testing.assert_allclose(output.output.detach().numpy(), record[id(groups[-1])]["out"], rtol=1e-12, atol=1e-12)


def test_recurrent_adaptive_and_skip_match_reference():
    hidden = LIF(20e-3, 10e-3, record=("mem",))
    adaptive = AdaptiveLIF(20e-3, 10e-3, tau_ada=50e-3, adapt_a=0.5, record=("mem",))
    network = SpikingNetwork(
        [DenseLayer(25, hidden, recurrent=True), DenseLayer(20, adaptive, skip_from=[0])],
        ReadoutLayer(3, LeakyReadout(0.1, 5e-3)),
        input_shape=30,
        dt=DT,
    ).double()
    randomize(network, scale=5.0, seed=3)
    x = poisson_input(3, 80, 30, seed=2)
    output = network(x)

    inp = ref.InputGroup(30, DT)
    g1 = ref.LIFGroup(25, DT, 20e-3, 10e-3)
    g2 = ref.AdaptiveLIFGroup(20, DT, 20e-3, 10e-3, 50e-3, 0.5)
    readout = ref.ReadoutGroup(3, DT, 0.1, 5e-3)
    layer1, layer2 = network.layers
    connections = [
        ref.Connection(inp, g1, numpy_weight(layer1.connection)),
        ref.Connection(g1, g1, numpy_weight(layer1.recurrent_connection)),
        ref.Connection(g1, g2, numpy_weight(layer2.connection)),
        ref.Connection(inp, g2, numpy_weight(layer2.skip_connections[0])),
        ref.Connection(g2, readout, numpy_weight(network.readout.connection)),
    ]
    record = ref.run([inp, g1, g2, readout], connections, x.numpy())

    assert output.spikes["layer2"].sum() > 0
    assert_same_activity(output.spikes["layer1"], hidden.recorded["mem"], record[id(g1)])
    assert_same_activity(output.spikes["layer2"], adaptive.recorded["mem"], record[id(g2)])
    np.testing.assert_allclose(output.output.detach().numpy(), record[id(readout)]["out"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("model", ["exc_inh", "ampa_nmda_gaba"])
def test_dales_layer_matches_reference(model):
    if model == "exc_inh":
        exc, inh = (ExcInhLIF(20e-3, 10e-3, 20e-3, record=("mem",)) for _ in range(2))
        make = lambda size: ref.ExcInhLIFGroup(size, DT, 20e-3, 10e-3, 20e-3)
    else:
        exc, inh = (AmpaNmdaGabaLIF(20e-3, 5e-3, 100e-3, 10e-3, record=("mem",)) for _ in range(2))
        make = lambda size: ref.ReceptorLIFGroup(size, DT, 20e-3, 5e-3, 100e-3, 10e-3)
    layer = DalesLayer(24, ei_ratio=4, recurrent=True, exc_neuron=exc, inh_neuron=inh)
    network = SpikingNetwork([layer], input_shape=30, dt=DT).double()
    randomize(network, scale=8.0, seed=5)
    x = poisson_input(3, 80, 30, rate=0.1, seed=4)
    output = network(x)

    inp, g_exc, g_inh = ref.InputGroup(30, DT), make(24), make(6)
    synapses = layer.synapses
    connections = [
        ref.Connection(inp, g_exc, numpy_weight(synapses["xe"]), "exc"),
        ref.Connection(inp, g_inh, numpy_weight(synapses["xi"]), "exc"),
        ref.Connection(g_inh, g_exc, numpy_weight(synapses["ie"]), "inh"),
        ref.Connection(g_inh, g_inh, numpy_weight(synapses["ii"]), "inh"),
        ref.Connection(g_exc, g_exc, numpy_weight(synapses["ee"]), "exc"),
        ref.Connection(g_exc, g_inh, numpy_weight(synapses["ei"]), "exc"),
    ]
    record = ref.run([inp, g_exc, g_inh], connections, x.numpy())

    assert output.spikes["layer1.exc"].sum() > 0
    assert output.spikes["layer1.inh"].sum() > 0
    assert_same_activity(output.spikes["layer1.exc"], exc.recorded["mem"], record[id(g_exc)])
    assert_same_activity(output.spikes["layer1.inh"], inh.recorded["mem"], record[id(g_inh)])
