"""Save the class probabilities that ``Trainer.predict`` computes to a file."""

from pathlib import Path
from typing import Any, Optional, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

#: File name used in the Trainer's ``log_dir`` when no path is given.
DEFAULT_FILE_NAME = "predictions.pt"


class PredictionWriter(BasePredictionWriter):
    """Write the class probabilities of a ``predict`` run to one ``.pt`` file per dataloader.

    The file contains a dict that ``torch.load(path)`` reads back:

    * ``probabilities``: float tensor ``(samples, classes)``, the output of the model's ``predict_step``
      (each row sums to 1 for :class:`~lightning_snn.tasks.SNNClassifier`).
    * ``predictions``: int64 tensor ``(samples,)``, the class id with the highest probability.
    * ``sample_indices``: int64 tensor ``(samples,)``, the dataset index of each row, or None when
      Lightning cannot track the indices (a dataloader without a batch sampler).

    With several predict dataloaders, dataloader ``i`` goes to ``<stem>_dataloader<i>.pt``. Under
    DDP, rank ``r`` writes ``<stem>_rank<r>.pt`` with its share of the samples; ``sample_indices``
    puts the rows of all ranks back in dataset order.

    Args:
        path: Output file. None means ``predictions.pt`` in the Trainer's ``log_dir``, which is
            ``lightning_logs/version_<N>/`` with the command line's default logger.
    """

    def __init__(self, path: Optional[str] = None) -> None:
        super().__init__(write_interval="epoch")
        self.path = path
        #: Files written by the last ``predict`` run, in dataloader order.
        self.written_paths: list[Path] = []

    def write_on_epoch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        # Lightning unwraps the predictions of a single dataloader but not its batch indices.
        num_dataloaders = trainer.predict_loop.num_dataloaders
        per_dataloader = [predictions] if num_dataloaders == 1 else list(predictions)

        self.written_paths = []
        for index, batches in enumerate(per_dataloader):
            path = self._output_path(trainer, index, num_dataloaders)
            indices = batch_indices[index] if index < len(batch_indices) else []
            torch.save(_prediction_record(batches, indices), path)
            self.written_paths.append(path)

    def _output_path(self, trainer: pl.Trainer, dataloader_index: int, num_dataloaders: int) -> Path:
        path = Path(self.path) if self.path is not None else Path(trainer.log_dir or ".") / DEFAULT_FILE_NAME
        stem = path.stem
        if num_dataloaders > 1:
            stem += f"_dataloader{dataloader_index}"
        if trainer.world_size > 1:
            stem += f"_rank{trainer.global_rank}"
        path = path.with_name(stem + path.suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def _prediction_record(batches: Sequence[torch.Tensor], batch_indices: Sequence[Sequence[int]]) -> dict:
    """Concatenate per-batch probabilities and their sample indices into the saved dict."""
    if batches:
        probabilities = torch.cat([batch.detach().cpu() for batch in batches])
    else:
        probabilities = torch.empty(0, 0)

    sample_indices = None
    if batch_indices:
        sample_indices = torch.tensor([index for batch in batch_indices for index in batch], dtype=torch.int64)

    return {
        "probabilities": probabilities,
        "predictions": probabilities.argmax(dim=1) if probabilities.numel() else torch.empty(0, dtype=torch.int64),
        "sample_indices": sample_indices,
    }


__all__ = ["DEFAULT_FILE_NAME", "PredictionWriter"]
