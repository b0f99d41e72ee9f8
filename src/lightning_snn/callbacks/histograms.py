"""Histograms of per-neuron firing rates and of connection weights, written to TensorBoard."""

from typing import Any, Optional

import lightning.pytorch as pl
from torch import Tensor, nn

from lightning_snn.callbacks.base import ActivitySnapshotCallback
from lightning_snn.nn import NetworkOutput
from lightning_snn.tasks.activity import neuron_firing_rates, spiking_populations


class ActivityHistogramLogger(ActivitySnapshotCallback):
    """Log histograms of firing rates and weights every ``every_n_epochs`` epochs.

    Each snapshot writes with ``add_histogram``:

    * ``rates/<population>``: the firing rate of every neuron of each spiking population in Hz,
      averaged over the time steps of the first ``num_samples`` validation samples.
    * ``weights/<connection>``: the weights of every connection, named by its module path in the
      network (e.g. ``weights/layers.0.connection``). Networks without ``connections()`` get one
      histogram per parameter whose name ends in ``weight``.

    Sample selection, schedule and logger requirements are those of
    :class:`~lightning_snn.callbacks.base.ActivitySnapshotCallback`.

    Args:
        every_n_epochs: Epochs between snapshots (epochs 0, N, 2N, ...).
        num_samples: Number of fixed samples the rates are measured on, at most one batch. They are
            kept in CPU memory, ``num_samples * time * inputs`` values.
    """

    def __init__(self, every_n_epochs: int = 5, num_samples: int = 64) -> None:
        super().__init__(every_n_epochs=every_n_epochs, num_samples=num_samples)

    def write_snapshot(
        self,
        writer: Any,
        pl_module: pl.LightningModule,
        x: Tensor,
        y: Optional[Tensor],
        output: NetworkOutput,
        dt: float,
        step: int,
    ) -> None:
        network = pl_module.network
        rates = neuron_firing_rates(spiking_populations(network, output.spikes), dt)
        for name, neuron_rates in rates.items():
            writer.add_histogram(f"rates/{name}", neuron_rates.flatten(), global_step=step)
        for name, weight in connection_weights(network).items():
            writer.add_histogram(f"weights/{name}", weight.detach().cpu().flatten(), global_step=step)


def connection_weights(network: nn.Module) -> dict[str, Tensor]:
    """Return the weight of every connection of ``network``, keyed by the connection's module path.

    Args:
        network: A :class:`~lightning_snn.nn.SpikingNetwork`, or any module. Without a
            ``connections()`` method, every parameter whose name ends in ``weight`` is returned.

    Returns:
        Weights keyed by name, in module order.
    """
    if not hasattr(network, "connections"):
        return {name: parameter for name, parameter in network.named_parameters() if name.endswith("weight")}
    names = {id(module): name for name, module in network.named_modules()}
    return {names[id(connection)]: connection.weight for connection in network.connections()}
