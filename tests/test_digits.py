import socket

import pytest
import torch

from lightning_snn.data.digits import DigitsDataModule


@pytest.fixture(scope="module")
def latency_module() -> DigitsDataModule:
    module = DigitsDataModule(batch_size=32)
    module.setup("fit")
    return module


@pytest.fixture(scope="module")
def poisson_module() -> DigitsDataModule:
    module = DigitsDataModule(encoding="poisson", batch_size=32)
    module.setup("fit")
    return module


def test_digits_attributes():
    module = DigitsDataModule()
    assert module.input_shape == (64,)
    assert module.num_inputs == 64
    assert module.num_classes == 10
    assert module.num_steps == 100
    assert module.dt == 1e-3


def test_digits_split_sizes(latency_module):
    # 1797 images; round(1797 * 0.15) = 270 each for validation and test.
    assert len(latency_module.train_set) == 1257
    assert len(latency_module.val_set) == 270
    assert len(latency_module.test_set) == 270


def test_digits_batch_layout(latency_module):
    x, y = next(iter(latency_module.train_dataloader()))
    assert x.shape == (32, 100, 64)
    assert x.dtype == torch.float32
    assert y.dtype == torch.int64
    assert torch.all((x == 0) | (x == 1))


def test_digits_all_classes_in_every_split(latency_module):
    for split in ("train_set", "val_set", "test_set"):
        assert set(getattr(latency_module, split).labels.tolist()) == set(range(10))


def test_digits_latency_every_sample_spikes(latency_module):
    for split in ("train_set", "val_set", "test_set"):
        rasters = getattr(latency_module, split).rasters
        assert torch.all(rasters.sum(dim=(1, 2)) > 0)


def test_digits_latency_darkest_pixel_bin(latency_module):
    # A pixel of gray level 16 maps to 1.0 and fires at 50 ln(1 / 0.9) = 5.27 -> bin 5.
    dataset = latency_module.train_set
    image = dataset.images[0]
    x, _ = dataset[0]
    darkest = image == 1.0
    assert darkest.any()
    assert torch.all(x[5, darkest] == 1)


def test_digits_latency_at_most_one_spike(latency_module):
    x, _ = latency_module.train_set[0]
    assert x.sum(dim=0).max() == 1


def test_digits_same_seed_same_split():
    first, second = DigitsDataModule(data_seed=4), DigitsDataModule(data_seed=4)
    first.setup("fit")
    second.setup("fit")
    assert torch.equal(first.test_set.images, second.test_set.images)
    assert torch.equal(first.train_set.labels, second.train_set.labels)


def test_digits_other_seed_other_split(latency_module):
    other = DigitsDataModule(data_seed=5)
    other.setup("fit")
    assert not torch.equal(other.test_set.images, latency_module.test_set.images)


def test_digits_poisson_train_redraws(poisson_module):
    first, _ = poisson_module.train_set[0]
    second, _ = poisson_module.train_set[0]
    assert not torch.equal(first, second)


def test_digits_poisson_val_fixed(poisson_module):
    first, _ = poisson_module.val_set[0]
    second, _ = poisson_module.val_set[0]
    assert torch.equal(first, second)


def test_digits_poisson_val_same_across_instances(poisson_module):
    other = DigitsDataModule(encoding="poisson")
    other.setup("validate")
    assert torch.equal(other.val_set.rasters, poisson_module.val_set.rasters)


def test_digits_poisson_batch_layout(poisson_module):
    x, y = next(iter(poisson_module.train_dataloader()))
    assert x.shape == (32, 100, 64)
    assert x.dtype == torch.float32
    assert torch.all((x == 0) | (x == 1))


def test_digits_setup_offline(monkeypatch):
    def refuse_connection(*args, **kwargs):
        raise AssertionError("DigitsDataModule opened a network connection.")

    monkeypatch.setattr(socket, "create_connection", refuse_connection)
    monkeypatch.setattr(socket.socket, "connect", refuse_connection)
    module = DigitsDataModule()
    module.setup("fit")
    assert len(module.train_set) > 0


def test_digits_rejects_unknown_encoding():
    with pytest.raises(ValueError, match="encoding"):
        DigitsDataModule(encoding="rate")


def test_digits_rejects_large_fractions():
    with pytest.raises(ValueError, match="sum below 1"):
        DigitsDataModule(val_fraction=0.5, test_fraction=0.5)
