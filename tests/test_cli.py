"""End-to-end tests of the ``lightning-snn`` command line on tiny data.

Each test runs in its own temporary folder, so the TensorBoard logs and checkpoints that the command
writes to ``lightning_logs/`` land there. The tiny configs live in ``tests/conf/``; the example
configs in ``configs/`` are only parsed and built, never trained.
"""

import contextlib
import io
import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from fake_data import write_fake_dvs_gesture, write_random_shd

from lightning_snn.cli import console_main, format_epochs, format_test_summary, main
from lightning_snn.tasks import SNNClassifier

TESTS_DIR = Path(__file__).parent
CONF_DIR = TESTS_DIR / "conf"
CONFIGS_DIR = TESTS_DIR.parent / "configs"


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Run every test from its own temporary folder, where the default logger writes."""
    monkeypatch.chdir(tmp_path)
    # The command reads only the args given to main(), not pytest's own command line.
    monkeypatch.setattr(sys, "argv", ["lightning-snn"])
    return tmp_path


def checkpoint_paths(root: Path) -> list[Path]:
    return sorted(root.glob("lightning_logs/version_*/checkpoints/*.ckpt"))


# --------------------------------------------------------------------------------------------------
# fit, test and predict on each DataModule
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def randman_run(tmp_path_factory):
    """Fit the tiny randman config once (with the test after fit) and share the run between tests."""
    run_dir = tmp_path_factory.mktemp("randman_run")
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.chdir(run_dir)
        patch.setattr(sys, "argv", ["lightning-snn"])
        cli = main(["fit", "--config", str(CONF_DIR / "randman.yaml")])
    return cli, run_dir, printed.getvalue()


def test_randman_fit_prints_test_summary(randman_run):
    cli, _, printed = randman_run
    summary = [line for line in printed.splitlines() if line.startswith("Test accuracy")]

    assert len(summary) == 1
    assert "best checkpoint" in summary[0]
    assert "(1 epoch)" in summary[0]
    assert "test/acc" in cli.trainer.callback_metrics


def test_randman_fit_links_data_into_model(randman_run):
    cli, _, _ = randman_run

    # tests/conf/randman.yaml: 16 units, 3 classes, 10 steps of the default 2 ms.
    assert tuple(cli.model.hparams.input_shape) == (16,)
    assert cli.model.hparams.num_classes == 3
    assert cli.model.hparams.num_steps == 10
    assert cli.model.hparams.dt == pytest.approx(2e-3)


def test_randman_fit_writes_logs_and_checkpoints(randman_run):
    _, run_dir, _ = randman_run
    version = run_dir / "lightning_logs" / "version_0"
    names = {path.name for path in checkpoint_paths(run_dir)}

    assert "last.ckpt" in names
    assert len(names) == 2  # the best epoch and last.ckpt
    assert (version / "config.yaml").is_file()
    assert list(version.glob("events.out.tfevents.*"))


def test_randman_fit_without_test_after_fit(in_tmp_path, capsys):
    cli = main(
        ["fit", "--config", str(CONF_DIR / "randman.yaml"), "--trainer.fast_dev_run", "true", "--test_after_fit", "false"]
    )

    printed = capsys.readouterr().out
    assert "Test accuracy" not in printed
    assert "test skipped" in printed
    assert "test/acc" not in cli.trainer.callback_metrics
    assert "val/acc" in cli.trainer.callback_metrics
    # fast_dev_run is a smoke test: it must leave no checkpoint behind, in the log folder or elsewhere.
    assert not list(in_tmp_path.rglob("*.ckpt"))


def test_test_summary_format():
    metrics = {"test/acc": 0.963, "test/loss": 0.13867}

    line = format_test_summary(metrics, "best", fit_seconds=812.34, epochs=200)

    assert line == "Test accuracy 96.30 % | test loss 0.1387 | best checkpoint | fit 812.3 s (200 epochs)"


def test_format_epochs_singular_and_plural():
    assert format_epochs(1) == "1 epoch"
    assert format_epochs(0) == "0 epochs"
    assert format_epochs(3) == "3 epochs"


def test_last_checkpoint_holds_final_epoch():
    # A learning rate of 0 keeps the weights, so val/acc never improves after epoch 0 and the best
    # checkpoint stays at epoch 0, while last.ckpt must follow every epoch.
    cli = main(
        [
            "fit",
            "--config", str(CONF_DIR / "randman.yaml"),
            "--trainer.max_epochs", "3",
            "--trainer.callbacks", "[]",
            "--model.init_args.optimizer", "torch.optim.SGD",
            "--model.init_args.optimizer.init_args.lr", "0.0",
            "--test_after_fit", "false",
        ]
    )
    checkpoints = Path(cli.trainer.log_dir) / "checkpoints"
    best = [path for path in checkpoints.glob("*.ckpt") if path.name != "last.ckpt"]
    last = torch.load(checkpoints / "last.ckpt", weights_only=False)

    assert len(best) == 1
    assert torch.load(best[0], weights_only=False)["epoch"] == 0
    # 3 epochs of 2 training batches; the checkpoint counts epochs from 0.
    assert last["global_step"] == 6
    assert last["epoch"] == 2


def test_randman_test_from_checkpoint(randman_run):
    _, run_dir, _ = randman_run
    best = next(path for path in checkpoint_paths(run_dir) if path.name != "last.ckpt")

    tested = main(["test", "--config", str(CONF_DIR / "randman.yaml"), "--ckpt_path", str(best)])

    assert 0.0 <= float(tested.trainer.callback_metrics["test/acc"]) <= 1.0


def test_randman_test_with_saved_config(randman_run):
    _, run_dir, _ = randman_run
    version = run_dir / "lightning_logs" / "version_0"

    tested = main(["test", "-c", str(version / "config.yaml"), "--ckpt_path", str(version / "checkpoints" / "last.ckpt")])

    assert 0.0 <= float(tested.trainer.callback_metrics["test/acc"]) <= 1.0


def test_randman_predict_matches_reloaded_checkpoint(randman_run):
    _, run_dir, _ = randman_run
    last = run_dir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"

    predicted = main(["predict", "--config", str(CONF_DIR / "randman.yaml"), "--ckpt_path", str(last)])
    probabilities = torch.cat(predicted.trainer.predict_loop.predictions)

    # Prediction runs on the test split, 10 % of 3 x 20 samples.
    assert probabilities.shape == (6, 3)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(6))

    model = SNNClassifier.load_from_checkpoint(last)
    model.eval()
    batch = next(iter(predicted.datamodule.predict_dataloader()))
    with torch.no_grad():
        reloaded = model.predict_step(batch, 0)
    torch.testing.assert_close(reloaded, probabilities)


def test_randman_predict_writes_probabilities(randman_run, in_tmp_path, capsys):
    _, run_dir, _ = randman_run
    last = run_dir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"

    cli = main(["predict", "--config", str(CONF_DIR / "randman.yaml"), "--ckpt_path", str(last)])
    default_path = Path(cli.trainer.log_dir) / "predictions.pt"
    saved = torch.load(default_path)

    # The test split: 10 % of 3 classes x 20 samples, in dataset order because it is not shuffled.
    assert saved["probabilities"].shape == (6, 3)
    torch.testing.assert_close(saved["probabilities"].sum(dim=1), torch.ones(6))
    assert torch.equal(saved["predictions"], saved["probabilities"].argmax(dim=1))
    assert torch.equal(saved["sample_indices"], torch.arange(6))
    assert f"Predictions written to {default_path}" in capsys.readouterr().out


def test_randman_predict_to_given_path(randman_run, in_tmp_path):
    _, run_dir, _ = randman_run
    last = run_dir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    path = in_tmp_path / "out" / "probs.pt"

    main(["predict", "--config", str(CONF_DIR / "randman.yaml"), "--ckpt_path", str(last), "--predictions_path", str(path)])

    assert torch.load(path)["probabilities"].shape == (6, 3)


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluation_without_checkpoint_callbacks(randman_run, in_tmp_path, subcommand):
    _, run_dir, _ = randman_run
    last = run_dir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = main([subcommand, "--config", str(CONF_DIR / "randman.yaml"), "--ckpt_path", str(last)])
    messages = [str(warning.message) for warning in caught]

    assert cli.trainer.checkpoint_callbacks == []
    assert not [message for message in messages if "dirpath has changed" in message]
    assert not [message for message in messages if "callbacks used to create the checkpoint" in message]
    assert not list(in_tmp_path.rglob("*.ckpt"))


def test_randman_validate_command():
    cli = main(["validate", "--config", str(CONF_DIR / "randman.yaml")])

    assert "val/acc" in cli.trainer.callback_metrics


def test_digits_fit():
    cli = main(["fit", "--config", str(CONF_DIR / "digits.yaml")])

    assert cli.model.network.input_shape == (64,)
    assert "test/acc" in cli.trainer.callback_metrics


def test_shd_fit_on_fake_files(in_tmp_path):
    data_dir = in_tmp_path / "shd"
    write_random_shd(data_dir / "shd_train.h5", num_samples=20, seed=0)
    write_random_shd(data_dir / "shd_test.h5", num_samples=10, seed=1)

    cli = main(["fit", "--config", str(CONF_DIR / "shd.yaml"), "--data.init_args.data_dir", str(data_dir)])

    # 0.02 s at 2 ms is 10 steps; the Conv1d layer (kernel 21, stride 10) maps 700 channels to 68.
    assert cli.model.hparams.num_steps == 10
    assert cli.model.network.populations()["layer1"].shape == (4, 68)
    assert "test/acc" in cli.trainer.callback_metrics


def test_spoken_digits_fit_on_bundled_file():
    cli = main(["fit", "--config", str(CONF_DIR / "spoken_digits.yaml")])

    # 0.2 s at 10 ms is 20 steps; the bundled file has 20 classes.
    assert cli.model.hparams.num_steps == 20
    assert cli.model.num_classes == 20
    assert "test/rate/layer1.inh" in cli.trainer.callback_metrics


def test_dvs_gesture_fit_on_fake_tree(in_tmp_path, capsys):
    data_dir = in_tmp_path / "dvs"
    write_fake_dvs_gesture(data_dir, "train", seed=0)
    write_fake_dvs_gesture(data_dir, "test", users=range(20, 30), seed=1)

    # Without a validation split, as in configs/dvs_gesture_conv.yaml, the last checkpoint is tested.
    cli = main(
        [
            "fit",
            "--config", str(CONF_DIR / "dvs_gesture.yaml"),
            "--data.init_args.data_dir", str(data_dir),
            "--data.init_args.val_fraction", "0.0",
        ]
    )
    assert "| last checkpoint |" in capsys.readouterr().out

    # 2 polarities x 8 x 8 pixels; padding 1 keeps 8 x 8, pooling halves it to 4 x 4.
    assert cli.model.network.input_shape == (2, 8, 8)
    assert cli.model.num_classes == 11
    assert "test/acc" in cli.trainer.callback_metrics


def test_python_module_entry_point_exists():
    import lightning_snn.__main__ as entry

    assert entry.console_main is console_main


def test_console_main_exit_status_zero(in_tmp_path):
    # The console script generated by pip runs sys.exit(console_main()).
    command = [
        sys.executable,
        "-c",
        "import sys; from lightning_snn.cli import console_main; sys.exit(console_main())",
        "fit",
        "-c", str(CONF_DIR / "digits.yaml"),
        "--trainer.fast_dev_run", "true",
        "--trainer.logger", "false",
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)

    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "SNNLightningCLI object" not in finished.stdout + finished.stderr


def test_console_main_missing_data(in_tmp_path, monkeypatch, capsys):
    missing = in_tmp_path / "no_shd"
    args = ["fit", "-c", str(CONF_DIR / "shd.yaml"), "--data.init_args.data_dir", str(missing)]
    monkeypatch.setattr(sys, "argv", ["lightning-snn", *args])
    monkeypatch.delenv("LIGHTNING_SNN_DEBUG", raising=False)

    status = console_main()
    error = capsys.readouterr().err

    assert status == 1
    assert "shd_train.h5" in error
    assert "--data.init_args.download true" in error
    assert "Traceback" not in error


def test_console_main_missing_data_debug(in_tmp_path, monkeypatch):
    missing = in_tmp_path / "no_shd"
    args = ["fit", "-c", str(CONF_DIR / "shd.yaml"), "--data.init_args.data_dir", str(missing)]
    monkeypatch.setattr(sys, "argv", ["lightning-snn", *args])
    monkeypatch.setenv("LIGHTNING_SNN_DEBUG", "1")

    with pytest.raises(FileNotFoundError, match="shd_train.h5"):
        console_main()


def test_help_lists_full_descriptions(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    printed = " ".join(capsys.readouterr().out.split())

    assert "Evaluate a checkpoint (--ckpt_path) on the test split." in printed
    assert "save them to --predictions_path." in printed


# --------------------------------------------------------------------------------------------------
# The example configs: parse and build, without touching any data
# --------------------------------------------------------------------------------------------------

# Parameters counted by hand from each architecture (no biases), and the population shapes.
EXAMPLE_CONFIGS = {
    # 20 -> 128 -> 10
    "randman.yaml": (20 * 128 + 128 * 10, {"layer1": (128,), "readout": (10,)}),
    # 64 -> 128 -> 10
    "digits_latency.yaml": (64 * 128 + 128 * 10, {"layer1": (128,), "readout": (10,)}),
    # 700 -> 128 -> 20
    "spoken_digits.yaml": (700 * 128 + 128 * 20, {"layer1": (128,), "readout": (20,)}),
    # 700 -> 128 -> 128 -> 128 -> 20
    "shd_deep.yaml": (
        700 * 128 + 2 * 128 * 128 + 128 * 20,
        {"layer1": (128,), "layer2": (128,), "layer3": (128,), "readout": (20,)},
    ),
    # Conv1d kernels 21 / 7 / 7 plus recurrent kernels 5, then 64 x 5 = 320 units -> 20.
    "shd_conv.yaml": (
        16 * 1 * 21 + 16 * 16 * 5 + 32 * 16 * 7 + 32 * 32 * 5 + 64 * 32 * 7 + 64 * 64 * 5 + 320 * 20,
        {"layer1": (16, 68), "layer2": (32, 21), "layer3": (64, 5), "readout": (20,)},
    ),
    # X->E, X->I, I->E, I->I, E->E, E->I, E->readout with 128 E and 32 I neurons.
    "shd_dales.yaml": (
        700 * 128 + 700 * 32 + 32 * 128 + 32 * 32 + 128 * 128 + 128 * 32 + 128 * 20,
        {"layer1.exc": (128,), "layer1.inh": (32,), "readout": (20,)},
    ),
    # 3 x 3 kernels: 2 -> 16 -> 16 -> pool -> 32 -> 32 -> pool, then 32 x 11 x 11 = 3872 units -> 11.
    "dvs_gesture_conv.yaml": (
        9 * (2 * 16 + 16 * 16 + 16 * 32 + 32 * 32) + 3872 * 11,
        {
            "layer1": (16, 34, 34),
            "layer2": (16, 36, 36),
            "layer4": (32, 20, 20),
            "layer5": (32, 22, 22),
            "readout": (11,),
        },
    ),
}


def test_example_configs_all_covered():
    assert {path.name for path in CONFIGS_DIR.glob("*.yaml")} == set(EXAMPLE_CONFIGS)


@pytest.mark.parametrize("name", sorted(EXAMPLE_CONFIGS))
def test_example_config_print_config(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS_DIR / name), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)

    assert exit_info.value.code in (0, None)
    assert printed["model"]["class_path"] == "lightning_snn.tasks.SNNClassifier"
    assert printed["data"]["class_path"].startswith("lightning_snn.data.")


@pytest.mark.parametrize("name", sorted(EXAMPLE_CONFIGS))
def test_example_config_builds_model(name):
    expected_parameters, expected_shapes = EXAMPLE_CONFIGS[name]

    cli = main(["--config", str(CONFIGS_DIR / name), "--trainer.logger", "false"], run=False)
    network = cli.model.network
    shapes = {population: neuron.shape for population, neuron in network.populations().items()}

    assert sum(parameter.numel() for parameter in network.parameters()) == expected_parameters
    assert shapes == expected_shapes


def test_example_config_reference_settings():
    cli = main(["--config", str(CONFIGS_DIR / "randman.yaml"), "--trainer.logger", "false"], run=False)
    hidden = cli.model.network.populations()["layer1"]
    readout = cli.model.network.populations()["readout"]

    # Stork's shallow randman example: 100 steps of 2 ms, tau 20 / 10 ms, readout tau_mem 0.2 s.
    assert cli.model.hparams.num_steps == 100
    assert cli.model.dt == pytest.approx(2e-3)
    assert hidden.time_constants["mem"] == pytest.approx(20e-3)
    assert hidden.time_constants["syn"] == pytest.approx(10e-3)
    assert readout.time_constants["mem"] == pytest.approx(0.2)
    assert readout.initial_value == pytest.approx(-1e-2)
    assert cli.datamodule.batch_size == 250
    assert cli.trainer.max_epochs == 200
    assert math.isclose(cli.model.optimizer_factory(torch.nn.Linear(1, 1).parameters()).defaults["lr"], 5e-3)
