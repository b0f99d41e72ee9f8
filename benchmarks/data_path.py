"""Throughput of the data readers on generated files: SHD rasters and cached DVS Gesture frames.

Both readers run in this process, which stands for one DataLoader worker; the numbers are samples per
second per worker.
"""

import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

SHD_SAMPLES = 200
DVS_RECORDINGS = 20


def write_shd_file(path: Path, num_samples: int, seed: int = 0) -> Path:
    """Write an SHD-layout file of random spike trains (about 3,000 spikes per sample, as in SHD)."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as file:
        times = file.create_dataset("spikes/times", (num_samples,), dtype=h5py.vlen_dtype(np.float16))
        units = file.create_dataset("spikes/units", (num_samples,), dtype=h5py.vlen_dtype(np.uint16))
        for index in range(num_samples):
            count = int(rng.integers(2000, 4000))
            times[index] = np.sort(rng.uniform(0.0, 1.0, count)).astype(np.float16)
            units[index] = rng.integers(0, 700, count).astype(np.uint16)
        file["labels"] = rng.integers(0, 20, num_samples).astype(np.uint16)
    return path


def synthetic_gesture(rng: np.random.Generator, duration_us: int = 6_000_000, count: int = 300_000) -> np.ndarray:
    """Return a random DVS128 recording as a structured array with fields x, y, p and t."""
    events = np.zeros(count, dtype=[("x", np.int16), ("y", np.int16), ("p", np.bool_), ("t", np.int64)])
    events["x"] = rng.integers(0, 128, count)
    events["y"] = rng.integers(0, 128, count)
    events["p"] = rng.integers(0, 2, count)
    events["t"] = np.sort(rng.integers(0, duration_us, count))
    return events


def _rate(read, count: int, repeats: int = 3) -> float:
    rates = []
    for _ in range(repeats):
        begin = time.perf_counter()
        for index in range(count):
            read(index)
        rates.append(count / (time.perf_counter() - begin))
    return statistics.median(rates)


def measure(quick: bool = False) -> dict:
    """Return samples per second of the SHD reader (file and preloaded) and of the DVS frame cache."""
    import torch

    from lightning_snn.data.dvs_gesture import DVSGestureFrames, write_frame_cache
    from lightning_snn.data.shd import SHDDataset

    torch.set_num_threads(1)
    shd_samples = 40 if quick else SHD_SAMPLES
    recordings = 4 if quick else DVS_RECORDINGS
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        path = write_shd_file(folder / "shd.h5", shd_samples)
        for preload in (False, True):
            dataset = SHDDataset(path, dt=1e-3, duration=1.0, preload=preload)
            key = "shd_preloaded" if preload else "shd_file"
            results[key] = {"samples_per_s": _rate(dataset.__getitem__, len(dataset)),
                            "shape": list(dataset[0][0].shape)}

        rng = np.random.default_rng(0)
        gestures = [(synthetic_gesture(rng), label % 11) for label in range(recordings)]
        cache = folder / "dvs_cache"
        begin = time.perf_counter()
        write_frame_cache(gestures, cache, dt=1e-2, target_size=(32, 32), meta={})
        build_seconds = time.perf_counter() - begin
        frames = DVSGestureFrames(cache, num_steps=100, random_crop=True, drop_probability=0.1)
        results["dvs_frames"] = {"samples_per_s": _rate(frames.__getitem__, len(frames)),
                                 "shape": list(frames[0][0].shape),
                                 "cache_build_s_per_recording": build_seconds / recordings}
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(measure(), indent=1))
