"""Fused and event-driven kernels against the plain autograd loop.

The plain loop (``backend "plain"``) is the reference: spikes and states must be identical, and the
gradients of every parameter equal to float rounding. Dropout masks come from a fixed RNG seed, so
both paths draw the same mask.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from call_counting import CountCalls

from lightning_snn.kernels import event_linear, prefers_events, use_backend
from lightning_snn.kernels.events import set_event_threshold
import lightning_snn.kernels.events as events
import lightning_snn.kernels.recurrence as recurrence_module
from lightning_snn.kernels import cpu_extension
from lightning_snn.nn import (
    LIF,
    AdaptiveLIF,
    LearnableAdaptiveLIF,
    Conv1dLayer,
    DalesLayer,
    DenseLayer,
    LeakyReadout,
    ReadoutLayer,
    SpikingNetwork,
)
from lightning_snn.surrogate import MultiSpike, SigmoidSpike

DT = 1e-3


def poisson(batch, steps, units, rate=0.2, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, steps, units, generator=generator) < rate).to(dtype)


def randomize(network, scale=4.0, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for connection in network.connections():
            weight = connection.weight
            fan_in = weight[0].numel()
            weight.copy_(torch.randn(weight.shape, generator=generator, dtype=weight.dtype) * scale / fan_in**0.5)


def loss_weights(sequence):
    """Fixed random weights per time step and unit, so that every step's gradient differs."""
    generator = torch.Generator().manual_seed(7)
    return torch.randn(sequence.shape[1:], generator=generator, dtype=sequence.dtype)


def run(network, x, backend, seed=0, calls=1):
    """Run ``calls`` forward passes (stateful carry between them) and return outputs and gradients."""
    torch.manual_seed(seed)
    network.reset_state()
    outputs = []
    loss = 0.0
    with use_backend(backend):
        for _ in range(calls):
            result = network(x)
            outputs.append(result)
            loss = loss + (result.output * loss_weights(result.output)).sum()
            for spikes in result.spikes.values():
                loss = loss + 0.1 * (spikes * loss_weights(spikes)).sum()
    parameters = [p for p in network.parameters() if p.requires_grad]
    inputs = parameters + ([x] if x.requires_grad else [])
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return outputs, grads


def assert_paths_agree(network, x, calls=1, rtol=1e-9, atol=1e-11):
    fused_outputs, fused_grads = run(network, x, "fused", calls=calls)
    plain_outputs, plain_grads = run(network, x, "plain", calls=calls)
    for fused, plain in zip(fused_outputs, plain_outputs):
        for name in plain.spikes:
            assert plain.spikes[name].sum() > 0, f"the test needs spikes in {name}"
            assert torch.equal(fused.spikes[name], plain.spikes[name]), f"spikes of {name} differ"
        torch.testing.assert_close(fused.output, plain.output, rtol=rtol, atol=atol)
    for index, (fused, plain) in enumerate(zip(fused_grads, plain_grads)):
        assert (fused is None) == (plain is None), f"gradient {index} missing on one path"
        if plain is not None:
            assert plain.abs().sum() > 0, f"gradient {index} is zero, so the test cannot fail"
            torch.testing.assert_close(fused, plain, rtol=rtol, atol=atol)


def dense_network(neuron_factory, recurrent=False, readout=None, sizes=(12, 10), inputs=16):
    layers = [DenseLayer(size, neuron_factory(), recurrent=recurrent) for size in sizes]
    readout = readout if readout is not None else ReadoutLayer(3, LeakyReadout(20e-3, 5e-3))
    return SpikingNetwork(layers, readout, input_shape=inputs, dt=DT).double()


def test_feedforward_lif_matches_plain():
    network = dense_network(lambda: LIF(10e-3, 5e-3))
    randomize(network)
    assert_paths_agree(network, poisson(3, 40, 16))


def test_input_gradient_matches_plain():
    network = dense_network(lambda: LIF(10e-3, 5e-3))
    randomize(network)
    assert_paths_agree(network, poisson(3, 40, 16).requires_grad_())


