"""DVS128 Gesture as fixed-length stacks of event-count frames, read through tonic and cached on disk.

The data are tonic 1.7.0's pre-processed copy (``tonic.datasets.DVSGesture``): one ``<label>.npy`` file
per gesture under ``<data_dir>/DVSGesture/ibmGesture{Train,Test}/userNN_<lighting>/``, each an
``(N, 4)`` array of columns x, y, polarity and time in milliseconds. 1,077 training and 264 test
recordings, 11 classes, a 128x128 sensor with 2 polarities.

The pipeline per recording:

1. ``tonic.transforms.Downsample`` pools the sensor to ``target_size`` pixels.
2. ``tonic.transforms.ToFrame`` counts the events in windows of ``dt`` seconds starting at time 0,
   which gives int16 frames ``(T, 2, height, width)``.
3. The frames of every recording are written once to a disk cache, stored sparsely (frame index,
   channel, count), in a folder whose name hashes every parameter above.
4. Each item read crops ``num_steps`` frames from the cache. Training items start the crop at random
   and thin the events (see :class:`DVSGestureFrames`); validation and test items start at frame 0.
"""

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Optional, Union
from unittest import mock

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_snn.data.base import ProcessRandomState, SpikeDataModule

#: Sensor size of the DVS128 camera as tonic orders it: (width, height, polarities).
SENSOR_SIZE = (128, 128, 2)

#: Archive and extracted folder of each split, as ``tonic.datasets.DVSGesture`` names them.
SPLIT_FILES = {
    "train": ("ibmGestureTrain.tar.gz", "ibmGestureTrain"),
    "test": ("ibmGestureTest.tar.gz", "ibmGestureTest"),
}

#: tonic 1.7.0 downloads unless the extracted folder contains at least this many ``.npy`` files.
MIN_NPY_FILES = 100

# Bump when the cache layout or the frame computation changes, so old caches are not reused.
CACHE_FORMAT_VERSION = 1

# dtypes of the raw cache arrays. Counts stay int16, the dtype that ToFrame returns.
_FRAME_DTYPE = np.int32
_CHANNEL_DTYPE = np.int32
_COUNT_DTYPE = np.int16


