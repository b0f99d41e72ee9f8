"""Layers: a neuron population with its afferent connections, built once the input shape is known.

A layer is created from sizes and options alone (so that a YAML file can describe it) and gets its
weights in :meth:`NetworkLayer.build`, which the enclosing :class:`~lightning_snn.nn.network.SpikingNetwork`
calls with the shape of the layer's input and the time step. Built layers can also be used on their
own: pass ``input_shape`` and ``dt`` to the constructor, or call ``build`` yourself.

Inside a network, layer ``i`` (counting from 1) receives the output of layer ``i - 1``, where layer 0
is the network input, plus the outputs of the layers named in ``skip_from``.
"""

import math
from dataclasses import dataclass
from typing import Callable, Literal, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_snn.kernels import LinearRecurrence
from lightning_snn.kernels.pooling import max_pool
from lightning_snn.nn.connections import Connection, Conv1d, Conv2d, Dense, IntOrTuple
from lightning_snn.nn.constraints import MinMaxConstraint, WeightConstraint
from lightning_snn.nn.neurons import LIF, ExcInhLIF, LeakyReadout, Neuron
from lightning_snn.nn.simulation import LinearRecurrentInput, simulate

Shape = tuple[int, ...]
ShapeLike = Union[int, Sequence[int]]
#: Activity regularizers and weight penalties are modules (``lightning_snn.regularizers``), so that a
#: YAML file can give them by ``class_path``. Any module that maps a tensor to a scalar works.
Penalty = nn.Module


def as_shape(shape: ShapeLike) -> Shape:
    return (int(shape),) if isinstance(shape, int) else tuple(int(size) for size in shape)


class LayerOutput(NamedTuple):
    transmitted: Tensor
    """Output passed to the next layers, ``(batch, time, *output_shape)`` (spikes after dropout)."""
    spikes: dict[str, Tensor]
    """Spike sequence of each population of the layer, keyed by population name (before dropout)."""


@dataclass
class Afferent:
    """One connection into a population, as initializers see it."""

    population: str
    """Name of the postsynaptic population."""
    neuron: Neuron
    connection: Connection
    recurrent: bool
    """True for connections within the layer (simulated step by step), False for feed-forward ones."""
    inhibitory: bool
    """True when the connection drives the inhibitory receptor."""


class NetworkLayer(nn.Module):
    """Base of everything that can sit in a :class:`~lightning_snn.nn.network.SpikingNetwork`.

    Args:
        skip_from: Indices of earlier outputs that also feed this layer through dense connections
            (0 is the network input, ``k`` the output of layer ``k``).
        name: Name of the layer's population; the network uses ``layer<i>`` when omitted.
    """

    def __init__(self, skip_from: Sequence[int] = (), name: Optional[str] = None) -> None:
        super().__init__()
        self.skip_from = tuple(int(index) for index in skip_from)
        self.name = name
        self.input_shape: Optional[Shape] = None
        self.output_shape: Optional[Shape] = None

    @property
    def is_built(self) -> bool:
        return self.output_shape is not None

    def build(self, input_shape: ShapeLike, dt: float, source_shapes: Sequence[Shape] = ()) -> Shape:
        """Create the weights for ``input_shape`` (and skip sources); return the output shape."""
        raise NotImplementedError

    def forward(self, sources: Sequence[Tensor]) -> LayerOutput:
        """Run the layer on all earlier outputs (``sources[-1]`` is its direct input)."""
        raise NotImplementedError

    def populations(self) -> dict[str, Neuron]:
        return {}

    def afferents(self) -> list[Afferent]:
        return []

    def regularization_loss(self, spikes: dict[str, Tensor]) -> Optional[Tensor]:
        return None

    def _check_skip_sources(self, source_shapes: Sequence[Shape]) -> None:
        for index in self.skip_from:
            if not 0 <= index < len(source_shapes) - 1:
                raise ValueError(
                    f"Layer {self.name or type(self).__name__} cannot receive a skip connection from "
                    f"output {index}: only earlier outputs 0..{len(source_shapes) - 2} exist "
                    f"(0 is the network input)."
                )