def test_recurrent_lif_with_dropout_matches_plain():
    network = dense_network(lambda: LIF(10e-3, 5e-3, dropout=0.3), recurrent=True)
    randomize(network, scale=5.0)
    network.train()
    assert_paths_agree(network, poisson(3, 40, 16))


@pytest.mark.parametrize(
    "options",
    [
        {"clamp_mem": True},
        {"diff_reset": True},
        {"diff_reset": True, "clamp_mem": True},
        {"surrogate": SigmoidSpike(5.0)},
        {"threshold": 0.5},
    ],
)
def test_lif_options_match_plain(options):
    network = dense_network(lambda: LIF(10e-3, 5e-3, **options), recurrent=True)
    randomize(network, scale=5.0)
    assert_paths_agree(network, poisson(3, 40, 16))


@pytest.mark.parametrize("learn", ["layer", "neuron"])
@pytest.mark.parametrize("recurrent, diff_reset", [(True, True), (False, False)])
def test_learnable_timescales_match_plain(learn, recurrent, diff_reset):
    readout = ReadoutLayer(3, LeakyReadout(20e-3, 5e-3, learn_timescales=learn))
    network = dense_network(
        lambda: LIF(10e-3, 5e-3, learn_timescales=learn, sigma_tau=0.3, diff_reset=diff_reset, clamp_mem=not recurrent),
        recurrent=recurrent,
        readout=readout,
    )
    randomize(network, scale=5.0)
    assert_paths_agree(network, poisson(3, 40, 16))


def test_stateful_carry_matches_plain():
    readout = ReadoutLayer(3, LeakyReadout(20e-3, 5e-3, stateful=True))
    network = dense_network(
        lambda: LIF(10e-3, 5e-3, stateful=True, dropout=0.2), recurrent=True, readout=readout
    )
    randomize(network, scale=5.0)
    network.train()
    assert_paths_agree(network, poisson(2, 25, 16), calls=3)


def test_stateful_final_state_matches_plain():
    neuron = LIF(10e-3, 5e-3, stateful=True)
    network = SpikingNetwork([DenseLayer(8, neuron, recurrent=True)], input_shape=16, dt=DT).double()
    randomize(network, scale=5.0)
    x = poisson(2, 30, 16)
    carried = {}
    for backend in ("fused", "plain"):
        network.reset_state()
        with use_backend(backend):
            network(x)
        carried[backend] = neuron._carried_state
    (fused_state, (fused_pending,)), (plain_state, (plain_pending,)) = carried["fused"], carried["plain"]
    assert torch.equal(fused_state.mem, plain_state.mem)
    assert torch.equal(fused_state.syn, plain_state.syn)
    assert torch.equal(fused_pending, plain_pending)


def test_recurrent_conv1d_matches_plain():
    layers = [Conv1dLayer(4, 5, stride=2, recurrent=True, recurrent_kernel_size=3)]
    network = SpikingNetwork(layers, ReadoutLayer(3), input_shape=20, dt=DT).double()
    randomize(network, scale=5.0)
    assert_paths_agree(network, poisson(2, 30, 20, rate=0.3))


@pytest.mark.parametrize("neuron_type", [AdaptiveLIF, LearnableAdaptiveLIF])
@pytest.mark.parametrize("recurrent", [False, True])
def test_adaptive_network_matches_plain(neuron_type, recurrent):
    def neuron():
        return neuron_type(10e-3, 5e-3, tau_ada=50e-3, dropout=0.2, stateful=True, clamp_mem=recurrent)

    network = dense_network(neuron, recurrent=recurrent)
    randomize(network, scale=6.0)
    network.train()
    assert_paths_agree(network, poisson(3, 30, 16), calls=2)