def events_to_frames(events: np.ndarray, dt: float, target_size: tuple[int, int]) -> np.ndarray:
    """Pool a DVS128 recording to ``target_size`` pixels and count its events in windows of ``dt``.

    Window ``k`` covers ``[k * dt, (k + 1) * dt)``, counted from time 0 rather than from the first
    event, and the last window is the one that contains the last event, so every event is counted.

    Args:
        events: Structured array with fields x, y, p and t (microseconds), as tonic's DVSGesture returns.
        dt: Window length in seconds.
        target_size: Frame size ``(width, height)`` in pixels.

    Returns:
        int16 event counts of shape ``(T, 2, height, width)``; ``T`` is 0 for an empty recording.
    """
    from tonic.transforms import Downsample, ToFrame

    width, height = target_size
    events = Downsample(sensor_size=SENSOR_SIZE, target_size=(width, height))(events)
    if len(events) == 0:
        # tonic's ToFrame returns the wrong shape and dtype for empty input.
        return np.zeros((0, SENSOR_SIZE[2], height, width), dtype=np.int16)

    window = dt * 1e6  # tonic's DVSGesture times are in microseconds
    num_frames = int(events["t"].max() // window) + 1
    # ToFrame makes floor((end_time - window) / window) + 1 frames. Half a window of slack keeps
    # floating-point rounding from dropping the last one.
    to_frame = ToFrame(
        sensor_size=(width, height, SENSOR_SIZE[2]),
        time_window=window,
        start_time=0,
        end_time=(num_frames + 0.5) * window,
    )
    frames = to_frame(events)

    if frames.shape[0] != num_frames or int(frames.sum()) != len(events):
        raise RuntimeError(
            f"tonic's ToFrame counted {int(frames.sum())} of {len(events)} events in {frames.shape[0]} "
            f"of {num_frames} frames; the installed tonic version may bin differently from 1.7.0."
        )
    return frames


class DVSGestureFrames(ProcessRandomState, Dataset):
    """Cropped count frames read from a cache written by :func:`write_frame_cache`.

    Items are ``(frames, label)`` with float32 frames of shape ``(num_steps, 2, height, width)``. A
    recording shorter than ``num_steps`` frames is zero-padded at the end.

    Args:
        cache_path: Folder written by :func:`write_frame_cache`.
        num_steps: Number of frames per item.
        random_crop: Start the crop at a random frame; otherwise at frame 0.
        drop_probability: Probability of removing each event. Each count ``n`` becomes a draw from
            ``Binomial(n, 1 - drop_probability)``, which has the same distribution as dropping every
            event independently before framing, so the cache needs no rebuild.
        binary: Clamp counts to 1 (after the drop).
    """

    def __init__(
        self,
        cache_path: Union[str, Path],
        num_steps: int,
        random_crop: bool = False,
        drop_probability: float = 0.0,
        binary: bool = False,
    ) -> None:
        if num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {num_steps}.")
        if not 0.0 <= drop_probability <= 1.0:
            raise ValueError(f"drop_probability must lie in [0, 1], got {drop_probability}.")
        self.cache_path = Path(cache_path)
        self.num_steps = num_steps
        self.random_crop = random_crop
        self.drop_probability = drop_probability
        self.binary = binary

        meta = json.loads((self.cache_path / "meta.json").read_text())
        self.width, self.height = meta["target_size"]
        self.num_channels = SENSOR_SIZE[2] * self.height * self.width
        self.num_entries = meta["num_entries"]
        self.labels = np.load(self.cache_path / "labels.npy")
        self.num_frames = np.load(self.cache_path / "num_frames.npy")
        self.offsets = np.load(self.cache_path / "offsets.npy")

        # Per-process state, created on first use: memory maps of the entry arrays and the RNG.
        self._arrays: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        frame_index, channel, count = self._entries()
        begin, end = self.offsets[index], self.offsets[index + 1]
        frame_index, channel, count = frame_index[begin:end], channel[begin:end], count[begin:end]

        # Entries are sorted by frame index, so the crop is one contiguous run.
        start = self._crop_start(int(self.num_frames[index]))
        first, last = np.searchsorted(frame_index, [start, start + self.num_steps])
        steps = frame_index[first:last] - start
        channel = channel[first:last]
        count = count[first:last].astype(np.int64)

        if self.drop_probability > 0:
            count = self._rng().binomial(count, 1.0 - self.drop_probability)
        if self.binary:
            count = np.minimum(count, 1)

        frames = np.zeros((self.num_steps, self.num_channels), dtype=np.float32)
        frames[steps, channel] = count
        frames = frames.reshape(self.num_steps, SENSOR_SIZE[2], self.height, self.width)
        return torch.from_numpy(frames), int(self.labels[index])

    def _crop_start(self, num_frames: int) -> int:
        if not self.random_crop or num_frames <= self.num_steps:
            return 0
        return int(self._rng().integers(0, num_frames - self.num_steps + 1))

    def _entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._arrays is None:
            self._arrays = (
                _map_raw(self.cache_path / "frame_index.bin", _FRAME_DTYPE, self.num_entries),
                _map_raw(self.cache_path / "channel.bin", _CHANNEL_DTYPE, self.num_entries),
                _map_raw(self.cache_path / "count.bin", _COUNT_DTYPE, self.num_entries),
            )
        return self._arrays


    def __getstate__(self) -> dict:
        # Spawned workers map the files again instead of pickling the maps.
        state = self.__dict__.copy()
        state.update(_arrays=None, _generator=None, _generator_pid=None)
        return state


def _map_raw(path: Path, dtype: type, length: int) -> np.ndarray:
    if length == 0:
        return np.zeros(0, dtype=dtype)  # numpy cannot memory-map an empty file
    return np.memmap(path, dtype=dtype, mode="r", shape=(length,))


def write_frame_cache(
    dataset: Iterable[tuple[np.ndarray, int]],
    cache_path: Union[str, Path],
    dt: float,
    target_size: tuple[int, int],
    meta: dict,
) -> None:
    """Compute the frames of every recording of ``dataset`` and store them sparsely in ``cache_path``.

    The folder contains ``labels.npy``, ``num_frames.npy``, ``offsets.npy`` (recording ``i`` owns entries
    ``offsets[i]:offsets[i + 1]``), the raw entry arrays ``frame_index.bin`` (int32), ``channel.bin``
    (int32, ``polarity * height * width + y * width + x``) and ``count.bin`` (int16), and ``meta.json``.
    Everything is written to a temporary folder that is renamed into place at the end, so readers never
    see a partial cache. If another process finished first, its cache is kept.

    Args:
        dataset: Sequence of ``(events, label)`` pairs, as ``tonic.datasets.DVSGesture`` returns.
        cache_path: Final folder; must not exist yet.
        dt: Frame length in seconds.
        target_size: Frame size ``(width, height)`` in pixels.
        meta: Parameters to record in ``meta.json``.
    """
    cache_path = Path(cache_path)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = cache_path.parent / f".{cache_path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    temporary.mkdir()

    try:
        labels, num_frames, offsets = [], [], [0]
        with (
            open(temporary / "frame_index.bin", "wb") as frame_file,
            open(temporary / "channel.bin", "wb") as channel_file,
            open(temporary / "count.bin", "wb") as count_file,
        ):
            for events, label in dataset:
                frames = events_to_frames(events, dt, target_size)
                flat = frames.reshape(frames.shape[0], int(np.prod(frames.shape[1:])))
                frame_index, channel = np.nonzero(flat)  # row-major, so sorted by frame index
                frame_file.write(frame_index.astype(_FRAME_DTYPE).tobytes())
                channel_file.write(channel.astype(_CHANNEL_DTYPE).tobytes())
                count_file.write(flat[frame_index, channel].astype(_COUNT_DTYPE).tobytes())

                labels.append(int(label))
                num_frames.append(frames.shape[0])
                offsets.append(offsets[-1] + len(frame_index))

        np.save(temporary / "labels.npy", np.asarray(labels, dtype=np.int64))
        np.save(temporary / "num_frames.npy", np.asarray(num_frames, dtype=np.int64))
        np.save(temporary / "offsets.npy", np.asarray(offsets, dtype=np.int64))
        full_meta = dict(meta, target_size=list(target_size), num_entries=offsets[-1])
        (temporary / "meta.json").write_text(json.dumps(full_meta, indent=2))

        os.rename(temporary, cache_path)
    except OSError:
        # A concurrent writer may have renamed its copy into place first, and that copy is kept.
        if not (cache_path / "meta.json").is_file():
            raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


class DVSGestureDataModule(SpikeDataModule):
    """DVS128 Gesture (11 classes) as stacks of ``num_steps`` event-count frames of ``dt`` seconds.

    ``data_dir`` is the folder that ``tonic.datasets.DVSGesture`` saves to, so the recordings lie in
    ``<data_dir>/DVSGesture/ibmGestureTrain/`` and ``.../ibmGestureTest/``. tonic also expects the
    archives ``ibmGestureTrain.tar.gz`` and ``ibmGestureTest.tar.gz`` next to them, but a 0-byte
    placeholder is enough. Nothing is downloaded unless ``download=True``.

    :meth:`prepare_data` converts every recording to frames once and caches them on disk (see the
    module docstring); :meth:`setup` builds the cache too if it is missing. The cache folder name
    contains a hash of dt, the frame size, the tonic version and the list of recording files, so
    changing any of them builds a new cache instead of serving stale frames.

    Stork's DVS Gesture example used the same 2 ms frames of 32x32 pixels, 500 steps and drop
    probability 0.5. It also dropped events and cropped the 500 frames at random in the test set, so
    test metrics varied between runs, and recordings of 500 frames or fewer raised an error. Here validation and test items are deterministic crops from frame 0, short
    recordings are zero-padded, and part of the training set can be held out for validation (Stork held
    out none).

    Args:
        data_dir: Folder that contains ``DVSGesture/``, or where ``download=True`` puts it.
        dt: Frame length in seconds. tonic's copy of the data has millisecond timestamps, so use a
            multiple of 1e-3.
        num_steps: Frames per sample.
        target_size: Frame size ``(width, height)`` in pixels after pooling the 128x128 sensor.
        drop_probability: Probability of removing each event from a training sample (training only).
        val_fraction: Fraction of the training recordings held out for validation by a split seeded with
            ``seed``, in [0, 1); 0 disables validation.
        cache_dir: Folder of the frame cache; defaults to ``<data_dir>/cache``.
        download: Let tonic download the missing archives in :meth:`prepare_data`.
        binary: Clamp event counts to 1. Stork fed the counts.
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes.
        pin_memory: Pin host memory for faster copies to a GPU.
        persistent_workers: Keep workers alive between epochs when ``num_workers > 0``.
        seed: Seed of the validation split and of the shuffle order.
    """

    num_classes = 11

    def __init__(
        self,
        data_dir: str = "data",
        dt: float = 2e-3,
        num_steps: int = 500,
        target_size: tuple[int, int] = (32, 32),
        drop_probability: float = 0.5,
        val_fraction: float = 0.1,
        cache_dir: Optional[str] = None,
        download: bool = False,
        binary: bool = False,
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
        if dt <= 0:
            raise ValueError(f"dt must be a positive number of seconds, got {dt}.")
        if num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {num_steps}.")
        width, height = target_size
        if not (0 < width <= SENSOR_SIZE[0] and 0 < height <= SENSOR_SIZE[1]):
            raise ValueError(f"target_size must lie between (1, 1) and (128, 128) pixels, got {target_size}.")
        if not 0.0 <= drop_probability <= 1.0:
            raise ValueError(f"drop_probability must lie in [0, 1], got {drop_probability}.")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}.")

        self.data_dir = Path(data_dir)
        self.dt = dt
        self.num_steps = num_steps
        self.target_size = (int(width), int(height))
        self.drop_probability = drop_probability
        self.val_fraction = val_fraction
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.data_dir / "cache"
        self.download = download
        self.binary = binary
        self.input_shape = (SENSOR_SIZE[2], int(height), int(width))
        self.save_hyperparameters()

    @property
    def dataset_root(self) -> Path:
        """Folder with the archives and the extracted recordings (``<data_dir>/DVSGesture``)."""
        return self.data_dir / "DVSGesture"

    def missing_files(self, split: str) -> list[str]:
        """Return a description of each file or folder that tonic needs for ``split`` and cannot find."""
        archive_name, folder_name = SPLIT_FILES[split]
        missing = []
        archive = self.dataset_root / archive_name
        if not archive.is_file():
            missing.append(f"{archive} (a 0-byte placeholder is enough)")
        folder = self.dataset_root / folder_name
        num_files = len(list(folder.glob("**/*.npy")))
        if num_files < MIN_NPY_FILES:
            missing.append(f"{folder}/userNN_<lighting>/<label>.npy (found {num_files}, need at least {MIN_NPY_FILES})")
        return missing

    def _require_files(self, split: str) -> None:
        missing = self.missing_files(split)
        if missing:
            raise FileNotFoundError(
                f"DVSGesture {split} split incomplete, missing: {'; '.join(missing)}. Extract "
                f"{SPLIT_FILES[split][0]} into {self.dataset_root} and keep the archive (or an empty file of "
                f"that name) next to it, or pass download=True to let tonic download it."
            )

    def _tonic_dataset(self, split: str):
        """Return tonic's DVSGesture for ``split``, sorted by file path, without any download."""
        from tonic.datasets import DVSGesture

        self._require_files(split)
        # The files were checked above. The patch makes sure that tonic's own check cannot start a download.
        with mock.patch.object(DVSGesture, "_check_exists", return_value=True):
            dataset = DVSGesture(str(self.data_dir), train=(split == "train"))
        return _SortedByPath(dataset)

    def cache_path(self, split: str) -> Path:
        """Return the cache folder for ``split``, named by a hash of every parameter of the frames."""
        import tonic

        _, folder_name = SPLIT_FILES[split]
        folder = self.dataset_root / folder_name
        files = sorted(folder.glob("**/*.npy"))
        key = {
            "format": CACHE_FORMAT_VERSION,
            "split": split,
            "dt": self.dt,
            "sensor_size": list(SENSOR_SIZE),
            "target_size": list(self.target_size),
            "tonic": tonic.__version__,
            "files": [[str(path.relative_to(folder)), path.stat().st_size] for path in files],
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return self.cache_dir / f"dvsgesture-{split}-{digest}"

    def _ensure_cache(self, split: str) -> Path:
        cache_path = self.cache_path(split)
        if not (cache_path / "meta.json").is_file():
            import tonic

            dataset = self._tonic_dataset(split)
            rank_zero_info(f"Caching {len(dataset)} DVSGesture {split} recordings as frames in {cache_path}.")
            meta = {"split": split, "dt": self.dt, "tonic": tonic.__version__, "files": dataset.paths}
            write_frame_cache(dataset, cache_path, self.dt, self.target_size, meta)
        return cache_path

    def prepare_data(self) -> None:
        """Download the missing splits if ``download=True``, then fill the frame cache."""
        for split in SPLIT_FILES:
            if self.download and self.missing_files(split):
                from tonic.datasets import DVSGesture

                DVSGesture(str(self.data_dir), train=(split == "train"))
            self._ensure_cache(split)

    def setup(self, stage: Optional[str] = None) -> None:
        if stage in (None, "fit", "validate"):
            cache_path = self._ensure_cache("train")
            train_frames = DVSGestureFrames(
                cache_path,
                self.num_steps,
                random_crop=True,
                drop_probability=self.drop_probability,
                binary=self.binary,
            )
            if self.val_fraction == 0:
                self.train_set, self.val_set = train_frames, None
            else:
                order = np.random.default_rng(self.seed).permutation(len(train_frames))
                num_val = round(self.val_fraction * len(train_frames))
                val_frames = DVSGestureFrames(cache_path, self.num_steps, binary=self.binary)
                self.train_set = Subset(train_frames, np.sort(order[num_val:]).tolist())
                self.val_set = Subset(val_frames, np.sort(order[:num_val]).tolist())
        if stage in (None, "test", "predict"):
            cache_path = self._ensure_cache("test")
            self.test_set = DVSGestureFrames(cache_path, self.num_steps, binary=self.binary)

    def val_dataloader(self) -> Union[DataLoader, list]:
        # Lightning skips validation when the loader list is empty.
        if self.val_fraction == 0:
            return []
        return super().val_dataloader()


class _SortedByPath:
    """tonic's DVSGesture in file-path order, because tonic lists files in the order the file system returns."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self.order = sorted(range(len(dataset.data)), key=lambda i: dataset.data[i])
        root = Path(dataset.location_on_system)
        self.paths = [str(Path(dataset.data[i]).relative_to(root)) for i in self.order]

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int):
        return self.dataset[self.order[index]]

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]
