"""Tiny data and networks shared by the tests of the LightningModule and its callbacks."""

from typing import Any, Optional

import torch
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import TensorDataset

from lightning_snn.data.base import SpikeDataModule
from lightning_snn.nn import LIF, DalesLayer, DenseLayer, LeakyReadout, ReadoutLayer, SpikingNetwork
from lightning_snn.regularizers import UpperBoundL2

NUM_INPUTS = 10
NUM_STEPS = 20
DT = 2e-3


def pattern_samples(num_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Make a two-class rate code: class 0 fires on inputs 0-4, class 1 on inputs 5-9 (p = 0.3 per step)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_samples) % 2
    probabilities = torch.full((num_samples, NUM_STEPS, NUM_INPUTS), 0.02)
    half = NUM_INPUTS // 2
    probabilities[labels == 0, :, :half] = 0.3
    probabilities[labels == 1, :, half:] = 0.3
    return torch.bernoulli(probabilities, generator=generator), labels


class PatternDataModule(SpikeDataModule):
    """Two-class spike patterns, 10 inputs x 20 steps of 2 ms: 64 train, 32 validation, 32 test samples."""

    def __init__(self, batch_size: int = 16, num_train: int = 64) -> None:
        super().__init__(batch_size=batch_size)
        # Like the library's DataModules, save the attributes that the model also takes.
        self.save_hyperparameters({"num_classes": 2, "num_steps": NUM_STEPS, "dt": DT})
        self.num_train = num_train
        self.input_shape = (NUM_INPUTS,)
        self.num_classes = 2
        self.num_steps = NUM_STEPS
        self.dt = DT

    def setup(self, stage: Optional[str] = None) -> None:
        self.train_set = TensorDataset(*pattern_samples(self.num_train, seed=0))
        self.val_set = TensorDataset(*pattern_samples(32, seed=1))
        self.test_set = TensorDataset(*pattern_samples(32, seed=2))


def dense_network(regularized: bool = True, stateful: bool = False, size: int = 16) -> SpikingNetwork:
    """Return an unbuilt network: one LIF layer named "layer1" and a leaky readout."""
    regularizers = [UpperBoundL2(strength=0.1, threshold=1.0, dims=1)] if regularized else []
    hidden = DenseLayer(size, LIF(tau_mem=20e-3, tau_syn=10e-3, stateful=stateful), regularizers=regularizers)
    readout = ReadoutLayer(neuron=LeakyReadout(tau_mem=40e-3, tau_syn=10e-3, initial_state=-1e-2))
    return SpikingNetwork([hidden], readout)


def dales_network() -> SpikingNetwork:
    """Return an unbuilt network with a Dale's-law layer "layer1" (16 E and 4 I neurons)."""
    return SpikingNetwork([DalesLayer(16)], ReadoutLayer(neuron=LeakyReadout(tau_mem=40e-3, tau_syn=10e-3)))


class RecordingLogger(Logger):
    """Keep every logged metric in memory: ``history`` is a list of ``(step, metrics)`` pairs."""

    def __init__(self) -> None:
        super().__init__()
        self.history: list[tuple[Optional[int], dict[str, float]]] = []
        self.hyperparams: Any = None

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: Optional[int] = None) -> None:
        self.history.append((step, dict(metrics)))

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.hyperparams = params

    def values(self, key: str) -> list[float]:
        """Return every logged value of ``key`` in logging order."""
        return [float(metrics[key]) for _, metrics in self.history if key in metrics]
