import math

import pytest
import torch

from lightning_snn.data.randman import (
    RandmanDataModule,
    RandomManifold,
    _split_sizes,
    make_spike_timing_randman,
    spike_times_to_raster,
)

# Small settings keep each generation to a few milliseconds.
SMALL = dict(num_classes=3, num_units=5, num_steps=40, samples_per_class=30, alpha=2.0)


# RandomManifold


def test_manifold_frequency_count():
    # F = ceil(precision^(-1/alpha)): 1000 for alpha 1, ceil(sqrt(1000)) = 32 for alpha 2.
    assert RandomManifold(2, alpha=1.0).num_frequencies == 1000
    assert RandomManifold(2, alpha=2.0).num_frequencies == 32


def test_manifold_matches_fourier_series():
    generator = torch.Generator().manual_seed(3)
    manifold = RandomManifold(3, manifold_dim=2, alpha=2.0, beta=0.5, precision=0.05, generator=generator)
    points = torch.tensor([[0.1, 0.7], [0.5, 0.2], [0.9, 0.95]], dtype=torch.float64)

    # y_k = prod_d sum_i a * s_i * sin(2 pi (i * b * x_d + c)), s_i = 1 / (|i + 1 - beta|^alpha + 1).
    coefficients = manifold.coefficients
    expected = torch.ones(3, 3, dtype=torch.float64)
    for n in range(3):
        for k in range(3):
            for d in range(2):
                series = 0.0
                for i in range(manifold.num_frequencies):
                    amplitude, frequency, phase = coefficients[k, d, :, i].tolist()
                    envelope = 1.0 / (abs(i + 1 - 0.5) ** 2.0 + 1.0)
                    x = points[n, d].item()
                    series += amplitude * envelope * math.sin(2 * math.pi * (i * frequency * x + phase))
                expected[n, k] *= series

    torch.testing.assert_close(manifold(points), expected)


def test_manifold_drops_constant_term():
    manifold = RandomManifold(4, manifold_dim=2, generator=torch.Generator().manual_seed(0))
    assert torch.all(manifold.coefficients[:, :, 0, 0] == 0)


def test_manifold_rejects_wrong_point_shape():
    manifold = RandomManifold(4, manifold_dim=2)
    with pytest.raises(ValueError, match="points must have shape"):
        manifold(torch.rand(5, 3))


# make_spike_timing_randman


def test_randman_same_seed_same_data():
    first = make_spike_timing_randman(**SMALL, seed=7)
    second = make_spike_timing_randman(**SMALL, seed=7)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_randman_other_seed_other_data():
    times_a, _, _ = make_spike_timing_randman(**SMALL, seed=7)
    times_b, _, _ = make_spike_timing_randman(**SMALL, seed=8)
    assert not torch.equal(times_a, times_b)


def test_randman_leaves_global_rng():
    state = torch.get_rng_state()
    make_spike_timing_randman(**SMALL)
    assert torch.equal(torch.get_rng_state(), state)


def test_randman_output_shapes():
    times, units, labels = make_spike_timing_randman(**SMALL, num_spikes=2)
    assert times.shape == (90, 10)
    assert units.shape == (90, 10)
    assert labels.shape == (90,)
    assert units.dtype == torch.int64
    assert labels.dtype == torch.int64


def test_randman_each_unit_fires_num_spikes():
    _, units, _ = make_spike_timing_randman(**SMALL, num_spikes=3)
    counts = torch.stack([torch.bincount(row, minlength=5) for row in units])
    assert torch.all(counts == 3)


def test_randman_times_within_window():
    times, _, _ = make_spike_timing_randman(**SMALL, step_frac=0.5)
    assert times.min() >= 0.0
    assert times.max() <= 40 * 0.5


def test_randman_label_counts():
    _, _, labels = make_spike_timing_randman(**SMALL)
    assert torch.equal(torch.bincount(labels), torch.tensor([30, 30, 30]))


def test_randman_standardized_per_class():
    times, units, labels = make_spike_timing_randman(**SMALL, num_spikes=2, step_frac=0.5)
    for label in range(3):
        class_times = times[labels == label]
        # Every column (one spike of one unit) spans the whole window [0, num_steps * step_frac).
        assert torch.all(class_times.min(dim=0).values == 0.0)
        torch.testing.assert_close(
            class_times.max(dim=0).values, torch.full((10,), 20.0, dtype=torch.float64), atol=1e-4, rtol=0
        )


def test_randman_offset_shifts_window():
    # With offset 0.25 and step_frac 0.5 on 40 steps the window is [10, 10 + 0.5 * 0.75 * 40] = [10, 25].
    times, _, labels = make_spike_timing_randman(**SMALL, step_frac=0.5, offset_frac=0.25)
    class_times = times[labels == 0]
    assert torch.all(class_times.min(dim=0).values == 10.0)
    assert class_times.max() <= 25.0


