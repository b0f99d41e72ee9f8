"""Command line: ``lightning-snn {fit,validate,test,predict} --config CONFIG.yaml``.

The command is a :class:`~lightning.pytorch.cli.LightningCLI` over :class:`SNNClassifier` and any
:class:`SpikeDataModule`. A YAML file (see ``configs/``) chooses the network, the data and the
Trainer settings; every key can be overridden on the command line, e.g.
``--trainer.max_epochs 5 --data.init_args.batch_size 32``.

What it adds to a plain LightningCLI:

* The DataModule's ``input_shape``, ``num_classes``, ``dt`` and ``num_steps`` are passed to the model
  once the DataModule exists, so a config does not set them.
* A TensorBoard logger under ``lightning_logs/``. During ``fit`` (except with ``fast_dev_run``), two
  checkpoint callbacks write to ``<log_dir>/checkpoints/``: one keeps the epoch with the best
  ``val/acc`` (configured by ``--checkpoint.*``) and one overwrites ``last.ckpt`` after every
  training epoch (``--checkpoint.save_last false`` turns it off). ``validate``, ``test`` and
  ``predict`` write no checkpoints.
* After ``fit``, the test split is evaluated on the best checkpoint (``--test_after_fit false`` turns
  this off), and one line with the test accuracy, test loss and fit time is printed.
* ``predict`` saves the class probabilities with :class:`~lightning_snn.callbacks.PredictionWriter`
  to ``--predictions_path`` (default ``<log_dir>/predictions.pt``) and prints where.

:func:`console_main` is the shell entry point: it returns an exit status, and it reports a data folder
without the expected files in two lines instead of a traceback (``LIGHTNING_SNN_DEBUG=1`` shows it).
"""

import os
import sys
import time
import traceback
import warnings
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

# Importing these modules registers their classes with jsonargparse, so a config can name a class
# by its short name (``class_path: UpperBoundL2``) as well as by its full import path.
import lightning_snn.callbacks  # noqa: F401
import lightning_snn.data.digits  # noqa: F401
import lightning_snn.data.dvs_gesture  # noqa: F401
import lightning_snn.data.randman  # noqa: F401
import lightning_snn.data.shd  # noqa: F401
import lightning_snn.init  # noqa: F401
import lightning_snn.losses  # noqa: F401
import lightning_snn.nn  # noqa: F401
import lightning_snn.optim  # noqa: F401
import lightning_snn.regularizers  # noqa: F401
import lightning_snn.surrogate  # noqa: F401
from lightning_snn.allocator import retain_freed_memory
from lightning_snn.callbacks.predictions import PredictionWriter
from lightning_snn.kernels import cpu_extension
from lightning_snn.data.base import SpikeDataModule
from lightning_snn.tasks import SNNClassifier

#: DataModule attributes copied into the model's init arguments of the same name.
LINKED_DATA_ATTRIBUTES = ("input_shape", "num_classes", "dt", "num_steps")

#: Defaults of the ``--checkpoint.*`` group: keep the epoch with the best validation accuracy.
CHECKPOINT_DEFAULTS = {"monitor": "val/acc", "mode": "max", "save_last": True}

#: File name (without ``.ckpt``) of the checkpoint that is overwritten after every training epoch.
LAST_CHECKPOINT_NAME = "last"

#: Start of the warning that a checkpoint contains states of callbacks that the Trainer lacks.
CALLBACK_STATE_WARNING = "Be aware that when using `ckpt_path`"

#: Environment variable that makes :func:`console_main` show the traceback of a missing data file.
DEBUG_VARIABLE = "LIGHTNING_SNN_DEBUG"

#: One-line help of each subcommand, in place of the first docstring line of the Trainer method.
SUBCOMMAND_HELP = {
    "fit": "Train the model; afterwards, test it unless --test_after_fit false.",
    "validate": "Evaluate a checkpoint (--ckpt_path) on the validation split.",
    "test": "Evaluate a checkpoint (--ckpt_path) on the test split.",
    "predict": (
        "Compute the class probabilities of the predict split (the test split) with a checkpoint "
        "(--ckpt_path) and save them to --predictions_path."
    ),
}


