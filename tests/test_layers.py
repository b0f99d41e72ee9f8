"""Connections, layers and the network container: shapes, constraints, skips and regularization."""

import pytest
import torch

from lightning_snn.nn import (
    LIF,
    Conv1dLayer,
    Conv2dLayer,
    DalesLayer,
    Dense,
    DenseLayer,
    Elementwise,
    ExcInhLIF,
    Flatten,
    LeakyReadout,
    MaxPool,
    MinMaxConstraint,
    ReadoutLayer,
    SpikingNetwork,
)
from lightning_snn.regularizers import UpperBoundL2, WeightL2


def test_randman_shallow_network_builds():
    network = SpikingNetwork(
        [DenseLayer(128, LIF(20e-3, 10e-3))],
        ReadoutLayer(10, LeakyReadout(0.2, 10e-3, initial_state=-1e-2)),
        input_shape=20,
        dt=2e-3,
    )
    output = network(torch.zeros(2, 100, 20))
    assert output.output.shape == (2, 100, 10)
    assert output.spikes["layer1"].shape == (2, 100, 128)


def test_shd_conv_network_shapes():
    layers = [
        Conv1dLayer(16, 21, stride=10, recurrent=True),
        Conv1dLayer(32, 7, stride=3, recurrent=True),
        Conv1dLayer(64, 7, stride=3, recurrent=True),
    ]
    network = SpikingNetwork(layers, ReadoutLayer(20), input_shape=700, dt=2e-3)
    assert [layer.output_shape for layer in network.layers] == [(16, 68), (32, 21), (64, 5)]
    assert network.layers[0].recurrent_connection.weight.shape == (16, 16, 5)
    assert network.readout.connection.fan_in == 320
    output = network(torch.zeros(1, 4, 700))
    assert output.output.shape == (1, 4, 20)


def test_dvs_conv_network_shapes():
    layers = [
        Conv2dLayer(16, 3, padding=2),
        Conv2dLayer(16, 3, padding=2),
        MaxPool(2),
        Conv2dLayer(32, 3, padding=2),
        Conv2dLayer(32, 3, padding=2),
        MaxPool(2),
    ]
    network = SpikingNetwork(layers, ReadoutLayer(11), input_shape=(2, 32, 32), dt=2e-3)
    shapes = [layer.output_shape for layer in network.layers]
    assert shapes == [(16, 34, 34), (16, 36, 36), (16, 18, 18), (32, 20, 20), (32, 22, 22), (32, 11, 11)]
    assert network.readout.connection.fan_in == 3872
    assert sorted(network(torch.zeros(1, 3, 2, 32, 32)).spikes) == ["layer1", "layer2", "layer4", "layer5"]


def test_dales_layer_sizes_and_connections():
    layer = DalesLayer(128, ei_ratio=4, exc_neuron=ExcInhLIF(20e-3, 10e-3, 20e-3), inh_neuron=ExcInhLIF(20e-3, 10e-3, 20e-3))
    network = SpikingNetwork([layer], ReadoutLayer(20), input_shape=700, dt=2e-3)
    assert layer.inh_size == 32
    assert sorted(layer.synapses) == ["ee", "ei", "ie", "ii", "xe", "xi"]
    receptors = {key: connection.target for key, connection in layer.synapses.items()}
    assert receptors == {"xe": "exc", "xi": "exc", "ie": "inh", "ii": "inh", "ee": "exc", "ei": "exc"}
    assert network.readout.connection.fan_in == 128
    without = DalesLayer(10, recurrent=False)
    SpikingNetwork([without], input_shape=5, dt=1e-3)
    assert sorted(without.synapses) == ["ie", "ii", "xe", "xi"]


