"""Spike rasters and readout traces of fixed validation samples, written to TensorBoard."""

from typing import Any, Optional

import lightning.pytorch as pl
from matplotlib.figure import Figure
from torch import Tensor

from lightning_snn.callbacks.base import ActivitySnapshotCallback
from lightning_snn.nn import NetworkOutput
from lightning_snn.tasks.activity import spiking_populations


class SpikeRasterLogger(ActivitySnapshotCallback):
    """Log spike rasters and readout traces of a few fixed samples every ``every_n_epochs`` epochs.

    Each snapshot writes matplotlib figures with ``add_figure``, one subplot row per sample:

    * ``raster/input``: the input sequence (time in seconds on x, input neuron on y),
    * ``raster/<population>``: the spikes of every spiking population, neurons flattened,
    * ``readout``: the readout traces over time, the sample's true class in colour and the others grey.

    Populations with more than ``max_neurons`` neurons show only the first ``max_neurons``. Sample
    selection, schedule and logger requirements are those of
    :class:`~lightning_snn.callbacks.base.ActivitySnapshotCallback`.

    Args:
        every_n_epochs: Epochs between snapshots (epochs 0, N, 2N, ...).
        num_samples: Number of fixed samples, taken from the first validation batch.
        max_neurons: Largest number of neurons drawn per population.
    """

    def __init__(self, every_n_epochs: int = 5, num_samples: int = 4, max_neurons: int = 256) -> None:
        super().__init__(every_n_epochs=every_n_epochs, num_samples=num_samples)
        if max_neurons < 1:
            raise ValueError(f"max_neurons must be at least 1, got {max_neurons}.")
        self.max_neurons = max_neurons

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
        writer.add_figure("raster/input", self.raster_figure(x, y, dt, "input"), global_step=step)
        for name, spikes in spiking_populations(pl_module.network, output.spikes).items():
            writer.add_figure(f"raster/{name}", self.raster_figure(spikes, y, dt, name), global_step=step)
        writer.add_figure("readout", readout_figure(output.output, y, dt), global_step=step)

    def raster_figure(self, sequences: Tensor, labels: Optional[Tensor], dt: float, title: str) -> Figure:
        """Draw one raster per sample of ``sequences`` ``(samples, time, *shape)``.

        Args:
            sequences: Spikes (or any non-negative activity) of one population.
            labels: Class id of each sample, shown in the subplot titles, or None.
            dt: Time step in seconds.
            title: Population name for the figure title.

        Returns:
            The figure, which ``add_figure`` closes.
        """
        num_samples, num_steps = sequences.shape[:2]
        activity = sequences.float().reshape(num_samples, num_steps, -1)
        num_neurons = activity.shape[-1]
        num_shown = min(num_neurons, self.max_neurons)

        figure = Figure(figsize=(6.0, 1.8 * num_samples), layout="constrained")
        axes = figure.subplots(num_samples, 1, sharex=True, squeeze=False)[:, 0]
        if num_shown < num_neurons:
            title = f"{title} (first {num_shown} of {num_neurons} neurons)"
        figure.suptitle(title)
        vmax = max(float(activity.max()), 1e-12)
        for index, ax in enumerate(axes):
            # imshow puts rows on y, so the raster is transposed to (neuron, time).
            ax.imshow(
                activity[index, :, :num_shown].T.numpy(),
                aspect="auto",
                origin="lower",
                interpolation="nearest",
                cmap="Greys",
                vmin=0.0,
                vmax=vmax,
                extent=(0.0, num_steps * dt, 0, num_shown),
            )
            ax.set_ylabel("neuron")
            ax.set_title(_sample_title(index, labels), fontsize="small")
        axes[-1].set_xlabel("time (s)")
        return figure


def readout_figure(readout: Tensor, labels: Optional[Tensor], dt: float) -> Figure:
    """Draw the readout traces ``(samples, time, classes)``, one subplot per sample.

    The trace of each sample's true class is drawn thicker and in colour, the others in grey.

    Args:
        readout: Readout sequences.
        labels: Class id of each sample, or None to draw every trace in colour.
        dt: Time step in seconds.

    Returns:
        The figure, which ``add_figure`` closes.
    """
    num_samples, num_steps, num_classes = readout.shape
    times = [step * dt for step in range(num_steps)]

    figure = Figure(figsize=(6.0, 1.8 * num_samples), layout="constrained")
    axes = figure.subplots(num_samples, 1, sharex=True, squeeze=False)[:, 0]
    figure.suptitle("readout")
    for index, ax in enumerate(axes):
        target = None if labels is None else int(labels[index])
        for unit in range(num_classes):
            trace = readout[index, :, unit].float().numpy()
            if target is None:
                ax.plot(times, trace, linewidth=1.0)
            elif unit == target:
                ax.plot(times, trace, color="tab:red", linewidth=2.0, zorder=3, label=f"class {unit}")
            else:
                ax.plot(times, trace, color="0.6", linewidth=0.8)
        if target is not None:
            ax.legend(loc="upper left", fontsize="small")
        ax.set_ylabel("readout")
        ax.set_title(_sample_title(index, labels), fontsize="small")
    axes[-1].set_xlabel("time (s)")
    return figure


def _sample_title(index: int, labels: Optional[Tensor]) -> str:
    if labels is None:
        return f"sample {index}"
    return f"sample {index}, class {int(labels[index])}"
