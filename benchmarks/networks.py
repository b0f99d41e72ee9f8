"""The benchmark networks, their shared weights and data, and each library's version of them.

Every library builds the same architecture with the same weights (generated once from a seed, in
PyTorch's layout) and receives the same input: Bernoulli spikes of 3 % density and random labels. The
neuron is a current-based LIF (synaptic decay ``exp(-dt / tau_syn)``, membrane decay
``exp(-dt / tau_mem)``, threshold 1, reset to 0) and the readout a non-spiking leaky integrator.
Each library uses its own neuron and idiom; where it lacks a feature, plain PyTorch fills the gap,
as noted at each builder.
"""

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

DT = 1e-3
TAU_MEM = 20e-3
TAU_SYN = 10e-3
DECAY_MEM = math.exp(-DT / TAU_MEM)
DECAY_SYN = math.exp(-DT / TAU_SYN)
SURROGATE_BETA = 20.0
INPUT_DENSITY = 0.03
#: Feed-forward weights are N(0, gain^2 / fan_in). This gain makes the hidden layers fire at a few
#: percent per step, like trained SHD networks, instead of falling silent with depth.
FEEDFORWARD_GAIN = 12.0


@dataclass(frozen=True)
class NetworkSpec:
    """One benchmark network: its layers, sequence length and batch size."""

    name: str
    kind: str
    """``"dense"`` (stack of dense LIF layers) or ``"conv1d"`` / ``"conv2d"``."""
    num_steps: int
    batch_size: int
    input_shape: tuple[int, ...]
    num_classes: int
    hidden: tuple[int, ...] = ()
    recurrent: bool = False
    conv: tuple[dict, ...] = field(default_factory=tuple)
    """Per conv layer: channels, kernel, stride, padding, recurrent, pool (window after it or 0)."""


SHD_CONV = (
    dict(channels=16, kernel=21, stride=10, padding=0, recurrent=True, pool=0),
    dict(channels=32, kernel=7, stride=3, padding=0, recurrent=True, pool=0),
    dict(channels=64, kernel=7, stride=3, padding=0, recurrent=True, pool=0),
)
DVS_CONV = (
    dict(channels=16, kernel=3, stride=1, padding=2, recurrent=False, pool=0),
    dict(channels=16, kernel=3, stride=1, padding=2, recurrent=False, pool=2),
    dict(channels=32, kernel=3, stride=1, padding=2, recurrent=False, pool=0),
    dict(channels=32, kernel=3, stride=1, padding=2, recurrent=False, pool=2),
)
RECURRENT_KERNEL = 5

NETWORKS = {
    "ff3": NetworkSpec("ff3", "dense", 100, 64, (700,), 20, hidden=(128, 128, 128)),
    "ff3_T350": NetworkSpec("ff3_T350", "dense", 350, 64, (700,), 20, hidden=(128, 128, 128)),
    "rec1": NetworkSpec("rec1", "dense", 100, 64, (700,), 20, hidden=(256,), recurrent=True),
    "conv1d": NetworkSpec("conv1d", "conv1d", 100, 64, (700,), 20, conv=SHD_CONV),
    "conv2d": NetworkSpec("conv2d", "conv2d", 100, 8, (2, 32, 32), 11, conv=DVS_CONV),
}


def quick_spec(spec: NetworkSpec) -> NetworkSpec:
    """Return ``spec`` shortened to 20 steps for smoke tests."""
    return NetworkSpec(**{**spec.__dict__, "num_steps": 20})