def test_dales_weights_keep_signs_after_steps():
    torch.manual_seed(0)
    network = SpikingNetwork([DalesLayer(16)], ReadoutLayer(3), input_shape=10, dt=1e-3)
    optimizer = torch.optim.SGD(network.parameters(), lr=10.0)
    x = (torch.rand(4, 30, 10) < 0.3).float()
    for _ in range(3):
        optimizer.zero_grad()
        output = network(x)
        # Rewarding negative drive pushes every Dale weight below zero without the constraint.
        (output.output.sum() + sum(c.weight.sum() for c in network.layers[0].synapses.values())).backward()
        optimizer.step()
        network.apply_constraints()
    for connection in network.layers[0].synapses.values():
        assert float(connection.weight.min()) >= 0.0
    assert float(network.readout.connection.weight.min()) < 0.0


def test_min_max_constraint_rejects_bad_bounds():
    with pytest.raises(ValueError, match="min 1.0 above max 0.0"):
        MinMaxConstraint(min=1.0, max=0.0)
    weight = torch.tensor([-2.0, 0.5, 3.0])
    MinMaxConstraint(min=-1.0, max=1.0)(weight)
    assert weight.tolist() == [-1.0, 0.5, 1.0]


def test_skip_connection_adds_drive():
    torch.manual_seed(0)
    network = SpikingNetwork(
        [DenseLayer(6), DenseLayer(5, skip_from=[0])], input_shape=4, dt=1e-3
    )
    layer2 = network.layers[1]
    assert layer2.skip_connections[0].weight.shape == (5, 4)
    with torch.no_grad():
        network.layers[0].connection.weight.zero_()
        layer2.connection.weight.zero_()
        layer2.skip_connections[0].weight.fill_(5.0)
    x = torch.zeros(1, 12, 4)
    x[0, 0] = 1.0
    output = network(x)
    # Through the skip, the input reaches layer 2 directly: first spike 3 steps after the input.
    assert int(output.spikes["layer2"][0].sum(-1).nonzero()[0]) == 3
    assert float(output.spikes["layer1"].sum()) == 0.0


def test_skip_from_a_later_layer_is_rejected():
    with pytest.raises(ValueError, match="skip connection from output 2"):
        SpikingNetwork([DenseLayer(6, skip_from=[2]), DenseLayer(5)], input_shape=4, dt=1e-3)


def test_elementwise_connection_ties_dimensions():
    connection = Elementwise(tie_dims=(1,))
    connection.build((3, 5))
    assert connection.weight.shape == (3, 1)
    assert connection.fan_in == 1
    with torch.no_grad():
        connection.weight.copy_(torch.tensor([[1.0], [2.0], [3.0]]))
    drive = connection(torch.ones(2, 4, 3, 5))
    assert drive[0, 0, :, 0].tolist() == [1.0, 2.0, 3.0]
    assert drive.shape == (2, 4, 3, 5)


def test_stopped_gradient_connection():
    layer1 = DenseLayer(5, input_shape=3, dt=1e-3)
    connection = Dense(propagate_gradients=False)
    connection.build((5,), (2,))
    x = torch.rand(2, 10, 3, requires_grad=True)
    drive = connection(layer1([x]).transmitted + x.sum() * 0 + torch.ones(2, 10, 5))
    drive.sum().backward()
    assert connection.weight.grad is not None
    assert x.grad is None or float(x.grad.abs().sum()) == 0.0


def test_max_pool_has_no_delay():
    pool = MaxPool(2)
    pool.build((1, 4), 1e-3)
    x = torch.zeros(1, 3, 1, 4)
    x[0, 1, 0, 3] = 1.0
    pooled = pool([x]).transmitted
    assert pooled.shape == (1, 3, 1, 2)
    assert pooled[0, :, 0, 1].tolist() == [0.0, 1.0, 0.0]


def test_flat_input_is_reshaped_and_wrong_input_rejected():
    network = SpikingNetwork([Conv2dLayer(2, 3), Flatten()], input_shape=(1, 5, 5), dt=1e-3)
    assert network(torch.zeros(2, 3, 25)).output.shape == (2, 3, 18)
    with pytest.raises(ValueError, match=r"Expected input \(batch, time, \*\(1, 5, 5\)\)"):
        network(torch.zeros(2, 3, 24))