class _PopulationLayer(NetworkLayer):
    """Shared machinery of single-population layers: feed-forward drive, skips, recurrence."""

    def __init__(
        self,
        neuron: Neuron,
        connection: Connection,
        recurrent_connection: Optional[Connection],
        regularizers: Sequence[Penalty],
        weight_regularizers: Sequence[Penalty],
        skip_from: Sequence[int],
        name: Optional[str],
    ) -> None:
        super().__init__(skip_from=skip_from, name=name)
        self.neuron = neuron
        self.connection = connection
        self.recurrent_connection = recurrent_connection
        self.skip_connections = nn.ModuleList()
        self.activity_regularizers = nn.ModuleList(regularizers)
        self.weight_regularizers = list(weight_regularizers)
        self._input_view: Optional[Shape] = None

    def _connections(self) -> list[Connection]:
        connections = [self.connection, *self.skip_connections]
        if self.recurrent_connection is not None:
            connections.append(self.recurrent_connection)
        return connections

    def _build_connections(self, input_shape: Shape, output_shape: Optional[Shape], source_shapes, dt):
        self._check_skip_sources(source_shapes)
        output_shape = self.connection.build(input_shape, output_shape)
        self.neuron.build(output_shape, dt)
        for index in self.skip_from:
            skip = Dense(target=self.connection.target, regularizers=self.weight_regularizers)
            skip.build(source_shapes[index], output_shape)
            self.skip_connections.append(skip)
        if self.recurrent_connection is not None:
            self.recurrent_connection.build(output_shape, output_shape)
        for connection in self._connections():
            if connection.target is None:
                connection.target = self.neuron.receptors[0]
            if connection.target not in self.neuron.receptors:
                raise ValueError(
                    f"Connection target {connection.target!r} is not a receptor of "
                    f"{type(self.neuron).__name__}; choose one of {self.neuron.receptors}."
                )
        self.output_shape = output_shape
        return output_shape

    def forward(self, sources: Sequence[Tensor]) -> LayerOutput:
        if not self.is_built:
            raise RuntimeError(f"{type(self).__name__} is not built; call build(input_shape, dt) first.")
        x = sources[-1]
        if self._input_view is not None:
            x = x.reshape(*x.shape[:2], *self._input_view)

        receptors = self.neuron.receptors
        drives: list[Optional[Tensor]] = [None] * len(receptors)

        def add_drive(connection: Connection, presynaptic: Tensor) -> None:
            index = receptors.index(connection.target)
            drive = connection(presynaptic)
            drives[index] = drive if drives[index] is None else drives[index] + drive

        add_drive(self.connection, x)
        for index, skip in zip(self.skip_from, self.skip_connections):
            add_drive(skip, sources[index])

        recurrent_fn = None
        if self.recurrent_connection is not None:
            recurrent = self.recurrent_connection
            target_index = receptors.index(recurrent.target)

            def recurrent_fn(transmitted: list[Tensor]) -> list[list[Optional[Tensor]]]:
                drive: list[Optional[Tensor]] = [None] * len(receptors)
                drive[target_index] = recurrent.step(transmitted[0])
                return [drive]

        result = simulate([self.neuron], [drives], recurrent_fn, self._linear_recurrence())
        return LayerOutput(
            transmitted=result.transmitted[0], spikes={self.name: result.outputs[0]}
        )

    def _linear_recurrence(self) -> Optional[LinearRecurrentInput]:
        """Describe the recurrent connection for the fused kernels, or return None if they cannot run it.

        The kernels need a bias-free dense or stride-1 convolution that passes gradients into the
        first receptor. A probing connection stays in the plain loop, which counts its input.
        """
        recurrent = self.recurrent_connection
        if recurrent is None or recurrent.bias is not None or recurrent.probing:
            return None
        if not recurrent.propagate_gradients or recurrent.target != self.neuron.receptors[0]:
            return None
        if type(recurrent) is Dense:
            return LinearRecurrentInput(LinearRecurrence("dense"), recurrent.weight)
        if type(recurrent) in (Conv1d, Conv2d):
            if any(size != 1 for size in (*recurrent.stride, *recurrent.dilation)):
                return None
            kind = "conv1d" if type(recurrent) is Conv1d else "conv2d"
            return LinearRecurrentInput(LinearRecurrence(kind, recurrent.padding), recurrent.weight)
        return None

    def populations(self) -> dict[str, Neuron]:
        return {self.name: self.neuron}

    def afferents(self) -> list[Afferent]:
        afferents = []
        for connection in [self.connection, *self.skip_connections]:
            afferents.append(
                Afferent(self.name, self.neuron, connection, False, connection.target == "inh")
            )
        if self.recurrent_connection is not None:
            connection = self.recurrent_connection
            afferents.append(Afferent(self.name, self.neuron, connection, True, connection.target == "inh"))
        return afferents

    def regularization_loss(self, spikes: dict[str, Tensor]) -> Optional[Tensor]:
        penalties = [reg(spikes[self.name]) for reg in self.activity_regularizers]
        penalties += [
            loss for loss in (c.regularization_loss() for c in self._connections()) if loss is not None
        ]
        if not penalties:
            return None
        return torch.stack([penalty.reshape(()) for penalty in penalties]).sum()


