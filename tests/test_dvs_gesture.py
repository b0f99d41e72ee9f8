"""Tests of the DVS128 Gesture frames, their disk cache and the DataModule, on fake tonic-layout trees."""

import urllib.request

import numpy as np
import pytest
import torch

from fake_data import write_fake_dvs_gesture
from lightning_snn.data.dvs_gesture import DVSGestureDataModule, DVSGestureFrames, events_to_frames

# Small settings: 10 ms frames. The random recordings span up to 400 ms, so 40 frames at most.
DT = 0.01
NUM_STEPS = 20


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail any test in which urllib or tonic tries to download."""
    import tonic.dataset

    def fail_on_network(*args, **kwargs):
        raise AssertionError(f"download attempted: {args}")

    monkeypatch.setattr(urllib.request, "urlopen", fail_on_network)
    monkeypatch.setattr(tonic.dataset, "download_and_extract_archive", fail_on_network)


def dense_recording(count, max_time_ms, seed):
    """Return a recording of ``count`` random events as an (N, 4) array of x, y, p, t in ms."""
    rng = np.random.default_rng(seed)
    columns = [
        rng.integers(0, 128, count),
        rng.integers(0, 128, count),
        rng.integers(0, 2, count),
        np.sort(rng.integers(0, max_time_ms, count)),
    ]
    return np.stack(columns, axis=1).astype(np.float64)


# Recordings with known properties, placed in user 1 of the training split (indices 0 to 10 after
# sorting by path: "user01_led/0.npy", "1.npy", "10.npy", "2.npy", ...).
LONG = dense_recording(20000, 1000, seed=1)  # 100 frames of 10 ms, more than NUM_STEPS
SHORT = np.array([[127, 5, 1, 0], [0, 0, 0, 15], [64, 64, 1, 15], [3, 3, 0, 42]], dtype=np.float64)
EMPTY = np.zeros((0, 4))


@pytest.fixture(scope="module")
def gesture_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("dvs")
    special = {(1, 0): LONG, (1, 1): SHORT, (1, 2): EMPTY}
    write_fake_dvs_gesture(data_dir, "train", events=special, seed=0)
    write_fake_dvs_gesture(data_dir, "test", users=range(20, 30), seed=1)
    return data_dir


def make_datamodule(data_dir, tmp_path, **kwargs):
    kwargs = {"dt": DT, "num_steps": NUM_STEPS, "cache_dir": str(tmp_path / "cache"), **kwargs}
    return DVSGestureDataModule(data_dir=str(data_dir), **kwargs)


def test_frames_shape():
    events = np.zeros(3, dtype=[("x", np.int16), ("y", np.int16), ("p", bool), ("t", np.int64)])
    events["t"] = [0, 5000, 25000]  # microseconds
    frames = events_to_frames(events, dt=0.01, target_size=(32, 32))
    assert frames.shape == (3, 2, 32, 32)


def test_frames_pool_pixels_and_bin_time():
    events = np.zeros(4, dtype=[("x", np.int16), ("y", np.int16), ("p", bool), ("t", np.int64)])
    events["x"], events["y"], events["p"] = [127, 0, 64, 3], [5, 0, 64, 3], [1, 0, 1, 0]
    events["t"] = [0, 9999, 10000, 42000]
    frames = events_to_frames(events, dt=0.01, target_size=(32, 32))
    # Pixel (x, y) pools to (x // 4, y // 4); time t lands in frame t // 10 ms.
    assert frames[0, 1, 1, 31] == 1
    assert frames[0, 0, 0, 0] == 1
    assert frames[1, 1, 16, 16] == 1
    assert frames[4, 0, 0, 0] == 1
    assert frames.sum() == 4


def test_frames_count_every_event():
    recording = dense_recording(5000, 700, seed=3)
    events = np.zeros(len(recording), dtype=[("x", np.int16), ("y", np.int16), ("p", bool), ("t", np.int64)])
    events["x"], events["y"], events["p"] = recording[:, 0], recording[:, 1], recording[:, 2]
    events["t"] = recording[:, 3] * 1000
    frames = events_to_frames(events, dt=0.002, target_size=(32, 32))
    assert frames.sum() == 5000
    assert frames.shape[0] == int(recording[:, 3].max()) // 2 + 1


def test_frames_empty_recording():
    events = np.zeros(0, dtype=[("x", np.int16), ("y", np.int16), ("p", bool), ("t", np.int64)])
    assert events_to_frames(events, dt=0.01, target_size=(32, 32)).shape == (0, 2, 32, 32)


def test_datamodule_attributes(gesture_dir, tmp_path):
    datamodule = make_datamodule(gesture_dir, tmp_path)
    assert datamodule.input_shape == (2, 32, 32)
    assert datamodule.num_inputs == 2048
    assert datamodule.num_classes == 11
    assert datamodule.num_steps == NUM_STEPS


def test_datamodule_batch_shape(gesture_dir, tmp_path):
    datamodule = make_datamodule(gesture_dir, tmp_path, batch_size=4)
    datamodule.prepare_data()
    datamodule.setup("fit")
    x, y = next(iter(datamodule.train_dataloader()))
    assert x.shape == (4, NUM_STEPS, 2, 32, 32)
    assert x.dtype == torch.float32
    assert y.dtype == torch.int64


def test_test_items_count_events_in_window(gesture_dir, tmp_path):
    datamodule = make_datamodule(gesture_dir, tmp_path)
    datamodule.setup("test")
    test_files = sorted((gesture_dir / "DVSGesture" / "ibmGestureTest").glob("**/*.npy"))
    window_ms = NUM_STEPS * DT * 1000
    for index in (0, 5, 50):
        recording = np.load(test_files[index])
        expected = int((recording[:, 3] < window_ms).sum())
        frames, label = datamodule.test_set[index]
        assert frames.sum() == expected
        assert label == int(test_files[index].stem)


def test_test_items_deterministic(gesture_dir, tmp_path):
    datamodule = make_datamodule(gesture_dir, tmp_path)
    datamodule.setup("test")
    first, _ = datamodule.test_set[7]
    second, _ = datamodule.test_set[7]
    assert torch.equal(first, second)


def test_test_items_same_in_workers(gesture_dir, tmp_path):
    datamodule = make_datamodule(gesture_dir, tmp_path, batch_size=8)
    datamodule.setup("test")
    expected = torch.stack([datamodule.test_set[index][0] for index in range(16)])
    datamodule.num_workers = 2
    loader = datamodule.test_dataloader()
    batches = [x for x, _ in zip(loader, range(2))]
    torch.testing.assert_close(torch.cat([x for x, _ in batches]), expected)


def test_val_items_start_at_frame_zero(gesture_dir, tmp_path):
    datamodule = make_datamodule(gesture_dir, tmp_path, val_fraction=0.5)
    datamodule.setup("fit")
    val_indices = datamodule.val_set.indices
    train_files = sorted((gesture_dir / "DVSGesture" / "ibmGestureTrain").glob("**/*.npy"))
    recording = np.load(train_files[val_indices[0]])
    expected = int((recording[:, 3] < NUM_STEPS * DT * 1000).sum())
    assert datamodule.val_set[0][0].sum() == expected


def test_val_split_sizes_and_disjoint(gesture_dir, tmp_path):
    datamodule = make_datamodule(gesture_dir, tmp_path, val_fraction=0.2)
    datamodule.setup("fit")
    assert len(datamodule.val_set) == 22  # 0.2 of 110
    assert len(datamodule.train_set) == 88
    assert set(datamodule.train_set.indices).isdisjoint(datamodule.val_set.indices)


def test_train_crop_random(gesture_dir, tmp_path):
    datamodule = make_datamodule(gesture_dir, tmp_path)
    datamodule.prepare_data()
    frames = DVSGestureFrames(datamodule.cache_path("train"), NUM_STEPS, random_crop=True)
    full = DVSGestureFrames(datamodule.cache_path("train"), num_steps=100)[0][0]  # LONG, all 100 frames
    crops = [frames[0][0] for _ in range(10)]
    starts = set()
    for crop in crops:
        # Each crop equals some window of NUM_STEPS consecutive frames of the whole recording.
        matches = [start for start in range(81) if torch.equal(crop, full[start : start + NUM_STEPS])]
        assert matches
        starts.add(matches[0])
    assert len(starts) > 1


def test_short_recording_zero_padded(gesture_dir, tmp_path):
    datamodule = make_datamodule(gesture_dir, tmp_path)
    datamodule.prepare_data()
    frames = DVSGestureFrames(datamodule.cache_path("train"), NUM_STEPS, random_crop=True)
    short, _ = frames[1]  # SHORT: events at 0, 15, 15 and 42 ms, so 5 frames
    assert short.shape == (NUM_STEPS, 2, 32, 32)
    assert short[0, 1, 1, 31] == 1
    assert short[1].sum() == 2
    assert short[4, 0, 0, 0] == 1
    assert short[5:].sum() == 0


def test_empty_recording_all_zero(gesture_dir, tmp_path):
    datamodule = make_datamodule(gesture_dir, tmp_path)
    datamodule.prepare_data()
    empty, _ = DVSGestureFrames(datamodule.cache_path("train"), NUM_STEPS, random_crop=True)[3]  # "2.npy"
    assert empty.shape == (NUM_STEPS, 2, 32, 32)
    assert empty.sum() == 0


def test_thinning_keeps_fraction(gesture_dir, tmp_path):
    datamodule = make_datamodule(gesture_dir, tmp_path)
    datamodule.prepare_data()
    cache = datamodule.cache_path("train")
    thinned = DVSGestureFrames(cache, num_steps=100, random_crop=True, drop_probability=0.5)
    total = DVSGestureFrames(cache, num_steps=100)[0][0].sum().item()
    kept_events = np.mean([thinned[0][0].sum().item() for _ in range(5)])
    assert total == 20000
    # Binomial(20000, 0.5) over 5 draws: the mean has a standard deviation of 32 events.
    assert abs(kept_events / total - 0.5) < 0.02


def test_binary_clamps_counts(gesture_dir, tmp_path):
    datamodule = make_datamodule(gesture_dir, tmp_path)
    datamodule.prepare_data()
    cache = datamodule.cache_path("train")
    counts = DVSGestureFrames(cache, num_steps=100)[0][0]
    binary = DVSGestureFrames(cache, num_steps=100, binary=True)[0][0]
    assert counts.max() > 1
    assert torch.equal(binary, (counts > 0).float())


def test_datamodule_thins_train_only(gesture_dir, tmp_path):
    datamodule = make_datamodule(gesture_dir, tmp_path, num_steps=100, val_fraction=0.0)
    datamodule.setup()
    test_files = sorted((gesture_dir / "DVSGesture" / "ibmGestureTest").glob("**/*.npy"))
    assert datamodule.train_set[0][0].sum() < 20000 * 0.6  # LONG, about half of its events kept
    assert datamodule.test_set[0][0].sum() == len(np.load(test_files[0]))
    assert datamodule.val_dataloader() == []


def test_cache_key_changes_with_dt(gesture_dir, tmp_path):
    coarse = make_datamodule(gesture_dir, tmp_path, dt=0.02)
    fine = make_datamodule(gesture_dir, tmp_path, dt=0.01)
    assert coarse.cache_path("train") != fine.cache_path("train")


def test_cache_key_changes_with_size(gesture_dir, tmp_path):
    small = make_datamodule(gesture_dir, tmp_path, target_size=(16, 16))
    large = make_datamodule(gesture_dir, tmp_path)
    assert small.cache_path("train") != large.cache_path("train")


def test_cache_key_ignores_loader_settings(gesture_dir, tmp_path):
    first = make_datamodule(gesture_dir, tmp_path, num_steps=10, drop_probability=0.0, binary=True)
    second = make_datamodule(gesture_dir, tmp_path)
    assert first.cache_path("test") == second.cache_path("test")


def test_cache_written_once(gesture_dir, tmp_path, monkeypatch):
    datamodule = make_datamodule(gesture_dir, tmp_path)
    datamodule.prepare_data()
    cache_dir = tmp_path / "cache"
    assert sorted(path.name.split("-")[1] for path in cache_dir.iterdir()) == ["test", "train"]

    def fail(*args, **kwargs):
        raise AssertionError("cache rebuilt")

    monkeypatch.setattr("lightning_snn.data.dvs_gesture.write_frame_cache", fail)
    make_datamodule(gesture_dir, tmp_path).setup()


def test_missing_archive_raises_without_download(tmp_path):
    write_fake_dvs_gesture(tmp_path, "train", with_archive=False)
    write_fake_dvs_gesture(tmp_path, "test", users=range(20, 30))
    datamodule = make_datamodule(tmp_path, tmp_path)
    with pytest.raises(FileNotFoundError, match="ibmGestureTrain.tar.gz") as error:
        datamodule.prepare_data()
    assert "download=True" in str(error.value)


def test_too_few_recordings_raise_without_download(tmp_path):
    write_fake_dvs_gesture(tmp_path, "train", users=range(1, 4))  # 33 files
    write_fake_dvs_gesture(tmp_path, "test", users=range(20, 30))
    with pytest.raises(FileNotFoundError, match="found 33, need at least 100"):
        make_datamodule(tmp_path, tmp_path).setup("fit")


def test_invalid_drop_probability_raises(tmp_path):
    with pytest.raises(ValueError, match="drop_probability"):
        DVSGestureDataModule(data_dir=str(tmp_path), drop_probability=1.5)
