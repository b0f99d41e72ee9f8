"""The code in docs/own_lightning_module.md runs as written, on random data."""

import re
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "own_lightning_module.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)


def limited_trainer(**kwargs) -> pl.Trainer:
    """Build the guide's Trainer, cut down to two CPU steps without logs or checkpoints."""
    kwargs.update(
        accelerator="cpu",
        max_epochs=1,
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return pl.Trainer(**kwargs)


def test_guide_has_two_python_blocks():
    assert len(python_blocks()) == 2


def test_guide_example_trains(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module_block, usage_block = python_blocks()
    namespace: dict = {"__name__": "guide"}
    exec(compile(module_block, str(GUIDE), "exec"), namespace)

    # 32 random samples of 20 inputs over 20 steps, 10 classes, as the usage block expects.
    generator = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((32, 20, 20), 0.1), generator=generator)
    y = torch.randint(0, 10, (32,), generator=generator)
    namespace["train_loader"] = DataLoader(TensorDataset(x, y), batch_size=8)
    namespace["pl"] = SimpleNamespace(Trainer=limited_trainer)
    exec(compile(usage_block, str(GUIDE), "exec"), namespace)

    trainer = namespace["trainer"]
    assert trainer.global_step == 2
    assert torch.isfinite(trainer.callback_metrics["train_loss"])
