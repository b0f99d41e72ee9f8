"""Triton LIF kernel against the torch kernel, a step loop written from the equations and hand values.

Without a GPU the kernels run in Triton's interpreter on CPU tensors. Triton reads TRITON_INTERPRET when
@triton.jit decorates a kernel, so the variable is set before anything imports the kernel module.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from lightning_snn.kernels.lif import lif_sequence  # noqa: E402
from lightning_snn.kernels.triton_lif import lif_sequence_triton, triton_available  # noqa: E402
from lightning_snn.surrogate import MultiSpike, SigmoidSpike, SuperSpike  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
THRESHOLD = 1.0
STATE_NAMES = ("spikes", "mem", "syn", "pending")
INPUT_NAMES = ("drive", "mem", "syn", "pending", "decay_mem", "decay_syn")
# Gradient tolerances: a few roundings of the dtype, over sums of a few hundred terms.
TOLERANCES = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-11, atol=1e-12)}

# Each case is (input options, kernel options). Learned decays are per neuron for the membrane and
# broadcast along the last neuron dimension for the current. 3 x 13 neurons in blocks of 16 leave a
# partial last block.
CASES = {
    "float_decays": (dict(), dict()),
    "learned_decays": (dict(learned=True), dict()),
    "diff_reset": (dict(learned=True), dict(diff_reset=True)),
    "clamp_max": (dict(learned=True), dict(clamp_max=THRESHOLD + 0.01)),
    "clamp_diff_reset": (dict(), dict(clamp_max=THRESHOLD + 0.01, diff_reset=True)),
    "one_neuron_dim": (dict(shape=(13,), learned=True), dict(block_size=16)),
    "partial_block": (dict(learned=True), dict(block_size=16)),
}


def make_inputs(shape=(3, 5), batch=3, steps=10, dtype=torch.float64, learned=False, seed=0):
    """Random drive and initial state strong enough to spike often, and decays near exp(-dt / tau)."""
    generator = torch.Generator().manual_seed(seed)

    def normal(*size):
        return torch.randn(size, generator=generator, dtype=dtype).to(DEVICE)

    def uniform(low, high, *size):
        return (low + (high - low) * torch.rand(size, generator=generator, dtype=dtype)).to(DEVICE)

    inputs = dict(
        drive=1.5 * normal(batch, steps, *shape) + 0.8,
        mem=normal(batch, *shape),
        syn=normal(batch, *shape),
        pending=normal(batch, *shape),
        decay_mem=0.8,
        decay_syn=0.6,
    )
    if learned:
        inputs["decay_mem"] = uniform(0.6, 0.9, *shape)
        inputs["decay_syn"] = uniform(0.5, 0.8, shape[-1])
    return inputs


def step_loop(
    drive, mem, syn, pending, decay_mem, decay_syn, *, threshold, surrogate, diff_reset=False, clamp_max=None
):
    """LIF neurons written step by step from the equations, differentiated by autograd."""
    spikes = []
    for t in range(drive.shape[1]):
        spike = surrogate(mem - threshold)
        reset = spike if diff_reset else spike.detach()
        new_mem = mem * decay_mem + syn * (1.0 - decay_mem)
        new_mem = new_mem * (1.0 - reset)
        if clamp_max is not None:
            new_mem = torch.clamp(new_mem, max=clamp_max)
        syn = syn * decay_syn + pending
        pending = drive[:, t]
        mem = new_mem
        spikes.append(spike)
    return torch.stack(spikes, dim=1), mem, syn, pending


def run_kernel(kernel, inputs, **options):
    """Run ``kernel`` on fresh leaf copies of ``inputs`` and return its outputs and input gradients.

    The loss weighs each output element with a fixed random factor, so that every output and step
    feeds a different gradient back.
    """
    leaves = {}
    for name, value in inputs.items():
        leaves[name] = value.detach().clone().requires_grad_() if isinstance(value, torch.Tensor) else value
    outputs = kernel(
        *(leaves[name] for name in INPUT_NAMES),
        threshold=THRESHOLD,
        surrogate=options.pop("surrogate", SuperSpike(beta=10.0)),
        **options,
    )

    generator = torch.Generator().manual_seed(7)
    loss = 0.0
    for output in outputs:
        weights = torch.randn(output.shape, generator=generator, dtype=output.dtype).to(DEVICE)
        loss = loss + (output * weights).sum()
    learned = [name for name in INPUT_NAMES if isinstance(leaves[name], torch.Tensor)]
    gradients = torch.autograd.grad(loss, [leaves[name] for name in learned])
    return tuple(output.detach() for output in outputs), dict(zip(learned, gradients))


def run_triton(inputs, options):
    return run_kernel(lif_sequence_triton, inputs, **options)


def run_torch_kernel(inputs, options):
    options = {key: value for key, value in options.items() if key != "block_size"}
    return run_kernel(lif_sequence, inputs, **options)


def run_step_loop(inputs, options):
    options = {key: value for key, value in options.items() if key != "block_size"}
    return run_kernel(step_loop, inputs, **options)


REFERENCES = {"torch_kernel": run_torch_kernel, "step_loop": run_step_loop}


@pytest.mark.parametrize("reference", REFERENCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES)
def test_states_equal_reference(case, dtype, reference):
    input_options, kernel_options = CASES[case]
    inputs = make_inputs(dtype=dtype, **input_options)
    outputs, _ = run_triton(inputs, dict(kernel_options))
    expected, _ = REFERENCES[reference](inputs, dict(kernel_options))

    assert expected[0].sum() > 0, "the test needs spikes"
    for name, output, expected_output in zip(STATE_NAMES, outputs, expected):
        assert torch.equal(output, expected_output), f"{name} differs from the {reference}"


@pytest.mark.parametrize("reference", REFERENCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES)
def test_gradients_match_reference(case, dtype, reference):
    input_options, kernel_options = CASES[case]
    inputs = make_inputs(dtype=dtype, **input_options)
    _, gradients = run_triton(inputs, dict(kernel_options))
    _, expected = REFERENCES[reference](inputs, dict(kernel_options))

    assert gradients.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(
            gradients[name],
            expected[name],
            **TOLERANCES[dtype],
            msg=lambda text: f"gradient of {name}: {text}",
        )


def test_clamp_changes_gradient():
    # A clipped membrane exceeds the threshold and resets at the next step anyway, so only the
    # gradient shows whether the clamp case clipped anything.
    inputs = make_inputs(learned=True)
    _, plain = run_triton(inputs, dict())
    _, clamped = run_triton(inputs, dict(clamp_max=THRESHOLD + 0.01))
    assert not torch.allclose(plain["drive"], clamped["drive"])


def test_diff_reset_changes_gradient():
    inputs = make_inputs(learned=True)
    _, plain = run_triton(inputs, dict())
    _, differentiable = run_triton(inputs, dict(diff_reset=True))
    assert not torch.allclose(plain["drive"], differentiable["drive"])


def test_sigmoid_surrogate_gradient():
    # Any Heaviside surrogate works, because the backward pass calls its grad() with torch.
    inputs = make_inputs()
    options = dict(surrogate=SigmoidSpike(beta=5.0))
    _, gradients = run_triton(inputs, dict(options))
    _, expected = run_torch_kernel(inputs, dict(options))
    torch.testing.assert_close(gradients["drive"], expected["drive"], **TOLERANCES[torch.float64])


def hand_example():
    """One neuron, decays 1/2, initial state zero and a single drive pulse of 4 at step 0."""
    drive = torch.zeros(1, 5, 1, dtype=torch.float64, device=DEVICE)
    drive[0, 0, 0] = 4.0
    zeros = torch.zeros(1, 1, dtype=torch.float64, device=DEVICE)
    return dict(drive=drive, mem=zeros, syn=zeros, pending=zeros, decay_mem=0.5, decay_syn=0.5)


def test_hand_spike_timing():
    # The pulse reaches I at step 2 (I_2 = 4) and U at step 3 (U_3 = 0.5 * 4 = 2 > 1), so the neuron
    # spikes at step 3 and resets. Then U_5 = 0.5 * I_4 = 0.5 * 1, and I_5 = 4 / 8.
    outputs, _ = run_triton(hand_example(), dict())
    spikes, mem, syn, pending = outputs
    assert spikes.flatten().tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]
    assert mem.item() == 0.5
    assert syn.item() == 0.5
    assert pending.item() == 0.0


def test_hand_drive_gradient():
    # I_5 = X_3 + X_2 / 2 + X_1 / 4 + X_0 / 8: X_t reaches I one step late and then halves each step.
    leaves = hand_example()
    leaves["drive"].requires_grad_()
    result = lif_sequence_triton(
        *(leaves[name] for name in INPUT_NAMES), threshold=THRESHOLD, surrogate=SuperSpike(beta=10.0)
    )
    result.syn.sum().backward()
    assert leaves["drive"].grad.flatten().tolist() == [0.125, 0.25, 0.5, 1.0, 0.0]


def test_hand_threshold_equality():
    # H is strict: U_0 equal to the threshold neither spikes nor resets, so U_2 = U_0 / 4 and
    # dU_2/dU_0 = 1/4.
    drive = torch.zeros(1, 2, 1, dtype=torch.float64, device=DEVICE)
    zeros = torch.zeros(1, 1, dtype=torch.float64, device=DEVICE)
    mem = torch.full((1, 1), THRESHOLD, dtype=torch.float64, device=DEVICE, requires_grad=True)
    result = lif_sequence_triton(
        drive, mem, zeros, zeros, 0.5, 0.5, threshold=THRESHOLD, surrogate=SuperSpike(beta=10.0)
    )
    result.mem.sum().backward()
    assert result.spikes.flatten().tolist() == [0.0, 0.0]
    assert result.mem.item() == 0.25
    assert mem.grad.item() == 0.25


def test_triton_available_interpreter(monkeypatch):
    if DEVICE.type == "cuda":
        pytest.skip("the interpreter check is for CPU runs")
    tensor = torch.zeros(1)
    assert triton_available(tensor)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not triton_available(tensor)


def call_with(**changes):
    inputs = make_inputs(shape=(4,), batch=2, steps=3)
    options = dict(threshold=THRESHOLD, surrogate=SuperSpike(beta=10.0))
    for key, value in changes.items():
        (options if key in ("surrogate", "block_size") else inputs)[key] = value
    return lif_sequence_triton(*(inputs[name] for name in INPUT_NAMES), **options)


def test_error_multi_spike_surrogate():
    with pytest.raises(ValueError, match="MultiSpike.*lif_sequence"):
        call_with(surrogate=MultiSpike())


def test_error_integer_drive():
    drive = torch.ones(2, 3, 4, dtype=torch.int64, device=DEVICE)
    with pytest.raises(ValueError, match=r"torch.int64.*\.float\(\)"):
        call_with(drive=drive)


def test_error_bfloat16_drive():
    drive = torch.ones(2, 3, 4, dtype=torch.bfloat16, device=DEVICE)
    with pytest.raises(ValueError, match="torch.bfloat16.*lif_sequence"):
        call_with(drive=drive)


def test_error_drive_without_neuron_dim():
    drive = torch.ones(2, 3, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match=r"got shape \(2, 3\).*unsqueeze"):
        call_with(drive=drive)


def test_error_state_shape():
    mem = torch.zeros(2, 5, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match=r"mem must have shape .*\(2, 4\).*got \(2, 5\)"):
        call_with(mem=mem)


def test_error_state_dtype():
    syn = torch.zeros(2, 4, dtype=torch.float32, device=DEVICE)
    with pytest.raises(ValueError, match="syn is torch.float32"):
        call_with(syn=syn)


def test_error_decay_shape():
    decay = torch.full((3,), 0.5, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match=r"decay_syn of shape \(3,\) does not broadcast.*\(4,\)"):
        call_with(decay_syn=decay)


def test_error_block_size():
    with pytest.raises(ValueError, match="block_size must be a power of two, got 24"):
        call_with(block_size=24)
