"""Lightning callbacks that write spiking activity to TensorBoard."""

from lightning_snn.callbacks.base import ActivitySnapshotCallback
from lightning_snn.callbacks.histograms import ActivityHistogramLogger
from lightning_snn.callbacks.raster import SpikeRasterLogger

__all__ = ["ActivityHistogramLogger", "ActivitySnapshotCallback", "SpikeRasterLogger"]
