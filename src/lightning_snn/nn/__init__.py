"""Spiking building blocks as plain ``torch.nn`` modules, free of Lightning.

Data are laid out ``(batch, time, *neuron_shape)`` with channel-first neuron shapes.
"""

from lightning_snn.nn.connections import Connection, Conv1d, Conv2d, Dense, Elementwise
from lightning_snn.nn.constraints import MinMaxConstraint, WeightConstraint
from lightning_snn.nn.dales import DalesLayer
from lightning_snn.nn.layers import (
    Afferent,
    Conv1dLayer,
    Conv2dLayer,
    DenseLayer,
    Flatten,
    LayerOutput,
    MaxPool,
    NetworkLayer,
    ReadoutLayer,
)
from lightning_snn.nn.network import NetworkOutput, SpikingNetwork
from lightning_snn.nn.neurons import (
    LIF,
    AdaptiveLIF,
    AmpaNmdaGabaLIF,
    ExcInhAdaptiveLIF,
    ExcInhLIF,
    LeakyReadout,
    LearnableAdaptiveLIF,
    Neuron,
    SpikingNeuron,
)
from lightning_snn.nn.simulation import SimulationResult, simulate
from lightning_snn.nn.state import StatefulModule

__all__ = [
    "LIF",
    "AdaptiveLIF",
    "Afferent",
    "AmpaNmdaGabaLIF",
    "Connection",
    "Conv1d",
    "Conv1dLayer",
    "Conv2d",
    "Conv2dLayer",
    "DalesLayer",
    "Dense",
    "DenseLayer",
    "Elementwise",
    "ExcInhAdaptiveLIF",
    "ExcInhLIF",
    "Flatten",
    "LayerOutput",
    "LeakyReadout",
    "LearnableAdaptiveLIF",
    "MaxPool",
    "MinMaxConstraint",
    "NetworkLayer",
    "NetworkOutput",
    "Neuron",
    "ReadoutLayer",
    "SimulationResult",
    "SpikingNetwork",
    "SpikingNeuron",
    "StatefulModule",
    "WeightConstraint",
    "simulate",
]
