"""Event-driven convolutions against torch's dense convolutions and against results worked out by hand.

The compiled kernels sum over the nonzero inputs only. They must give torch's output and weight
gradient for every geometry the connections use: 1-D and 2-D, strides, zero padding, inputs that are
not binary, samples with no event at all, and inputs that are strided across samples. Networks with
convolutional recurrences must give the spikes and gradients of the plain loop.
"""

import pytest
import torch
import torch.nn.functional as F
from call_counting import CountCalls, CountingKernels

import lightning_snn.kernels.convolution as event_convolution
import lightning_snn.kernels.recurrence as recurrence_module
from lightning_snn.kernels import LinearRecurrence, cpu_extension, use_backend
from lightning_snn.nn import LIF, Conv1d, Conv1dLayer, Conv2d, Conv2dLayer, ReadoutLayer, SpikingNetwork

pytestmark = pytest.mark.skipif(cpu_extension.load() is None, reason="no C++ compiler on this machine")

# (in_channels, spatial, out_channels, kernel, stride, padding) of 2-D geometries. A 1-D convolution
# is the case of height 1.
GEOMETRIES = [
    (1, (1, 50), 5, (1, 7), (1, 3), (0, 0)),
    (3, (1, 30), 16, (1, 5), (1, 1), (0, 2)),
    (2, (9, 11), 4, (3, 2), (2, 1), (1, 0)),
    (2, (7, 7), 32, (3, 3), (1, 1), (2, 2)),
    (5, (6, 8), 8, (5, 3), (3, 2), (2, 1)),
]


def sparse_input(shape, density=0.2, seed=0, dtype=torch.float64, binary=False):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=generator, dtype=dtype) < density
    values = torch.ones(shape, dtype=dtype) if binary else torch.randn(shape, generator=generator, dtype=dtype)
    return mask * values


def test_forward_by_hand():
    kernels = cpu_extension.load()
    # One channel of length 5 with events at positions 1 (value 1) and 3 (value 2), weights (1, 10, 100),
    # stride 2 and padding 1. Output o sums x[2 * o - 1 + k] * w[k]. Output 0 receives x[1] at k = 2,
    # output 1 receives x[1] at k = 0 and x[3] at k = 2, and output 2 receives x[3] at k = 0.
    x = torch.tensor([0.0, 1.0, 0.0, 2.0, 0.0]).reshape(1, 1, 1, 1, 5)
    weight = torch.tensor([1.0, 10.0, 100.0]).reshape(1, 1, 1, 3)
    output = kernels.conv_forward_events(x, weight, None, 1, 3, 1, 2, 0, 1)
    assert output.flatten().tolist() == [100.0, 201.0, 2.0]


def test_weight_gradient_by_hand():
    kernels = cpu_extension.load()
    # Same geometry as above with output gradient (1, 2, 3): dL/dw[k] = sum_o g[o] * x[2 * o - 1 + k],
    # so w[0] collects g[1] x[1] + g[2] x[3] = 2 + 6, w[1] nothing and w[2] g[0] x[1] + g[1] x[3] = 1 + 4.
    x = torch.tensor([0.0, 1.0, 0.0, 2.0, 0.0]).reshape(1, 1, 1, 1, 5)
    grad_output = torch.tensor([1.0, 2.0, 3.0]).reshape(1, 1, 1, 1, 3)
    gradient = kernels.conv_weight_gradient_events(x, grad_output, 1, 3, 1, 2, 0, 1)
    assert gradient.flatten().tolist() == [8.0, 0.0, 5.0]


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kernels_match_torch(geometry, dtype):
    kernels = cpu_extension.load()
    in_channels, spatial, out_channels, kernel, stride, padding = geometry
    x = sparse_input((6, in_channels, *spatial), dtype=dtype)
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(out_channels, in_channels, *kernel, generator=generator, dtype=dtype)
    expected = F.conv2d(x, weight, None, stride, padding)
    base = torch.randn(expected.shape, generator=generator, dtype=dtype)
    grad_output = torch.randn(expected.shape, generator=generator, dtype=dtype)
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {}

    output = kernels.conv_forward_events(x[None], weight, base[None], *expected.shape[2:], *stride, *padding)
    torch.testing.assert_close(output[0], expected + base, **tolerance)
    gradient = kernels.conv_weight_gradient_events(x[None], grad_output[None], *kernel, *stride, *padding)
    expected_gradient = torch.nn.grad.conv2d_weight(x, weight.shape, grad_output, stride, padding)
    torch.testing.assert_close(gradient, expected_gradient, **tolerance)