class DenseLayer(_PopulationLayer):
    """A population of ``size`` neurons fed by an all-to-all connection, optionally recurrent.

    Args:
        size: Number of neurons (an int, or a shape).
        neuron: Neuron model; ``LIF()`` with Stork's defaults when omitted.
        recurrent: Add an all-to-all recurrent connection within the population.
        bias: Learnable bias on the feed-forward connection.
        target: Receptor that the feed-forward (and skip) connections drive.
        regularizers: Activity penalties on the layer's spikes, e.g. ``UpperBoundL2``.
        weight_regularizers: Penalties on the weights of every connection of the layer.
        constraints: Constraints on the feed-forward and recurrent weights.
        skip_from: Extra inputs from earlier outputs (0 is the network input).
        name: Population name.
        input_shape: Presynaptic shape; builds the layer right away when given together with ``dt``.
        dt: Simulation time step in seconds.
    """

    def __init__(
        self,
        size: ShapeLike,
        neuron: Optional[Neuron] = None,
        recurrent: bool = False,
        bias: bool = False,
        target: Optional[str] = None,
        regularizers: Sequence[Penalty] = (),
        weight_regularizers: Sequence[Penalty] = (),
        constraints: Sequence[WeightConstraint] = (),
        skip_from: Sequence[int] = (),
        name: Optional[str] = None,
        input_shape: Optional[ShapeLike] = None,
        dt: Optional[float] = None,
    ) -> None:
        connection = Dense(
            bias=bias, target=target, constraints=constraints, regularizers=weight_regularizers
        )
        recurrent_connection = None
        if recurrent:
            recurrent_connection = Dense(
                target=target, constraints=constraints, regularizers=weight_regularizers
            )
        super().__init__(
            neuron if neuron is not None else LIF(),
            connection,
            recurrent_connection,
            regularizers,
            weight_regularizers,
            skip_from,
            name,
        )
        self.size = as_shape(size)
        if input_shape is not None and dt is not None:
            self.build(input_shape, dt)

    def build(self, input_shape: ShapeLike, dt: float, source_shapes: Sequence[Shape] = ()) -> Shape:
        input_shape = as_shape(input_shape)
        self.input_shape = input_shape
        source_shapes = list(source_shapes) or [input_shape]
        return self._build_connections(input_shape, self.size, source_shapes + [self.size], dt)


class ReadoutLayer(DenseLayer):
    """Dense connection into non-spiking leaky readout units; a network's last stage.

    Args:
        size: Number of readout units (classes); the network sets it from ``num_outputs`` when None.
        neuron: Readout model; ``LeakyReadout()`` when omitted.
        bias: Learnable bias on the connection.
        weight_regularizers: Penalties on the readout weights.
        constraints: Constraints on the readout weights.
        skip_from: Extra inputs from earlier outputs (0 is the network input).
        name: Population name (``"readout"`` by default).
        input_shape: Presynaptic shape; builds right away when given together with ``size`` and ``dt``.
        dt: Simulation time step in seconds.
    """

    def __init__(
        self,
        size: Optional[int] = None,
        neuron: Optional[LeakyReadout] = None,
        bias: bool = False,
        weight_regularizers: Sequence[Penalty] = (),
        constraints: Sequence[WeightConstraint] = (),
        skip_from: Sequence[int] = (),
        name: Optional[str] = "readout",
        input_shape: Optional[ShapeLike] = None,
        dt: Optional[float] = None,
    ) -> None:
        if neuron is not None and neuron.spiking:
            raise TypeError(
                f"ReadoutLayer needs a non-spiking readout model such as LeakyReadout, got "
                f"{type(neuron).__name__}; use a DenseLayer for a spiking output layer."
            )
        super().__init__(
            size=size if size is not None else 1,
            neuron=neuron if neuron is not None else LeakyReadout(),
            bias=bias,
            weight_regularizers=weight_regularizers,
            constraints=constraints,
            skip_from=skip_from,
            name=name,
        )
        self.size = None if size is None else as_shape(size)
        if input_shape is not None and dt is not None and size is not None:
            self.build(input_shape, dt)

    def build(self, input_shape: ShapeLike, dt: float, source_shapes: Sequence[Shape] = ()) -> Shape:
        if self.size is None:
            raise ValueError("ReadoutLayer needs its size (the number of classes) before it is built.")
        return super().build(input_shape, dt, source_shapes)


