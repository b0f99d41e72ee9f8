"""Distributed (DDP, gloo on CPU) training through the command line, in a subprocess.

Lightning starts the second rank by re-running the launching command, so the run happens in a
separate script (``ddp_fit.py``) rather than inside pytest, which would re-run the whole test session.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_snn.cli import main

TESTS_DIR = Path(__file__).parent
CONFIG = TESTS_DIR / "conf" / "randman.yaml"

# Every training batch is used, so the ranks together must cover the training split.
FIT_ARGS = ["fit", "--config", str(CONFIG), "--trainer.limit_train_batches", "1.0", "--test_after_fit", "false"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_reports(tmp_path_factory):
    """Run a 2-rank DDP fit of the tiny randman config and return each rank's report."""
    run_dir = tmp_path_factory.mktemp("ddp")
    out_dir = run_dir / "reports"
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable,
        str(TESTS_DIR / "ddp_fit.py"),
        str(out_dir),
        *FIT_ARGS,
        "--trainer.strategy", "ddp",
        "--trainer.devices", "2",
        "--trainer.accelerator", "cpu",
    ]
    result = subprocess.run(command, cwd=run_dir, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(2)]


def test_ddp_runs_two_ranks(ddp_reports):
    assert [report["world_size"] for report in ddp_reports] == [2, 2]


def test_ddp_ranks_see_disjoint_samples(ddp_reports):
    seen = [set(report["seen"]) for report in ddp_reports]

    assert seen[0].isdisjoint(seen[1])


def test_ddp_ranks_cover_train_split(ddp_reports):
    seen = set(ddp_reports[0]["seen"]) | set(ddp_reports[1]["seen"])
    num_train = ddp_reports[0]["num_train"]

    # tests/conf/randman.yaml: 80 % of 3 x 20 samples.
    assert num_train == 48
    assert seen == set(range(num_train))


def test_ddp_each_sample_seen_once(ddp_reports):
    # 48 samples split evenly, so the distributed sampler repeats none of them.
    assert [len(report["seen"]) for report in ddp_reports] == [24, 24]


def test_ddp_metric_keys_match_single_process(ddp_reports, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lightning-snn"])
    single = main(FIT_ARGS)

    expected = sorted(single.trainer.callback_metrics)
    assert ddp_reports[0]["metric_keys"] == expected
    assert ddp_reports[1]["metric_keys"] == expected