def test_kernels_read_strided_samples():
    # The recurrence passes spikes laid out (batch, time) and drive gradients laid out (time, batch).
    # The kernels index both through their sample strides.
    kernels = cpu_extension.load()
    spikes = sparse_input((3, 4, 2, 1, 12), binary=True)
    grad_time_major = torch.randn(4, 3, 3, 1, 12, dtype=torch.float64)
    weight_shape = (3, 2, 1, 5)
    gradient = kernels.conv_weight_gradient_events(spikes, grad_time_major.transpose(0, 1), 1, 5, 1, 1, 0, 2)
    expected = torch.nn.grad.conv2d_weight(
        spikes.flatten(0, 1), weight_shape, grad_time_major.transpose(0, 1).flatten(0, 1), 1, (0, 2)
    )
    torch.testing.assert_close(gradient, expected)


def test_kernels_without_events():
    kernels = cpu_extension.load()
    x = torch.zeros(4, 1, 3, 1, 9)
    weight = torch.randn(2, 3, 1, 3)
    output = kernels.conv_forward_events(x, weight, None, 1, 7, 1, 1, 0, 0)
    gradient = kernels.conv_weight_gradient_events(x, torch.randn(4, 1, 2, 1, 7), 1, 3, 1, 1, 0, 0)
    assert output.abs().sum() == 0
    assert gradient.abs().sum() == 0


