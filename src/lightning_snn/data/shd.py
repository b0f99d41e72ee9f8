"""Spiking Heidelberg Digits (SHD), Spiking Speech Commands (SSC) and files in the same HDF5 layout.

An SHD-layout file stores one variable-length spike train per sample:

* ``spikes/times``: spike times in seconds (float16 in the published files),
* ``spikes/units``: channel ids of the same spikes (uint16, 0 to 699),
* ``labels``: class id per sample,
* ``extra/speaker``: speaker id per sample (optional here),
* ``extra/keys``: class names as bytes, indexed by class id (optional here).

:class:`SHDDataset` bins each sample into a dense binary raster of shape ``(num_steps, num_units)``.
The DataModules add the splits, the training-only augmentation and, on request, the download.
"""

import gzip
import hashlib
import importlib.resources
import logging
import os
import shutil
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Union

import h5py
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_snn.data.base import ProcessRandomState, SpikeDataModule

log = logging.getLogger(__name__)

#: Folder of the official SHD and SSC downloads (gzip-compressed ``*.h5.gz`` files and ``md5sums.txt``).
HEIDELBERG_BASE_URL = "https://zenkelab.org/datasets/"


def num_steps_for(duration: float, dt: float) -> int:
    """Return the number of time steps that cover ``duration`` seconds at step ``dt`` seconds.

    The ratio is rounded to the nearest integer, so 0.7 s at 2 ms gives 350 steps. Truncating with
    ``int(0.7 / 2e-3)`` gives 349 instead, because the float quotient is 349.99999999999994.

    Raises:
        ValueError: If ``dt`` or ``duration`` is not positive, or the duration is shorter than half a step.
    """
    if dt <= 0:
        raise ValueError(f"dt must be a positive number of seconds, got {dt}.")
    if duration <= 0:
        raise ValueError(f"duration must be a positive number of seconds, got {duration}.")
    num_steps = round(duration / dt)
    if num_steps < 1:
        raise ValueError(f"duration={duration} s is shorter than half a time step dt={dt} s. Increase duration.")
    return num_steps


def bin_spikes(times: np.ndarray, units: np.ndarray, dt: float, num_steps: int, num_units: int) -> np.ndarray:
    """Bin a spike train into a dense binary raster.

    A spike at time ``t`` lands in step ``floor(t / dt)``. The division runs in float64 so that float16
    times from the file cannot overflow or round into a neighbouring bin. Spikes outside
    ``0 <= step < num_steps`` or ``0 <= unit < num_units`` are dropped, and several spikes of one unit in
    one step count once.

    Args:
        times: Spike times in seconds, any float dtype.
        units: Channel id of each spike, same length as ``times``.
        dt: Width of a time step in seconds.
        num_steps: Number of time steps of the raster.
        num_units: Number of channels of the raster.

    Returns:
        A float32 array of shape ``(num_steps, num_units)`` with entries 0 or 1.
    """
    steps = np.floor(np.asarray(times, dtype=np.float64) / dt).astype(np.int64)
    units = np.asarray(units, dtype=np.int64)
    inside = (steps >= 0) & (steps < num_steps) & (units >= 0) & (units < num_units)

    raster = np.zeros((num_steps, num_units), dtype=np.float32)
    raster[steps[inside], units[inside]] = 1.0
    return raster


