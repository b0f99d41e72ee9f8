"""Shared machinery of the spike-data DataModules: loader options, seeding and the linked attributes."""

import os
from typing import Optional

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


class ProcessRandomState:
    """Mixin for datasets that draw random augmentations: one NumPy generator per process.

    ``torch.initial_seed()`` differs per DataLoader worker and follows ``seed_everything``, so the
    augmentation is reproducible and not repeated across workers. The generator is dropped when the
    dataset is pickled for a spawned worker or a DDP process, which then seeds its own.
    """

    _generator: Optional[np.random.Generator] = None
    _generator_pid: Optional[int] = None

    def _rng(self) -> np.random.Generator:
        pid = os.getpid()
        if self._generator is None or self._generator_pid != pid:
            self._generator = np.random.default_rng(torch.initial_seed())
            self._generator_pid = pid
        return self._generator


class SpikeDataModule(pl.LightningDataModule):
    """Base class of every lightning_snn DataModule.

    Batches are ``(x, y)`` with ``x`` a float32 tensor laid out ``(batch, time, *input_shape)`` and
    ``y`` an int64 tensor of class ids ``(batch,)``. Subclasses build ``self.train_set``,
    ``self.val_set``, ``self.test_set`` and optionally ``self.predict_set`` in :meth:`setup`, and set the
    attributes below in ``__init__`` so that the command line can link them into the model before
    anything is loaded.

    Attributes:
        input_shape: Neuron shape of one time step, channel-first (``(700,)`` for SHD,
            ``(2, 32, 32)`` for DVS128 Gesture).
        num_inputs: Number of input neurons, the product of ``input_shape``.
        num_classes: Number of target classes.
        num_steps: Number of time steps per sample.
        dt: Simulation time step in seconds.

    Args:
        batch_size: Samples per batch, the same for every split.
        num_workers: DataLoader worker processes; 0 loads in the main process.
        pin_memory: Pin host memory for faster copies to a GPU.
        persistent_workers: Keep workers alive between epochs; only used when ``num_workers > 0``.
        seed: Seed of every random split and of the training shuffle order.
    """

    input_shape: tuple[int, ...]
    num_classes: int
    num_steps: int
    dt: float

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        if num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {num_workers}.")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.seed = seed

        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None
        self.predict_set: Optional[Dataset] = None

    @property
    def num_inputs(self) -> int:
        """Number of input neurons (the product of ``input_shape``)."""
        count = 1
        for size in self.input_shape:
            count *= size
        return count

    def _dataloader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = getattr(self, f"{split}_set")
        if dataset is None:
            raise RuntimeError(
                f"The {split} split of {type(self).__name__} is not set up; call setup() with the "
                f"matching stage first (the Trainer does this for you)."
            )

        # A seeded generator makes the shuffle order reproducible; under DDP Lightning replaces the
        # sampler with a DistributedSampler that takes its seed from seed_everything instead.
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._dataloader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._dataloader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._dataloader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        # Prediction runs on the test split unless a subclass provides its own set.
        split = "predict" if self.predict_set is not None else "test"
        return self._dataloader(split, shuffle=False)