@pytest.mark.parametrize("dropout, calls", [(0.0, 1), (0.3, 1), (0.0, 2)])
def test_event_driven_recurrence_matches_plain(monkeypatch, dropout, calls):
    # The torch-op path: 80 recurrent neurons are enough for events, and weak weights keep the spikes
    # sparse, so most steps take the event path and the dense steps in between take the matmul.
    monkeypatch.setattr(cpu_extension, "available_for", lambda tensor: None)
    matmul = CountCalls(events.events_matmul)
    weight_gradient = CountCalls(events.events_weight_gradient)
    monkeypatch.setattr(events, "events_matmul", matmul)
    monkeypatch.setattr(events, "events_weight_gradient", weight_gradient)
    assert_paths_agree(_sparse_recurrent_network(dropout, calls), poisson(4, 40, 16, rate=0.1), calls=calls)
    assert matmul.calls > 0
    assert weight_gradient.calls > 0


@pytest.mark.skipif(cpu_extension.load() is None, reason="no C++ compiler on this machine")
@pytest.mark.parametrize("step_density", [0.0, 1.0])
@pytest.mark.parametrize("dropout, calls", [(0.0, 1), (0.3, 1), (0.0, 2)])
def test_compiled_recurrence_matches_plain(monkeypatch, step_density, dropout, calls):
    # The C++ loop projects every step by events (density limit 1) or every step by matmul (limit 0).
    monkeypatch.setattr(recurrence_module, "STEP_EVENT_DENSITY_THRESHOLD", step_density)
    assert_paths_agree(_sparse_recurrent_network(dropout, calls), poisson(4, 40, 16, rate=0.1), calls=calls)


def _sparse_recurrent_network(dropout, calls):
    neuron = LIF(10e-3, 5e-3, dropout=dropout, stateful=calls > 1)
    network = SpikingNetwork(
        [DenseLayer(80, neuron, recurrent=True)], ReadoutLayer(3), input_shape=16, dt=DT
    ).double()
    randomize(network, scale=3.0)
    network.train()
    return network


def test_float32_spikes_identical():
    network = dense_network(lambda: LIF(10e-3, 5e-3), recurrent=True).float()
    randomize(network, scale=5.0)
    assert_paths_agree(network, poisson(3, 40, 16, dtype=torch.float32), rtol=1e-4, atol=1e-5)


def test_eval_without_grad_matches_plain():
    network = dense_network(lambda: LIF(10e-3, 5e-3, dropout=0.5), recurrent=True).eval()
    randomize(network, scale=5.0)
    x = poisson(2, 30, 16)
    with torch.no_grad():
        with use_backend("fused"):
            fused = network(x)
        with use_backend("plain"):
            plain = network(x)
    assert torch.equal(fused.output, plain.output)


def test_fused_backend_rejects_dales_layer():
    network = SpikingNetwork([DalesLayer(8)], input_shape=10, dt=DT)
    with use_backend("fused"), pytest.raises(NotImplementedError, match="several populations"):
        network(torch.zeros(1, 5, 10))


def test_fused_backend_rejects_multispike():
    network = SpikingNetwork([DenseLayer(8, LIF(surrogate=MultiSpike()))], input_shape=10, dt=DT)
    with use_backend("fused"), pytest.raises(NotImplementedError, match="MultiSpike"):
        network(torch.zeros(1, 5, 10))


def test_auto_backend_falls_back_when_recording():
    neuron = LIF(10e-3, 5e-3, record=("mem",))
    network = SpikingNetwork([DenseLayer(8, neuron)], input_shape=10, dt=DT)
    with use_backend("auto"):
        network(torch.zeros(2, 5, 10))
    assert neuron.recorded["mem"].shape == (2, 5, 8)


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="Unknown kernel backend"):
        with use_backend("cuda"):
            pass