@dataclass(frozen=True)
class SpikeAugmentation:
    """Random perturbations of a spike train, applied to training samples before binning.

    The steps run in this order: time jitter, unit jitter, drop, insert. Every parameter defaults to 0,
    which switches that step off.

    Attributes:
        time_jitter: Standard deviation in seconds of the Gaussian noise added to each spike time.
        unit_jitter: Standard deviation in channels of the Gaussian noise added to each spike's channel
            id; the result is rounded to the nearest channel.
        drop_probability: Probability that each spike is removed.
        insert_fraction: Number of random spikes added, as a fraction of the ``num_steps * num_units``
            bins. The spikes are uniform in time and channel.
    """

    time_jitter: float = 0.0
    unit_jitter: float = 0.0
    drop_probability: float = 0.0
    insert_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.time_jitter < 0:
            raise ValueError(f"time_jitter must be 0 or more seconds, got {self.time_jitter}.")
        if self.unit_jitter < 0:
            raise ValueError(f"unit_jitter must be 0 or more channels, got {self.unit_jitter}.")
        if not 0.0 <= self.drop_probability <= 1.0:
            raise ValueError(f"drop_probability must lie in [0, 1], got {self.drop_probability}.")
        if self.insert_fraction < 0:
            raise ValueError(f"insert_fraction must be 0 or more, got {self.insert_fraction}.")

    @property
    def is_active(self) -> bool:
        """Whether any step changes the data."""
        return any((self.time_jitter, self.unit_jitter, self.drop_probability, self.insert_fraction))

    def __call__(
        self,
        times: np.ndarray,
        units: np.ndarray,
        rng: np.random.Generator,
        duration: float,
        num_units: int,
        num_steps: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return perturbed copies of ``times`` (float64 seconds) and ``units`` (int64 channel ids).

        Args:
            times: Spike times in seconds.
            units: Channel ids.
            rng: Source of randomness.
            duration: Length of the binned window in seconds; inserted spikes fall in ``[0, duration)``.
            num_units: Number of channels; inserted spikes fall in ``[0, num_units)``.
            num_steps: Number of time steps, used with ``num_units`` to count the inserted spikes.
        """
        times = np.asarray(times, dtype=np.float64)
        units = np.asarray(units, dtype=np.int64)

        if self.time_jitter > 0:
            times = times + rng.normal(0.0, self.time_jitter, size=times.shape)
        if self.unit_jitter > 0:
            noise = rng.normal(0.0, self.unit_jitter, size=units.shape)
            units = np.rint(units + noise).astype(np.int64)
        if self.drop_probability > 0:
            keep = rng.random(times.shape) >= self.drop_probability
            times, units = times[keep], units[keep]
        if self.insert_fraction > 0:
            count = int(self.insert_fraction * num_steps * num_units)
            times = np.concatenate([times, rng.uniform(0.0, duration, size=count)])
            units = np.concatenate([units, rng.integers(0, num_units, size=count)])
        return times, units


def _decode_key(key: Union[bytes, str]) -> str:
    return key.decode() if isinstance(key, bytes) else str(key)


class SHDDataset(ProcessRandomState, Dataset):
    """One HDF5 file in the SHD layout, binned into dense binary rasters.

    The file handle opens on the first item read, once per process, and never in ``__init__``. A
    DataLoader worker that was forked after the first read notices the new process id and opens its own
    handle, so workers never share an HDF5 handle. ``__init__`` opens the file only briefly to read the
    labels and metadata and closes it again.

    The time grid has ``num_steps = round(duration / dt)`` steps (see :func:`num_steps_for`); spikes at
    ``duration`` or later are dropped.

    Args:
        path: The ``.h5`` file.
        dt: Width of a time step in seconds.
        duration: Length of the binned window in seconds.
        num_units: Number of input channels; spikes on channels at or above it are dropped.
        preload: Read every spike train into memory in ``__init__`` and close the file, which trades
            memory for speed.
        augmentation: Perturbations applied to every item read; ``None`` returns the recorded spikes.

    Attributes:
        num_steps: Number of time steps per raster.
        labels: Class id of each sample (int64).
        speakers: Speaker id of each sample (int64), or ``None`` if the file has no ``extra/speaker``.
        class_names: Class names from ``extra/keys``, or ``None`` if the file has none.
    """

    def __init__(
        self,
        path: Union[str, Path],
        dt: float = 2e-3,
        duration: float = 0.7,
        num_units: int = 700,
        preload: bool = False,
        augmentation: Optional[SpikeAugmentation] = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"SHD-layout file not found: {self.path}.")
        if num_units < 1:
            raise ValueError(f"num_units must be at least 1, got {num_units}.")
        self.dt = dt
        self.duration = duration
        self.num_units = num_units
        self.num_steps = num_steps_for(duration, dt)
        self.augmentation = augmentation if augmentation is not None and augmentation.is_active else None

        with h5py.File(self.path, "r") as file:
            self.labels = np.asarray(file["labels"][:], dtype=np.int64)
            speakers = file.get("extra/speaker")
            self.speakers = None if speakers is None else np.asarray(speakers[:], dtype=np.int64)
            keys = file.get("extra/keys")
            self.class_names = None if keys is None else [_decode_key(key) for key in keys[:]]

            self._preloaded: Optional[tuple[list[np.ndarray], list[np.ndarray]]] = None
            if preload:
                self._preloaded = (list(file["spikes/times"][:]), list(file["spikes/units"][:]))

        # Per-process state, created on first use (see _file and _rng).
        self._handle: Optional[h5py.File] = None
        self._handle_pid: Optional[int] = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        times, units = self.read_spikes(index)
        if self.augmentation is not None:
            times, units = self.augmentation(
                times, units, self._rng(), self.num_steps * self.dt, self.num_units, self.num_steps
            )
        raster = bin_spikes(times, units, self.dt, self.num_steps, self.num_units)
        return torch.from_numpy(raster), int(self.labels[index])

    def read_spikes(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the recorded spike times (float64 seconds) and channel ids (int64) of one sample."""
        if self._preloaded is not None:
            times, units = self._preloaded[0][index], self._preloaded[1][index]
        else:
            file = self._file()
            times, units = file["spikes/times"][index], file["spikes/units"][index]

        # Cast before any arithmetic: float16 cannot hold values above 65504, so float16 * 1e6 is inf.
        return np.asarray(times, dtype=np.float64), np.asarray(units, dtype=np.int64)

    def close(self) -> None:
        """Close this process's file handle, if one is open."""
        if self._handle is not None and self._handle_pid == os.getpid():
            self._handle.close()
        self._handle = None
        self._handle_pid = None

    def _file(self) -> h5py.File:
        pid = os.getpid()
        if self._handle is None or self._handle_pid != pid:
            # A handle inherited through fork belongs to the parent, so each process opens its own.
            self._handle = h5py.File(self.path, "r")
            self._handle_pid = pid
        return self._handle


    def __getstate__(self) -> dict:
        # Spawned workers and DDP processes receive a pickled copy, and h5py handles cannot be pickled.
        state = self.__dict__.copy()
        state.update(_handle=None, _handle_pid=None, _generator=None, _generator_pid=None)
        return state


def _read_num_classes(path: Path, default: int) -> int:
    with h5py.File(path, "r") as file:
        keys = file.get("extra/keys")
        return default if keys is None else len(keys)


def _fetch_md5_sums(base_url: str) -> dict[str, str]:
    """Download ``md5sums.txt`` from ``base_url`` and return it as a file name to checksum mapping."""
    with urllib.request.urlopen(base_url + "md5sums.txt") as response:
        text = response.read().decode()
    sums = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2:
            checksum, name = fields
            sums[name.lstrip("*")] = checksum
    return sums


def download_heidelberg_files(
    data_dir: Union[str, Path], file_names: Sequence[str], base_url: str = HEIDELBERG_BASE_URL
) -> None:
    """Download and decompress the named ``.h5`` files that are missing from ``data_dir``.

    Each ``<name>.gz`` is fetched from ``base_url``, checked against the MD5 sum that ``md5sums.txt``
    in the same folder lists for it, and decompressed. Files are written under a temporary name and
    renamed when complete, so an interrupted download never leaves a truncated ``.h5`` behind.

    Args:
        data_dir: Target folder, created if missing.
        file_names: Names such as ``"shd_train.h5"``.
        base_url: Folder URL ending in ``/``.

    Raises:
        OSError: If the checksum of a download does not match, or the download fails.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    missing = [name for name in file_names if not (data_dir / name).is_file()]
    if not missing:
        return
    md5_sums = _fetch_md5_sums(base_url)

    for name in missing:
        archive_name = name + ".gz"
        url = base_url + archive_name
        partial_archive = data_dir / (archive_name + ".part")
        rank_zero_info(f"Downloading {url} to {data_dir}.")

        digest = hashlib.md5()
        with urllib.request.urlopen(url) as response, open(partial_archive, "wb") as out:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)

        expected = md5_sums.get(archive_name)
        if expected is None:
            log.warning("md5sums.txt at %s lists no checksum for %s, so the download was not verified.", base_url, archive_name)
        elif digest.hexdigest() != expected:
            partial_archive.unlink()
            raise OSError(
                f"MD5 mismatch for {url}: expected {expected}, got {digest.hexdigest()}. "
                f"The download was deleted; run again, or download the file by hand."
            )

        partial_file = data_dir / (name + ".part")
        with gzip.open(partial_archive, "rb") as source, open(partial_file, "wb") as out:
            shutil.copyfileobj(source, out)
        os.replace(partial_file, data_dir / name)
        partial_archive.unlink()


class _HeidelbergDataModule(SpikeDataModule):
    """Shared machinery of the DataModules that read SHD-layout files from a folder.

    Subclasses set ``file_names`` (split to file name), ``folder_name`` (the subfolder that tonic uses)
    and ``default_num_classes``, and implement :meth:`_setup_fit`.
    """

    file_names: dict[str, str]
    folder_name: str
    default_num_classes: int

    def __init__(
        self,
        data_dir: str,
        dt: float,
        duration: float,
        num_units: int,
        preload: bool,
        augmentation: SpikeAugmentation,
        download: bool,
        **loader_kwargs,
    ) -> None:
        super().__init__(**loader_kwargs)
        self.data_dir = Path(data_dir)
        self.dt = dt
        self.duration = duration
        self.num_units = num_units
        self.num_steps = num_steps_for(duration, dt)
        self.preload = preload
        self.augmentation = augmentation
        self.download = download
        self.input_shape = (num_units,)

        # The command line links num_classes into the model before setup() runs, so read it now from
        # the file if one is already there.
        found = self._find_files()
        self.num_classes = (
            _read_num_classes(found["train"], self.default_num_classes)
            if "train" in found
            else self.default_num_classes
        )

    def _candidate_paths(self, name: str) -> list[Path]:
        # Plain layout first, then the layout that tonic.datasets.SHD/SSC use (<data_dir>/SHD/...).
        return [self.data_dir / name, self.data_dir / self.folder_name / name]

    def _find_files(self) -> dict[str, Path]:
        found = {}
        for split, name in self.file_names.items():
            for candidate in self._candidate_paths(name):
                if candidate.is_file():
                    found[split] = candidate
                    break
        return found

    def _require_files(self) -> dict[str, Path]:
        found = self._find_files()
        missing = [name for split, name in self.file_names.items() if split not in found]
        if missing:
            searched = ", ".join(str(path) for name in missing for path in self._candidate_paths(name))
            raise FileNotFoundError(
                f"{type(self).__name__}: missing {', '.join(missing)} (searched {searched}). Copy the "
                f"uncompressed .h5 files into {self.data_dir}, or pass download=True to download them "
                f"from {HEIDELBERG_BASE_URL}."
            )
        return found

    def prepare_data(self) -> None:
        """Download the missing files if ``download=True``; otherwise check that they exist."""
        if self.download:
            download_heidelberg_files(self.data_dir, list(self.file_names.values()))
        self._require_files()

    def setup(self, stage: Optional[str] = None) -> None:
        paths = self._require_files()
        if stage in (None, "fit", "validate"):
            self._setup_fit(paths)
        if stage in (None, "test", "predict"):
            self.test_set = self._dataset(paths["test"], train=False)

    def _setup_fit(self, paths: dict[str, Path]) -> None:
        raise NotImplementedError

    def _dataset(self, path: Path, train: bool) -> SHDDataset:
        dataset = SHDDataset(
            path,
            dt=self.dt,
            duration=self.duration,
            num_units=self.num_units,
            preload=self.preload,
            augmentation=self.augmentation if train else None,
        )
        if dataset.class_names is not None and len(dataset.class_names) != self.num_classes:
            raise ValueError(
                f"{path} lists {len(dataset.class_names)} classes in extra/keys, but num_classes is "
                f"{self.num_classes}; create the DataModule after the files are in place."
            )
        return dataset


def _check_val_fraction(val_fraction: float) -> None:
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}.")


def split_by_speaker(
    speakers: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Hold out whole speakers for validation.

    ``max(1, round(val_fraction * number_of_speakers))`` speakers are drawn without replacement by a
    generator seeded with ``seed``, so every process draws the same ones.

    Args:
        speakers: Speaker id of each sample.
        val_fraction: Fraction of the speakers to hold out, in (0, 1).
        seed: Seed of the draw.

    Returns:
        Training indices, validation indices and the sorted held-out speaker ids.

    Raises:
        ValueError: If fewer than two speakers are present.
    """
    unique = np.unique(speakers)
    if len(unique) < 2:
        raise ValueError(f"A speaker split needs at least two speakers, found {unique.tolist()}. Use val_split='random'.")
    num_held_out = min(max(1, round(val_fraction * len(unique))), len(unique) - 1)
    held_out = np.sort(np.random.default_rng(seed).choice(unique, size=num_held_out, replace=False))

    is_val = np.isin(speakers, held_out)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val), [int(s) for s in held_out]