def conv_shapes(spec: NetworkSpec) -> list[tuple[int, ...]]:
    """Return the neuron shape after every conv layer (after its pooling) of a conv network."""
    shape = spec.input_shape if len(spec.input_shape) > 1 else (1, *spec.input_shape)
    shapes = []
    for layer in spec.conv:
        spatial = [(size + 2 * layer["padding"] - layer["kernel"]) // layer["stride"] + 1 for size in shape[1:]]
        shapes.append((layer["channels"], *spatial))
        if layer["pool"]:
            spatial = [size // layer["pool"] for size in spatial]
        shape = (layer["channels"], *spatial)
    return shapes


def readout_fan_in(spec: NetworkSpec) -> int:
    if spec.kind == "dense":
        return spec.hidden[-1]
    last = spec.conv[-1]
    shape = conv_shapes(spec)[-1]
    pool = last["pool"] or 1
    return shape[0] * math.prod(size // pool for size in shape[1:])


def make_weights(spec: NetworkSpec, seed: int = 0) -> dict[str, Tensor]:
    """Return the weights of ``spec`` in PyTorch layout, drawn as ``N(0, gain^2 / fan_in)``."""
    generator = torch.Generator().manual_seed(seed)

    def draw(shape, gain):
        fan_in = math.prod(shape[1:])
        return torch.randn(shape, generator=generator) * gain / math.sqrt(fan_in)

    weights = {}
    if spec.kind == "dense":
        sizes = [spec.input_shape[0], *spec.hidden]
        for index, (fan_in, size) in enumerate(zip(sizes[:-1], sizes[1:])):
            weights[f"ff{index}"] = draw((size, fan_in), FEEDFORWARD_GAIN)
            if spec.recurrent:
                weights[f"rec{index}"] = draw((size, size), 1.0)
    else:
        in_channels = spec.input_shape[0] if len(spec.input_shape) > 1 else 1
        dims = len(spec.input_shape) if len(spec.input_shape) > 1 else 1
        dims = 2 if spec.kind == "conv2d" else 1
        for index, layer in enumerate(spec.conv):
            kernel = (layer["kernel"],) * dims
            weights[f"ff{index}"] = draw((layer["channels"], in_channels, *kernel), FEEDFORWARD_GAIN)
            if layer["recurrent"]:
                recurrent_kernel = (RECURRENT_KERNEL,) * dims
                weights[f"rec{index}"] = draw((layer["channels"], layer["channels"], *recurrent_kernel), 1.0)
            in_channels = layer["channels"]
    weights["readout"] = draw((spec.num_classes, readout_fan_in(spec)), 1.0)
    return weights


def make_data(spec: NetworkSpec, seed: int = 1) -> tuple[Tensor, Tensor]:
    """Return input spikes ``(batch, time, *input_shape)`` of 3 % density and labels ``(batch,)``."""
    generator = torch.Generator().manual_seed(seed)
    shape = (spec.batch_size, spec.num_steps, *spec.input_shape)
    x = (torch.rand(shape, generator=generator) < INPUT_DENSITY).float()
    labels = torch.randint(0, spec.num_classes, (spec.batch_size,), generator=generator)
    return x, labels


def dense_flops(spec: NetworkSpec) -> float:
    """Return the dense-equivalent multiply-add FLOPs (x2) of one training step's matmuls and convs.

    Forward, input gradient (not for the network input) and weight gradient each cost one product.
    Elementwise neuron updates are not counted.
    """
    rows = spec.batch_size * spec.num_steps
    total = 0.0
    if spec.kind == "dense":
        sizes = [spec.input_shape[0], *spec.hidden]
        for index, (fan_in, size) in enumerate(zip(sizes[:-1], sizes[1:])):
            total += (2 if index == 0 else 3) * 2 * rows * fan_in * size
            if spec.recurrent:
                total += 3 * 2 * rows * size * size
    else:
        in_channels = spec.input_shape[0] if len(spec.input_shape) > 1 else 1
        for index, (layer, shape) in enumerate(zip(spec.conv, conv_shapes(spec))):
            outputs = math.prod(shape)
            kernel = layer["kernel"] ** (len(shape) - 1)
            total += (2 if index == 0 else 3) * 2 * rows * outputs * in_channels * kernel
            if layer["recurrent"]:
                total += 3 * 2 * rows * outputs * layer["channels"] * RECURRENT_KERNEL ** (len(shape) - 1)
            in_channels = layer["channels"]
    total += 3 * 2 * rows * readout_fan_in(spec) * spec.num_classes
    return total


class LeakyIntegrator(nn.Module):
    """Current-based leaky readout over a time-first sequence, for libraries without one."""

    def forward(self, drive: Tensor) -> Tensor:
        syn = torch.zeros_like(drive[0])
        mem = torch.zeros_like(drive[0])
        outputs = []
        for current in drive.unbind(0):
            mem = DECAY_MEM * mem + (1.0 - DECAY_MEM) * syn
            syn = DECAY_SYN * syn + current
            outputs.append(mem)
        return torch.stack(outputs)


class FoldTime(nn.Module):
    """Apply a per-frame module to a time-first sequence by folding time into the batch."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        steps, batch = x.shape[:2]
        y = self.module(x.reshape(steps * batch, *x.shape[2:]))
        return y.reshape(steps, batch, *y.shape[1:])


def conv_module(spec: NetworkSpec, in_channels: int, layer: dict, weight: Tensor, recurrent: bool = False) -> nn.Module:
    conv_class = nn.Conv1d if spec.kind == "conv1d" else nn.Conv2d
    if recurrent:
        module = conv_class(layer["channels"], layer["channels"], RECURRENT_KERNEL, padding=RECURRENT_KERNEL // 2, bias=False)
    else:
        module = conv_class(in_channels, layer["channels"], layer["kernel"], stride=layer["stride"],
                            padding=layer["padding"], bias=False)
    with torch.no_grad():
        module.weight.copy_(weight)
    return module


def linear_module(weight: Tensor) -> nn.Linear:
    module = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        module.weight.copy_(weight)
    return module


def pool_module(spec: NetworkSpec, window: int) -> nn.Module:
    return nn.MaxPool1d(window) if spec.kind == "conv1d" else nn.MaxPool2d(window)


# ----------------------------------------------------------------------------------------------
# Builders. Each returns (model, forward) where forward(x_time_first) -> readout (time, batch, C).
# ----------------------------------------------------------------------------------------------


def build_lightning_snn(spec: NetworkSpec, weights: dict[str, Tensor]):
    """lightning_snn: drive for all steps in one matmul or convolution, fused neuron kernels."""
    from lightning_snn.nn import (LIF, Conv1dLayer, Conv2dLayer, DenseLayer, LeakyReadout, MaxPool,
                                  ReadoutLayer, SpikingNetwork)

    def neuron():
        return LIF(TAU_MEM, TAU_SYN)

    layers = []
    if spec.kind == "dense":
        layers = [DenseLayer(size, neuron(), recurrent=spec.recurrent) for size in spec.hidden]
    else:
        layer_class = Conv1dLayer if spec.kind == "conv1d" else Conv2dLayer
        for layer in spec.conv:
            layers.append(layer_class(layer["channels"], layer["kernel"], stride=layer["stride"],
                                      padding=layer["padding"], neuron=neuron(), recurrent=layer["recurrent"],
                                      recurrent_kernel_size=RECURRENT_KERNEL))
            if layer["pool"]:
                layers.append(MaxPool(layer["pool"]))
    network = SpikingNetwork(layers, ReadoutLayer(spec.num_classes, LeakyReadout(TAU_MEM, TAU_SYN)),
                             input_shape=spec.input_shape, dt=DT)
    spiking_layers = [layer for layer in network.layers if hasattr(layer, "connection")]
    with torch.no_grad():
        for index, layer in enumerate(spiking_layers):
            layer.connection.weight.copy_(weights[f"ff{index}"])
            if layer.recurrent_connection is not None:
                layer.recurrent_connection.weight.copy_(weights[f"rec{index}"])
        network.readout.connection.weight.copy_(weights["readout"])
    return network, lambda x: network(x).output, "batch_first"


def build_snntorch(spec: NetworkSpec, weights: dict[str, Tensor]):
    """snnTorch 1.0: ``Synaptic`` neurons stepped in a Python loop over time, as in its tutorials.

    Dense recurrence uses ``RSynaptic``; the recurrent 1-D convolutions, which snnTorch lacks, are
    plain ``nn.Conv1d`` on the previous spikes added to the input current.
    """
    import snntorch as snn
    from snntorch import surrogate

    spike_grad = surrogate.fast_sigmoid(slope=SURROGATE_BETA)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.projections, self.neurons, self.pools = nn.ModuleList(), nn.ModuleList(), []
            self.recurrent = nn.ModuleList()
            self.dense_recurrent = spec.kind == "dense" and spec.recurrent
            if spec.kind == "dense":
                for index, _ in enumerate(spec.hidden):
                    self.projections.append(linear_module(weights[f"ff{index}"]))
                    if spec.recurrent:
                        cell = snn.RSynaptic(DECAY_SYN, DECAY_MEM, linear_features=spec.hidden[index],
                                             spike_grad=spike_grad, reset_mechanism="zero")
                        with torch.no_grad():
                            cell.recurrent.weight.copy_(weights[f"rec{index}"])
                            cell.recurrent.bias.zero_()
                        self.neurons.append(cell)
                    else:
                        self.neurons.append(snn.Synaptic(DECAY_SYN, DECAY_MEM, spike_grad=spike_grad,
                                                         reset_mechanism="zero"))
                    self.recurrent.append(nn.Identity())
                    self.pools.append(None)
            else:
                in_channels = spec.input_shape[0] if len(spec.input_shape) > 1 else 1
                for index, layer in enumerate(spec.conv):
                    self.projections.append(conv_module(spec, in_channels, layer, weights[f"ff{index}"]))
                    self.neurons.append(snn.Synaptic(DECAY_SYN, DECAY_MEM, spike_grad=spike_grad,
                                                     reset_mechanism="zero"))
                    self.recurrent.append(conv_module(spec, in_channels, layer, weights[f"rec{index}"], True)
                                          if layer["recurrent"] else nn.Identity())
                    self.pools.append(pool_module(spec, layer["pool"]) if layer["pool"] else None)
                    in_channels = layer["channels"]
            self.readout = linear_module(weights["readout"])
            self.readout_neuron = snn.Synaptic(DECAY_SYN, DECAY_MEM, reset_mechanism="none")

        def forward(self, x):
            steps, batch = x.shape[:2]
            if spec.kind == "conv1d":
                x = x.unsqueeze(2)
            states = [None] * len(self.neurons)
            spikes_prev = [None] * len(self.neurons)
            readout_state = None
            outputs = []
            for t in range(steps):
                h = x[t]
                for index, (projection, cell) in enumerate(zip(self.projections, self.neurons)):
                    current = projection(h)
                    if states[index] is None:
                        zeros = torch.zeros_like(current)
                        states[index] = (zeros, zeros) if not self.dense_recurrent else (zeros, zeros, zeros)
                    if self.dense_recurrent:
                        spk, syn, mem = cell(current, *states[index])
                        states[index] = (spk, syn, mem)
                    else:
                        if spikes_prev[index] is not None and not isinstance(self.recurrent[index], nn.Identity):
                            current = current + self.recurrent[index](spikes_prev[index])
                        spk, syn, mem = cell(current, *states[index])
                        states[index] = (syn, mem)
                        spikes_prev[index] = spk
                    h = spk if self.pools[index] is None else self.pools[index](spk)
                current = self.readout(h.reshape(batch, -1))
                if readout_state is None:
                    readout_state = (torch.zeros_like(current), torch.zeros_like(current))
                _, syn, mem = self.readout_neuron(current, *readout_state)
                readout_state = (syn, mem)
                outputs.append(mem)
            return torch.stack(outputs)

    model = Net()
    return model, model, "time_first"


def build_spikingjelly(spec: NetworkSpec, weights: dict[str, Tensor]):
    """SpikingJelly 2.0: multi-step ``CUBALIFNode`` (torch backend) and multi-step layers.

    Dense recurrence uses ``LinearRecurrentContainer`` (its weight is ``[I | W_rec]`` on the
    concatenated input and spikes). Recurrent convolutions and the leaky readout, which SpikingJelly
    lacks, are plain PyTorch loops around the single-step neuron and a leaky integrator.
    """
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    def make_neuron(step_mode):
        cell = neuron.CUBALIFNode(c_decay=DECAY_SYN, v_decay=DECAY_MEM, v_threshold=1.0, v_reset=0.0,
                                  surrogate_function=surrogate.SuperSpike(alpha=SURROGATE_BETA))
        cell.step_mode = step_mode
        return cell

    class ConvRecurrent(nn.Module):
        def __init__(self, recurrent):
            super().__init__()
            self.cell = make_neuron("s")
            self.recurrent = recurrent

        def forward(self, drive):
            spikes = []
            previous = None
            for current in drive.unbind(0):
                if previous is not None:
                    current = current + self.recurrent(previous)
                previous = self.cell(current)
                spikes.append(previous)
            return torch.stack(spikes)

    modules = []
    if spec.kind == "dense":
        sizes = [spec.input_shape[0], *spec.hidden]
        for index, size in enumerate(spec.hidden):
            linear = layer.Linear(sizes[index], size, bias=False, step_mode="m")
            with torch.no_grad():
                linear.weight.copy_(weights[f"ff{index}"])
            modules.append(linear)
            if spec.recurrent:
                container = layer.LinearRecurrentContainer(make_neuron("s"), size, size, bias=False, step_mode="m")
                with torch.no_grad():
                    container.rc.weight.copy_(torch.cat([torch.eye(size), weights[f"rec{index}"]], dim=1))
                modules.append(container)
            else:
                modules.append(make_neuron("m"))
    else:
        in_channels = spec.input_shape[0] if len(spec.input_shape) > 1 else 1
        conv_class = layer.Conv1d if spec.kind == "conv1d" else layer.Conv2d
        pool_class = layer.MaxPool1d if spec.kind == "conv1d" else layer.MaxPool2d
        for index, spec_layer in enumerate(spec.conv):
            conv = conv_class(in_channels, spec_layer["channels"], spec_layer["kernel"], stride=spec_layer["stride"],
                              padding=spec_layer["padding"], bias=False, step_mode="m")
            with torch.no_grad():
                conv.weight.copy_(weights[f"ff{index}"])
            modules.append(conv)
            if spec_layer["recurrent"]:
                modules.append(ConvRecurrent(conv_module(spec, in_channels, spec_layer, weights[f"rec{index}"], True)))
            else:
                modules.append(make_neuron("m"))
            if spec_layer["pool"]:
                modules.append(pool_class(spec_layer["pool"], step_mode="m"))
            in_channels = spec_layer["channels"]
        modules.append(layer.Flatten(start_dim=1, step_mode="m"))
    readout = layer.Linear(readout_fan_in(spec), spec.num_classes, bias=False, step_mode="m")
    with torch.no_grad():
        readout.weight.copy_(weights["readout"])
    modules += [readout, LeakyIntegrator()]
    model = nn.Sequential(*modules)

    def forward(x):
        functional.reset_net(model)
        if spec.kind == "conv1d":
            x = x.unsqueeze(2)
        return model(x)

    return model, forward, "time_first"


def build_norse(spec: NetworkSpec, weights: dict[str, Tensor]):
    """Norse 1.1: ``LIF`` / ``LIFRecurrent`` / ``LI`` modules in ``SequentialState``.

    Convolutions fold time into the batch with a plain PyTorch wrapper. The recurrent convolutions,
    which Norse lacks, are a loop around ``LIFCell`` with a plain ``nn.Conv1d`` on the previous spikes.
    """
    import norse.torch as norse

    lif_parameters = norse.LIFParameters(tau_syn_inv=torch.tensor(1 / TAU_SYN), tau_mem_inv=torch.tensor(1 / TAU_MEM),
                                         v_th=torch.tensor(1.0), method="super", alpha=torch.tensor(SURROGATE_BETA))
    li_parameters = norse.LIParameters(tau_syn_inv=torch.tensor(1 / TAU_SYN), tau_mem_inv=torch.tensor(1 / TAU_MEM))

    class ConvRecurrent(nn.Module):
        def __init__(self, recurrent):
            super().__init__()
            self.cell = norse.LIFCell(lif_parameters, dt=DT)
            self.recurrent = recurrent

        def forward(self, drive):
            spikes, state, previous = [], None, None
            for current in drive.unbind(0):
                if previous is not None:
                    current = current + self.recurrent(previous)
                previous, state = self.cell(current, state)
                spikes.append(previous)
            return torch.stack(spikes)

    modules = []
    if spec.kind == "dense":
        sizes = [spec.input_shape[0], *spec.hidden]
        for index, size in enumerate(spec.hidden):
            if spec.recurrent:
                cell = norse.LIFRecurrent(sizes[index], size, lif_parameters, autapses=True, dt=DT)
                with torch.no_grad():
                    cell.input_weights.copy_(weights[f"ff{index}"])
                    cell.recurrent_weights.copy_(weights[f"rec{index}"])
                modules.append(cell)
            else:
                modules += [linear_module(weights[f"ff{index}"]), norse.LIF(lif_parameters, dt=DT)]
    else:
        in_channels = spec.input_shape[0] if len(spec.input_shape) > 1 else 1
        for index, layer in enumerate(spec.conv):
            modules.append(FoldTime(conv_module(spec, in_channels, layer, weights[f"ff{index}"])))
            if layer["recurrent"]:
                modules.append(ConvRecurrent(conv_module(spec, in_channels, layer, weights[f"rec{index}"], True)))
            else:
                modules.append(norse.LIF(lif_parameters, dt=DT))
            if layer["pool"]:
                modules.append(FoldTime(pool_module(spec, layer["pool"])))
            in_channels = layer["channels"]
        modules.append(nn.Flatten(start_dim=2))
    modules += [linear_module(weights["readout"]), norse.LI(li_parameters, dt=DT)]
    model = norse.SequentialState(*modules)

    def forward(x):
        if spec.kind == "conv1d":
            x = x.unsqueeze(2)
        output, _ = model(x)
        return output

    return model, forward, "time_first"


BUILDERS: dict[str, Callable] = {
    "lightning_snn": build_lightning_snn,
    "snntorch": build_snntorch,
    "spikingjelly": build_spikingjelly,
    "norse": build_norse,
}