def test_event_linear_matches_dense():
    x = poisson(1, 200, 30, rate=0.05).reshape(200, 30) * 0.5
    weight = torch.randn(7, 30, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(7, dtype=torch.float64, requires_grad=True)
    grad_output = torch.randn(200, 7, dtype=torch.float64)
    events_out = event_linear(x, weight, bias)
    events_grads = torch.autograd.grad(events_out, (weight, bias), grad_output)
    dense_out = F.linear(x, weight, bias)
    dense_grads = torch.autograd.grad(dense_out, (weight, bias), grad_output)
    torch.testing.assert_close(events_out, dense_out)
    torch.testing.assert_close(events_grads[0], dense_grads[0])
    torch.testing.assert_close(events_grads[1], dense_grads[1])


def test_event_linear_by_hand():
    x = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    weight = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
    output = event_linear(x, weight)
    assert output.tolist() == [[2.0, 5.0], [0.0, 0.0], [4.0, 10.0]]
    output.backward(torch.ones(3, 2))
    assert weight.grad.tolist() == [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]


def test_event_linear_without_events():
    weight = torch.ones(4, 6, requires_grad=True)
    output = event_linear(torch.zeros(5, 6), weight)
    output.sum().backward()
    assert output.abs().sum() == 0
    assert weight.grad.abs().sum() == 0


def test_prefers_events_by_density():
    sparse = torch.zeros(1000, 100)
    sparse[::10, ::10] = 1.0
    dense = torch.ones(1000, 100)
    assert prefers_events(sparse, 128)
    assert not prefers_events(dense, 128)
    assert not prefers_events(sparse.requires_grad_(), 128)
    assert not prefers_events(sparse.detach(), 8)


def test_prefers_events_threshold_setting():
    sparse = torch.zeros(1000, 100)
    sparse[::10, ::10] = 1.0
    previous = events.EVENT_DENSITY_THRESHOLD
    try:
        set_event_threshold(0.0)
        assert not prefers_events(sparse, 128)
    finally:
        set_event_threshold(previous)


def test_dense_layer_event_path_matches_plain():
    network = dense_network(lambda: LIF(10e-3, 5e-3), sizes=(80,), inputs=900)
    randomize(network, scale=8.0)
    x = poisson(2, 40, 900, rate=0.03)
    assert prefers_events(x.reshape(80, 900), 80)
    assert_paths_agree(network, x)


def test_backward_in_several_chunks_matches_plain(monkeypatch):
    import lightning_snn.kernels.lif as lif_kernel

    # Three steps of a 3 x 12 population per chunk, so 40 steps take 13 full chunks and a partial one.
    monkeypatch.setattr(lif_kernel, "_CHUNK_ELEMENTS", 3 * 12 * 3)
    network = dense_network(lambda: LIF(10e-3, 5e-3, dropout=0.2, clamp_mem=True), recurrent=True, sizes=(12,))
    randomize(network, scale=5.0)
    network.train()
    assert_paths_agree(network, poisson(3, 40, 16))


@pytest.mark.parametrize("dims", [1, 2])
def test_conv_sequence_in_blocks_matches_one_conv(monkeypatch, dims):
    import lightning_snn.nn.connections as connections

    if dims == 1:
        connection, in_shape = connections.Conv1d(4, 3, padding=1, bias=True), (2, 9)
    else:
        connection, in_shape = connections.Conv2d(4, 3, padding=2, bias=True), (2, 6, 5)
    connection.build(in_shape)
    frame_bytes = 4 * (math.prod(in_shape) + math.prod(connection.out_shape))
    # Three frames per block, so the 3 x 5 frames of the sequence take four full blocks and a partial one.
    monkeypatch.setattr(connections, "_CONV_BLOCK_BYTES", 3 * frame_bytes + 1)
    generator = torch.Generator().manual_seed(0)
    x = (torch.rand(3, 5, *in_shape, generator=generator) < 0.3).float().requires_grad_()
    grad_drive = torch.randn(3, 5, *connection.out_shape, generator=generator)

    drive = connection(x)
    drive.backward(grad_drive)
    conv = F.conv1d if dims == 1 else F.conv2d
    weight = connection.weight.detach().clone().requires_grad_()
    bias = connection.bias.detach().clone().requires_grad_()
    frames = x.detach().reshape(15, *in_shape).requires_grad_()
    expected = conv(frames, weight, bias, 1, connection.padding)
    expected.backward(grad_drive.reshape(expected.shape))

    torch.testing.assert_close(drive.reshape(expected.shape), expected, rtol=0, atol=0)
    torch.testing.assert_close(x.grad.reshape(frames.shape), frames.grad)
    torch.testing.assert_close(connection.weight.grad, weight.grad)
    torch.testing.assert_close(connection.bias.grad, bias.grad)
