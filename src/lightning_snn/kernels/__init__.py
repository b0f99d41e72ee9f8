"""Fused and event-driven kernels behind the sequence driver and the dense connections.

Nothing here imports layers or networks. The kernels take tensors, decay factors and a surrogate
spike function. :mod:`lightning_snn.nn` decides when to use them (see :mod:`.backend`).
"""

from lightning_snn.kernels.backend import get_backend, set_backend, use_backend
from lightning_snn.kernels.events import event_linear, prefers_events, set_event_threshold
from lightning_snn.kernels.lif import LIFSequenceOutput, lif_sequence, supports_surrogate
from lightning_snn.kernels.readout import ReadoutSequenceOutput, readout_sequence
from lightning_snn.kernels.recurrence import LinearRecurrence

__all__ = [
    "LIFSequenceOutput",
    "LinearRecurrence",
    "ReadoutSequenceOutput",
    "event_linear",
    "get_backend",
    "lif_sequence",
    "prefers_events",
    "readout_sequence",
    "set_backend",
    "set_event_threshold",
    "supports_surrogate",
    "use_backend",
]
