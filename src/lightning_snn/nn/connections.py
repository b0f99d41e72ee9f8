"""Synaptic connections: weights that turn presynaptic spikes into drive for one receptor.

A connection works on whole sequences ``(batch, time, *in_shape)`` by folding time into the batch, so
the feed-forward drive of all time steps costs one matmul or one convolution. Recurrent connections use
:meth:`Connection.step` on one time step at a time inside the simulation loop.
"""

import math
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_snn.allocator import retaining_freed_memory
from lightning_snn.kernels import convolution as event_convolution
from lightning_snn.kernels import event_linear, prefers_events
from lightning_snn.nn.constraints import WeightConstraint

Shape = tuple[int, ...]
IntOrTuple = Union[int, Sequence[int]]

# Input plus output bytes of one convolution call when a connection projects a whole sequence.
# NOTE: 2, 4 and 8 MiB ran equally fast for the conv benchmark networks (benchmarks/networks.py) on
# one thread of an AMD EPYC with 2 MiB L2 per core. Other CPUs may prefer another size.
_CONV_BLOCK_BYTES = 4 << 20


class Connection(nn.Module):
    """Base of all connections.

    Args:
        target: Receptor of the postsynaptic neurons that this connection drives: ``"input"`` for
            single-current models, ``"exc"`` or ``"inh"`` for E/I models. When omitted, the neuron's
            first receptor.
        propagate_gradients: When False, the presynaptic spikes are detached so that no gradient flows
            back through this connection into earlier layers (its own weights still learn).
        requires_grad: Train the weights (False freezes them).
        constraints: Applied to the weight after initialization and after every optimizer step.
        regularizers: Weight penalties, each a module mapping the weight to a scalar (see
            :mod:`lightning_snn.regularizers`).
    """

    def __init__(
        self,
        target: Optional[str] = None,
        propagate_gradients: bool = True,
        requires_grad: bool = True,
        constraints: Sequence[WeightConstraint] = (),
        regularizers: Sequence[nn.Module] = (),
    ) -> None:
        super().__init__()
        self.target = target
        self.propagate_gradients = propagate_gradients
        self.requires_grad = requires_grad
        self.constraints = list(constraints)
        self.regularizers = nn.ModuleList(regularizers)
        self.in_shape: Optional[Shape] = None
        self.out_shape: Optional[Shape] = None
        self.op: Optional[nn.Module] = None
        # Running sum of presynaptic activity, kept only while an initializer measures input rates.
        self.probing = False
        self._probe_sum = 0.0
        self._probe_count = 0

    @property
    def is_built(self) -> bool:
        return self.op is not None

    @property
    def weight(self) -> Tensor:
        if self.op is None:
            raise RuntimeError(f"{type(self).__name__} is not built yet; it has no weight.")
        return self.op.weight

    @property
    def bias(self) -> Optional[Tensor]:
        return None if self.op is None else self.op.bias

    @property
    def fan_in(self) -> int:
        """Number of presynaptic inputs of each postsynaptic neuron."""
        return int(self.weight[0].numel())

    def build(self, in_shape: Shape, out_shape: Optional[Shape] = None) -> Shape:
        """Create the weights for presynaptic shape ``in_shape``; return the postsynaptic shape."""
        raise NotImplementedError

    def _finish_build(self) -> None:
        if not self.requires_grad:
            for parameter in self.op.parameters():
                parameter.requires_grad_(False)
        self.apply_constraints()

    def project(self, x: Tensor) -> Tensor:
        """Map presynaptic activity ``(n, *in_shape)`` to drive ``(n, *out_shape)``."""
        raise NotImplementedError

    def _prepare(self, x: Tensor) -> Tensor:
        if not self.propagate_gradients:
            x = x.detach()
        if self.probing:
            self._probe_sum += float(x.detach().float().sum())
            self._probe_count += x.numel()
        return x

    def forward(self, x: Tensor) -> Tensor:
        """Project a whole sequence ``(batch, time, *in_shape)`` to ``(batch, time, *out_shape)``."""
        if self.op is None:
            raise RuntimeError(f"{type(self).__name__} is not built yet; call build(in_shape) first.")
        expected = self.in_shape
        if tuple(x.shape[2:]) != expected:
            raise ValueError(
                f"{type(self).__name__} expects input (batch, time, *{expected}), got {tuple(x.shape)}."
            )
        x = self._prepare(x)
        batch_size, num_steps = x.shape[:2]
        drive = self._project_frames(x.reshape(batch_size * num_steps, *expected))
        return drive.reshape(batch_size, num_steps, *self.out_shape)

    def _project_frames(self, frames: Tensor) -> Tensor:
        """Project the ``(batch * time, *in_shape)`` frames of a whole sequence."""
        return self.project(frames)

    def step(self, x: Tensor) -> Tensor:
        """Project one time step ``(batch, *in_shape)`` to ``(batch, *out_shape)``."""
        return self.project(self._prepare(x))

    def start_probe(self) -> None:
        self.probing, self._probe_sum, self._probe_count = True, 0.0, 0

    def stop_probe(self) -> Optional[float]:
        """Stop measuring and return the mean presynaptic activity per input and step (None if unseen)."""
        self.probing = False
        if self._probe_count == 0:
            return None
        return self._probe_sum / self._probe_count

    @torch.no_grad()
    def apply_constraints(self) -> None:
        for constraint in self.constraints:
            constraint(self.weight)

    def regularization_loss(self) -> Optional[Tensor]:
        """Return the sum of this connection's weight penalties, or None without regularizers."""
        penalties = [reg(self.weight) for reg in self.regularizers]
        if not penalties:
            return None
        return torch.stack(penalties).sum()


