"""Spike datasets as LightningDataModules: synthetic, static images, audio (SHD/SSC) and DVS events."""

from lightning_snn.data.base import SpikeDataModule
from lightning_snn.data.digits import DigitsDataModule
from lightning_snn.data.dvs_gesture import DVSGestureDataModule, DVSGestureFrames, events_to_frames
from lightning_snn.data.encoders import LatencyEncoder, PoissonEncoder
from lightning_snn.data.randman import (
    RandmanDataModule,
    RandomManifold,
    make_spike_timing_randman,
    spike_times_to_raster,
)
from lightning_snn.data.shd import (
    SHDDataModule,
    SHDDataset,
    SpikeAugmentation,
    SpokenDigitsDataModule,
    SSCDataModule,
    bin_spikes,
    download_heidelberg_files,
    num_steps_for,
    spoken_digits_path,
)

__all__ = [
    "DVSGestureDataModule",
    "DVSGestureFrames",
    "DigitsDataModule",
    "LatencyEncoder",
    "PoissonEncoder",
    "RandmanDataModule",
    "RandomManifold",
    "SHDDataModule",
    "SHDDataset",
    "SSCDataModule",
    "SpikeAugmentation",
    "SpikeDataModule",
    "SpokenDigitsDataModule",
    "bin_spikes",
    "download_heidelberg_files",
    "events_to_frames",
    "make_spike_timing_randman",
    "num_steps_for",
    "spike_times_to_raster",
    "spoken_digits_path",
]