class _ConvLayer(_PopulationLayer):
    connection_class: type = Conv1d

    def __init__(
        self,
        channels: int,
        kernel_size: IntOrTuple,
        stride: IntOrTuple,
        padding: IntOrTuple,
        neuron: Optional[Neuron],
        recurrent: bool,
        recurrent_kernel_size: IntOrTuple,
        bias: bool,
        target: Optional[str],
        regularizers: Sequence[Penalty],
        weight_regularizers: Sequence[Penalty],
        constraints: Sequence[WeightConstraint],
        skip_from: Sequence[int],
        name: Optional[str],
    ) -> None:
        connection = self.connection_class(
            channels, kernel_size, stride=stride, padding=padding, bias=bias, target=target,
            constraints=constraints, regularizers=weight_regularizers,
        )
        recurrent_connection = None
        if recurrent:
            # Stride 1 and "same" padding keep the recurrent map the shape of the population.
            kernel = recurrent_kernel_size
            kernels = (kernel,) * self.connection_class.dims if isinstance(kernel, int) else tuple(kernel)
            if any(size % 2 == 0 for size in kernels):
                raise ValueError(
                    f"recurrent_kernel_size must be odd so that the recurrent convolution keeps the "
                    f"shape, got {recurrent_kernel_size}."
                )
            recurrent_connection = self.connection_class(
                channels, kernels, stride=1, padding=tuple(size // 2 for size in kernels), target=target,
                constraints=constraints, regularizers=weight_regularizers,
            )
        super().__init__(
            neuron if neuron is not None else LIF(),
            connection,
            recurrent_connection,
            regularizers,
            weight_regularizers,
            skip_from,
            name,
        )

    def build(self, input_shape: ShapeLike, dt: float, source_shapes: Sequence[Shape] = ()) -> Shape:
        input_shape = as_shape(input_shape)
        self.input_shape = input_shape
        dims = self.connection_class.dims
        conv_shape = input_shape
        if len(input_shape) == dims:
            # A single-channel input such as SHD's (700,) gets an explicit channel axis.
            conv_shape = (1, *input_shape)
            self._input_view = conv_shape
        output_shape = self.connection.output_shape(conv_shape) if len(conv_shape) == dims + 1 else None
        if output_shape is None:
            raise ValueError(
                f"{type(self).__name__} needs a {dims + 1}-D "
                f"({'channels, length' if dims == 1 else 'channels, height, width'}) input, or a "
                f"{dims}-D one for a single channel, got {input_shape}."
            )
        source_shapes = list(source_shapes) or [input_shape]
        return self._build_connections(conv_shape, None, source_shapes + [output_shape], dt)


class Conv1dLayer(_ConvLayer):
    """A population of ``(channels, length)`` neurons fed by a 1-D convolution, optionally recurrent.

    Args:
        channels: Number of filters (output channels).
        kernel_size: Feed-forward kernel size.
        stride: Feed-forward stride.
        padding: Feed-forward zero padding.
        neuron: Neuron model; ``LIF()`` when omitted.
        recurrent: Add a recurrent convolution within the population (kernel ``recurrent_kernel_size``,
            stride 1, "same" padding; Stork's default is kernel 5, padding 2).
        recurrent_kernel_size: Kernel size of the recurrent convolution (odd).
        bias: Learnable bias per channel on the feed-forward convolution.
        target: Receptor that the feed-forward connection drives.
        regularizers: Activity penalties on the layer's spikes.
        weight_regularizers: Penalties on every connection's weights.
        constraints: Constraints on the feed-forward and recurrent weights.
        skip_from: Extra dense inputs from earlier outputs (0 is the network input).
        name: Population name.
    """

    connection_class = Conv1d

    def __init__(
        self,
        channels: int,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        padding: IntOrTuple = 0,
        neuron: Optional[Neuron] = None,
        recurrent: bool = False,
        recurrent_kernel_size: IntOrTuple = 5,
        bias: bool = False,
        target: Optional[str] = None,
        regularizers: Sequence[Penalty] = (),
        weight_regularizers: Sequence[Penalty] = (),
        constraints: Sequence[WeightConstraint] = (),
        skip_from: Sequence[int] = (),
        name: Optional[str] = None,
    ) -> None:
        super().__init__(
            channels, kernel_size, stride, padding, neuron, recurrent, recurrent_kernel_size, bias,
            target, regularizers, weight_regularizers, constraints, skip_from, name,
        )


class Conv2dLayer(_ConvLayer):
    """A population of ``(channels, height, width)`` neurons fed by a 2-D convolution.

    Args:
        channels: Number of filters (output channels).
        kernel_size: Feed-forward kernel size.
        stride: Feed-forward stride.
        padding: Feed-forward zero padding.
        neuron: Neuron model; ``LIF()`` when omitted.
        recurrent: Add a recurrent convolution within the population (stride 1, "same" padding).
        recurrent_kernel_size: Kernel size of the recurrent convolution (odd).
        bias: Learnable bias per channel on the feed-forward convolution.
        target: Receptor that the feed-forward connection drives.
        regularizers: Activity penalties on the layer's spikes.
        weight_regularizers: Penalties on every connection's weights.
        constraints: Constraints on the feed-forward and recurrent weights.
        skip_from: Extra dense inputs from earlier outputs (0 is the network input).
        name: Population name.
    """

    connection_class = Conv2d

    def __init__(
        self,
        channels: int,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        padding: IntOrTuple = 0,
        neuron: Optional[Neuron] = None,
        recurrent: bool = False,
        recurrent_kernel_size: IntOrTuple = 5,
        bias: bool = False,
        target: Optional[str] = None,
        regularizers: Sequence[Penalty] = (),
        weight_regularizers: Sequence[Penalty] = (),
        constraints: Sequence[WeightConstraint] = (),
        skip_from: Sequence[int] = (),
        name: Optional[str] = None,
    ) -> None:
        super().__init__(
            channels, kernel_size, stride, padding, neuron, recurrent, recurrent_kernel_size, bias,
            target, regularizers, weight_regularizers, constraints, skip_from, name,
        )


class MaxPool(NetworkLayer):
    """Max pooling of spike maps, applied to each time step with no delay.

    Works on ``(channels, length)`` and ``(channels, height, width)`` populations. On binary spikes it
    passes a spike wherever any neuron in the window spiked.

    Args:
        kernel_size: Pooling window.
        stride: Pooling stride; equal to ``kernel_size`` when omitted.
        name: Layer name.
    """

    def __init__(
        self, kernel_size: IntOrTuple = 2, stride: Optional[IntOrTuple] = None, name: Optional[str] = None
    ) -> None:
        super().__init__(name=name)
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size

    def build(self, input_shape: ShapeLike, dt: float, source_shapes: Sequence[Shape] = ()) -> Shape:
        input_shape = as_shape(input_shape)
        if len(input_shape) not in (2, 3):
            raise ValueError(f"MaxPool needs a (channels, length) or (channels, height, width) input, got {input_shape}.")
        dims = len(input_shape) - 1
        kernel = (self.kernel_size,) * dims if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
        stride = (self.stride,) * dims if isinstance(self.stride, int) else tuple(self.stride)
        spatial = [(size - k) // s + 1 for size, k, s in zip(input_shape[1:], kernel, stride)]
        if any(size < 1 for size in spatial):
            raise ValueError(f"MaxPool window {kernel} is larger than the input {input_shape}.")
        self._kernel, self._stride, self._dims = kernel, stride, dims
        self.input_shape = input_shape
        self.output_shape = (input_shape[0], *spatial)
        return self.output_shape

    def forward(self, sources: Sequence[Tensor]) -> LayerOutput:
        x = sources[-1]
        batch_size, num_steps = x.shape[:2]
        flat = x.reshape(batch_size * num_steps, *self.input_shape)
        pooled = max_pool(flat, self._kernel, self._stride)
        if pooled is None:
            pool = F.max_pool1d if self._dims == 1 else F.max_pool2d
            pooled = pool(flat, self._kernel, self._stride)
        return LayerOutput(pooled.reshape(batch_size, num_steps, *self.output_shape), {})


class Flatten(NetworkLayer):
    """Flatten the neuron dimensions into one, with no delay."""

    def __init__(self, name: Optional[str] = None) -> None:
        super().__init__(name=name)

    def build(self, input_shape: ShapeLike, dt: float, source_shapes: Sequence[Shape] = ()) -> Shape:
        self.input_shape = as_shape(input_shape)
        self.output_shape = (math.prod(self.input_shape),)
        return self.output_shape

    def forward(self, sources: Sequence[Tensor]) -> LayerOutput:
        x = sources[-1]
        return LayerOutput(x.reshape(*x.shape[:2], -1), {})