class Dense(Connection):
    """All-to-all connection; multi-dimensional shapes are flattened on both sides.

    Args:
        bias: Add a learnable bias per postsynaptic neuron.
        target, propagate_gradients, requires_grad, constraints, regularizers: See :class:`Connection`.
    """

    def __init__(
        self,
        bias: bool = False,
        target: Optional[str] = None,
        propagate_gradients: bool = True,
        requires_grad: bool = True,
        constraints: Sequence[WeightConstraint] = (),
        regularizers: Sequence[nn.Module] = (),
    ) -> None:
        super().__init__(target, propagate_gradients, requires_grad, constraints, regularizers)
        self.use_bias = bias

    def build(self, in_shape: Shape, out_shape: Optional[Shape] = None) -> Shape:
        if out_shape is None:
            raise ValueError("A Dense connection needs the postsynaptic shape to build.")
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.op = nn.Linear(math.prod(self.in_shape), math.prod(self.out_shape), bias=self.use_bias)
        self._finish_build()
        return self.out_shape

    def project(self, x: Tensor) -> Tensor:
        rows = x.reshape(x.shape[0], -1)
        # Sparse inputs (input spike trains) are projected event by event when that is cheaper.
        if prefers_events(rows, self.op.out_features):
            drive = event_linear(rows, self.op.weight, self.op.bias)
        else:
            drive = F.linear(rows, self.op.weight, self.op.bias)
        return drive.reshape(x.shape[0], *self.out_shape)


def _as_tuple(value: IntOrTuple, dims: int, name: str, minimum: int = 0) -> tuple[int, ...]:
    if isinstance(value, int):
        value = (value,) * dims
    value = tuple(int(item) for item in value)
    if len(value) != dims:
        raise ValueError(f"{name} needs {dims} values for a {dims}-D convolution, got {value}.")
    if any(item < minimum for item in value):
        raise ValueError(f"{name} must be at least {minimum} along every axis, got {value}.")
    return value


