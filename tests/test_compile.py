"""``torch.compile`` traces a whole network forward pass without graph breaks (plain backend)."""

import pytest
import torch

from lightning_snn.kernels import use_backend
from lightning_snn.nn import LIF, DenseLayer, LeakyReadout, ReadoutLayer, SpikingNetwork

DT = 1e-3


def small_network() -> SpikingNetwork:
    torch.manual_seed(0)
    network = SpikingNetwork(
        [DenseLayer(6, LIF(10e-3, 5e-3), recurrent=True), DenseLayer(5, LIF(10e-3, 5e-3))],
        ReadoutLayer(3, LeakyReadout(20e-3, 5e-3)),
        input_shape=4,
        dt=DT,
    )
    with torch.no_grad():
        for connection in network.connections():
            connection.weight.mul_(6.0)
    return network


def spikes_input() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return (torch.rand(2, 5, 4, generator=generator) < 0.5).float()


@pytest.mark.parametrize("backend", ["plain", "auto"])
def test_forward_compiles_fullgraph(backend):
    network, x = small_network(), spikes_input()
    with use_backend("plain"):
        expected = network(x).output
    compiled = torch.compile(network, fullgraph=True, backend="eager")
    with use_backend(backend):
        output = compiled(x).output
    torch.testing.assert_close(output, expected)


def test_compiled_gradients_match_eager():
    network, x = small_network(), spikes_input()
    with use_backend("plain"):
        network(x).output.sum().backward()
    expected = [parameter.grad.clone() for parameter in network.parameters()]
    network.zero_grad()

    compiled = torch.compile(network, fullgraph=True, backend="aot_eager")
    compiled(x).output.sum().backward()
    for parameter, grad in zip(network.parameters(), expected):
        torch.testing.assert_close(parameter.grad, grad)
