"""Neuron models, one family's discrete-time dynamics per file."""

from lightning_snn.nn.neurons.adaptive import AdaptiveLIF, AdaptiveLIFState, LearnableAdaptiveLIF
from lightning_snn.nn.neurons.base import Neuron, SpikingNeuron
from lightning_snn.nn.neurons.exc_inh import (
    AmpaNmdaGabaLIF,
    ExcInhAdaptiveLIF,
    ExcInhAdaptiveState,
    ExcInhLIF,
    ExcInhState,
    ReceptorState,
)
from lightning_snn.nn.neurons.lif import LIF, LIFState
from lightning_snn.nn.neurons.readout import LeakyReadout, ReadoutState

__all__ = [
    "AdaptiveLIF",
    "AdaptiveLIFState",
    "AmpaNmdaGabaLIF",
    "ExcInhAdaptiveLIF",
    "ExcInhAdaptiveState",
    "ExcInhLIF",
    "ExcInhState",
    "LIF",
    "LIFState",
    "LeakyReadout",
    "LearnableAdaptiveLIF",
    "Neuron",
    "ReadoutState",
    "ReceptorState",
    "SpikingNeuron",
]
