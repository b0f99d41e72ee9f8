"""Tests of the SHD-layout reader and the SHD, SSC and spoken-digits DataModules."""

import gzip
import hashlib
import io
import urllib.request

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fake_data import random_shd_samples, write_fake_shd, write_random_shd
from lightning_snn.data.shd import (
    SHDDataModule,
    SHDDataset,
    SpikeAugmentation,
    SpokenDigitsDataModule,
    SSCDataModule,
    num_steps_for,
    spoken_digits_path,
)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail any test that tries to reach the network."""

    def fail_on_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(urllib.request, "urlopen", fail_on_network)


# Edge cases on a grid of dt = 0.25 s over 1.5 s (6 steps) and 4 units. Every time below is exact in
# float16 except 0.3 (stored as 0.2998) and 1.499 (stored as 1.499023).
EDGE_SAMPLES = [
    ([], []),  # empty sample
    ([0.3], [2]),  # single spike, step 1
    ([0.25, 0.5], [1, 1]),  # on the edges of steps 1 and 2
    ([1.0, 1.25, 1.499, 1.5, 1.75], [0, 3, 3, 2, 1]),  # steps 4, 5, 5, then two past the end
    ([0.0, 0.1, 0.2, 0.1], [0, 0, 0, 4]),  # three spikes in one bin, one on unit 4 (out of range)
]
EDGE_RASTERS = [
    np.zeros((6, 4)),
    np.array([[0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]),
    np.array([[0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]),
    np.array([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]]),
    np.array([[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]),
]


@pytest.fixture
def edge_file(tmp_path):
    return write_fake_shd(tmp_path / "edge.h5", EDGE_SAMPLES, labels=[0, 1, 2, 3, 4])


@pytest.fixture
def shd_dir(tmp_path):
    """A folder with a 40-sample training file (8 speakers) and a 10-sample test file."""
    write_random_shd(tmp_path / "shd_train.h5", num_samples=40, num_speakers=8, seed=1)
    write_random_shd(tmp_path / "shd_test.h5", num_samples=10, num_speakers=2, seed=2)
    return tmp_path


def open_file_names():
    return {fid.name.decode() for fid in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)}


def test_num_steps_rounds_not_truncates():
    assert num_steps_for(0.7, 2e-3) == 350


def test_num_steps_rejects_zero_dt():
    with pytest.raises(ValueError, match="dt"):
        num_steps_for(0.7, 0.0)


@pytest.mark.parametrize("index", range(len(EDGE_SAMPLES)))
def test_dataset_bins_edge_cases(edge_file, index):
    dataset = SHDDataset(edge_file, dt=0.25, duration=1.5, num_units=4)
    raster, _ = dataset[index]
    np.testing.assert_array_equal(raster.numpy(), EDGE_RASTERS[index])


def test_dataset_raster_dtype_and_shape(edge_file):
    raster, _ = SHDDataset(edge_file, dt=0.25, duration=1.5, num_units=4)[1]
    assert raster.dtype == torch.float32
    assert raster.shape == (6, 4)


def test_dataset_label_is_int(edge_file):
    _, label = SHDDataset(edge_file, dt=0.25, duration=1.5, num_units=4)[3]
    assert type(label) is int
    assert label == 3


def test_dataset_late_times_not_overflowed(tmp_path):
    # 1.2 s at dt = 2 ms is step 600; float16 arithmetic would overflow or land elsewhere.
    path = write_fake_shd(tmp_path / "late.h5", [([1.2], [5])], labels=[0])
    raster, _ = SHDDataset(path, dt=2e-3, duration=1.4, num_units=700)[0]
    assert raster.shape == (700, 700)
    assert raster[600, 5] == 1
    assert raster.sum() == 1


def test_dataset_no_file_open_before_first_read(edge_file):
    dataset = SHDDataset(edge_file, dt=0.25, duration=1.5, num_units=4)
    assert str(edge_file) not in open_file_names()
    dataset[0]
    assert str(edge_file) in open_file_names()
    dataset.close()
    assert str(edge_file) not in open_file_names()


def test_dataset_preload_matches_lazy(edge_file):
    lazy = SHDDataset(edge_file, dt=0.25, duration=1.5, num_units=4)
    preloaded = SHDDataset(edge_file, dt=0.25, duration=1.5, num_units=4, preload=True)
    assert str(edge_file) not in open_file_names()
    for index in range(len(lazy)):
        torch.testing.assert_close(preloaded[index][0], lazy[index][0])
    lazy.close()


def test_dataset_workers_match_main_process(tmp_path):
    path = write_random_shd(tmp_path / "train.h5", num_samples=12)
    dataset = SHDDataset(path, dt=0.01, duration=1.0)
    dataset[0]  # open a handle in the parent before the workers fork
    expected = torch.stack([dataset[index][0] for index in range(len(dataset))])

    loader = DataLoader(dataset, batch_size=4, num_workers=2)
    batches = torch.cat([x for x, _ in loader])
    torch.testing.assert_close(batches, expected)
    dataset.close()


def test_dataset_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.h5"):
        SHDDataset(tmp_path / "absent.h5")


def test_augmentation_off_by_default():
    assert not SpikeAugmentation().is_active


@pytest.mark.parametrize(
    "field, value", [("time_jitter", -1.0), ("unit_jitter", -1.0), ("drop_probability", 1.5), ("insert_fraction", -0.1)]
)
def test_augmentation_rejects_invalid(field, value):
    with pytest.raises(ValueError, match=field):
        SpikeAugmentation(**{field: value})


def test_augmentation_drop_all_removes_every_spike():
    times, units = SpikeAugmentation(drop_probability=1.0)(
        np.array([0.1, 0.2]), np.array([1, 2]), np.random.default_rng(0), 1.0, 10, 100
    )
    assert len(times) == 0
    assert len(units) == 0


def test_augmentation_insert_count():
    # 0.01 of 100 steps x 10 units is 10 inserted spikes.
    times, units = SpikeAugmentation(insert_fraction=0.01)(
        np.array([0.1]), np.array([1]), np.random.default_rng(0), 1.0, 10, 100
    )
    assert len(times) == 11
    assert units.min() >= 0
    assert units.max() < 10


def test_augmentation_time_jitter_spread():
    times = np.full(20000, 0.5)
    jittered, _ = SpikeAugmentation(time_jitter=0.01)(
        times, np.zeros(20000, dtype=np.int64), np.random.default_rng(0), 1.0, 1, 100
    )
    assert abs(jittered.std() - 0.01) < 0.001


def test_augmentation_unit_jitter_rounds_to_channels():
    _, units = SpikeAugmentation(unit_jitter=2.0)(
        np.full(1000, 0.5), np.full(1000, 50), np.random.default_rng(0), 1.0, 100, 100
    )
    assert units.dtype == np.int64
    assert len(np.unique(units)) > 3


def test_augmentation_reproducible_from_torch_seed(tmp_path):
    path = write_random_shd(tmp_path / "train.h5", num_samples=2)
    augmentation = SpikeAugmentation(drop_probability=0.5)

    def first_item(seed):
        torch.manual_seed(seed)
        return SHDDataset(path, dt=0.01, duration=1.0, augmentation=augmentation)[0][0]

    torch.testing.assert_close(first_item(3), first_item(3))
    assert not torch.equal(first_item(3), first_item(4))


def test_datamodule_shapes_and_attributes(shd_dir):
    datamodule = SHDDataModule(data_dir=str(shd_dir), batch_size=8)
    assert datamodule.num_steps == 350
    assert datamodule.input_shape == (700,)
    assert datamodule.num_classes == 20

    datamodule.setup("fit")
    x, y = next(iter(datamodule.train_dataloader()))
    assert x.shape == (8, 350, 700)
    assert y.dtype == torch.int64


def test_datamodule_num_classes_from_keys(tmp_path):
    write_random_shd(tmp_path / "shd_train.h5", num_samples=10, num_classes=5)
    write_random_shd(tmp_path / "shd_test.h5", num_samples=5, num_classes=5)
    assert SHDDataModule(data_dir=str(tmp_path)).num_classes == 5


def test_datamodule_num_classes_default_without_keys(tmp_path):
    samples = random_shd_samples(4, np.random.default_rng(0))
    write_fake_shd(tmp_path / "shd_train.h5", samples, labels=[0, 1, 2, 3])
    write_fake_shd(tmp_path / "shd_test.h5", samples, labels=[0, 1, 2, 3])
    assert SHDDataModule(data_dir=str(tmp_path)).num_classes == 20


def test_datamodule_tonic_layout(tmp_path):
    write_random_shd(tmp_path / "SHD" / "shd_train.h5", num_samples=10)
    write_random_shd(tmp_path / "SHD" / "shd_test.h5", num_samples=5)
    datamodule = SHDDataModule(data_dir=str(tmp_path))
    datamodule.setup("test")
    assert len(datamodule.test_set) == 5


def test_datamodule_random_split_sizes(shd_dir):
    datamodule = SHDDataModule(data_dir=str(shd_dir), val_fraction=0.25)
    datamodule.setup("fit")
    assert len(datamodule.val_set) == 10
    assert len(datamodule.train_set) == 30
    assert set(datamodule.train_set.indices).isdisjoint(datamodule.val_set.indices)


def test_datamodule_random_split_seeded(shd_dir):
    first = SHDDataModule(data_dir=str(shd_dir), seed=5)
    second = SHDDataModule(data_dir=str(shd_dir), seed=5)
    first.setup("fit")
    second.setup("fit")
    assert first.val_set.indices == second.val_set.indices


def test_datamodule_speaker_split_disjoint(shd_dir):
    datamodule = SHDDataModule(data_dir=str(shd_dir), val_split="speaker", val_fraction=0.25)
    datamodule.setup("fit")
    # write_random_shd gives sample i the speaker i % 8.
    train_speakers = {index % 8 for index in datamodule.train_set.indices}
    val_speakers = {index % 8 for index in datamodule.val_set.indices}
    assert len(datamodule.val_speakers) == 2  # 0.25 of 8 speakers
    assert val_speakers == set(datamodule.val_speakers)
    assert train_speakers.isdisjoint(val_speakers)
    assert len(datamodule.train_set) + len(datamodule.val_set) == 40


def test_datamodule_speaker_split_needs_speakers(tmp_path):
    samples = random_shd_samples(4, np.random.default_rng(0))
    write_fake_shd(tmp_path / "shd_train.h5", samples, labels=[0, 1, 2, 3])
    write_fake_shd(tmp_path / "shd_test.h5", samples, labels=[0, 1, 2, 3])
    datamodule = SHDDataModule(data_dir=str(tmp_path), val_split="speaker")
    with pytest.raises(ValueError, match="extra/speaker"):
        datamodule.setup("fit")


def test_datamodule_zero_val_fraction_skips_validation(shd_dir):
    datamodule = SHDDataModule(data_dir=str(shd_dir), val_fraction=0.0)
    datamodule.setup("fit")
    assert len(datamodule.train_set) == 40
    assert datamodule.val_dataloader() == []


def test_datamodule_augments_train_only(shd_dir):
    datamodule = SHDDataModule(data_dir=str(shd_dir), drop_probability=0.5, time_jitter=0.005)
    datamodule.setup()
    clean = SHDDataset(shd_dir / "shd_train.h5")
    clean_test = SHDDataset(shd_dir / "shd_test.h5")

    train_index = datamodule.train_set.indices[0]
    val_index = datamodule.val_set.indices[0]
    assert not torch.equal(datamodule.train_set[0][0], clean[train_index][0])
    assert torch.equal(datamodule.val_set[0][0], clean[val_index][0])
    assert torch.equal(datamodule.test_set[0][0], clean_test[0][0])


def test_datamodule_missing_files_names_fix(tmp_path):
    datamodule = SHDDataModule(data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="download=True") as error:
        datamodule.prepare_data()
    assert str(tmp_path / "shd_train.h5") in str(error.value)
    assert str(tmp_path / "SHD" / "shd_test.h5") in str(error.value)


def test_datamodule_setup_without_files_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="shd_test.h5"):
        SHDDataModule(data_dir=str(tmp_path)).setup("test")


def fake_server(monkeypatch, files, md5_sums):
    """Serve ``files`` (URL file name to bytes) and an md5sums.txt through urllib.request.urlopen."""
    listing = "".join(f"{checksum}  {name}\n" for name, checksum in md5_sums.items()).encode()
    served = dict(files, **{"md5sums.txt": listing})
    requested = []

    def urlopen(url, *args, **kwargs):
        name = url.rsplit("/", 1)[-1]
        requested.append(name)
        return io.BytesIO(served[name])

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return requested


def test_download_only_when_requested(tmp_path, monkeypatch):
    source = tmp_path / "source"
    archives = {}
    for name in ("shd_train.h5", "shd_test.h5"):
        write_random_shd(source / name, num_samples=6)
        archives[name + ".gz"] = gzip.compress((source / name).read_bytes())
    md5_sums = {name: hashlib.md5(data).hexdigest() for name, data in archives.items()}
    requested = fake_server(monkeypatch, archives, md5_sums)
    target = tmp_path / "target"

    with pytest.raises(FileNotFoundError):
        SHDDataModule(data_dir=str(target)).prepare_data()
    assert requested == []

    SHDDataModule(data_dir=str(target), download=True).prepare_data()
    assert (target / "shd_train.h5").read_bytes() == (source / "shd_train.h5").read_bytes()
    assert (target / "shd_test.h5").read_bytes() == (source / "shd_test.h5").read_bytes()
    assert sorted(path.name for path in target.iterdir()) == ["shd_test.h5", "shd_train.h5"]


def test_download_checksum_mismatch_raises(tmp_path, monkeypatch):
    archives = {"shd_train.h5.gz": gzip.compress(b"corrupt"), "shd_test.h5.gz": gzip.compress(b"x")}
    fake_server(monkeypatch, archives, {name: "0" * 32 for name in archives})
    with pytest.raises(OSError, match="MD5 mismatch"):
        SHDDataModule(data_dir=str(tmp_path), download=True).prepare_data()
    assert not (tmp_path / "shd_train.h5").exists()


def test_ssc_uses_official_validation_file(tmp_path):
    write_random_shd(tmp_path / "ssc_train.h5", num_samples=12, num_classes=35)
    write_random_shd(tmp_path / "ssc_valid.h5", num_samples=5, num_classes=35)
    write_random_shd(tmp_path / "ssc_test.h5", num_samples=7, num_classes=35)
    datamodule = SSCDataModule(data_dir=str(tmp_path))
    datamodule.setup()
    assert datamodule.num_classes == 35
    assert len(datamodule.train_set) == 12
    assert len(datamodule.val_set) == 5
    assert len(datamodule.test_set) == 7


def test_ssc_missing_valid_file_raises(tmp_path):
    write_random_shd(tmp_path / "ssc_train.h5", num_samples=4, num_classes=35)
    write_random_shd(tmp_path / "ssc_test.h5", num_samples=4, num_classes=35)
    with pytest.raises(FileNotFoundError, match="ssc_valid.h5"):
        SSCDataModule(data_dir=str(tmp_path)).prepare_data()


def test_spoken_digits_file_contents():
    datamodule = SpokenDigitsDataModule()
    datamodule.setup("fit")
    dataset = datamodule.train_set
    assert len(dataset) == 20
    assert datamodule.num_classes == 20
    assert datamodule.input_shape == (700,)
    assert datamodule.num_steps == 500
    assert sorted(int(dataset[index][1]) for index in range(20)) == list(range(20))


def test_spoken_digits_window_keeps_every_spike():
    with h5py.File(spoken_digits_path(), "r") as file:
        last_spike = max(float(times.max()) for times in file["spikes/times"][:])
    assert last_spike < SpokenDigitsDataModule().duration


def test_spoken_digits_spike_counts_plausible():
    datamodule = SpokenDigitsDataModule()
    datamodule.setup("test")
    with h5py.File(spoken_digits_path(), "r") as file:
        spike_counts = [len(times) for times in file["spikes/times"][:]]
    for index, spike_count in enumerate(spike_counts):
        raster, _ = datamodule.test_set[index]
        assert 1000 < spike_count < 10000
        # Coincident spikes of one channel in one 2 ms bin merge, so the raster has at most as many ones.
        assert spike_count / 2 < raster.sum() <= spike_count


def test_spoken_digits_batch_shape():
    datamodule = SpokenDigitsDataModule(batch_size=4)
    datamodule.setup("fit")
    x, y = next(iter(datamodule.val_dataloader()))
    assert x.shape == (4, 500, 700)
    assert y.tolist() == [0, 1, 2, 3]
