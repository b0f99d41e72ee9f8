"""Base class of the TensorBoard callbacks: fixed samples, a logging schedule and a forward pass."""

from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn

from lightning_snn.nn import NetworkOutput
from lightning_snn.tasks.activity import eager_execution


class ActivitySnapshotCallback(pl.Callback):
    """Run the network on fixed samples every few epochs and hand the result to a TensorBoard writer.

    The samples are the first ``num_samples`` of the first validation batch, kept the first time
    validation runs, so every snapshot shows the same inputs. Without validation the first training
    batch is used instead. A snapshot is taken at the end of validation in epochs 0, N, 2N, ... (never
    during the sanity check), or at the end of such a training epoch when it had no validation.

    Snapshots are written on global rank 0 to every logger whose ``experiment`` has ``add_figure``
    and ``add_histogram`` (TensorBoard's ``SummaryWriter``). With other loggers, or none, the callback
    does nothing. It needs a LightningModule with a ``network`` attribute whose output has ``output``
    and ``spikes`` (see :class:`~lightning_snn.tasks.SNNClassifier`), and takes the time step from
    the module's or the network's ``dt``.

    Subclasses implement :meth:`write_snapshot`.

    Args:
        every_n_epochs: Epochs between snapshots.
        num_samples: Number of samples to keep, or None for the whole first batch.
    """

    def __init__(self, every_n_epochs: int = 5, num_samples: Optional[int] = None) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be at least 1, got {every_n_epochs}.")
        if num_samples is not None and num_samples < 1:
            raise ValueError(f"num_samples must be at least 1 or None, got {num_samples}.")
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self._val_samples: Optional[tuple[Tensor, Optional[Tensor]]] = None
        self._train_samples: Optional[tuple[Tensor, Optional[Tensor]]] = None
        self._last_snapshot_epoch: Optional[int] = None

    @property
    def samples(self) -> Optional[tuple[Tensor, Optional[Tensor]]]:
        """The fixed samples ``(x, y)`` on the CPU (``y`` None for unlabelled data), or None before any."""
        return self._val_samples if self._val_samples is not None else self._train_samples

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
        """Write one snapshot.

        Args:
            writer: A TensorBoard ``SummaryWriter``.
            pl_module: The module being trained, whose network is ``pl_module.network``.
            x: The fixed input samples ``(samples, time, *input_shape)`` on the CPU.
            y: Their class ids ``(samples,)`` on the CPU, or None for unlabelled batches.
            output: The network's output on ``x``, moved to the CPU.
            dt: Simulation time step in seconds.
            step: Global step to record the snapshot at.
        """
        raise NotImplementedError

    # Sample collection.

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._val_samples is None and batch_idx == 0 and dataloader_idx == 0:
            self._val_samples = self._keep(batch)
            self._train_samples = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._train_samples is None and self._val_samples is None:
            self._train_samples = self._keep(batch)

    def _keep(self, batch: Any) -> tuple[Tensor, Optional[Tensor]]:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        y = batch[1] if isinstance(batch, (list, tuple)) and len(batch) > 1 else None
        count = self.num_samples if self.num_samples is not None else x.shape[0]
        x = x[:count].detach().cpu().clone()
        y = y[:count].detach().cpu().clone() if isinstance(y, Tensor) else None
        return x, y

    # Schedule.

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Stand-alone Trainer.validate() calls are not part of the training record.
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self._snapshot(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._last_snapshot_epoch != trainer.current_epoch:
            self._snapshot(trainer, pl_module)

    def _snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch % self.every_n_epochs != 0 or not trainer.is_global_zero:
            return
        samples = self.samples
        network = getattr(pl_module, "network", None)
        writers = tensorboard_writers(trainer)
        if samples is None or network is None or not writers:
            return

        x, y = samples
        dt = _time_step(pl_module, network)
        output = _run_network(network, x, pl_module.device)
        for writer in writers:
            self.write_snapshot(writer, pl_module, x, y, output, dt, trainer.global_step)
        self._last_snapshot_epoch = epoch


def tensorboard_writers(trainer: pl.Trainer) -> list[Any]:
    """Return the experiments of the trainer's loggers that can take figures and histograms."""
    writers = []
    for logger in trainer.loggers:
        experiment = logger.experiment
        if hasattr(experiment, "add_figure") and hasattr(experiment, "add_histogram"):
            writers.append(experiment)
    return writers


@torch.no_grad()
def _run_network(network: nn.Module, x: Tensor, device: torch.device) -> NetworkOutput:
    """Run ``network`` on ``x`` in evaluation mode from a fresh state and return the output on the CPU."""
    was_training = network.training
    network.eval()
    _reset_state(network)
    try:
        with eager_execution():
            output = network(x.to(device))
    finally:
        _reset_state(network)
        network.train(was_training)
    spikes = {name: sequence.detach().cpu() for name, sequence in output.spikes.items()}
    return NetworkOutput(output=output.output.detach().cpu(), spikes=spikes)


def _reset_state(network: nn.Module) -> None:
    if hasattr(network, "reset_state"):
        network.reset_state()


def _time_step(pl_module: pl.LightningModule, network: nn.Module) -> float:
    dt = getattr(pl_module, "dt", None) or getattr(network, "dt", None)
    if dt is None:
        raise ValueError(
            f"{type(pl_module).__name__} and its network have no dt attribute, but the activity callbacks "
            f"need the time step in seconds: set dt on the module or build the network with dt."
        )
    return float(dt)