class _ConvConnection(Connection):
    dims: int = 0

    def __init__(
        self,
        out_channels: Optional[int],
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        padding: IntOrTuple = 0,
        dilation: IntOrTuple = 1,
        bias: bool = False,
        target: Optional[str] = None,
        propagate_gradients: bool = True,
        requires_grad: bool = True,
        constraints: Sequence[WeightConstraint] = (),
        regularizers: Sequence[nn.Module] = (),
    ) -> None:
        super().__init__(target, propagate_gradients, requires_grad, constraints, regularizers)
        self.out_channels = out_channels
        self.kernel_size = _as_tuple(kernel_size, self.dims, "kernel_size", minimum=1)
        self.stride = _as_tuple(stride, self.dims, "stride", minimum=1)
        self.padding = _as_tuple(padding, self.dims, "padding", minimum=0)
        self.dilation = _as_tuple(dilation, self.dims, "dilation", minimum=1)
        self.use_bias = bias

    def output_shape(self, in_shape: Shape) -> Shape:
        """Return the postsynaptic shape ``(out_channels, *spatial)`` for presynaptic ``in_shape``."""
        spatial = []
        for size, kernel, stride, pad, dilation in zip(
            in_shape[1:], self.kernel_size, self.stride, self.padding, self.dilation
        ):
            length = (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
            if length < 1:
                raise ValueError(
                    f"Input of spatial size {tuple(in_shape[1:])} is too small for kernel "
                    f"{self.kernel_size}, stride {self.stride} and padding {self.padding}."
                )
            spatial.append(length)
        return (self.out_channels, *spatial)

    def build(self, in_shape: Shape, out_shape: Optional[Shape] = None) -> Shape:
        in_shape = tuple(in_shape)
        if len(in_shape) != self.dims + 1:
            raise ValueError(
                f"A {self.dims}-D convolution needs presynaptic shape (channels, "
                f"{'length' if self.dims == 1 else 'height, width'}), got {in_shape}."
            )
        if self.out_channels is None:
            if out_shape is None:
                raise ValueError("Give out_channels, or the postsynaptic shape to build.")
            self.out_channels = out_shape[0]
        computed = self.output_shape(in_shape)
        if out_shape is not None and tuple(out_shape) != computed:
            raise ValueError(
                f"The convolution maps {in_shape} to {computed}, which does not match the "
                f"postsynaptic shape {tuple(out_shape)}."
            )
        conv_class = nn.Conv1d if self.dims == 1 else nn.Conv2d
        self.op = conv_class(
            in_shape[0],
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=self.use_bias,
        )
        self.in_shape, self.out_shape = in_shape, computed
        self._finish_build()
        return computed

    def project(self, x: Tensor) -> Tensor:
        # Sparse spike maps are convolved event by event when the compiled kernels can run them.
        if event_convolution.events_allowed(x, self.op.weight, self.dilation, self.op.groups) and (
            event_convolution.is_sparse(x, self.op.out_channels)
        ):
            return event_convolution.event_conv(x, self.op.weight, self.op.bias, self.stride, self.padding)
        return self.op(x)

    def _project_frames(self, frames: Tensor) -> Tensor:
        # One convolution over all batch * time frames needs temporaries of hundreds of MiB, above all
        # in its backward pass. glibc maps such buffers fresh on every call, and their page faults
        # cost more than the arithmetic. Blocks of frames give the same drive, because every frame
        # is convolved on its own, and reuse small buffers instead.
        # With glibc keeping freed memory (lightning_snn.allocator), large buffers cost no page faults,
        # and one call saves the copy that joins the blocks.
        frame_bytes = frames.element_size() * (math.prod(self.in_shape) + math.prod(self.out_shape))
        block = max(1, _CONV_BLOCK_BYTES // frame_bytes)
        if block >= frames.shape[0] or torch.compiler.is_compiling() or retaining_freed_memory():
            return self.project(frames)
        return torch.cat([self.project(part) for part in frames.split(block)])


class Conv1d(_ConvConnection):
    """1-D convolutional connection on channel-first ``(channels, length)`` populations.

    Args:
        out_channels: Number of postsynaptic channels (filters); taken from the layer when None.
        kernel_size, stride, padding, dilation: As for :class:`torch.nn.Conv1d`.
        bias: Add a learnable bias per output channel.
        target, propagate_gradients, requires_grad, constraints, regularizers: See :class:`Connection`.
    """

    dims = 1


class Conv2d(_ConvConnection):
    """2-D convolutional connection on channel-first ``(channels, height, width)`` populations.

    Args:
        out_channels: Number of postsynaptic channels (filters); taken from the layer when None.
        kernel_size, stride, padding, dilation: As for :class:`torch.nn.Conv2d`.
        bias: Add a learnable bias per output channel.
        target, propagate_gradients, requires_grad, constraints, regularizers: See :class:`Connection`.
    """

    dims = 2


class _ElementwiseOp(nn.Module):
    def __init__(self, weight_shape: Shape, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(weight_shape))
        self.bias = nn.Parameter(torch.zeros(weight_shape)) if bias else None


class Elementwise(Connection):
    """One-to-one connection: neuron ``i`` of the source drives neuron ``i`` of the target.

    The weight has the presynaptic shape; dimensions listed in ``tie_dims`` (indices into the neuron
    shape) get size 1 and share one weight, e.g. ``tie_dims=(1,)`` on ``(channels, length)`` learns one
    weight per channel. Unlike Stork's ``IdentityConnection``, it works without a bias and with every
    initializer, and ``fan_in`` is 1.

    Args:
        tie_dims: Neuron dimensions that share a weight.
        bias: Add a learnable bias of the weight's shape.
        target, propagate_gradients, requires_grad, constraints, regularizers: See :class:`Connection`.
    """

    def __init__(
        self,
        tie_dims: Sequence[int] = (),
        bias: bool = False,
        target: Optional[str] = None,
        propagate_gradients: bool = True,
        requires_grad: bool = True,
        constraints: Sequence[WeightConstraint] = (),
        regularizers: Sequence[nn.Module] = (),
    ) -> None:
        super().__init__(target, propagate_gradients, requires_grad, constraints, regularizers)
        self.tie_dims = tuple(tie_dims)
        self.use_bias = bias

    @property
    def fan_in(self) -> int:
        return 1

    def build(self, in_shape: Shape, out_shape: Optional[Shape] = None) -> Shape:
        in_shape = tuple(in_shape)
        if out_shape is not None and tuple(out_shape) != in_shape:
            raise ValueError(
                f"An Elementwise connection keeps the shape; source {in_shape} and target "
                f"{tuple(out_shape)} differ."
            )
        for dim in self.tie_dims:
            if not -len(in_shape) <= dim < len(in_shape):
                raise ValueError(f"tie_dims entry {dim} is out of range for neuron shape {in_shape}.")
        weight_shape = tuple(
            1 if (index in self.tie_dims or index - len(in_shape) in self.tie_dims) else size
            for index, size in enumerate(in_shape)
        )
        self.op = _ElementwiseOp(weight_shape, self.use_bias)
        self.in_shape, self.out_shape = in_shape, in_shape
        self._finish_build()
        return in_shape

    def project(self, x: Tensor) -> Tensor:
        drive = x * self.op.weight
        if self.op.bias is not None:
            drive = drive + self.op.bias
        return drive
