"""Event-driven dense projection for sparse inputs such as spike trains.

A dense matmul spends most of its work on zeros when only a few percent of the inputs are active.
Here the forward pass sums one weight column per nonzero input (``embedding_bag`` over the events of
each row), and the weight gradient sums one gradient row per event in the same way. Finding the events
costs one pass over the input, so the event path pays off only below a density threshold and for
wide enough outputs; :func:`prefers_events` makes that choice from a sample of the input.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

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


class _EventLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        num_rows, in_features = x.shape
        flat = x.reshape(-1)
        flat_index = flat.nonzero().squeeze(1)
        rows = torch.div(flat_index, in_features, rounding_mode="floor")
        columns = flat_index - rows * in_features
        values = flat.index_select(0, flat_index)
        # Binary spikes need no per-event scale, which saves a multiply per event.
        scales = None if bool((values == 1).all()) else values
        row_offsets = torch.searchsorted(rows, torch.arange(num_rows, device=x.device))

        output = F.embedding_bag(
            columns, weight.t().contiguous(), row_offsets, mode="sum", per_sample_weights=scales
        )
        if bias is not None:
            output = output + bias

        ctx.save_for_backward(rows, columns, scales, weight)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        rows, columns, scales, weight = ctx.saved_tensors
        grad_output = grad_output.contiguous()
        grad_x = grad_weight = grad_bias = None

        if ctx.needs_input_grad[0]:
            grad_x = grad_output @ weight
        if ctx.needs_input_grad[1]:
            # Group the events by input column; each column's gradient sums the rows it fired in.
            in_features = weight.shape[1]
            order = torch.argsort(columns.to(_sort_key_dtype(in_features)), stable=True)
            counts = torch.bincount(columns, minlength=in_features)
            column_offsets = torch.cumsum(counts, 0) - counts
            column_scales = None if scales is None else scales.index_select(0, order)
            grad_weight = F.embedding_bag(
                rows.index_select(0, order),
                grad_output,
                column_offsets,
                mode="sum",
                per_sample_weights=column_scales,
            ).t()
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
