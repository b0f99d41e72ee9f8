"""Classification of spike sequences with a spiking network, as a LightningModule."""

import warnings
from collections.abc import Mapping
from typing import Any, Optional, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_snn.init import FluctuationDrivenCenteredNormal, Initializer
from lightning_snn.losses import MaxOverTimeCrossEntropy, ReadoutLoss
from lightning_snn.nn import SpikingNetwork
from lightning_snn.tasks.activity import eager_execution, mean_firing_rates, spiking_populations

# Init arguments that the command line links from the DataModule's attributes of the same name.
DATA_ATTRIBUTES = ("input_shape", "num_classes", "dt", "num_steps")


class SNNClassifier(pl.LightningModule):
    """Train a spiking network to classify spike sequences with surrogate gradients.

    Each step runs the network on ``x`` of shape ``(batch, time, *input_shape)``, scores the readout
    with ``loss`` against the class ids ``y`` and adds the network's activity and weight penalties:
    ``loss = task_loss + reg_loss``. After every optimizer step the network's weight constraints are
    applied (for example the non-negative weights of a Dale's-law layer).

    Logged per epoch for ``train``, ``val`` and ``test``, averaged over samples:
    ``<stage>/loss``, ``<stage>/task_loss``, ``<stage>/reg_loss``, ``<stage>/acc`` (micro-averaged
    accuracy) and ``<stage>/rate/<population>``, the mean firing rate of each spiking population in Hz.
    Training also logs ``train/priming`` (1 during priming epochs, else 0) and shows the step loss as
    ``loss`` in the progress bar only.

    **Network protocol.** ``network`` is usually a :class:`~lightning_snn.nn.SpikingNetwork`. From
    Python, any ``nn.Module`` works whose ``forward(x)`` returns an object with ``output``, the readout
    sequence ``(batch, time, classes)``, and ``spikes``, a dict of ``(batch, time, *shape)`` spike
    sequences keyed by population name. These methods are used when present and skipped otherwise:
    ``build(input_shape, dt, num_outputs)`` with the ``is_built`` property,
    ``regularization_loss(output)``, ``apply_constraints()``, ``reset_state()`` and ``populations()``
    (name to neuron, whose ``spiking`` flag selects the populations whose rates are logged). Such
    modules need ``dt`` and ``num_classes``, and the default initialization applies to
    ``SpikingNetwork`` only.

    **Initialization.** When fitting starts, a data-driven initializer (by default fluctuation-driven,
    :class:`~lightning_snn.init.FluctuationDrivenCenteredNormal` with ``sigma_u=1``) sets the weights
    from the first training batch, and the firing rates it produces are logged as
    ``init/rate/<population>``. Under DDP every rank initializes and rank 0's weights are then
    broadcast. Initialization is skipped with ``initialize=False``, when the weights come from a
    checkpoint (``load_from_checkpoint``, or ``fit(ckpt_path=...)``), and in later ``fit`` calls on the
    same module.

    **Priming.** During the first ``priming_epochs`` epochs (counted within ``max_epochs``) only
    ``reg_loss`` is backpropagated, which moves the firing rates into the range that the activity
    regularizers ask for before the task is learned. The task loss and accuracy are still logged.

    **Checkpoints.** Hyperparameters that are plain values (numbers, strings, lists, dicts, including
    every value that the command line passes) are saved, so a checkpoint written by ``lightning-snn
    fit`` reloads with ``SNNClassifier.load_from_checkpoint(path)`` alone. Objects passed from Python
    (the network, the loss, the initializer, the optimizer and scheduler factories) are left out of the
    checkpoint because weights-only loading cannot restore them: pass the objects that differ from the
    defaults again, e.g. ``SNNClassifier.load_from_checkpoint(path, network=make_network())``. That
    network may be unbuilt when ``input_shape``, ``dt`` and ``num_classes`` were given, because they
    are saved.

    Args:
        network: The spiking network. An unbuilt network is built here from ``input_shape``, ``dt``
            and ``num_classes``.
        loss: Readout loss, ``MaxOverTimeCrossEntropy()`` when None.
        optimizer: Factory that receives the parameters and returns the optimizer, e.g.
            ``torch.optim.Adam`` (the default, learning rate 1e-3) or ``lightning_snn.optim.SMORMS3``.
        scheduler: Factory that receives the optimizer and returns a learning-rate scheduler, or None
            for a constant learning rate. Schedulers step once per epoch.
        scheduler_monitor: Logged metric that ``ReduceLROnPlateau`` watches.
        initializer: Weight initializer run when fitting starts. When None it is
            ``FluctuationDrivenCenteredNormal(sigma_u=1.0)`` with rates measured on a training batch.
        initialize: Run the initializer when fitting starts. False keeps the weights as they are.
        input_shape: Neuron shape of one input time step, e.g. ``(700,)`` for SHD.
        num_classes: Number of classes, taken from the network's readout when None.
        dt: Simulation time step in seconds, taken from the built network when None.
        num_steps: Time steps per sample. With ``input_shape`` it defines an example input, which
            adds input and output sizes to the model summary (not used with ``compile``).
        priming_epochs: Number of initial epochs that backpropagate only the regularization loss.
        compile: Compile the network's forward pass with ``torch.compile``. Logging and metrics stay
            eager, and the checkpoint keys do not change.
    """

    def __init__(
        self,
        network: SpikingNetwork,
        loss: Optional[ReadoutLoss] = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: Optional[LRSchedulerCallable] = None,
        scheduler_monitor: str = "val/loss",
        initializer: Optional[Initializer] = None,
        initialize: bool = True,
        input_shape: Optional[Sequence[int]] = None,
        num_classes: Optional[int] = None,
        dt: Optional[float] = None,
        num_steps: Optional[int] = None,
        priming_epochs: int = 0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if priming_epochs < 0:
            raise ValueError(f"priming_epochs must be 0 or more, got {priming_epochs}.")

        # The command line passes plain config values, which are all kept, while objects given from
        # Python cannot be restored by a weights-only checkpoint load and are dropped. Data attributes
        # left at None are dropped too: the Trainer rejects a key that the DataModule also saves with
        # another value. The first call records everything, the second repeats it without those keys.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters()
        dropped = [name for name, value in self.hparams.items() if not _is_plain(value)]
        dropped += [name for name in DATA_ATTRIBUTES if name in self.hparams and self.hparams[name] is None]
        if dropped:
            self.save_hyperparameters(ignore=sorted(dropped))

        _build_network(network, input_shape, dt, num_classes)
        self.network = network
        self.dt = _resolve_time_step(network, dt)
        self.num_classes = _resolve_num_classes(network, num_classes)

        self.loss = loss if loss is not None else MaxOverTimeCrossEntropy()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_monitor = scheduler_monitor
        if initializer is None:
            initializer = FluctuationDrivenCenteredNormal(sigma_u=1.0)
        self.initializer = initializer
        self.initialize = initialize
        self.priming_epochs = priming_epochs

        # One metric object per stage, so that their running states never mix.
        self.train_accuracy = MulticlassAccuracy(num_classes=self.num_classes, average="micro")
        self.val_accuracy = MulticlassAccuracy(num_classes=self.num_classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes=self.num_classes, average="micro")

        # Set when the weights come from a checkpoint or were initialized by an earlier fit.
        self._weights_ready = False

        if compile:
            # Compiling the LightningModule itself breaks self.log and torchmetrics under torch 2.13
            # with Lightning 2.6.6. Module.compile keeps the parameter names, so checkpoints stay the same.
            self.network.compile()
        elif input_shape is not None and num_steps is not None:
            self.example_input_array = torch.zeros(1, num_steps, *input_shape)

    # ----------------------------------------------------------------------------------------------
    # Forward and steps
    # ----------------------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Any:
        """Run the network on ``x`` of shape ``(batch, time, *input_shape)`` and return its output."""
        return self.network(x)

    @property
    def is_priming(self) -> bool:
        """True during the first ``priming_epochs`` epochs, when only the regularization loss trains."""
        return self.current_epoch < self.priming_epochs

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        loss, reg_loss = self._shared_step(batch, "train")
        batch_size = batch[0].shape[0]
        self.log("loss", loss, prog_bar=True, logger=False, batch_size=batch_size)
        self.log(
            "train/priming", float(self.is_priming), on_step=False, on_epoch=True, batch_size=batch_size
        )
        if not self.is_priming:
            return loss

        if not reg_loss.requires_grad:
            raise RuntimeError(
                f"priming_epochs={self.priming_epochs} trains on the regularization loss alone, but the "
                f"network has no activity or weight regularizers: add regularizers to its layers or set "
                f"priming_epochs=0."
            )
        return reg_loss

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        loss, _ = self._shared_step(batch, "val")
        return loss

    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        loss, _ = self._shared_step(batch, "test")
        return loss

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Return the class probabilities ``(batch, classes)`` of a batch ``(x, y)`` or ``x``."""
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.loss.probabilities(self(x).output)

    def _shared_step(self, batch: Sequence[Tensor], stage: str) -> tuple[Tensor, Tensor]:
        """Compute and log the losses, the accuracy and the firing rates.

        Returns:
            The total loss and the regularization loss.
        """
        x, y = batch[0], batch[1]
        batch_size = x.shape[0]
        output = self(x)

        task_loss = self.loss(output.output, y)
        reg_loss = self._regularization_loss(output)
        loss = task_loss + reg_loss

        accuracy = getattr(self, f"{stage}_accuracy")
        accuracy.update(self.loss.predict(output.output.detach()), y)

        # Epoch means weighted by batch size. With on_step=False, sync_dist averages over DDP ranks
        # once per epoch instead of at every step.
        options = dict(on_step=False, on_epoch=True, sync_dist=True, batch_size=batch_size)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", **options)
        self.log(f"{stage}/task_loss", task_loss, **options)
        self.log(f"{stage}/reg_loss", reg_loss, **options)
        # torchmetrics synchronizes a logged metric object over ranks itself.
        show = stage == "val"
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, batch_size=batch_size, prog_bar=show)
        rates = mean_firing_rates(spiking_populations(self.network, output.spikes), self.dt)
        for name, rate in rates.items():
            self.log(f"{stage}/rate/{name}", rate, **options)
        return loss, reg_loss

    def _regularization_loss(self, output: Any) -> Tensor:
        if hasattr(self.network, "regularization_loss"):
            return self.network.regularization_loss(output)
        return output.output.new_zeros(())

    # ----------------------------------------------------------------------------------------------
    # Optimization
    # ----------------------------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer

        scheduler = self.scheduler_factory(optimizer)
        scheduler_config = {"scheduler": scheduler, "interval": "epoch"}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler_config["monitor"] = self.scheduler_monitor
        return {"optimizer": optimizer, "lr_scheduler": scheduler_config}

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # Lightning calls this only when the optimizer steps (once per accumulated batch group), so the
        # weights are projected back into their constraints after every update.
        super().optimizer_step(*args, **kwargs)
        self.apply_constraints()

    def apply_constraints(self) -> None:
        """Project the network's constrained weights back into their ranges, if it has constraints."""
        if hasattr(self.network, "apply_constraints"):
            self.network.apply_constraints()

    def reset_state(self) -> None:
        """Forget the neuron state that stateful populations carry across batches."""
        if hasattr(self.network, "reset_state"):
            self.network.reset_state()

    # ----------------------------------------------------------------------------------------------
    # Hooks: initialization, carried state, priming and checkpoints
    # ----------------------------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        # Runs after a checkpoint given to fit(ckpt_path=...) has been restored (for single-device and
        # DDP strategies), so resumed weights are never overwritten.
        # NOTE: DeepSpeed, FSDP and ModelParallel restore checkpoints after this hook, so there the
        # weights are initialized and then replaced by the checkpoint's.
        if not self.initialize or self._weights_ready or self.trainer.ckpt_path is not None:
            return
        if not isinstance(self.network, SpikingNetwork):
            rank_zero_warn(
                f"initialize=True but the network is a {type(self.network).__name__}, not a "
                f"SpikingNetwork, so the initializer is skipped. Set initialize=False to silence this."
            )
            return
        self.initialize_from_batch(self._first_training_batch())

    @torch.no_grad()
    def initialize_from_batch(self, batch: Any) -> dict[str, float]:
        """Initialize the network from a training batch and return the resulting firing rates in Hz.

        A later ``fit`` does not initialize again, so calling this before fitting replaces the
        initialization when fitting starts.

        Args:
            batch: ``(x, y)`` or ``x``, with ``x`` of shape ``(batch, time, *input_shape)``.

        Returns:
            The mean firing rate of each spiking population on ``x`` after initialization.
        """
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        x = x.to(self.device)
        with eager_execution():
            self.initializer.initialize(self.network, x)
            self.apply_constraints()
            self._broadcast_network_from_rank_zero()

            was_training = self.network.training
            self.network.eval()
            output = self.network(x)
            self.network.train(was_training)
            self.reset_state()

        rates = mean_firing_rates(spiking_populations(self.network, output.spikes), self.dt)
        rates = {name: float(rate) for name, rate in rates.items()}
        summary = ", ".join(f"{name} {rate:.1f} Hz" for name, rate in rates.items())
        summary = summary or "no spiking populations"
        rank_zero_info(f"Firing rates after {type(self.initializer).__name__}: {summary}.")
        if self._trainer is not None:
            for logger in self.loggers:
                logger.log_metrics({f"init/rate/{name}": rate for name, rate in rates.items()}, step=0)
        self._weights_ready = True
        return rates

    def _first_training_batch(self) -> Any:
        datamodule = self.trainer.datamodule
        if datamodule is not None:
            loader = datamodule.train_dataloader()
        else:
            # Trainer.fit(model, train_dataloaders=...) keeps the loader in the fit loop's data source.
            source = getattr(self.trainer.fit_loop, "_data_source", None)
            defined = source is not None and source.instance is not None and source.is_defined()
            loader = source.dataloader() if defined else None
        if loader is None:
            raise RuntimeError(
                "SNNClassifier initializes its weights from the first training batch but found no "
                "training data: fit with a DataModule or train_dataloaders, or set initialize=False."
            )
        iterator = iter(loader)
        try:
            return next(iterator)
        except StopIteration:
            raise RuntimeError(
                "The training dataloader is empty, so there is no batch to initialize the weights from."
            ) from None
        finally:
            del iterator

    def _broadcast_network_from_rank_zero(self) -> None:
        if self._trainer is None or self.trainer.world_size <= 1:
            return
        state = self.trainer.strategy.broadcast(self.network.state_dict(), src=0)
        self.network.load_state_dict(state)

    def on_train_epoch_start(self) -> None:
        self.reset_state()
        if self.current_epoch < self.priming_epochs:
            rank_zero_info(
                f"Priming epoch {self.current_epoch + 1}/{self.priming_epochs}: only the "
                f"regularization loss is backpropagated."
            )
        elif self.priming_epochs and self.current_epoch == self.priming_epochs:
            rank_zero_info("Priming finished: training on task loss + regularization loss.")

    def on_validation_epoch_start(self) -> None:
        # Stateful populations must not carry training state into validation.
        self.reset_state()

    def on_validation_epoch_end(self) -> None:
        # Training continues from a fresh state rather than from the last validation batch.
        self.reset_state()

    def on_test_epoch_start(self) -> None:
        self.reset_state()

    def on_predict_epoch_start(self) -> None:
        self.reset_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._weights_ready = True


def _is_plain(value: Any) -> bool:
    """Tell whether a hyperparameter survives a weights-only checkpoint load (numbers, strings, ...)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(item) for item in value)
    if isinstance(value, Mapping):
        return all(isinstance(key, str) and _is_plain(item) for key, item in value.items())
    return False


def _build_network(
    network: nn.Module, input_shape: Optional[Sequence[int]], dt: Optional[float], num_classes: Optional[int]
) -> None:
    """Build an unbuilt network, or check that a built one matches ``input_shape`` and ``dt``."""
    if not hasattr(network, "build"):
        return
    if not network.is_built:
        missing = [name for name, value in (("input_shape", input_shape), ("dt", dt)) if value is None]
        if missing:
            raise ValueError(
                f"The network is not built and {' and '.join(missing)} missing: pass input_shape, dt "
                f"(seconds) and num_classes (the command line links them from the DataModule), or build "
                f"the network before passing it."
            )
        readout = getattr(network, "readout", None)
        if readout is not None and readout.size is None and num_classes is None:
            raise ValueError("The network's readout has no size: pass num_classes.")
    if input_shape is not None and dt is not None:
        # On a built network this only checks that the shape and time step agree.
        network.build(tuple(input_shape), dt, num_classes)


def _resolve_time_step(network: nn.Module, dt: Optional[float]) -> float:
    dt = dt if dt is not None else getattr(network, "dt", None)
    if dt is None:
        raise ValueError(
            "dt is missing: pass the simulation time step in seconds, which firing rates in Hz need."
        )
    if not dt > 0:
        raise ValueError(f"dt must be a positive time step in seconds, got {dt}.")
    return float(dt)


def _resolve_num_classes(network: nn.Module, num_classes: Optional[int]) -> int:
    readout = getattr(network, "readout", None)
    readout_size = getattr(readout, "size", None)
    readout_classes = readout_size[0] if readout_size is not None and len(readout_size) == 1 else None
    if num_classes is None:
        if readout_classes is None:
            raise ValueError("num_classes is missing and the network has no readout size to take it from.")
        return readout_classes
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
    if readout_classes is not None and readout_classes != num_classes:
        raise ValueError(
            f"num_classes is {num_classes} but the network's readout has {readout_classes} units."
        )
    return int(num_classes)