class SNNLightningCLI(LightningCLI):
    """LightningCLI with data-to-model links, checkpoints, a test run after ``fit`` and a prediction file."""

    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)

        # LightningCLI lists each subcommand with the first docstring line of the Trainer method, which
        # for test and predict stops mid-sentence. The list entries are argparse's choice actions.
        subcommands = getattr(self.parser, "_subcommands_action", None)
        for choice in getattr(subcommands, "_choices_actions", []):
            choice.help = SUBCOMMAND_HELP.get(choice.dest, choice.help)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Every subcommand gets these arguments, so a config.yaml saved by fit also parses for test.
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help=(
                "After fit, evaluate the test split on the best checkpoint (the last one when no "
                "validation metric was monitored) and print the test accuracy, test loss and fit time. "
                "Ignored by validate, test and predict."
            ),
        )
        parser.add_argument(
            "--predictions_path",
            type=Optional[str],
            default=None,
            help=(
                "File where predict saves the class probabilities, the predicted class ids and the "
                "sample indices (a dict of tensors for torch.load). Default: predictions.pt in the "
                "log folder, lightning_logs/version_<N>/. Ignored by fit, validate and test."
            ),
        )

        # The callbacks are built in instantiate_trainer, because fit gets two of them (best and last)
        # and the other subcommands get none.
        parser.add_class_arguments(ModelCheckpoint, "checkpoint", instantiate=False, fail_untyped=False)
        parser.set_defaults({f"checkpoint.{key}": value for key, value in CHECKPOINT_DEFAULTS.items()})

        # In subclass mode the target must name the init_args of the chosen model class.
        for name in LINKED_DATA_ATTRIBUTES:
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        trainer_config = self._get(self.config_init, "trainer", default={})
        callbacks = _as_callback_list(trainer_config.get("callbacks"))

        # Checkpoints belong to fit (subcommand None is run=False, before a fit from Python). With
        # fast_dev_run, save_last would still write ./checkpoints/last.ckpt. In validate, test and
        # predict, a checkpoint callback only restores stale state and warns that its dirpath changed.
        self._best_checkpoint: Optional[ModelCheckpoint] = None
        self._last_checkpoint: Optional[ModelCheckpoint] = None
        if self.subcommand in (None, "fit") and not trainer_config.get("fast_dev_run"):
            callbacks += self._checkpoint_callbacks()
        elif not any(isinstance(callback, ModelCheckpoint) for callback in callbacks):
            kwargs.setdefault("enable_checkpointing", False)

        self._prediction_writer: Optional[PredictionWriter] = None
        if self.subcommand == "predict":
            self._prediction_writer = PredictionWriter(self._get(self.config, "predictions_path"))
            callbacks.append(self._prediction_writer)

        return super().instantiate_trainer(callbacks=callbacks, **kwargs)

    def _checkpoint_callbacks(self) -> list[ModelCheckpoint]:
        """Build the ``--checkpoint.*`` callback and, with ``save_last``, the one that writes last.ckpt."""
        settings = self._get(self.config_init, "checkpoint").as_dict()
        save_last = settings.pop("save_last")

        # With a monitor, ModelCheckpoint (Lightning 2.6.6) refreshes last.ckpt only in epochs that
        # save a new top-k checkpoint, so last.ckpt can lag behind by many epochs. A second callback
        # without a monitor saves at the end of every training epoch, after that epoch's validation.
        self._best_checkpoint = ModelCheckpoint(**settings, save_last=False)
        if not save_last:
            return [self._best_checkpoint]

        self._last_checkpoint = ModelCheckpoint(
            dirpath=settings["dirpath"],
            filename=LAST_CHECKPOINT_NAME,
            monitor=None,
            save_top_k=1,
            save_weights_only=settings["save_weights_only"],
            save_on_train_epoch_end=True,
            enable_version_counter=False,
            verbose=settings["verbose"],
        )
        return [self._best_checkpoint, self._last_checkpoint]

    def _run_subcommand(self, subcommand: str) -> None:
        if subcommand == "fit":
            super()._run_subcommand(subcommand)
            return

        # validate, test and predict build no checkpoint callbacks, so Lightning 2.6.6 warns that the
        # checkpoint's callback states found no callback to restore into. Evaluation needs none of them.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=CALLBACK_STATE_WARNING)
            super()._run_subcommand(subcommand)

    def before_fit(self) -> None:
        # A first run compiles the C++ kernels; doing it now keeps that out of the reported fit time.
        if not torch.cuda.is_available():
            cpu_extension.load()
        self._fit_start = time.perf_counter()

    def after_fit(self) -> None:
        fit_seconds = time.perf_counter() - self._fit_start
        epochs = self.trainer.current_epoch
        if self.trainer.interrupted:
            return

        if not self._get(self.config, "test_after_fit", True):
            if self.trainer.is_global_zero:
                print(f"Fit {fit_seconds:.1f} s ({format_epochs(epochs)}); test skipped (--test_after_fit false)")
            return

        choice = self._checkpoint_to_test()
        callback = {"best": self._best_checkpoint, "last": self._last_checkpoint}.get(choice)
        # An explicit path, because ckpt_path="best" warns when there are several ModelCheckpoint callbacks.
        ckpt_path = callback.best_model_path if callback is not None else None
        results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path)
        if self.trainer.is_global_zero:
            print(format_test_summary(results[0] if results else {}, choice, fit_seconds, epochs))

    def _checkpoint_to_test(self) -> Optional[str]:
        """Return ``"best"``, ``"last"`` or None (the weights in memory) for the test after fit."""
        # best_model_path stays empty when the monitored metric was never logged (no validation).
        best = self._best_checkpoint
        if best is not None and best.monitor is not None and best.best_model_path:
            return "best"
        last = self._last_checkpoint
        if last is not None and last.best_model_path:
            return "last"
        return None

    def after_predict(self) -> None:
        if self._prediction_writer is None or not self.trainer.is_global_zero:
            return
        for path in self._prediction_writer.written_paths:
            print(f"Predictions written to {path}")


