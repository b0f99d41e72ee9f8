"""Handwritten digits (scikit-learn's bundled 8x8 set) encoded as spike rasters.

scikit-learn ships the 1797 images of ``sklearn.datasets.load_digits`` inside the package, so this
DataModule works offline. It is a small real-data task that trains in seconds on a CPU.
"""

from typing import Literal, Optional, Union

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.utils.data import Dataset

from lightning_snn.data.base import SpikeDataModule
from lightning_snn.data.encoders import LatencyEncoder, PoissonEncoder

# Pixels of load_digits are gray levels 0..16.
_MAX_GRAY_LEVEL = 16.0


class _EncodedDataset(Dataset):
    """Images encoded into spike rasters, either once up front or anew on every access.

    Args:
        images: float tensor ``(num_samples, num_pixels)`` with values in [0, 1].
        labels: int64 tensor ``(num_samples,)``.
        encoder: Encoder from images to rasters ``(num_steps, num_pixels)``.
        redraw: Encode on every access with the global torch RNG (fresh Poisson spikes each epoch).
            Otherwise all samples are encoded once with a generator seeded by ``seed``.
        seed: Seed of the one-off encoding.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        encoder: Union[LatencyEncoder, PoissonEncoder],
        redraw: bool,
        seed: int,
    ) -> None:
        self.images = images
        self.labels = labels
        self.encoder = encoder
        self.redraw = redraw
        self.rasters: Optional[Tensor] = None
        if not redraw:
            self.rasters = self._encode_all(seed)

    def _encode_all(self, seed: int) -> Tensor:
        if isinstance(self.encoder, PoissonEncoder):
            generator = torch.Generator().manual_seed(seed)
            rasters = self.encoder(self.images, generator=generator)
        else:
            rasters = self.encoder(self.images)
        return rasters.to(torch.bool)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if self.rasters is not None:
            return self.rasters[index].to(torch.float32), self.labels[index]
        return self.encoder(self.images[index]), self.labels[index]


class DigitsDataModule(SpikeDataModule):
    """The 8x8 digits of scikit-learn as spike rasters of 64 input units.

    Images are divided by 16, the largest gray level, so that every pixel lies in [0, 1] on one scale
    shared by all images. They are then encoded by a :class:`~lightning_snn.data.encoders.LatencyEncoder`
    (without per-sample normalisation) or a :class:`~lightning_snn.data.encoders.PoissonEncoder`.

    With the default latency settings a pixel fires once if its value is at least 2/16. The darkest pixels
    fire at step 5 and the faintest (2/16) at step 80. Every one of the 1797 digits has at least 16 such
    pixels, so every digit yields spikes. With the default Poisson settings a pixel of value 1 fires 10
    times on average over 100 steps, and the faintest digit (pixel sum 11.6) expects about 116 spikes.

    The split is stratified by class and seeded by ``data_seed``, so every DDP rank builds the same
    splits. Latency rasters are fixed. Poisson rasters are drawn anew on every access for training, from
    the global torch RNG that ``seed_everything`` seeds. Validation and test rasters are drawn once from
    seeds derived from ``data_seed``, so every evaluation uses the same spikes.

    Batches are ``(x, y)`` with ``x`` float32 ``(batch, num_steps, 64)`` of 0/1 and ``y`` int64.

    Args:
        encoding: ``"latency"`` (one spike per pixel, earlier for darker pixels) or ``"poisson"``
            (Bernoulli spikes at a rate proportional to the pixel value).
        num_steps: Time steps per sample.
        dt: Duration of one time step in seconds.
        latency_tau: Time constant of the latency code in seconds.
        latency_threshold: Threshold of the latency code on the [0, 1] pixel scale; fainter pixels stay
            silent.
        poisson_max_rate: Firing rate in Hz of a pixel of value 1 under Poisson coding.
        val_fraction: Fraction of all images in the validation split.
        test_fraction: Fraction of all images in the test split.
        data_seed: Seed of the split and of the fixed Poisson rasters, separate from the loader ``seed``.
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes; 0 loads in the main process.
        pin_memory: Pin host memory for faster copies to a GPU.
        persistent_workers: Keep workers alive between epochs; only used when ``num_workers > 0``.
        seed: Seed of the training shuffle order.
    """

    def __init__(
        self,
        encoding: Literal["latency", "poisson"] = "latency",
        num_steps: int = 100,
        dt: float = 1e-3,
        latency_tau: float = 50e-3,
        latency_threshold: float = 0.1,
        poisson_max_rate: float = 100.0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        data_seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            seed=seed,
        )
        if encoding not in ("latency", "poisson"):
            raise ValueError(f"encoding must be 'latency' or 'poisson', got {encoding!r}.")
        if val_fraction <= 0 or test_fraction <= 0 or val_fraction + test_fraction >= 1:
            raise ValueError(
                f"val_fraction and test_fraction must be positive with a sum below 1, got {val_fraction} "
                f"and {test_fraction}."
            )
        self.save_hyperparameters()

        self.encoding = encoding
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.data_seed = data_seed

        # Building the encoder here checks its arguments before any data is loaded.
        self.encoder: Union[LatencyEncoder, PoissonEncoder]
        if encoding == "latency":
            self.encoder = LatencyEncoder(
                num_steps, dt=dt, tau=latency_tau, threshold=latency_threshold, normalize=False
            )
        else:
            self.encoder = PoissonEncoder(num_steps, dt=dt, max_rate=poisson_max_rate)

        self.input_shape = (64,)
        self.num_classes = 10
        self.num_steps = num_steps
        self.dt = dt

    def setup(self, stage: Optional[str] = None) -> None:
        # The whole set is small, so every stage builds all splits once.
        if self.train_set is not None:
            return

        digits = load_digits()
        images = torch.as_tensor(digits.data, dtype=torch.float32) / _MAX_GRAY_LEVEL
        labels = torch.as_tensor(digits.target, dtype=torch.int64)

        num_samples = len(labels)
        num_val = round(num_samples * self.val_fraction)
        num_test = round(num_samples * self.test_fraction)
        rest, test = train_test_split(
            np.arange(num_samples), test_size=num_test, stratify=digits.target, random_state=self.data_seed
        )
        train, val = train_test_split(
            rest, test_size=num_val, stratify=digits.target[rest], random_state=self.data_seed
        )

        train, val, test = torch.as_tensor(train), torch.as_tensor(val), torch.as_tensor(test)
        redraw_train = self.encoding == "poisson"
        # Validation and test get different seeds so their Poisson draws are independent.
        self.train_set = _EncodedDataset(
            images[train], labels[train], self.encoder, redraw=redraw_train, seed=self.data_seed
        )
        self.val_set = _EncodedDataset(
            images[val], labels[val], self.encoder, redraw=False, seed=self.data_seed + 1
        )
        self.test_set = _EncodedDataset(
            images[test], labels[test], self.encoder, redraw=False, seed=self.data_seed + 2
        )
