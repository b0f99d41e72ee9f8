"""The compiled C++ step functions: they build where a compiler exists and match the torch steps."""

import shutil

import pytest
import torch

from lightning_snn.kernels import cpu_extension, use_backend
from lightning_snn.nn import LIF, DenseLayer, ReadoutLayer, SpikingNetwork

has_compiler = shutil.which("c++") is not None or shutil.which("g++") is not None


@pytest.mark.skipif(not has_compiler, reason="no C++ compiler on this machine")
def test_extension_builds_where_a_compiler_exists():
    assert cpu_extension.load() is not None


@pytest.mark.skipif(not has_compiler, reason="no C++ compiler on this machine")
def test_forward_step_by_hand():
    steps = cpu_extension.load()
    # Neuron 0 sits above the threshold: it spikes and resets. Neuron 1 integrates its current.
    mem = torch.tensor([[1.5, 0.5]])
    syn = torch.tensor([[2.0, 2.0]])
    pending = torch.tensor([[0.25, 0.5]])
    decay_mem, decay_syn = torch.tensor([0.5, 0.5]), torch.tensor([0.75, 0.75])
    spikes, new_mem, new_syn = torch.empty(1, 2), torch.empty(1, 2), torch.empty(1, 2)
    steps.forward_step(mem, syn, pending, decay_mem, 1 - decay_mem, decay_syn, 1.0, None,
                       spikes, new_mem, new_syn, None)
    assert spikes.tolist() == [[1.0, 0.0]]
    # U' = (0.5 * 0.5 + 0.5 * 2.0) * 1 = 1.25; I' = 0.75 * 2.0 + 0.5 = 2.0.
    assert new_mem.tolist() == [[0.0, 1.25]]
    assert new_syn.tolist() == [[1.75, 2.0]]


@pytest.mark.skipif(not has_compiler, reason="no C++ compiler on this machine")
def test_step_rejects_strided_rows():
    steps = cpu_extension.load()
    state = torch.zeros(2, 4)
    strided = torch.zeros(2, 8)[:, ::2]
    decay = torch.full((4,), 0.5)
    with pytest.raises(RuntimeError, match="contiguous rows"):
        steps.forward_step(strided, state, state, decay, decay, decay, 1.0, None,
                           state.clone(), state.clone(), state.clone(), None)


@pytest.mark.parametrize("recurrent", [False, True])
def test_torch_steps_match_compiled_steps(monkeypatch, recurrent):
    # The torch fallback and the C++ steps must give identical spikes and equal gradients.
    network = SpikingNetwork(
        [DenseLayer(12, LIF(10e-3, 5e-3, clamp_mem=True), recurrent=recurrent), DenseLayer(10, LIF())],
        ReadoutLayer(3), input_shape=16, dt=1e-3,
    ).double()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for connection in network.connections():
            connection.weight.copy_(torch.randn(connection.weight.shape, generator=generator) * 1.5)
    x = (torch.rand(3, 40, 16, generator=generator) < 0.3).double()

    def run():
        network.zero_grad()
        with use_backend("fused"):
            result = network(x)
        result.output.square().sum().backward()
        spikes = torch.cat([s.flatten() for s in result.spikes.values()])
        return spikes, [p.grad.clone() for p in network.parameters()]

    compiled_spikes, compiled_grads = run()
    monkeypatch.setattr(cpu_extension, "available_for", lambda tensor: None)
    torch_spikes, torch_grads = run()
    assert torch_spikes.sum() > 0
    assert torch.equal(compiled_spikes, torch_spikes)
    for compiled, plain in zip(compiled_grads, torch_grads):
        torch.testing.assert_close(compiled, plain, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not has_compiler, reason="no C++ compiler on this machine")
@pytest.mark.parametrize(
    "shape, kernel, stride",
    [((6, 3, 8, 10), (2, 2), (2, 2)), ((4, 2, 9, 7), (3, 2), (2, 1)), ((5, 4, 1, 12), (1, 3), (1, 3))],
)
def test_max_pool_matches_torch(shape, kernel, stride):
    from lightning_snn.kernels.pooling import max_pool

    generator = torch.Generator().manual_seed(1)
    # Binary maps have many ties, which must go to the same window element as in torch.
    x = (torch.rand(shape, generator=generator) < 0.3).double()
    x[0, 0, 0, 0] = float("nan")
    x.requires_grad_()
    grad = torch.randn(torch.nn.functional.max_pool2d(x, kernel, stride).shape, generator=generator,
                       dtype=torch.float64)
    expected = torch.nn.functional.max_pool2d(x, kernel, stride)
    (expected_grad,) = torch.autograd.grad(expected, x, grad)
    pooled = max_pool(x, kernel, stride)
    (pooled_grad,) = torch.autograd.grad(pooled, x, grad)
    assert torch.equal(pooled.isnan(), expected.isnan())
    assert torch.equal(pooled.nan_to_num(), expected.nan_to_num())
    assert torch.equal(pooled_grad, expected_grad)


@pytest.mark.skipif(not has_compiler, reason="no C++ compiler on this machine")
def test_max_pool_1d_matches_torch():
    from lightning_snn.kernels.pooling import max_pool

    x = (torch.rand(3, 2, 11) < 0.4).float().requires_grad_()
    grad = torch.randn(3, 2, 5)
    expected = torch.nn.functional.max_pool1d(x, 2, 2)
    pooled = max_pool(x, (2,), (2,))
    assert torch.equal(pooled, expected)
    assert torch.equal(torch.autograd.grad(pooled, x, grad)[0], torch.autograd.grad(expected, x, grad)[0])


@pytest.mark.skipif(not has_compiler, reason="no C++ compiler on this machine")
def test_find_events_by_hand():
    from lightning_snn.kernels.events import find_events

    x = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [2.0, 0.0, 1.0]])
    events = find_events(x)
    assert events.rows.tolist() == [0, 2, 2]
    assert events.columns.tolist() == [1, 0, 2]
    assert events.scales.tolist() == [1.0, 2.0, 1.0]
    assert events.row_offsets.tolist() == [0, 1, 1]


@pytest.mark.skipif(not has_compiler, reason="no C++ compiler on this machine")
def test_find_events_binary_needs_no_scales():
    from lightning_snn.kernels.events import find_events

    events = find_events(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert events.scales is None


def test_load_falls_back_to_portable_flags(monkeypatch):
    # A compiler that rejects -march=native must still get a portable build instead of torch ops.
    attempts = []

    def build(flags):
        attempts.append(flags)
        if cpu_extension.NATIVE_FLAGS[0] in flags:
            raise RuntimeError("unsupported option")
        return "portable build"

    monkeypatch.setattr(cpu_extension, "_tried", False)
    monkeypatch.setattr(cpu_extension, "_module", None)
    monkeypatch.setattr(cpu_extension, "_cpu_features", lambda: "sse2 avx2")
    monkeypatch.setattr(cpu_extension, "_build", build)
    assert cpu_extension.load() == "portable build"
    assert attempts == [cpu_extension.COMPILER_FLAGS + cpu_extension.NATIVE_FLAGS, cpu_extension.COMPILER_FLAGS]


def test_load_warns_when_no_build_works(monkeypatch):
    def build(flags):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(cpu_extension, "_tried", False)
    monkeypatch.setattr(cpu_extension, "_module", None)
    monkeypatch.setattr(cpu_extension, "_build", build)
    with pytest.warns(RuntimeWarning, match="fall back to torch ops"):
        assert cpu_extension.load() is None