def test_channels_last_frames_rejected():
    # Same number of entries per step, but laid out (height, width, channels), so a reshape would mix them.
    network = SpikingNetwork([Conv2dLayer(2, 3), Flatten()], input_shape=(2, 5, 5), dt=1e-3)
    with pytest.raises(ValueError, match="Permute channels-last data"):
        network(torch.zeros(2, 3, 5, 5, 2))


def test_frames_flattened_for_flat_input_shape():
    network = SpikingNetwork([DenseLayer(4)], input_shape=50, dt=1e-3)
    assert network(torch.zeros(2, 3, 2, 5, 5)).output.shape == (2, 3, 4)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"kernel_size": 0}, "kernel_size must be at least 1"),
        ({"kernel_size": 3, "padding": -1}, "padding must be at least 0"),
        ({"kernel_size": 3, "stride": 0}, "stride must be at least 1"),
    ],
)
def test_conv_layer_rejects_invalid_geometry(arguments, message):
    with pytest.raises(ValueError, match=message):
        Conv1dLayer(4, **arguments)


def test_conv1d_layer_names_expected_input():
    with pytest.raises(ValueError, match=r"needs a 2-D \(channels, length\) input"):
        SpikingNetwork([Conv1dLayer(4, 3)], input_shape=(2, 6, 6), dt=1e-3)


def test_regularization_loss_sums_layer_penalties():
    regularizer = UpperBoundL2(strength=2.0, threshold=1.0, dims=None)
    network = SpikingNetwork(
        [DenseLayer(2, regularizers=[regularizer], weight_regularizers=[WeightL2(strength=0.5)])],
        input_shape=1,
        dt=1e-3,
    )
    with torch.no_grad():
        network.layers[0].connection.weight.copy_(torch.tensor([[2.0], [0.0]]))
    spikes = torch.zeros(1, 4, 2)
    spikes[0, :3, 0] = 1.0  # neuron 0 fires 3 times, neuron 1 never
    output = network(torch.zeros(1, 4, 1))._replace(spikes={"layer1": spikes})
    # Activity: 2 * mean(relu(3 - 1)^2, relu(0 - 1)^2) = 2 * (4 + 0) / 2 = 4; weights: 0.5 * (4 + 0) / 2 = 1.
    assert float(network.regularization_loss(output)) == pytest.approx(5.0)


def test_readout_needs_a_size():
    network = SpikingNetwork([DenseLayer(4)], ReadoutLayer())
    with pytest.raises(ValueError, match="num_outputs"):
        network.build(3, 1e-3)
    network.build(3, 1e-3, num_outputs=7)
    assert network.readout.output_shape == (7,)


def test_conv_layer_rejects_even_recurrent_kernel():
    with pytest.raises(ValueError, match="must be odd"):
        Conv1dLayer(4, 3, recurrent=True, recurrent_kernel_size=4)


def test_readout_rejects_spiking_neuron():
    with pytest.raises(TypeError, match="non-spiking readout"):
        ReadoutLayer(3, LIF())


def test_recorded_states_come_with_the_output():
    network = SpikingNetwork(
        [DenseLayer(4, LIF(record=("mem", "syn")))], ReadoutLayer(2, LeakyReadout(record=("mem",))), input_shape=3, dt=1e-3
    )
    output = network(torch.rand(2, 6, 3))
    assert sorted(output.recorded) == ["layer1", "readout"]
    assert output.recorded["layer1"]["syn"].shape == (2, 6, 4)
    torch.testing.assert_close(output.recorded["readout"]["mem"], output.output)


def test_unbuilt_network_error_names_the_fix():
    network = SpikingNetwork([DenseLayer(4)])
    with pytest.raises(RuntimeError, match=r"input_shape=\.\.\., dt=\.\.\."):
        network(torch.zeros(1, 2, 3))
