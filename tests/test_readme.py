"""The Python examples in the README run as written, one after the other."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README has no Python example"
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    out = namespace["out"]
    assert out.output.shape == (32, 100, 10)
    assert out.spikes["layer1"].shape == (32, 100, 128)
    # Fluctuation-driven initialization puts the hidden layer in a working regime.
    rate_hz = float(out.spikes["layer1"].mean()) / 2e-3
    assert 1.0 < rate_hz < 100.0


def test_readme_training_step_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2, "the README has no training-step example"
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    weights_before = [p.detach().clone() for p in namespace["network"].parameters()]
    exec(compile(blocks[1], str(README), "exec"), namespace)
    assert bool(namespace["loss"].isfinite())
    changed = [not bool((p.detach() == before).all()) for p, before in zip(namespace["network"].parameters(), weights_before)]
    assert any(changed), "the optimizer step changed no weight"


def test_readme_conv_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 3, "the README has no convolutional example"
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    exec(compile(blocks[2], str(README), "exec"), namespace)
    out = namespace["conv_out"]
    assert out.output.shape == (8, 100, 11)
    assert out.spikes["layer1"].shape == (8, 100, 16, 32, 32)
    assert out.spikes["layer3"].shape == (8, 100, 32, 16, 16)


def test_readme_commands_install_then_run():
    text = README.read_text()
    assert "pip install torch==2.13.0 && pip install -e '.[test]' && lightning-snn fit --config configs/randman.yaml" in text
    assert "pip install torch==2.13.0 && pip install -e '.[test]' && python -m pytest -q" in text
