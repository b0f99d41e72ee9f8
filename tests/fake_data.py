"""Writers of tiny fake datasets in the on-disk layouts of SHD and of tonic's DVSGesture."""

from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import h5py
import numpy as np


def write_fake_shd(
    path: Path,
    samples: Sequence[tuple[Sequence[float], Sequence[int]]],
    labels: Sequence[int],
    speakers: Optional[Sequence[int]] = None,
    class_names: Optional[Sequence[str]] = None,
) -> Path:
    """Write an HDF5 file in the SHD layout and return its path.

    Times are stored as variable-length float16 seconds and units as variable-length uint16, as in the
    published files, so float16 rounding applies to the given times.

    Args:
        path: File to create.
        samples: One ``(times, units)`` pair per sample; either may be empty.
        labels: Class id per sample.
        speakers: Speaker id per sample; ``extra/speaker`` is left out when ``None``.
        class_names: Written to ``extra/keys``; left out when ``None``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as file:
        times = file.create_dataset("spikes/times", (len(samples),), dtype=h5py.vlen_dtype(np.float16))
        units = file.create_dataset("spikes/units", (len(samples),), dtype=h5py.vlen_dtype(np.uint16))
        for index, (sample_times, sample_units) in enumerate(samples):
            times[index] = np.asarray(sample_times, dtype=np.float16)
            units[index] = np.asarray(sample_units, dtype=np.uint16)
        file["labels"] = np.asarray(labels, dtype=np.uint16)
        if speakers is not None:
            file["extra/speaker"] = np.asarray(speakers, dtype=np.uint16)
        if class_names is not None:
            file["extra/keys"] = np.array([name.encode() for name in class_names])
    return path


def random_shd_samples(
    num_samples: int, rng: np.random.Generator, num_units: int = 700, max_time: float = 1.2
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return random sorted spike trains of 20 to 200 spikes in ``[0, max_time)`` seconds."""
    samples = []
    for _ in range(num_samples):
        count = int(rng.integers(20, 200))
        samples.append((np.sort(rng.uniform(0.0, max_time, count)), rng.integers(0, num_units, count)))
    return samples


def write_random_shd(
    path: Path,
    num_samples: int,
    num_classes: int = 20,
    num_speakers: int = 5,
    seed: int = 0,
    num_units: int = 700,
) -> Path:
    """Write an SHD-layout file of random samples with labels, speakers and class names."""
    rng = np.random.default_rng(seed)
    samples = random_shd_samples(num_samples, rng, num_units=num_units)
    labels = np.arange(num_samples) % num_classes
    speakers = np.arange(num_samples) % num_speakers
    class_names = [f"word-{index}" for index in range(num_classes)]
    return write_fake_shd(path, samples, labels, speakers, class_names)


def write_fake_dvs_gesture(
    data_dir: Path,
    split: str = "train",
    users: Sequence[int] = tuple(range(1, 11)),
    num_classes: int = 11,
    max_time_ms: int = 400,
    seed: int = 0,
    with_archive: bool = True,
    events: Optional[dict[tuple[int, int], np.ndarray]] = None,
) -> dict[Path, np.ndarray]:
    """Write recordings in tonic's DVSGesture layout and return each file's ``(N, 4)`` array.

    The tree is ``<data_dir>/DVSGesture/ibmGesture{Train,Test}/userNN_led/<label>.npy`` with columns
    x, y, polarity and time in milliseconds, plus an empty ``ibmGesture{Train,Test}.tar.gz`` unless
    ``with_archive`` is False. The default 10 users x 11 labels give the 110 files that tonic needs.

    Args:
        data_dir: Folder that will contain ``DVSGesture/``.
        split: ``"train"`` or ``"test"``.
        users: User numbers, one folder each.
        num_classes: Labels per user, one file each.
        max_time_ms: Random event times lie in ``[0, max_time_ms)`` milliseconds.
        seed: Seed of the random events.
        with_archive: Write the placeholder archive.
        events: Recordings to write instead of random ones, keyed by ``(user, label)``.
    """
    name = {"train": "ibmGestureTrain", "test": "ibmGestureTest"}[split]
    root = data_dir / "DVSGesture"
    rng = np.random.default_rng(seed)
    written = {}
    for user in users:
        folder = root / name / f"user{user:02d}_led"
        folder.mkdir(parents=True, exist_ok=True)
        for label in range(num_classes):
            recording = None if events is None else events.get((user, label))
            if recording is None:
                count = int(rng.integers(10, 60))
                recording = np.stack(
                    [
                        rng.integers(0, 128, count),
                        rng.integers(0, 128, count),
                        rng.integers(0, 2, count),
                        np.sort(rng.integers(0, max_time_ms, count)),
                    ],
                    axis=1,
                ).astype(np.float64)
            path = folder / f"{label}.npy"
            np.save(path, recording)
            written[path] = recording
    if with_archive:
        (root / f"{name}.tar.gz").touch()
    return written