def _as_callback_list(callbacks: Any) -> list[Callback]:
    """Return the Trainer's configured ``callbacks`` (None, one callback or a list) as a new list."""
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback):
        return [callbacks]
    return list(callbacks)


def format_epochs(epochs: int) -> str:
    """Return ``"1 epoch"`` or ``"<epochs> epochs"``."""
    return f"{epochs} epoch" if epochs == 1 else f"{epochs} epochs"


def format_test_summary(
    metrics: dict[str, Any], ckpt_path: Optional[str], fit_seconds: float, epochs: int
) -> str:
    """Build the one-line report printed after ``fit``: test accuracy and loss, checkpoint, fit time.

    Args:
        metrics: The dictionary that ``Trainer.test`` returned for the test dataloader.
        ckpt_path: The checkpoint that was tested (``"best"``, ``"last"`` or None for the final weights).
        fit_seconds: Wall-clock duration of ``fit`` in seconds.
        epochs: Number of epochs that ``fit`` completed.

    Returns:
        A line such as ``Test accuracy 96.30 % | test loss 0.1387 | best checkpoint | fit 812.3 s
        (200 epochs)``.
    """
    accuracy = metrics.get("test/acc")
    loss = metrics.get("test/loss")
    parts = [
        "Test accuracy " + (f"{100.0 * float(accuracy):.2f} %" if accuracy is not None else "n/a"),
        "test loss " + (f"{float(loss):.4f}" if loss is not None else "n/a"),
        f"{ckpt_path} checkpoint" if ckpt_path is not None else "final weights",
        f"fit {fit_seconds:.1f} s ({format_epochs(epochs)})",
    ]
    return " | ".join(parts)


def main(args: ArgsType = None, run: bool = True) -> SNNLightningCLI:
    """Run the ``lightning-snn`` command.

    Args:
        args: Command-line arguments without the program name, e.g.
            ``["fit", "--config", "configs/randman.yaml"]``; ``None`` reads ``sys.argv``.
        run: Parse and run a subcommand. With False, ``args`` take no subcommand, and the trainer,
            model and DataModule are only built, e.g. to inspect a config from Python.

    Returns:
        The CLI object, which contains ``trainer``, ``model`` and ``datamodule`` after the run.

    Raises:
        SystemExit: For invalid arguments, and after ``--help`` or ``--print_config``.
    """
    return SNNLightningCLI(
        SNNClassifier,
        SpikeDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "lightning_logs", "name": "", "default_hp_metric": False},
            },
        },
        parser_kwargs={
            "prog": "lightning-snn",
            "description": (
                "Train and evaluate spiking neural networks with surrogate gradients. "
                "Start from a config: lightning-snn fit --config configs/randman.yaml. "
                "List the options of a class with: lightning-snn fit --data.help SHDDataModule "
                "(or --model.help SNNClassifier)."
            ),
            **{name: {"description": text} for name, text in SUBCOMMAND_HELP.items()},
        },
        # The optimizer is a model argument (model.init_args.optimizer), so the CLI adds no
        # separate --optimizer group that would silently replace it.
        auto_configure_optimizers=False,
        args=args,
        run=run,
    )


def console_main() -> int:
    """Run ``lightning-snn`` with the arguments in ``sys.argv`` and return the exit status.

    This is the console script and ``python -m lightning_snn``. A ``FileNotFoundError`` raised by the
    DataModule (its data files are missing) is printed as a two-line error with exit status 1; set
    the environment variable ``LIGHTNING_SNN_DEBUG=1`` to see its traceback instead. Every other
    error propagates with its traceback.

    Before anything else it calls :func:`lightning_snn.allocator.retain_freed_memory`, so that each
    training step reuses the memory of the previous one instead of paying page faults for it.

    Returns:
        0 on success, 1 when the DataModule did not find its data.
    """
    retain_freed_memory(warn=False)
    try:
        main()
    except FileNotFoundError as error:
        datamodule = _datamodule_in_traceback(error)
        if datamodule is None or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0"):
            raise
        print(f"lightning-snn: error: {error}", file=sys.stderr)
        print(_missing_data_hint(datamodule), file=sys.stderr)
        return 1
    return 0


def _datamodule_in_traceback(error: BaseException) -> Optional[pl.LightningDataModule]:
    """Return the DataModule whose method raised ``error`` (directly or through calls), else None."""
    for frame, _ in traceback.walk_tb(error.__traceback__):
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, pl.LightningDataModule):
            return candidate
    return None


def _missing_data_hint(datamodule: pl.LightningDataModule) -> str:
    """Return the command-line options that fix a missing data folder."""
    hint = "Point --data.init_args.data_dir at the folder that contains the data"
    if getattr(datamodule, "download", None) is False:
        hint += ", or add --data.init_args.download true to download it"
    return f"{hint}. Set {DEBUG_VARIABLE}=1 to see the traceback."


__all__ = ["SNNLightningCLI", "console_main", "format_epochs", "format_test_summary", "main"]
