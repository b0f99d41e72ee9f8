"""Dale's-law layer: separate excitatory and inhibitory populations with sign-constrained weights."""

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from lightning_snn.nn.connections import Connection, Dense
from lightning_snn.nn.constraints import MinMaxConstraint
from lightning_snn.nn.layers import Afferent, LayerOutput, NetworkLayer, Penalty, Shape, ShapeLike, as_shape
from lightning_snn.nn.neurons import ExcInhLIF, Neuron
from lightning_snn.nn.simulation import simulate


class DalesLayer(NetworkLayer):
    """An excitatory population E and an inhibitory population I that obey Dale's law.

    Every neuron is either excitatory or inhibitory: all weights are kept non-negative (a
    ``MinMaxConstraint(min=0)`` after initialization and after every optimizer step), and the sign comes
    from the receptor a connection drives. Six connections (X is the layer's input):

    ========  ==========  ==========  ====================================
    name      from -> to  receptor    present
    ========  ==========  ==========  ====================================
    ``xe``    X -> E      ``exc``     always
    ``xi``    X -> I      ``exc``     always
    ``ie``    I -> E      ``inh``     always
    ``ii``    I -> I      ``inh``     always
    ``ee``    E -> E      ``exc``     ``recurrent=True``
    ``ei``    E -> I      ``exc``     ``recurrent=True``
    ========  ==========  ==========  ====================================

    The layer transmits the spikes of E; the spikes of both populations are reported (as
    ``"<name>.exc"`` and ``"<name>.inh"``) so regularizers and monitors see both.

    Args:
        size: Number of excitatory neurons.
        ei_ratio: Ratio of excitatory to inhibitory neurons; I has ``round(size / ei_ratio)`` neurons
            (at least 1). Stork truncates with ``int()``, which differs for sizes not divisible by it.
        recurrent: Add the excitatory recurrence E -> E and E -> I.
        exc_neuron: Model of the E population; ``ExcInhLIF()`` when omitted.
        inh_neuron: Model of the I population; ``ExcInhLIF()`` when omitted.
        regularizers: Activity penalties applied to both populations.
        weight_regularizers: Penalties on all six weight matrices.
        skip_from: Extra excitatory inputs from earlier outputs (0 is the network input).
        name: Layer name; the populations are ``"<name>.exc"`` and ``"<name>.inh"``.
    """

    def __init__(
        self,
        size: int,
        ei_ratio: float = 4.0,
        recurrent: bool = True,
        exc_neuron: Optional[Neuron] = None,
        inh_neuron: Optional[Neuron] = None,
        regularizers: Sequence[Penalty] = (),
        weight_regularizers: Sequence[Penalty] = (),
        skip_from: Sequence[int] = (),
        name: Optional[str] = None,
    ) -> None:
        super().__init__(skip_from=skip_from, name=name)
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}.")
        if not ei_ratio > 0:
            raise ValueError(f"ei_ratio must be positive, got {ei_ratio}.")
        self.size = int(size)
        self.inh_size = max(1, round(size / ei_ratio))
        self.recurrent = recurrent
        self.exc_neuron = exc_neuron if exc_neuron is not None else ExcInhLIF()
        self.inh_neuron = inh_neuron if inh_neuron is not None else ExcInhLIF()
        for role, neuron in (("exc_neuron", self.exc_neuron), ("inh_neuron", self.inh_neuron)):
            if set(neuron.receptors) != {"exc", "inh"}:
                raise ValueError(
                    f"{role} must have 'exc' and 'inh' receptors (e.g. ExcInhLIF), got "
                    f"{type(neuron).__name__} with {neuron.receptors}."
                )
        self.activity_regularizers = nn.ModuleList(regularizers)
        self.weight_regularizers = list(weight_regularizers)
        self.synapses = nn.ModuleDict()
        self.skip_connections = nn.ModuleList()

    def _dense(self, target: str) -> Dense:
        return Dense(target=target, constraints=[MinMaxConstraint(min=0.0)], regularizers=self.weight_regularizers)

    @property
    def exc_name(self) -> str:
        return f"{self.name}.exc"

    @property
    def inh_name(self) -> str:
        return f"{self.name}.inh"

    def build(self, input_shape: ShapeLike, dt: float, source_shapes: Sequence[Shape] = ()) -> Shape:
        input_shape = as_shape(input_shape)
        exc_shape, inh_shape = (self.size,), (self.inh_size,)
        source_shapes = list(source_shapes) or [input_shape]
        self._check_skip_sources(source_shapes + [exc_shape])
        self.exc_neuron.build(exc_shape, dt)
        self.inh_neuron.build(inh_shape, dt)

        plan = [("xe", input_shape, exc_shape, "exc"), ("xi", input_shape, inh_shape, "exc"),
                ("ie", inh_shape, exc_shape, "inh"), ("ii", inh_shape, inh_shape, "inh")]
        if self.recurrent:
            plan += [("ee", exc_shape, exc_shape, "exc"), ("ei", exc_shape, inh_shape, "exc")]
        for key, source, target_shape, receptor in plan:
            connection = self._dense(receptor)
            connection.build(source, target_shape)
            self.synapses[key] = connection
        for index in self.skip_from:
            skip = self._dense("exc")
            skip.build(source_shapes[index], exc_shape)
            self.skip_connections.append(skip)

        self.input_shape = input_shape
        self.output_shape = exc_shape
        return exc_shape

    def forward(self, sources: Sequence[Tensor]) -> LayerOutput:
        if not self.is_built:
            raise RuntimeError("DalesLayer is not built; call build(input_shape, dt) first.")
        x = sources[-1]
        exc_drive = self.synapses["xe"](x)
        for index, skip in zip(self.skip_from, self.skip_connections):
            exc_drive = exc_drive + skip(sources[index])
        feedforward = [[exc_drive, None], [self.synapses["xi"](x), None]]

        synapses = self.synapses
        recurrent = self.recurrent

        def recurrent_fn(transmitted: list[Tensor]) -> list[list[Optional[Tensor]]]:
            exc_spikes, inh_spikes = transmitted
            to_exc = [None, synapses["ie"].step(inh_spikes)]
            to_inh = [None, synapses["ii"].step(inh_spikes)]
            if recurrent:
                to_exc[0] = synapses["ee"].step(exc_spikes)
                to_inh[0] = synapses["ei"].step(exc_spikes)
            return [to_exc, to_inh]

        result = simulate([self.exc_neuron, self.inh_neuron], feedforward, recurrent_fn)
        spikes = {self.exc_name: result.outputs[0], self.inh_name: result.outputs[1]}
        return LayerOutput(transmitted=result.transmitted[0], spikes=spikes)

    def populations(self) -> dict[str, Neuron]:
        return {self.exc_name: self.exc_neuron, self.inh_name: self.inh_neuron}

    def afferents(self) -> list[Afferent]:
        into_exc = {"xe": False, "ie": True, "ee": True}
        into_inh = {"xi": False, "ii": True, "ei": True}
        afferents = []
        for name, neuron, keys in ((self.exc_name, self.exc_neuron, into_exc), (self.inh_name, self.inh_neuron, into_inh)):
            for key, recurrent in keys.items():
                if key in self.synapses:
                    connection = self.synapses[key]
                    afferents.append(Afferent(name, neuron, connection, recurrent, connection.target == "inh"))
        for skip in self.skip_connections:
            afferents.append(Afferent(self.exc_name, self.exc_neuron, skip, False, False))
        return afferents

    def regularization_loss(self, spikes: dict[str, Tensor]) -> Optional[Tensor]:
        penalties = []
        for reg in self.activity_regularizers:
            penalties.append(reg(spikes[self.exc_name]))
            penalties.append(reg(spikes[self.inh_name]))
        for connection in [*self.synapses.values(), *self.skip_connections]:
            loss = connection.regularization_loss()
            if loss is not None:
                penalties.append(loss)
        if not penalties:
            return None
        return torch.stack([penalty.reshape(()) for penalty in penalties]).sum()
