"""SNNClassifier under DDP on the CPU: rank 0's initialized weights reach every rank.

Lightning's DDP launcher re-runs the launching command for rank 1, so the run happens in a separate
script rather than inside pytest.
"""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

SCRIPT = """
import os
import sys

sys.path.insert(0, {tests!r})

import lightning.pytorch as pl
import torch
from task_helpers import DT, NUM_INPUTS, PatternDataModule, dense_network

from lightning_snn.tasks import SNNClassifier


class PrintInitialWeights(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        weight = pl_module.network.layers[0].connection.weight
        print(f"rank {{trainer.global_rank}} weight sum {{weight.sum().item():.6f}}", flush=True)


if __name__ == "__main__":
    # A different seed on each rank makes each rank's initializer draw different weights.
    torch.manual_seed(int(os.environ.get("LOCAL_RANK", 0)))
    model = SNNClassifier(dense_network(), input_shape=(NUM_INPUTS,), num_classes=2, dt=DT)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=1, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[PrintInitialWeights()],
    )
    trainer.fit(model, datamodule=PatternDataModule())
    # One run aborted at interpreter exit ("terminate called without an active exception") after a
    # successful fit. Destroying the process group while both ranks are alive is meant to avoid that.
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ddp_ranks_start_from_rank_zero_weights(tmp_path):
    script = tmp_path / "ddp_init.py"
    script.write_text(SCRIPT.format(tests=str(TESTS)))
    # Rank and seed variables left by earlier in-process runs would confuse the launcher.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PL_", "LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK"))}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]

    # Both ranks write to one pipe, so their lines can run together. The pattern finds each report
    # anywhere in the output.
    sums = {}
    for rank, value in re.findall(r"rank (\d+) weight sum (-?\d+\.\d{6})", result.stdout):
        sums[int(rank)] = value
    assert set(sums) == {0, 1}, result.stdout[-3000:] + result.stderr[-3000:]
    assert sums[0] == sums[1]