def test_forward_rejects_wrong_output_size():
    kernels = cpu_extension.load()
    x = torch.zeros(1, 1, 1, 1, 9)
    with pytest.raises(RuntimeError, match="out_height and out_width"):
        kernels.conv_forward_events(x, torch.zeros(1, 1, 1, 3), None, 1, 8, 1, 1, 0, 0)


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("in_channels", [2, 6])
def test_event_conv_gradients_match_torch(dims, in_channels):
    # Inputs with fewer than EVENT_FORWARD_MIN_CHANNELS channels take torch's forward pass, wider ones
    # the events.
    spatial = (17,) if dims == 1 else (9, 8)
    kernel = (5,) if dims == 1 else (3, 3)
    stride = (2,) if dims == 1 else (2, 1)
    padding = (1,) if dims == 1 else (1, 2)
    x = sparse_input((5, in_channels, *spatial), binary=True).requires_grad_()
    generator = torch.Generator().manual_seed(2)
    weight = torch.randn(8, in_channels, *kernel, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(8, generator=generator, dtype=torch.float64, requires_grad=True)
    convolution = F.conv1d if dims == 1 else F.conv2d

    output = event_convolution.event_conv(x, weight, bias, stride, padding)
    expected = convolution(x, weight, bias, stride, padding)
    torch.testing.assert_close(output, expected)
    grad_output = torch.randn(expected.shape, generator=generator, dtype=torch.float64)
    gradients = torch.autograd.grad(output, (x, weight, bias), grad_output)
    expected_gradients = torch.autograd.grad(expected, (x, weight, bias), grad_output)
    for name, value, reference in zip(("x", "weight", "bias"), gradients, expected_gradients):
        torch.testing.assert_close(value, reference, msg=f"gradient w.r.t. {name} differs")


def test_event_conv_rejects_mismatched_channels():
    with pytest.raises(ValueError, match="event_conv needs"):
        event_convolution.event_conv(torch.zeros(2, 3, 10), torch.zeros(4, 2, 3), None, (1,), (0,))


@pytest.mark.parametrize("connection_class, in_shape", [(Conv1d, (6, 40)), (Conv2d, (6, 10, 9))])
def test_connection_takes_event_path_when_sparse(monkeypatch, connection_class, in_shape):
    connection = connection_class(8, 3, stride=2, padding=1, bias=True)
    connection.build(in_shape)
    connection.double()
    counted = CountCalls(event_convolution.event_conv)
    monkeypatch.setattr(event_convolution, "event_conv", counted)
    x = sparse_input((2, 3, *in_shape), density=0.05, binary=True).requires_grad_()
    drive = connection(x)
    grad_drive = torch.randn(drive.shape, dtype=torch.float64)
    gradients = torch.autograd.grad(drive, (x, connection.weight, connection.bias), grad_drive)
    assert counted.calls == 1

    with use_backend("plain"):
        plain = connection(x)
    plain_gradients = torch.autograd.grad(plain, (x, connection.weight, connection.bias), grad_drive)
    assert counted.calls == 1, "the plain backend must not take the event path"
    torch.testing.assert_close(drive, plain)
    for value, reference in zip(gradients, plain_gradients):
        torch.testing.assert_close(value, reference)


def test_connection_stays_dense_above_threshold(monkeypatch):
    connection = Conv1d(4, 3)
    connection.build((6, 30))
    counted = CountCalls(event_convolution.event_conv)
    monkeypatch.setattr(event_convolution, "event_conv", counted)
    connection(sparse_input((2, 3, 6, 30), density=0.5, dtype=torch.float32))
    assert counted.calls == 0


@pytest.mark.parametrize("kind", ["conv1d", "conv2d"])
def test_recurrence_weight_gradient_matches_torch(kind):
    shape = (4, 15) if kind == "conv1d" else (4, 6, 7)
    padding = (2,) if kind == "conv1d" else (1, 2)
    kernel = (5,) if kind == "conv1d" else (3, 5)
    spikes = sparse_input((30, *shape), density=0.05, binary=True)
    grad_drive = torch.randn(30, *shape, dtype=torch.float64)
    weight = torch.randn(4, 4, *kernel, dtype=torch.float64)
    gradient = LinearRecurrence(kind, padding).weight_gradient(weight, spikes, grad_drive)
    weight_gradient = torch.nn.grad.conv1d_weight if kind == "conv1d" else torch.nn.grad.conv2d_weight
    torch.testing.assert_close(gradient, weight_gradient(spikes, weight.shape, grad_drive, 1, padding))


def _randomize(network, scale, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for connection in network.connections():
            weight = connection.weight
            weight.copy_(torch.randn(weight.shape, generator=generator, dtype=weight.dtype) * scale / weight[0].numel() ** 0.5)


def _run(network, x, backend, calls):
    torch.manual_seed(0)
    network.reset_state()
    loss, outputs = 0.0, []
    generator = torch.Generator().manual_seed(3)
    with use_backend(backend):
        for _ in range(calls):
            result = network(x)
            outputs.append(result)
            loss = loss + (result.output * torch.randn(result.output.shape, generator=generator, dtype=x.dtype)).sum()
            for spikes in result.spikes.values():
                loss = loss + 0.1 * (spikes * torch.randn(spikes.shape, generator=generator, dtype=x.dtype)).sum()
    parameters = [p for p in network.parameters() if p.requires_grad]
    return outputs, torch.autograd.grad(loss, parameters)


def _assert_paths_agree(network, x, calls=1):
    fused_outputs, fused_grads = _run(network, x, "fused", calls)
    plain_outputs, plain_grads = _run(network, x, "plain", calls)
    for fused, plain in zip(fused_outputs, plain_outputs):
        for name in plain.spikes:
            assert plain.spikes[name].sum() > 0, f"the test needs spikes in {name}"
            assert torch.equal(fused.spikes[name], plain.spikes[name]), f"spikes of {name} differ"
        torch.testing.assert_close(fused.output, plain.output)
    for index, (fused, plain) in enumerate(zip(fused_grads, plain_grads)):
        assert plain.abs().sum() > 0, f"gradient {index} is zero, so the test cannot fail"
        torch.testing.assert_close(fused, plain, msg=f"gradient {index} differs")


@pytest.mark.parametrize("step_density", [0.0, 1.0])
@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("options, calls", [({}, 1), ({"dropout": 0.3, "clamp_mem": True}, 1), ({"stateful": True}, 2)])
def test_compiled_conv_recurrence_matches_plain(monkeypatch, step_density, dims, options, calls):
    # The C++ loop convolves every step by events (density limit 1) or every step densely (limit 0).
    monkeypatch.setattr(recurrence_module, "CONV_STEP_EVENT_DENSITY_THRESHOLD", step_density)
    neuron = LIF(10e-3, 5e-3, **options)
    if dims == 1:
        layer = Conv1dLayer(6, 5, stride=2, neuron=neuron, recurrent=True, recurrent_kernel_size=3)
        input_shape, x_shape = (2, 24), (3, 30, 2, 24)
    else:
        layer = Conv2dLayer(5, 3, padding=1, neuron=neuron, recurrent=True, recurrent_kernel_size=(3, 5))
        input_shape, x_shape = (2, 6, 5), (3, 30, 2, 6, 5)
    network = SpikingNetwork([layer], ReadoutLayer(3), input_shape=input_shape, dt=1e-3).double()
    _randomize(network, scale=4.0)
    network.train()
    kernels = CountingKernels(cpu_extension.load())
    available_for = cpu_extension.available_for
    monkeypatch.setattr(cpu_extension, "available_for", lambda tensor: available_for(tensor) and kernels)
    _assert_paths_agree(network, sparse_input(x_shape, density=0.3, binary=True), calls=calls)
    assert kernels.calls.get("forward_sequence_recurrent", 0) == calls
    assert kernels.calls.get("backward_sequence_superspike", 0) == calls
