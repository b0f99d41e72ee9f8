"""Event-driven convolutions for sparse spike inputs, on the compiled CPU kernels.

A convolution of spike maps that are a few percent dense spends most of a dense kernel's work on
zeros. The compiled kernels of ``csrc/convolution.cpp`` instead add, for every nonzero input, its
weight taps to the outputs it reaches (forward pass) and the output gradients it saw to the weight
gradient (backward pass). The gradient w.r.t. the input is dense, since every input position receives
one, so it stays on torch's convolution.

Convolutions with any stride, dilation 1 and one group, on float32/float64 CPU tensors, take these
paths. All others, and inputs denser than the thresholds below, use torch's convolution. Sums
run in another order than the dense kernels, so results agree with them up to float rounding.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from lightning_snn.kernels import cpu_extension
from lightning_snn.kernels.backend import kernels_enabled
from lightning_snn.kernels.events import estimate_density

#: Inputs with at most this fraction of nonzero entries are convolved by events. The convolutions of
#: the SHD and DVS benchmark networks took 0.4x to 0.6x of torch's time by events at their densities of
#: 3 to 9 %, for forward passes from 16 input channels and for all weight gradients. They took 0.5x to
#: 1.0x at 10 % and broke even between 10 and 20 % (benchmarks/event_convolution.py, one thread of a
#: 2-core AVX-512 x86-64 VM).
CONV_EVENT_DENSITY_THRESHOLD = 0.1
#: The threshold for convolutions with at least ``WIDE_OUTPUT_CHANNELS`` output channels. Each event
#: then adds longer rows, so events stayed faster up to about 15 % in the same table. With it, a
#: training step of the DVS benchmark network, whose last two layers see 10 to 11 % of their inputs
#: spike, took about 605 ms instead of 660 ms (same machine).
WIDE_CONV_EVENT_DENSITY_THRESHOLD = 0.15
WIDE_OUTPUT_CHANNELS = 32
#: The forward pass runs by events only for inputs of at least this many channels. With fewer, each
#: event reaches few outputs and the dense convolution was as fast (2 -> 16 channels, 3 x 3 kernel,
#: 3 % density: 13.8 ms by events, 13.5 ms dense, same script and machine).
EVENT_FORWARD_MIN_CHANNELS = 4


def events_allowed(x: Tensor, weight: Tensor, dilation: tuple[int, ...] = (1,), groups: int = 1) -> bool:
    """Return True when a convolution of ``x`` with ``weight`` may run by events (not checking density)."""
    return (
        kernels_enabled()
        and CONV_EVENT_DENSITY_THRESHOLD > 0.0
        and groups == 1
        and all(size == 1 for size in dilation)
        and x.dtype == weight.dtype
        and weight.dim() in (3, 4)
        and cpu_extension.available_for(x) is not None
    )


def is_sparse(x: Tensor, out_channels: int) -> bool:
    """Return True when ``x`` is sparse enough to be convolved by events to ``out_channels`` channels."""
    if out_channels >= WIDE_OUTPUT_CHANNELS:
        return estimate_density(x) <= WIDE_CONV_EVENT_DENSITY_THRESHOLD
    return estimate_density(x) <= CONV_EVENT_DENSITY_THRESHOLD


def _as_samples(x: Tensor, dims: int) -> Tensor:
    """View ``(n, channels, *spatial)`` as the kernels' ``(1, n, channels, height, width)`` samples."""
    x = x.contiguous()
    if dims == 1:
        x = x.unsqueeze(2)
    return x.unsqueeze(0)


def _pairs(values: tuple[int, ...], dims: int, one_d_value: int) -> tuple[int, int]:
    """Return ``values`` as (height, width), with ``one_d_value`` as the height of a 1-D convolution."""
    return (one_d_value, values[0]) if dims == 1 else (values[0], values[1])


def conv_events_forward(x: Tensor, weight: Tensor, stride: tuple[int, ...], padding: tuple[int, ...]) -> Tensor:
    """Return the bias-free convolution of the sparse ``x`` ``(n, channels, *spatial)``, summed by events."""
    dims = weight.dim() - 2
    kernel_h, kernel_w = _pairs(tuple(weight.shape[2:]), dims, 1)
    stride_h, stride_w = _pairs(stride, dims, 1)
    pad_h, pad_w = _pairs(padding, dims, 0)
    height, width = _pairs(tuple(x.shape[2:]), dims, 1)
    out_height = (height + 2 * pad_h - kernel_h) // stride_h + 1
    out_width = (width + 2 * pad_w - kernel_w) // stride_w + 1
    taps = weight.detach().contiguous()
    if dims == 1:
        taps = taps.unsqueeze(2)
    output = cpu_extension.load().conv_forward_events(
        _as_samples(x, dims), taps, None, out_height, out_width, stride_h, stride_w, pad_h, pad_w
    )
    return output[0] if dims == 2 else output[0].squeeze(2)


