"""Lightning callbacks: spiking activity in TensorBoard, and class probabilities written by ``predict``."""

from lightning_snn.callbacks.base import ActivitySnapshotCallback
from lightning_snn.callbacks.histograms import ActivityHistogramLogger
from lightning_snn.callbacks.predictions import PredictionWriter
from lightning_snn.callbacks.raster import SpikeRasterLogger

__all__ = ["ActivityHistogramLogger", "ActivitySnapshotCallback", "PredictionWriter", "SpikeRasterLogger"]