def test_randman_unshuffled_ordered_by_class():
    _, _, labels = make_spike_timing_randman(**SMALL, shuffle=False)
    assert torch.equal(labels, torch.tensor([0] * 30 + [1] * 30 + [2] * 30))


def test_randman_classes_differ():
    times, _, labels = make_spike_timing_randman(**SMALL, shuffle=False)
    assert not torch.allclose(times[labels == 0], times[labels == 1])


def test_randman_rejects_bad_step_frac():
    with pytest.raises(ValueError, match="step_frac"):
        make_spike_timing_randman(**SMALL, step_frac=1.5)


# spike_times_to_raster


def test_raster_bins_by_floor():
    times = torch.tensor([[3.7, 0.0, 9.99]])
    units = torch.tensor([[0, 1, 2]])
    raster = spike_times_to_raster(times, units, num_steps=10, num_units=3)
    assert raster.shape == (1, 10, 3)
    assert raster[0, 3, 0]
    assert raster[0, 0, 1]
    assert raster[0, 9, 2]
    assert raster.sum() == 3


def test_raster_merges_same_bin():
    times = torch.tensor([[2.1, 2.9]])
    units = torch.tensor([[1, 1]])
    raster = spike_times_to_raster(times, units, num_steps=5, num_units=2)
    assert raster.sum() == 1
    assert raster[0, 2, 1]


def test_raster_drops_late_spikes():
    times = torch.tensor([[5.0, 7.5, 4.999]])
    units = torch.tensor([[0, 1, 1]])
    raster = spike_times_to_raster(times, units, num_steps=5, num_units=2)
    assert raster.sum() == 1
    assert raster[0, 4, 1]


# RandmanDataModule


def make_module(**overrides) -> RandmanDataModule:
    settings = dict(num_classes=10, num_units=20, samples_per_class=10, batch_size=16)
    settings.update(overrides)
    return RandmanDataModule(**settings)


def test_module_defaults_match_shallow_setting():
    module = RandmanDataModule()
    assert module.input_shape == (20,)
    assert module.num_classes == 10
    assert module.num_steps == 100
    assert module.dt == 2e-3
    assert module.batch_size == 250
    assert module.hparams.samples_per_class == 1000


def test_module_default_split_sizes():
    # 10 classes x 1000 samples cut 0.8 / 0.1 / 0.1, checked without generating them.
    assert _split_sizes(10_000, 0.1, 0.1) == (8000, 1000, 1000)


def test_module_split_sizes():
    module = make_module()
    module.setup("fit")
    assert len(module.train_set) == 80
    assert len(module.val_set) == 10
    assert len(module.test_set) == 10


def test_module_batch_layout():
    module = make_module()
    module.setup("fit")
    x, y = next(iter(module.train_dataloader()))
    assert x.shape == (16, 100, 20)
    assert x.dtype == torch.float32
    assert y.dtype == torch.int64
    assert torch.all((x == 0) | (x == 1))


def test_module_one_spike_per_unit():
    # One spike per unit inside the first half of the window, so each unit column sums to 1.
    module = make_module()
    module.setup("fit")
    x, _ = module.val_set[0]
    assert torch.all(x.sum(dim=0) == 1)
    assert x[50:].sum() == 0


def test_module_rasters_match_generator():
    module = make_module(data_seed=5)
    module.setup("fit")
    times, _, labels = make_spike_timing_randman(
        num_classes=10, num_units=20, num_steps=100, step_frac=0.5, dim_manifold=1,
        num_spikes=1, samples_per_class=10, alpha=1.0, seed=5,
    )
    # The test split is the last 10 generated samples.
    x, y = module.test_set[0]
    assert y == labels[90]
    assert torch.equal(x.argmax(dim=0), torch.floor(times[90]).long())


def test_module_same_seed_same_splits():
    first, second = make_module(data_seed=3), make_module(data_seed=3)
    first.setup("fit")
    second.setup("fit")
    for split in ("train_set", "val_set", "test_set"):
        assert torch.equal(getattr(first, split).rasters, getattr(second, split).rasters)
        assert torch.equal(getattr(first, split).labels, getattr(second, split).labels)


def test_module_other_seed_other_data():
    first, second = make_module(data_seed=3), make_module(data_seed=4)
    first.setup("fit")
    second.setup("fit")
    assert not torch.equal(first.train_set.rasters, second.train_set.rasters)


def test_module_rejects_large_fractions():
    with pytest.raises(ValueError, match="leave no training samples"):
        make_module(val_fraction=0.5, test_fraction=0.5)
