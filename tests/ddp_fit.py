"""Run ``lightning-snn fit`` and record, per rank, which training samples the rank saw.

Usage: ``python ddp_fit.py OUT_DIR [lightning-snn fit arguments ...]``

Lightning's DDP launcher starts the other ranks by re-running this script with the same arguments, so
every rank adds the :class:`SeenSamples` callback and writes ``OUT_DIR/rank<r>.json`` with:

* ``world_size``: the number of ranks;
* ``num_train``: the size of the training split;
* ``seen``: the index in the training split of every sample that the rank trained on, in order;
* ``metric_keys``: the names in ``trainer.callback_metrics`` at the end of fit.

Samples are identified by the bytes of their spike raster and their label, because batches carry no
index. The script fails if two training samples are identical, since their indices would be ambiguous.
"""

import hashlib
import json
import sys
from pathlib import Path

import lightning.pytorch as pl
from torch import Tensor

from lightning_snn.cli import main


def sample_key(x: Tensor, y: Tensor) -> str:
    """Return a digest of one sample's raster and label."""
    digest = hashlib.sha1(x.detach().cpu().contiguous().numpy().tobytes())
    digest.update(str(int(y)).encode())
    return digest.hexdigest()


class SeenSamples(pl.Callback):
    """Record the digest of every training sample and write the rank's report after fit.

    Args:
        out_dir: Folder for ``rank<r>.json``.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.keys: list[str] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        x, y = batch
        self.keys.extend(sample_key(x[i], y[i]) for i in range(len(y)))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        train_set = trainer.datamodule.train_set
        index_of = {}
        for index in range(len(train_set)):
            x, y = train_set[index]
            index_of[sample_key(x, y)] = index
        if len(index_of) != len(train_set):
            raise RuntimeError("Two training samples are identical; make the data larger so each one is unique.")

        report = {
            "world_size": trainer.world_size,
            "num_train": len(train_set),
            "seen": [index_of[key] for key in self.keys],
            "metric_keys": sorted(trainer.callback_metrics),
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    out_dir, *cli_args = sys.argv[1:]
    main(cli_args + ["--trainer.callbacks+=ddp_fit.SeenSamples", f"--trainer.callbacks.out_dir={out_dir}"])