def conv_events_weight_gradient(
    x: Tensor, grad_output: Tensor, weight_shape: torch.Size, stride: tuple[int, ...], padding: tuple[int, ...]
) -> Tensor:
    """Return ``dL/dW`` of a convolution from its sparse input and its output gradient, summed by events."""
    dims = len(weight_shape) - 2
    kernel_h, kernel_w = _pairs(tuple(weight_shape[2:]), dims, 1)
    stride_h, stride_w = _pairs(stride, dims, 1)
    pad_h, pad_w = _pairs(padding, dims, 0)
    gradient = cpu_extension.load().conv_weight_gradient_events(
        _as_samples(x, dims), _as_samples(grad_output, dims), kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w
    )
    return gradient.squeeze(2) if dims == 1 else gradient


def conv_weight_gradient(
    x: Tensor, grad_output: Tensor, weight: Tensor, stride: tuple[int, ...], padding: tuple[int, ...]
) -> Tensor:
    """Return ``dL/dW`` of ``conv(x, weight)``, by events when ``x`` is sparse, else with torch."""
    if events_allowed(x, weight) and is_sparse(x, weight.shape[0]):
        return conv_events_weight_gradient(x, grad_output, weight.shape, stride, padding)
    if weight.dim() == 3:
        return torch.nn.grad.conv1d_weight(x, weight.shape, grad_output, stride, padding)
    return torch.nn.grad.conv2d_weight(x, weight.shape, grad_output, stride, padding)


def _input_gradient(
    input_shape: torch.Size, weight: Tensor, grad_output: Tensor, stride: tuple[int, ...], padding: tuple[int, ...]
) -> Tensor:
    """Return ``dL/dx`` of ``conv(x, weight)`` as the transposed convolution of ``grad_output``."""
    # The output padding restores the input positions that the last window did not reach.
    spatial = input_shape[2:]
    output_padding = []
    for size, out_size, kernel, step, pad in zip(spatial, grad_output.shape[2:], weight.shape[2:], stride, padding):
        output_padding.append(size - ((out_size - 1) * step - 2 * pad + kernel))
    transpose = F.conv_transpose1d if weight.dim() == 3 else F.conv_transpose2d
    return transpose(grad_output, weight, None, stride, padding, tuple(output_padding))


class _EventConvolution(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        dims = weight.dim() - 2
        if x.shape[1] >= EVENT_FORWARD_MIN_CHANNELS:
            output = conv_events_forward(x, weight, stride, padding)
            if bias is not None:
                output = output + bias.reshape(-1, *([1] * dims))
        else:
            convolution = F.conv1d if dims == 1 else F.conv2d
            output = convolution(x, weight.detach(), None if bias is None else bias.detach(), stride, padding)
        ctx.stride, ctx.padding = stride, padding
        ctx.save_for_backward(x, weight)
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        grad_output = grad_output.contiguous()
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _input_gradient(x.shape, weight, grad_output, ctx.stride, ctx.padding)
        if ctx.needs_input_grad[1]:
            grad_weight = conv_events_weight_gradient(x, grad_output, weight.shape, ctx.stride, ctx.padding)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum(dim=[0, *range(2, grad_output.dim())])
        return grad_x, grad_weight, grad_bias, None, None


def event_conv(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: tuple[int, ...], padding: tuple[int, ...]
) -> Tensor:
    """Convolve the sparse ``x`` ``(n, channels, *spatial)`` with ``weight``, summing over its events.

    The weight gradient is computed from the nonzero entries of ``x``, and so is the output when ``x``
    has at least ``EVENT_FORWARD_MIN_CHANNELS`` channels. The input gradient is torch's transposed
    convolution. Call it only where :func:`events_allowed` holds.
    """
    if weight.dim() not in (3, 4) or x.dim() != weight.dim() or x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"event_conv needs x (n, in_channels, *spatial) and weight (out_channels, in_channels, *kernel) "
            f"with 1 or 2 spatial dimensions, got {tuple(x.shape)} and {tuple(weight.shape)}."
        )
    return _EventConvolution.apply(x, weight, bias, tuple(stride), tuple(padding))