def split_at_random(num_samples: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return sorted training and validation indices of a seeded random split.

    The validation part has ``round(val_fraction * num_samples)`` samples.
    """
    order = np.random.default_rng(seed).permutation(num_samples)
    num_val = round(val_fraction * num_samples)
    return np.sort(order[num_val:]), np.sort(order[:num_val])


class SHDDataModule(_HeidelbergDataModule):
    """Spiking Heidelberg Digits: 20 classes (digits 0-9 in English and German), 700 input channels.

    The folder ``data_dir`` must contain ``shd_train.h5`` and ``shd_test.h5``, either directly or in the
    subfolder ``SHD/`` that ``tonic.datasets.SHD`` uses. Nothing is downloaded unless ``download=True``.
    SHD has no official validation split, so one is cut from the training file: at random, or by holding
    out whole speakers (the official test set also contains two speakers absent from training).

    The grid has ``round(duration / dt)`` steps, so the defaults give 350 steps of 2 ms. Stork's
    examples used ``int(0.7 / 2e-3)``, which is 349 because the float quotient falls just below 350.

    Args:
        data_dir: Folder with the ``.h5`` files, or where ``download=True`` puts them.
        dt: Time step in seconds.
        duration: Length of the binned window in seconds; later spikes are dropped.
        num_units: Number of input channels.
        val_split: ``"random"`` holds out a seeded random ``val_fraction`` of the training samples;
            ``"speaker"`` holds out ``val_fraction`` of the training speakers, chosen with ``seed``.
        val_fraction: Fraction held out for validation, in [0, 1); 0 disables validation.
        preload: Load the spike trains into memory instead of reading them from disk per item.
        time_jitter: Standard deviation of Gaussian spike-time noise in seconds (training only).
        unit_jitter: Standard deviation of Gaussian channel noise in channels (training only).
        drop_probability: Probability of removing each spike (training only).
        insert_fraction: Random spikes added, as a fraction of the ``num_steps * num_units`` bins
            (training only).
        download: Download missing files from the Zenke lab server in :meth:`prepare_data`.
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes.
        pin_memory: Pin host memory for faster copies to a GPU.
        persistent_workers: Keep workers alive between epochs when ``num_workers > 0``.
        seed: Seed of the validation split and of the shuffle order.

    Attributes:
        val_speakers: The held-out speaker ids after ``setup("fit")`` with ``val_split="speaker"``.
    """

    file_names = {"train": "shd_train.h5", "test": "shd_test.h5"}
    folder_name = "SHD"
    default_num_classes = 20

    def __init__(
        self,
        data_dir: str = "data",
        dt: float = 2e-3,
        duration: float = 0.7,
        num_units: int = 700,
        val_split: Literal["speaker", "random"] = "random",
        val_fraction: float = 0.1,
        preload: bool = False,
        time_jitter: float = 0.0,
        unit_jitter: float = 0.0,
        drop_probability: float = 0.0,
        insert_fraction: float = 0.0,
        download: bool = False,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        seed: int = 0,
    ) -> None:
        if val_split not in ("speaker", "random"):
            raise ValueError(f"val_split must be 'speaker' or 'random', got {val_split!r}.")
        _check_val_fraction(val_fraction)
        augmentation = SpikeAugmentation(time_jitter, unit_jitter, drop_probability, insert_fraction)
        super().__init__(
            data_dir,
            dt,
            duration,
            num_units,
            preload,
            augmentation,
            download,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            seed=seed,
        )
        self.val_split = val_split
        self.val_fraction = val_fraction
        self.val_speakers: Optional[list[int]] = None
        self.save_hyperparameters()

    def _setup_fit(self, paths: dict[str, Path]) -> None:
        train_file = self._dataset(paths["train"], train=True)
        if self.val_fraction == 0:
            self.train_set, self.val_set = train_file, None
            return

        if self.val_split == "speaker":
            if train_file.speakers is None:
                raise ValueError(f"{paths['train']} has no extra/speaker dataset. Use val_split='random'.")
            train_indices, val_indices, self.val_speakers = split_by_speaker(
                train_file.speakers, self.val_fraction, self.seed
            )
            rank_zero_info(f"SHD validation speakers: {self.val_speakers} ({len(val_indices)} samples).")
        else:
            train_indices, val_indices = split_at_random(len(train_file), self.val_fraction, self.seed)

        val_file = self._dataset(paths["train"], train=False)
        self.train_set = Subset(train_file, train_indices.tolist())
        self.val_set = Subset(val_file, val_indices.tolist())

    def val_dataloader(self) -> Union[DataLoader, list]:
        # Lightning skips validation when the loader list is empty.
        if self.val_fraction == 0:
            return []
        return super().val_dataloader()


class SSCDataModule(_HeidelbergDataModule):
    """Spiking Speech Commands: 35 classes, 700 input channels, with the official validation split.

    The folder ``data_dir`` must contain ``ssc_train.h5``, ``ssc_valid.h5`` and ``ssc_test.h5``, either
    directly or in the subfolder ``SSC/`` that ``tonic.datasets.SSC`` uses. Nothing is downloaded unless
    ``download=True``. The grid has ``round(duration / dt)`` steps.

    Args:
        data_dir: Folder with the ``.h5`` files, or where ``download=True`` puts them.
        dt: Time step in seconds.
        duration: Length of the binned window in seconds; later spikes are dropped.
        num_units: Number of input channels.
        preload: Load the spike trains into memory instead of reading them from disk per item.
        time_jitter: Standard deviation of Gaussian spike-time noise in seconds (training only).
        unit_jitter: Standard deviation of Gaussian channel noise in channels (training only).
        drop_probability: Probability of removing each spike (training only).
        insert_fraction: Random spikes added, as a fraction of the ``num_steps * num_units`` bins
            (training only).
        download: Download missing files from the Zenke lab server in :meth:`prepare_data`.
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes.
        pin_memory: Pin host memory for faster copies to a GPU.
        persistent_workers: Keep workers alive between epochs when ``num_workers > 0``.
        seed: Seed of the shuffle order.
    """

    file_names = {"train": "ssc_train.h5", "val": "ssc_valid.h5", "test": "ssc_test.h5"}
    folder_name = "SSC"
    default_num_classes = 35

    def __init__(
        self,
        data_dir: str = "data",
        dt: float = 2e-3,
        duration: float = 1.0,
        num_units: int = 700,
        preload: bool = False,
        time_jitter: float = 0.0,
        unit_jitter: float = 0.0,
        drop_probability: float = 0.0,
        insert_fraction: float = 0.0,
        download: bool = False,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        seed: int = 0,
    ) -> None:
        augmentation = SpikeAugmentation(time_jitter, unit_jitter, drop_probability, insert_fraction)
        super().__init__(
            data_dir,
            dt,
            duration,
            num_units,
            preload,
            augmentation,
            download,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            seed=seed,
        )
        self.save_hyperparameters()

    def _setup_fit(self, paths: dict[str, Path]) -> None:
        self.train_set = self._dataset(paths["train"], train=True)
        self.val_set = self._dataset(paths["val"], train=False)


def spoken_digits_path() -> Path:
    """Return the path of the bundled spoken-digits file (SHD layout, 20 samples, 700 channels)."""
    # NOTE: assumes an installation unpacked on disk (wheel or editable), not a zipped package.
    return Path(str(importlib.resources.files("lightning_snn.data") / "files" / "spoken_digits_shd.h5"))


class SpokenDigitsDataModule(SpikeDataModule):
    """Twenty real recordings of spoken digits, converted to spikes like SHD, bundled with the package.

    The file contains one recording per class: labels 0-9 are the English digits zero to nine (speaker 0)
    and labels 10-19 the Italian digits (speaker 1). The audio was converted with the ``lauscher``
    cochlea model, which also produced SHD, on 700 channels. The last spike of any sample comes at 0.91 s, hence
    the 1 s default window. With one sample per class, train, validation and test all read the same
    file. Use it to run the SHD code path on real spikes offline (shapes, rates, plots, overfitting a
    model), not to measure generalization.

    Args:
        path: An SHD-layout file to read instead of the bundled one.
        dt: Time step in seconds.
        duration: Length of the binned window in seconds; later spikes are dropped.
        num_units: Number of input channels.
        time_jitter: Standard deviation of Gaussian spike-time noise in seconds (training only).
        unit_jitter: Standard deviation of Gaussian channel noise in channels (training only).
        drop_probability: Probability of removing each spike (training only).
        insert_fraction: Random spikes added, as a fraction of the ``num_steps * num_units`` bins
            (training only).
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes.
        pin_memory: Pin host memory for faster copies to a GPU.
        persistent_workers: Keep workers alive between epochs when ``num_workers > 0``.
        seed: Seed of the shuffle order.
    """

    def __init__(
        self,
        path: Optional[str] = None,
        dt: float = 2e-3,
        duration: float = 1.0,
        num_units: int = 700,
        time_jitter: float = 0.0,
        unit_jitter: float = 0.0,
        drop_probability: float = 0.0,
        insert_fraction: float = 0.0,
        batch_size: int = 20,
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
        self.path = Path(path) if path is not None else spoken_digits_path()
        if not self.path.is_file():
            raise FileNotFoundError(f"Spoken-digits file not found: {self.path}. Pass path= an SHD-layout .h5 file.")
        self.dt = dt
        self.duration = duration
        self.num_units = num_units
        self.num_steps = num_steps_for(duration, dt)
        self.augmentation = SpikeAugmentation(time_jitter, unit_jitter, drop_probability, insert_fraction)
        self.input_shape = (num_units,)
        self.num_classes = _read_num_classes(self.path, default=20)
        self.save_hyperparameters()

    def setup(self, stage: Optional[str] = None) -> None:
        def make(train: bool) -> SHDDataset:
            augmentation = self.augmentation if train else None
            return SHDDataset(self.path, self.dt, self.duration, self.num_units, augmentation=augmentation)

        if stage in (None, "fit", "validate"):
            self.train_set = make(train=True)
            self.val_set = make(train=False)
        if stage in (None, "test", "predict"):
            self.test_set = make(train=False)
