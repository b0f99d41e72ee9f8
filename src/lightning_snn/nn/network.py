"""Network container: a stack of layers with optional skip connections and a leaky readout."""

from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn

from lightning_snn.nn.connections import Connection
from lightning_snn.nn.layers import Afferent, NetworkLayer, ReadoutLayer, Shape, ShapeLike, as_shape
from lightning_snn.nn.neurons import Neuron
from lightning_snn.nn.state import StatefulModule


class NetworkOutput(NamedTuple):
    output: Tensor
    """Readout sequence ``(batch, time, num_outputs)``, or the last layer's output without a readout."""
    spikes: dict[str, Tensor]
    """Spike sequence ``(batch, time, *shape)`` of every spiking population, keyed by name."""
    recorded: dict[str, dict[str, Tensor]] = {}
    """State sequences that populations were asked to ``record``: population name -> state name ->
    ``(batch, time, *shape)``. Empty unless a neuron was built with ``record=(...)``."""


class SpikingNetwork(nn.Module):
    """A feed-forward stack of layers, each receiving the previous output plus optional skips.

    Layers are simulated one after another over the whole sequence: a layer's feed-forward drive for all
    time steps is one matmul or convolution, and only its own recurrence loops over time. This gives
    exactly the timing of a step-by-step simulation in which every connection delays by one step, because
    no layer depends on the *current* step of a later layer. Connections from a later layer back to an
    earlier one are therefore not supported; recurrence lives inside a layer.

    Latency: an input spike at step ``t`` can make a spike in the first LIF layer at ``t + 3``, in the
    ``k``-th at ``t + 3k``, and changes the readout at ``t + 3k + 2`` after ``k`` LIF layers.

    Args:
        layers: Hidden layers, built in order (``DenseLayer``, ``Conv1dLayer``, ``Conv2dLayer``,
            ``DalesLayer``, ``MaxPool``, ``Flatten``, ...). An unnamed layer is named ``layer<i>`` after
            its position ``i`` (counting from 1, pooling and flatten layers included), the same index
            that ``skip_from`` uses.
        readout: Final readout stage; its size can be left open and set by ``num_outputs``.
        input_shape: Shape of one input time step (an int for a flat input); builds the network right
            away when given together with ``dt``.
        dt: Simulation time step in seconds.
        num_outputs: Number of readout units, used when ``readout`` has no size.
    """

    def __init__(
        self,
        layers: Sequence[NetworkLayer],
        readout: Optional[ReadoutLayer] = None,
        input_shape: Optional[ShapeLike] = None,
        dt: Optional[float] = None,
        num_outputs: Optional[int] = None,
    ) -> None:
        super().__init__()
        if not layers and readout is None:
            raise ValueError("A SpikingNetwork needs at least one layer or a readout.")
        self.layers = nn.ModuleList(layers)
        self.readout = readout
        self.input_shape: Optional[Shape] = None
        self.dt: Optional[float] = None
        for index, layer in enumerate(self.layers, start=1):
            if layer.name is None:
                layer.name = f"layer{index}"
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise ValueError(f"Layer names must be unique, got {names}.")
        if input_shape is not None and dt is not None:
            self.build(input_shape, dt, num_outputs)

    @property
    def is_built(self) -> bool:
        return self.input_shape is not None

    def build(self, input_shape: ShapeLike, dt: float, num_outputs: Optional[int] = None) -> "SpikingNetwork":
        """Create all weights for inputs of ``input_shape`` at time step ``dt`` (seconds); return self."""
        input_shape = as_shape(input_shape)
        if self.is_built:
            if input_shape != self.input_shape or dt != self.dt:
                raise ValueError(
                    f"The network is already built for input {self.input_shape} and dt {self.dt}; "
                    f"got input {input_shape} and dt {dt}."
                )
            return self

        shapes = [input_shape]
        for layer in self.layers:
            shapes.append(layer.build(shapes[-1], dt, source_shapes=list(shapes)))
        if self.readout is not None:
            if self.readout.size is None:
                if num_outputs is None:
                    raise ValueError("The readout has no size: pass num_outputs (the number of classes).")
                self.readout.size = (int(num_outputs),)
            elif num_outputs is not None and self.readout.size != (int(num_outputs),):
                raise ValueError(
                    f"The readout has {self.readout.size} units but num_outputs is {num_outputs}."
                )
            self.readout.build(shapes[-1], dt, source_shapes=list(shapes))
        self.input_shape = input_shape
        self.dt = float(dt)
        return self

    def forward(self, x: Tensor) -> NetworkOutput:
        """Run the network on inputs ``(batch, time, *input_shape)``.

        Flat inputs ``(batch, time, features)`` are reshaped to ``input_shape``, and inputs of any shape
        are flattened for a flat ``input_shape``. Other shapes raise, because reshaping, say,
        channels-last frames for a channels-first network would mix up their entries.
        """
        if not self.is_built:
            raise RuntimeError(
                "The network is not built: pass input_shape and dt (seconds) when creating it, "
                "SpikingNetwork(layers, readout, input_shape=..., dt=...), or call "
                "network.build(input_shape, dt) before the first forward pass."
            )
        if x.dim() < 3:
            raise ValueError(f"Expected input (batch, time, *{self.input_shape}), got shape {tuple(x.shape)}.")
        if tuple(x.shape[2:]) != self.input_shape:
            same_size = x[0, 0].numel() == torch.Size(self.input_shape).numel()
            if not same_size or (x.dim() > 3 and len(self.input_shape) > 1):
                raise ValueError(
                    f"Expected input (batch, time, *{self.input_shape}) or flat (batch, time, "
                    f"{torch.Size(self.input_shape).numel()}), got shape {tuple(x.shape)}. Permute "
                    "channels-last data to channels-first before calling the network."
                )
            x = x.reshape(*x.shape[:2], *self.input_shape)
        if not x.is_floating_point():
            x = x.float()

        sources = [x]
        spikes: dict[str, Tensor] = {}
        for layer in self.layers:
            result = layer(sources)
            sources.append(result.transmitted)
            spikes.update(result.spikes)
        output = sources[-1]
        if self.readout is not None:
            output = next(iter(self.readout(sources).spikes.values()))
        recorded = {name: neuron.recorded for name, neuron in self.populations().items() if neuron.record}
        return NetworkOutput(output=output, spikes=spikes, recorded=recorded)

    def all_layers(self) -> list[NetworkLayer]:
        return list(self.layers) + ([self.readout] if self.readout is not None else [])

    def populations(self) -> dict[str, Neuron]:
        """Return every neuron population, readout included, keyed by name."""
        populations: dict[str, Neuron] = {}
        for layer in self.all_layers():
            populations.update(layer.populations())
        return populations

    def afferents(self) -> list[Afferent]:
        return [afferent for layer in self.all_layers() for afferent in layer.afferents()]

    def connections(self) -> list[Connection]:
        return [module for module in self.modules() if isinstance(module, Connection)]

    def regularization_loss(self, output: NetworkOutput) -> Tensor:
        """Return the sum of every layer's activity and weight penalties for one forward pass."""
        total = output.output.new_zeros(())
        for layer in self.all_layers():
            loss = layer.regularization_loss(output.spikes)
            if loss is not None:
                total = total + loss
        return total

    @torch.no_grad()
    def apply_constraints(self) -> None:
        """Project constrained weights and parameters back into their ranges (after each optimizer step)."""
        for module in self.modules():
            if module is not self and hasattr(module, "apply_constraints"):
                module.apply_constraints()

    def reset_state(self) -> None:
        """Forget the state carried across batches by stateful populations."""
        for module in self.modules():
            if isinstance(module, StatefulModule):
                module.reset_state()
