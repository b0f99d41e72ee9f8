"""Event-driven dense projection for sparse inputs such as spike trains.

A dense matmul spends most of its work on zeros when only a few percent of the inputs are active.
Here the forward pass sums one weight column per nonzero input (``embedding_bag`` over the events of
each row), and the weight gradient sums one gradient row per event in the same way. Finding the events
costs one pass over the input, so the event path pays off only below a density threshold and for
wide enough outputs; :func:`prefers_events` makes that choice from a sample of the input.
"""

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_snn.kernels import cpu_extension
from lightning_snn.kernels.backend import kernels_enabled

#: Inputs with at most this fraction of nonzero entries use the event path. The density sweep of
#: benchmarks/training_step.py (a 700 -> 128 projection of 6,400 rows, one thread, 2-core AVX-512
#: x86-64 VM) found the two paths break even between 3 % and 10 % density.
EVENT_DENSITY_THRESHOLD = 0.05
#: Narrower outputs than this stay dense: the dense matmul then costs less than finding the events.
EVENT_MIN_OUTPUTS = 64
#: Inputs with fewer elements stay dense, since the fixed cost of the event path dominates.
EVENT_MIN_ELEMENTS = 1 << 16
# Stride of the density sample: prime, so that it does not align with typical row lengths.
_SAMPLE_STRIDE = 97


def set_event_threshold(density: float) -> None:
    """Set the maximum input density of the event path (0 disables it, 1 uses it whenever allowed)."""
    global EVENT_DENSITY_THRESHOLD
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"The event density threshold must be in [0, 1], got {density}.")
    EVENT_DENSITY_THRESHOLD = float(density)


def estimate_density(x: Tensor) -> float:
    """Return the fraction of nonzero entries of ``x``, counted on a strided sample of large inputs."""
    flat = x.reshape(-1)
    if flat.numel() > _SAMPLE_STRIDE * 4096:
        flat = flat[::_SAMPLE_STRIDE]
    return float(torch.count_nonzero(flat)) / max(flat.numel(), 1)


def prefers_events(x: Tensor, out_features: int) -> bool:
    """Return True when projecting ``x`` (rows of inputs) to ``out_features`` should use events.

    The event path needs an input that does not require a gradient (the dense path computes that
    gradient), a floating-point CPU tensor, and a density at or below ``EVENT_DENSITY_THRESHOLD``.
    """
    if not kernels_enabled() or EVENT_DENSITY_THRESHOLD <= 0.0:
        return False
    if x.requires_grad or not x.is_floating_point() or x.device.type != "cpu":
        return False
    if out_features < EVENT_MIN_OUTPUTS or x.numel() < EVENT_MIN_ELEMENTS:
        return False
    return estimate_density(x) <= EVENT_DENSITY_THRESHOLD


def _sort_key_dtype(size: int) -> torch.dtype:
    """Return the narrowest integer dtype for keys below ``size``: sorting narrow keys is faster."""
    if size <= torch.iinfo(torch.int16).max:
        return torch.int16
    if size <= torch.iinfo(torch.int32).max:
        return torch.int32
    return torch.int64


# Integer types of the same width as each float type. Searching the bit patterns for nonzero entries is
# faster than comparing floats. The patterns differ from the float test only at -0.0, which becomes an
# event of value -0.0 that adds nothing.
_SAME_WIDTH_INTEGER = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def nonzero_indices(flat: Tensor) -> Tensor:
    """Return the indices of the nonzero entries of the 1-D tensor ``flat``, in increasing order."""
    bits = _SAME_WIDTH_INTEGER.get(flat.dtype)
    if bits is not None and flat.is_contiguous():
        flat = flat.view(bits)
    return flat.nonzero().squeeze(1)


class Events(NamedTuple):
    """The nonzero entries of a 2-D tensor ``(num_rows, num_columns)``, in row-major order."""

    rows: Tensor
    """Row of every event, in increasing order."""
    columns: Tensor
    """Column of every event."""
    scales: Optional[Tensor]
    """Value of every event, or None when all values are 1 (binary spikes need no per-event scale)."""
    num_rows: int
    num_columns: int
    row_offsets: Optional[Tensor] = None
    """Index of each row's first event, when known (the projection needs it)."""

    @property
    def count(self) -> int:
        return self.columns.numel()


