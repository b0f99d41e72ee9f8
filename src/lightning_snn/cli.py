"""Command line: ``lightning-snn {fit,validate,test,predict} --config CONFIG.yaml``.

The command is a :class:`~lightning.pytorch.cli.LightningCLI` over :class:`SNNClassifier` and any
:class:`SpikeDataModule`. A YAML file (see ``configs/``) chooses the network, the data and the
Trainer settings; every key can be overridden on the command line, e.g.
``--trainer.max_epochs 5 --data.init_args.batch_size 32``.

What it adds to a plain LightningCLI:

* The DataModule's ``input_shape``, ``num_classes``, ``dt`` and ``num_steps`` are passed to the model
  once the DataModule exists, so a config does not set them.
* A TensorBoard logger under ``lightning_logs/`` and a checkpoint callback (``--checkpoint.*``) that
  keeps the model with the best ``val/acc`` plus the last one.
* After ``fit``, the test split is evaluated on the best checkpoint (``--test_after_fit false`` turns
  this off), and one line with the test accuracy, test loss and fit time is printed.
"""

import time
from typing import Any, Optional

from lightning.pytorch.callbacks import ModelCheckpoint
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
from lightning_snn.data.base import SpikeDataModule
from lightning_snn.tasks import SNNClassifier

#: DataModule attributes copied into the model's init arguments of the same name.
LINKED_DATA_ATTRIBUTES = ("input_shape", "num_classes", "dt", "num_steps")

#: Defaults of the ``--checkpoint.*`` group: keep the epoch with the best validation accuracy.
CHECKPOINT_DEFAULTS = {"monitor": "val/acc", "mode": "max", "save_last": True}


class SNNLightningCLI(LightningCLI):
    """LightningCLI with data-to-model links, a checkpoint group and a test run after ``fit``."""

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

        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({f"checkpoint.{key}": value for key, value in CHECKPOINT_DEFAULTS.items()})

        # In subclass mode the target must name the init_args of the chosen model class.
        for name in LINKED_DATA_ATTRIBUTES:
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")

    def before_fit(self) -> None:
        self._fit_start = time.perf_counter()

    def after_fit(self) -> None:
        fit_seconds = time.perf_counter() - self._fit_start
        epochs = self.trainer.current_epoch
        if self.trainer.interrupted:
            return

        if not self._get(self.config, "test_after_fit", True):
            if self.trainer.is_global_zero:
                print(f"Fit {fit_seconds:.1f} s ({epochs} epochs); test skipped (--test_after_fit false)")
            return

        ckpt_path = self._checkpoint_to_test()
        results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path)
        if self.trainer.is_global_zero:
            print(format_test_summary(results[0] if results else {}, ckpt_path, fit_seconds, epochs))

    def _checkpoint_to_test(self) -> Optional[str]:
        """Return ``"best"``, ``"last"`` or None (the weights in memory) for the test after fit."""
        callback = self.trainer.checkpoint_callback
        if callback is None or self.trainer.fast_dev_run:
            return None

        # best_model_path stays empty when the monitored metric was never logged (no validation).
        if callback.monitor is not None and callback.best_model_path:
            return "best"
        if callback.last_model_path:
            return "last"
        return None


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
        f"fit {fit_seconds:.1f} s ({epochs} epochs)",
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
            "fit": {"description": "Train the model; afterwards, test it unless --test_after_fit false."},
        },
        # The optimizer is a model argument (model.init_args.optimizer), so the CLI adds no
        # separate --optimizer group that would silently replace it.
        auto_configure_optimizers=False,
        args=args,
        run=run,
    )


__all__ = ["SNNLightningCLI", "format_test_summary", "main"]
