"""Random-manifold ("randman") classification data with the class coded in spike timing.

Each class is a smooth random manifold embedded in ``num_units`` dimensions. A sample is a point on
its class manifold, and each coordinate of that point sets when one input unit fires. Every unit fires
the same number of spikes in every sample, so the class is in the timing alone and not in the rates.

The benchmark comes from Zenke & Vogels, "The remarkable robustness of surrogate gradient learning for
instilling complex function in spiking neural networks" (bioRxiv 2020.06.29.176925; Neural Computation,
2021). The code here is written from the description of the algorithm.
"""

import math
from typing import Optional

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_snn.data.base import SpikeDataModule

# Keeps the (samples, units, frequencies) intermediate of RandomManifold.__call__ near 32 MiB in float64.
_MAX_CHUNK_ELEMENTS = 2**22


class RandomManifold:
    """Smooth random map from the unit cube ``[0, 1]^manifold_dim`` into ``R^embedding_dim``.

    Output coordinate ``k`` is a product over the manifold axes ``d`` of one random Fourier series per
    axis::

        f_kd(x) = sum_i a_kdi * s_i * sin(2 pi (i * b_kdi * x + c_kdi)),   i = 0 .. F - 1
        y_k(x_1, ..., x_M) = prod_d f_kd(x_d)

    with amplitudes ``a``, frequency scales ``b`` and phases ``c`` drawn i.i.d. from U(0, 1) and the
    spectral envelope ``s_i = 1 / (|(i + 1) - beta|^alpha + 1)``. A larger ``alpha`` damps the high
    frequencies faster, so the manifold is smoother. The series stops at
    ``F = min(ceil(precision^(-1 / alpha)), max_num_frequencies)`` terms, where the envelope has fallen
    to about ``precision``.

    The envelope is the one of the default (torch) backend of the original randman package
    (github.com/fzenke/randman), which Stork's ``make_tempo_randman`` calls. That package's numpy
    backend uses ``1 / (i + 1)^alpha`` instead. The extra ``+ 1`` flattens the envelope at low
    frequencies: for ``alpha = 1`` the first non-constant term gets weight 1/3 instead of 1/2.

    Args:
        embedding_dim: Number of output coordinates D (the input units of a network).
        manifold_dim: Intrinsic dimension M of the manifold.
        alpha: Smoothness exponent of the spectral envelope; must be positive.
        beta: Peak of the envelope, which lies at ``i + 1 = beta`` (0 puts it before the first term).
        precision: Envelope value at which the series is cut off; in (0, 1).
        max_num_frequencies: Upper limit on the number of Fourier terms F.
        use_bias: Keep the ``i = 0`` term, a constant random offset ``a * s_0 * sin(2 pi c)``. Without
            it the amplitude of that term is set to 0.
        generator: Source of the random coefficients. A local generator leaves the global torch RNG
            untouched; ``None`` draws from the global RNG.

    Attributes:
        coefficients: float64 tensor ``(D, M, 3, F)`` containing the amplitudes ``a`` (index 0 of dim 2),
            frequency scales ``b`` (index 1) and phases ``c`` (index 2), before the envelope is applied.
        envelope: float64 tensor ``(F,)`` containing ``s_i``.
    """

    def __init__(
        self,
        embedding_dim: int,
        manifold_dim: int = 1,
        alpha: float = 2.0,
        beta: float = 0.0,
        precision: float = 1e-3,
        max_num_frequencies: int = 1000,
        use_bias: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be at least 1, got {embedding_dim}.")
        if manifold_dim < 1:
            raise ValueError(f"manifold_dim must be at least 1, got {manifold_dim}.")
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}. Typical values are 1.0 and 2.0.")
        if not 0 < precision < 1:
            raise ValueError(f"precision must lie in (0, 1), got {precision}. The default is 1e-3.")
        if max_num_frequencies < 1:
            raise ValueError(f"max_num_frequencies must be at least 1, got {max_num_frequencies}.")

        self.embedding_dim = embedding_dim
        self.manifold_dim = manifold_dim
        self.num_frequencies = min(math.ceil(precision ** (-1.0 / alpha)), max_num_frequencies)

        shape = (embedding_dim, manifold_dim, 3, self.num_frequencies)
        self.coefficients = torch.rand(shape, generator=generator, dtype=torch.float64)
        if not use_bias:
            # The i = 0 term has frequency 0, so it would only add a random constant.
            self.coefficients[:, :, 0, 0] = 0.0

        index = torch.arange(self.num_frequencies, dtype=torch.float64)
        self.envelope = 1.0 / ((index + 1.0 - beta).abs() ** alpha + 1.0)

    def __call__(self, points: Tensor) -> Tensor:
        """Map points of the unit cube onto the manifold.

        Args:
            points: Tensor ``(num_points, manifold_dim)`` with entries in [0, 1].

        Returns:
            float64 tensor ``(num_points, embedding_dim)``.
        """
        if points.dim() != 2 or points.shape[1] != self.manifold_dim:
            raise ValueError(
                f"points must have shape (num_points, {self.manifold_dim}), got {tuple(points.shape)}."
            )
        points = points.to(torch.float64)
        num_points = points.shape[0]

        amplitude = self.coefficients[:, :, 0, :] * self.envelope
        angular_frequency = 2 * math.pi * torch.arange(self.num_frequencies) * self.coefficients[:, :, 1, :]
        phase = 2 * math.pi * self.coefficients[:, :, 2, :]

        # The sum over frequencies runs in chunks so that the (points, units, frequencies) intermediate
        # stays small even for 1000 terms.
        chunk = max(1, _MAX_CHUNK_ELEMENTS // max(1, num_points * self.embedding_dim))
        values = torch.ones(num_points, self.embedding_dim, dtype=torch.float64)
        for axis in range(self.manifold_dim):
            x = points[:, axis, None, None]
            series = torch.zeros(num_points, self.embedding_dim, dtype=torch.float64)
            for start in range(0, self.num_frequencies, chunk):
                terms = slice(start, start + chunk)
                waves = torch.sin(x * angular_frequency[:, axis, terms] + phase[:, axis, terms])
                series += (amplitude[:, axis, terms] * waves).sum(dim=-1)
            values *= series
        return values

    def sample(self, num_points: int, generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
        """Draw points uniformly from the unit cube and map them onto the manifold.

        Args:
            num_points: Number of points.
            generator: Source of the points; ``None`` draws from the global torch RNG.

        Returns:
            ``(points, values)``: float64 tensors ``(num_points, manifold_dim)`` and
            ``(num_points, embedding_dim)``.
        """
        points = torch.rand((num_points, self.manifold_dim), generator=generator, dtype=torch.float64)
        return points, self(points)


def _standardize_min_max(values: Tensor) -> Tensor:
    """Scale each column to [0, 1) by its minimum and maximum over the rows."""
    minimum = values.min(dim=0).values
    maximum = values.max(dim=0).values
    # The small constant keeps the maximum just below 1, so no spike lands on the end of the window.
    return (values - minimum) / (maximum - minimum + 1e-7)


def make_spike_timing_randman(
    num_classes: int = 10,
    num_units: int = 20,
    num_steps: int = 100,
    step_frac: float = 0.5,
    offset_frac: float = 0.0,
    dim_manifold: int = 1,
    num_spikes: int = 1,
    samples_per_class: int = 1000,
    alpha: float = 1.0,
    seed: int = 1,
    shuffle: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Generate a randman classification set whose class lies only in the spike timing.

    Every class gets ``num_spikes`` independent random manifolds (:class:`RandomManifold`, embedding
    dimension ``num_units``), and all of them are evaluated at the same ``samples_per_class`` uniform
    points. Manifold ``s`` sets the time of the ``s``-th spike of each unit: its values are min-max
    standardised per unit over the samples of the class to ``y`` in [0, 1), and the spike time in steps is
    ``num_steps * (step_frac * (1 - offset_frac) * y + offset_frac)``. Each unit therefore fires exactly
    ``num_spikes`` spikes in every sample, within
    ``[num_steps * offset_frac, num_steps * (step_frac * (1 - offset_frac) + offset_frac))``.

    All randomness comes from a local ``torch.Generator`` seeded with ``seed``, so the global torch RNG
    is left untouched and every process that calls this with the same arguments gets the same data.

    Args:
        num_classes: Number of classes, one family of manifolds each.
        num_units: Number of input units, the embedding dimension.
        num_steps: Length of a sample in time steps.
        step_frac: Fraction of ``num_steps`` over which spike times spread; in (0, 1].
        offset_frac: Fraction of ``num_steps`` before the earliest spike; in [0, 1).
        dim_manifold: Intrinsic dimension of each manifold.
        num_spikes: Spikes per unit and sample.
        samples_per_class: Number of samples of each class.
        alpha: Smoothness exponent of the manifolds (see :class:`RandomManifold`).
        seed: Seed of the local generator.
        shuffle: Shuffle the samples; otherwise they are ordered by class.

    Returns:
        ``(times, units, labels)`` with ``N = num_classes * samples_per_class``:

        - ``times``: float64 tensor ``(N, num_units * num_spikes)`` of spike times in steps (not yet
          binned). Column ``s * num_units + u`` contains spike ``s`` of unit ``u``.
        - ``units``: int64 tensor of the same shape with the unit id of each spike.
        - ``labels``: int64 tensor ``(N,)`` of class ids.
    """
    for name, value in [
        ("num_classes", num_classes),
        ("num_units", num_units),
        ("num_steps", num_steps),
        ("dim_manifold", dim_manifold),
        ("num_spikes", num_spikes),
        ("samples_per_class", samples_per_class),
    ]:
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}.")
    if not 0 < step_frac <= 1:
        raise ValueError(f"step_frac must lie in (0, 1], got {step_frac}.")
    if not 0 <= offset_frac < 1:
        raise ValueError(f"offset_frac must lie in [0, 1), got {offset_frac}.")

    generator = torch.Generator().manual_seed(seed)

    # Each manifold gets its own seed, so a class keeps its manifolds when samples_per_class changes.
    manifold_seeds = torch.randint(0, 2**62, (num_classes, num_spikes), generator=generator)

    times_per_class = []
    for label in range(num_classes):
        points = torch.rand((samples_per_class, dim_manifold), generator=generator, dtype=torch.float64)
        spike_fractions = []
        for spike in range(num_spikes):
            manifold_generator = torch.Generator().manual_seed(int(manifold_seeds[label, spike]))
            manifold = RandomManifold(num_units, dim_manifold, alpha=alpha, generator=manifold_generator)
            spike_fractions.append(_standardize_min_max(manifold(points)))
        fractions = torch.cat(spike_fractions, dim=1)
        times_per_class.append(num_steps * (step_frac * (1 - offset_frac) * fractions + offset_frac))

    times = torch.cat(times_per_class, dim=0)
    labels = torch.arange(num_classes).repeat_interleave(samples_per_class)
    units = torch.arange(num_units).repeat(num_spikes).expand(times.shape[0], -1).contiguous()

    if shuffle:
        order = torch.randperm(times.shape[0], generator=generator)
        times, units, labels = times[order], units[order], labels[order]
    return times, units, labels


def spike_times_to_raster(times: Tensor, units: Tensor, num_steps: int, num_units: int) -> Tensor:
    """Bin spike times into a binary raster.

    A spike at time ``t`` (in steps) goes into bin ``floor(t)``. Several spikes of one unit in one bin
    give a single 1, and spikes outside ``[0, num_steps)`` are dropped.

    Args:
        times: Float tensor ``(num_samples, num_events)`` of spike times in steps.
        units: Integer tensor of the same shape with the unit id of each spike, in ``[0, num_units)``.
        num_steps: Number of time bins.
        num_units: Number of units.

    Returns:
        bool tensor ``(num_samples, num_steps, num_units)``.
    """
    if times.shape != units.shape or times.dim() != 2:
        raise ValueError(
            f"times and units must be 2-D tensors of one shape, got {tuple(times.shape)} and "
            f"{tuple(units.shape)}."
        )

    bins = torch.floor(times)
    inside = (bins >= 0) & (bins < num_steps)
    sample_index = torch.arange(times.shape[0]).unsqueeze(1).expand_as(times)

    raster = torch.zeros(times.shape[0], num_steps, num_units, dtype=torch.bool)
    raster[sample_index[inside], bins[inside].long(), units[inside]] = True
    return raster


def _split_sizes(num_samples: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """Return the train, validation and test sizes. The train split takes what the others leave."""
    num_val = round(num_samples * val_fraction)
    num_test = round(num_samples * test_fraction)
    num_train = num_samples - num_val - num_test
    if num_train < 1:
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} leave no training samples "
            f"out of {num_samples}; lower the fractions or raise samples_per_class."
        )
    return num_train, num_val, num_test


class _RasterDataset(Dataset):
    """Fixed binary rasters stored as bool and served as float32."""

    def __init__(self, rasters: Tensor, labels: Tensor) -> None:
        self.rasters = rasters
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.rasters[index].to(torch.float32), self.labels[index]


class RandmanDataModule(SpikeDataModule):
    """Spike-timing randman classification (see :func:`make_spike_timing_randman`) as binary rasters.

    The defaults reproduce the shallow-network randman setting of Stork: 10 classes, 20 units that fire
    once each in the first half of 100 steps of 2 ms, 1000 samples per class split 8000 / 1000 / 1000.
    The generator's shuffled output is cut in order into train, validation and test. Spike times are
    binned with :func:`spike_times_to_raster`. The data depend only on ``data_seed`` and the generator
    arguments, so every DDP rank builds the same splits.

    Batches are ``(x, y)`` with ``x`` float32 ``(batch, num_steps, num_units)`` of 0/1 and ``y`` int64.

    Args:
        num_classes: Number of classes.
        num_units: Number of input units.
        num_steps: Time steps per sample.
        num_spikes: Spikes per unit and sample.
        dim_manifold: Intrinsic dimension of each class manifold.
        alpha: Smoothness exponent of the manifolds; larger is smoother and easier.
        step_frac: Fraction of ``num_steps`` over which spike times spread; in (0, 1].
        offset_frac: Fraction of ``num_steps`` before the earliest spike; in [0, 1).
        samples_per_class: Generated samples of each class, before the split.
        data_seed: Seed of the data generator, separate from the loader ``seed``.
        dt: Duration of one time step in seconds.
        val_fraction: Fraction of all samples in the validation split.
        test_fraction: Fraction of all samples in the test split.
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes; 0 loads in the main process.
        pin_memory: Pin host memory for faster copies to a GPU.
        persistent_workers: Keep workers alive between epochs; only used when ``num_workers > 0``.
        seed: Seed of the training shuffle order.
    """

    def __init__(
        self,
        num_classes: int = 10,
        num_units: int = 20,
        num_steps: int = 100,
        num_spikes: int = 1,
        dim_manifold: int = 1,
        alpha: float = 1.0,
        step_frac: float = 0.5,
        offset_frac: float = 0.0,
        samples_per_class: int = 1000,
        data_seed: int = 1,
        dt: float = 2e-3,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        batch_size: int = 250,
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
        if dt <= 0:
            raise ValueError(f"dt must be a positive time step in seconds, got {dt}.")
        if val_fraction < 0 or test_fraction < 0:
            raise ValueError(
                f"val_fraction and test_fraction must be 0 or more, got {val_fraction} and {test_fraction}."
            )
        self.save_hyperparameters()

        self.num_units = num_units
        self.num_spikes = num_spikes
        self.dim_manifold = dim_manifold
        self.alpha = alpha
        self.step_frac = step_frac
        self.offset_frac = offset_frac
        self.samples_per_class = samples_per_class
        self.data_seed = data_seed
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction

        self.input_shape = (num_units,)
        self.num_classes = num_classes
        self.num_steps = num_steps
        self.dt = dt

        # Fail here, not in setup(), when the fractions leave no training data.
        _split_sizes(num_classes * samples_per_class, val_fraction, test_fraction)

    def setup(self, stage: Optional[str] = None) -> None:
        # Generation is cheap and deterministic, so every stage builds all splits once.
        if self.train_set is not None:
            return

        times, units, labels = make_spike_timing_randman(
            num_classes=self.num_classes,
            num_units=self.num_units,
            num_steps=self.num_steps,
            step_frac=self.step_frac,
            offset_frac=self.offset_frac,
            dim_manifold=self.dim_manifold,
            num_spikes=self.num_spikes,
            samples_per_class=self.samples_per_class,
            alpha=self.alpha,
            seed=self.data_seed,
            shuffle=True,
        )
        rasters = spike_times_to_raster(times, units, self.num_steps, self.num_units)

        num_train, num_val, _ = _split_sizes(len(labels), self.val_fraction, self.test_fraction)
        train = slice(0, num_train)
        val = slice(num_train, num_train + num_val)
        test = slice(num_train + num_val, len(labels))
        self.train_set = _RasterDataset(rasters[train], labels[train])
        self.val_set = _RasterDataset(rasters[val], labels[val])
        self.test_set = _RasterDataset(rasters[test], labels[test])