def find_events(x: Tensor) -> Events:
    """Return the nonzero entries of the 2-D tensor ``x``."""
    num_rows, num_columns = x.shape
    kernels = cpu_extension.available_for(x)
    if kernels is not None and x.is_contiguous() and x.numel() <= torch.iinfo(torch.int32).max:
        # The compiled kernel lists rows, columns and row offsets in one pass.
        rows, columns, values, offsets, binary = kernels.find_events(x)
        scales = None if bool(binary) else values
        return Events(rows, columns, scales, num_rows, num_columns, offsets[:-1])

    flat = x.reshape(-1)
    flat_index = nonzero_indices(flat)
    # 32-bit indices halve the memory that the events keep for the backward pass.
    if flat.numel() <= torch.iinfo(torch.int32).max:
        flat_index = flat_index.to(torch.int32)
    rows = torch.div(flat_index, num_columns, rounding_mode="floor")
    columns = flat_index - rows * num_columns
    values = flat.index_select(0, flat_index)
    scales = None if bool((values == 1).all()) else values
    return Events(rows, columns, scales, num_rows, num_columns)


def events_matmul(events: Events, weight_t: Tensor) -> Tensor:
    """Return ``x @ weight_t`` for the ``x`` that ``events`` describe; ``weight_t`` is contiguous.

    Each output row sums the rows of ``weight_t`` selected by the columns of its events.
    """
    row_offsets = events.row_offsets
    if row_offsets is None:
        row_starts = torch.arange(events.num_rows, device=events.rows.device, dtype=events.rows.dtype)
        row_offsets = torch.searchsorted(events.rows, row_starts, out_int32=events.rows.dtype == torch.int32)
    return F.embedding_bag(
        events.columns, weight_t, row_offsets, mode="sum", per_sample_weights=events.scales
    )


def events_weight_gradient(events: Events, grad_output: Tensor) -> Tensor:
    """Return ``grad_output.T @ x`` ``(out_features, num_columns)`` for the ``x`` that ``events`` describe.

    Args:
        events: Events of the input ``x`` ``(n, num_columns)``.
        grad_output: Gradient w.r.t. ``x @ weight.T``, contiguous, ``(n, out_features)``.
    """
    # Group the events by input column; each column's gradient sums the rows it fired in.
    columns = events.columns
    order = torch.argsort(columns.to(_sort_key_dtype(events.num_columns)), stable=True)
    counts = torch.bincount(columns, minlength=events.num_columns)
    column_offsets = (torch.cumsum(counts, 0) - counts).to(events.rows.dtype)
    column_scales = None if events.scales is None else events.scales.index_select(0, order)
    return F.embedding_bag(
        events.rows.index_select(0, order),
        grad_output,
        column_offsets,
        mode="sum",
        per_sample_weights=column_scales,
    ).t()


class _EventLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        events = find_events(x)
        output = events_matmul(events, weight.t().contiguous())
        if bias is not None:
            output = output + bias

        ctx.events = events._replace(rows=None, columns=None, scales=None, row_offsets=None)
        ctx.save_for_backward(events.rows, events.columns, events.scales, weight)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        rows, columns, scales, weight = ctx.saved_tensors
        events = ctx.events._replace(rows=rows, columns=columns, scales=scales)
        grad_output = grad_output.contiguous()
        grad_x = grad_weight = grad_bias = None

        if ctx.needs_input_grad[0]:
            grad_x = grad_output @ weight
        if ctx.needs_input_grad[1]:
            grad_weight = events_weight_gradient(events, grad_output)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum(0)
        return grad_x, grad_weight, grad_bias


def event_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Compute ``x @ weight.T + bias`` from the nonzero entries of ``x`` only.

    Args:
        x: Input rows ``(n, in_features)``, mostly zeros.
        weight: Weight ``(out_features, in_features)``.
        bias: Optional bias ``(out_features,)``.

    Returns:
        The projection ``(n, out_features)``, equal to :func:`torch.nn.functional.linear` up to float
        rounding (the sums run in another order).
    """
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"event_linear needs x (n, in_features) and weight (out_features, in_features), got "
            f"{tuple(x.shape)} and {tuple(weight.shape)}."
        )
    return _EventLinear.apply(x, weight, bias)
