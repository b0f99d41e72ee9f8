"""Fused adaptive LIF sequence kernel against autograd step loops.

Two references: a step loop written here from the model equations, with a closed-form straight-through
spike, and the product's own ``AdaptiveLIF`` / ``LearnableAdaptiveLIF`` ``step`` run in a loop (or
through ``simulate`` on the plain backend). Spikes and final states must be identical, and every
gradient equal to float rounding.
"""

import pytest
import torch
import torch.nn.functional as F

import lightning_snn.kernels.adaptive as adaptive_kernel
from lightning_snn.kernels import LinearRecurrence, use_backend
from lightning_snn.kernels.adaptive import adaptive_lif_sequence
from lightning_snn.nn import AdaptiveLIF, LearnableAdaptiveLIF
from lightning_snn.nn.neurons.adaptive import AdaptiveLIFState
from lightning_snn.nn.simulation import simulate
from lightning_snn.surrogate import MultiSpike, SuperSpike

BETA = 10.0
THRESHOLD = 1.0
DT = 1e-3
STATE_NAMES = ("mem", "syn", "ada", "last_spikes", "pending")
FLOAT_PARAMETERS = (0.9, 0.8, 0.95, 1.0, 0.3)


def reference_spike(x):
    """Heaviside step whose gradient is the SuperSpike derivative 1 / (beta |x| + 1)^2.

    ``x / (1 + beta |x|)`` has exactly that derivative. Subtracting its detached value adds 0 to the
    step, so the forward value stays the exact 0/1 step.
    """
    smooth = x / (1.0 + BETA * x.abs())
    return (x > 0).to(x.dtype) + (smooth - smooth.detach())


def reference_loop(drive, state, parameters, diff_reset=False, clamp_max=None, project=None, mask=None):
    """Adaptive LIF written from the model equations, one autograd step at a time."""
    mem, syn, ada, last_spikes, pending = state
    decay_mem, decay_syn, decay_ada, ada_input_scale, strength = parameters
    spikes = []
    for t in range(drive.shape[1]):
        spike = reference_spike(mem - THRESHOLD)
        keep = 1.0 - (spike if diff_reset else spike.detach())

        new_syn = decay_syn * syn + pending
        new_ada = decay_ada * ada + ada_input_scale * last_spikes
        current = syn - strength * ada
        new_mem = (decay_mem * mem + (1.0 - decay_mem) * current) * keep
        if clamp_max is not None:
            new_mem = new_mem.clamp(max=clamp_max)

        transmitted = spike if mask is None else spike * mask[:, t]
        pending = drive[:, t] if project is None else drive[:, t] + project(transmitted)
        mem, syn, ada, last_spikes = new_mem, new_syn, new_ada, spike
        spikes.append(spike)
    return torch.stack(spikes, dim=1), (mem, syn, ada, last_spikes, pending)


def product_loop(neuron, drive, state, pending, project=None, mask=None):
    """The product's ``step`` in a loop, with the one-step delay of the sequence driver."""
    parameters = neuron.step_parameters()
    spikes = []
    for t in range(drive.shape[1]):
        spike, state = neuron.step(state, (pending,), parameters)
        transmitted = spike if mask is None else spike * mask[:, t]
        pending = drive[:, t] if project is None else drive[:, t] + project(transmitted)
        spikes.append(spike)
    final = (state.mem, state.syn, state.ada, state.last_spikes, pending)
    return torch.stack(spikes, dim=1), final


def make_drive(batch, steps, shape, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand((batch, steps, *shape), generator=generator) * 0.8).to(dtype)


def make_state(batch, shape, zero=False, seed=1, dtype=torch.float64):
    """Initial (mem, syn, ada, last_spikes, pending), nonzero unless ``zero``, like a carried-in state."""
    size = (batch, *shape)
    if zero:
        return tuple(torch.zeros(size, dtype=dtype) for _ in STATE_NAMES)
    generator = torch.Generator().manual_seed(seed)
    mem = torch.rand(size, generator=generator) * 1.4
    syn = torch.rand(size, generator=generator) * 2.0
    ada = torch.rand(size, generator=generator)
    last_spikes = (torch.rand(size, generator=generator) < 0.5).double()
    pending = torch.rand(size, generator=generator)
    return tuple(value.to(dtype) for value in (mem, syn, ada, last_spikes, pending))


def neuron_parameters(shape, scalar=False, seed=2, dtype=torch.float64):
    """Learned (requires_grad) decays, input scale and strength, per neuron or one each."""
    generator = torch.Generator().manual_seed(seed)
    size = () if scalar else shape
    centres = (0.9, 0.8, 0.95, 0.5, 0.4)
    spread = (0.05, 0.1, 0.03, 0.3, 0.3)
    return tuple(
        (centre + width * (torch.rand(size, generator=generator) - 0.5)).to(dtype).requires_grad_()
        for centre, width in zip(centres, spread)
    )


def output_weights(spikes, final, seed=3):
    """Fixed random weights for every output, so that every output's gradient differs."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [spikes.shape] + [value.shape for value in final]
    return [torch.randn(shape, generator=generator, dtype=spikes.dtype) for shape in shapes]


def weighted_loss(spikes, final, weights):
    loss = (spikes * weights[0]).sum()
    for value, weight in zip(final, weights[1:]):
        loss = loss + (value * weight).sum()
    return loss


def differentiable(values):
    return [value for value in values if isinstance(value, torch.Tensor) and value.requires_grad]


def run_kernel(drive, state, parameters, **options):
    result = adaptive_lif_sequence(
        drive, *state, *parameters, threshold=THRESHOLD, surrogate=SuperSpike(BETA), **options
    )
    return result.spikes, tuple(result[1:])


def assert_runs_agree(kernel_run, reference_run, inputs, rtol=1e-10, atol=1e-12):
    """Compare spikes, final states and the gradients of ``inputs`` of two runs on the same loss."""
    kernel_spikes, kernel_final = kernel_run
    reference_spikes, reference_final = reference_run
    assert reference_spikes.sum() > 0, "the test needs spikes"
    assert torch.equal(kernel_spikes, reference_spikes), "spikes differ"
    for name, kernel_value, reference_value in zip(STATE_NAMES, kernel_final, reference_final):
        assert torch.equal(kernel_value, reference_value), f"final {name} differs"

    weights = output_weights(reference_spikes, reference_final)
    kernel_grads = torch.autograd.grad(weighted_loss(kernel_spikes, kernel_final, weights), inputs)
    reference_grads = torch.autograd.grad(weighted_loss(reference_spikes, reference_final, weights), inputs)
    for index, (kernel_grad, reference_grad) in enumerate(zip(kernel_grads, reference_grads)):
        assert reference_grad.abs().sum() > 0, f"gradient {index} is zero, so the test cannot fail"
        torch.testing.assert_close(kernel_grad, reference_grad, rtol=rtol, atol=atol, msg=f"gradient {index}")


def compare_with_reference(
    drive, state, parameters, diff_reset=False, clamp_max=None, recurrence=None, weight=None, mask=None
):
    """Run the kernel and the reference loop on leaf copies of the inputs and compare them."""
    drive = drive.clone().requires_grad_()
    state = tuple(value.clone().requires_grad_() for value in state)
    project = None
    if recurrence is not None:
        weight = weight.clone().requires_grad_()

        def project(transmitted):
            return recurrence.project(weight, transmitted)

    kernel_run = run_kernel(
        drive,
        state,
        parameters,
        diff_reset=diff_reset,
        clamp_max=clamp_max,
        recurrence=recurrence,
        recurrent_weight=weight,
        mask=mask,
    )
    reference_run = reference_loop(drive, state, parameters, diff_reset, clamp_max, project, mask)
    inputs = differentiable([drive, *state, *parameters, weight])
    assert_runs_agree(kernel_run, reference_run, inputs)


def dense_weight(units, scale=1.5, seed=4):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(units, units, generator=generator, dtype=torch.float64) * scale / units**0.5


def test_feedforward_float_parameters_match_reference():
    compare_with_reference(make_drive(3, 30, (6,)), make_state(3, (6,), zero=True), FLOAT_PARAMETERS)


def test_carried_state_matches_reference():
    compare_with_reference(make_drive(3, 30, (6,)), make_state(3, (6,)), FLOAT_PARAMETERS)


def test_input_scale_below_one_matches_reference():
    parameters = (0.9, 0.8, 0.95, 0.05, 4.0)
    compare_with_reference(make_drive(3, 30, (6,)), make_state(3, (6,)), parameters)


def test_learned_parameters_match_reference():
    compare_with_reference(make_drive(3, 30, (6,)), make_state(3, (6,)), neuron_parameters((6,)))


def test_scalar_learned_parameters_match_reference():
    parameters = neuron_parameters((6,), scalar=True)
    compare_with_reference(make_drive(3, 30, (6,)), make_state(3, (6,)), parameters)


def test_single_step_matches_reference():
    compare_with_reference(make_drive(3, 1, (6,)), make_state(3, (6,)), neuron_parameters((6,)))


def test_dense_recurrence_matches_reference():
    compare_with_reference(
        make_drive(3, 30, (6,)),
        make_state(3, (6,)),
        neuron_parameters((6,)),
        recurrence=LinearRecurrence("dense"),
        weight=dense_weight(6),
    )


def test_conv1d_recurrence_matches_reference():
    generator = torch.Generator().manual_seed(5)
    weight = torch.randn(2, 2, 3, generator=generator, dtype=torch.float64) * 0.8
    compare_with_reference(
        make_drive(2, 25, (2, 5)),
        make_state(2, (2, 5)),
        neuron_parameters((2, 5)),
        recurrence=LinearRecurrence("conv1d", padding=(1,)),
        weight=weight,
    )


def test_dropout_mask_matches_reference():
    generator = torch.Generator().manual_seed(6)
    mask = (torch.rand(3, 30, 6, generator=generator) < 0.7).double() / 0.7
    compare_with_reference(
        make_drive(3, 30, (6,)),
        make_state(3, (6,)),
        neuron_parameters((6,)),
        recurrence=LinearRecurrence("dense"),
        weight=dense_weight(6),
        mask=mask,
    )


@pytest.mark.parametrize(
    "options",
    [
        {"diff_reset": True},
        {"clamp_max": THRESHOLD + 0.01},
        {"diff_reset": True, "clamp_max": THRESHOLD + 0.01},
    ],
)
def test_reset_options_match_reference(options):
    compare_with_reference(
        make_drive(3, 30, (6,)),
        make_state(3, (6,)),
        neuron_parameters((6,)),
        recurrence=LinearRecurrence("dense"),
        weight=dense_weight(6),
        **options,
    )


def test_backward_chunks_match_reference(monkeypatch):
    # Blocks of 2 steps (12 elements each), so the backward pass crosses many block boundaries and
    # ends on a partial block.
    monkeypatch.setattr(adaptive_kernel, "_CHUNK_ELEMENTS", 24)
    compare_with_reference(
        make_drive(2, 31, (6,)),
        make_state(2, (6,)),
        neuron_parameters((6,)),
        diff_reset=True,
        clamp_max=THRESHOLD + 0.01,
        recurrence=LinearRecurrence("dense"),
        weight=dense_weight(6),
    )


def test_clamp_engages():
    # Without this, the clamp cases above could pass with a clamp that never acts.
    drive = make_drive(3, 30, (6,)).requires_grad_()
    state = make_state(3, (6,))
    clamped_spikes, clamped_final = reference_loop(drive, state, FLOAT_PARAMETERS, clamp_max=THRESHOLD + 0.01)
    free_spikes, free_final = reference_loop(drive, state, FLOAT_PARAMETERS)
    weights = output_weights(free_spikes, free_final)
    (clamped_grad,) = torch.autograd.grad(weighted_loss(clamped_spikes, clamped_final, weights), drive)
    (free_grad,) = torch.autograd.grad(weighted_loss(free_spikes, free_final, weights), drive)
    assert not torch.allclose(clamped_grad, free_grad)


def test_float32_spikes_identical():
    drive = make_drive(3, 30, (6,), dtype=torch.float32).requires_grad_()
    state = tuple(value.requires_grad_() for value in make_state(3, (6,), dtype=torch.float32))
    parameters = neuron_parameters((6,), dtype=torch.float32)
    inputs = [drive, *state, *parameters]
    kernel_run = run_kernel(drive, state, parameters)
    reference_run = reference_loop(drive, state, parameters)
    assert_runs_agree(kernel_run, reference_run, inputs, rtol=1e-4, atol=1e-5)


def test_adaptive_lif_matches_plain_simulation():
    neuron = AdaptiveLIF(10e-3, 5e-3, 50e-3, adapt_a=0.5, surrogate=SuperSpike(BETA))
    neuron.build(6, DT)
    neuron.double()
    drive = make_drive(3, 40, (6,)).requires_grad_()
    with use_backend("plain"):
        plain = simulate([neuron], [[drive]]).outputs[0]
    zeros = make_state(3, (6,), zero=True)
    spikes, _ = run_kernel(drive, zeros, neuron.step_parameters())
    assert plain.sum() > 0, "the test needs spikes"
    assert torch.equal(spikes, plain)

    weights = output_weights(plain, ())[0]
    (plain_grad,) = torch.autograd.grad((plain * weights).sum(), drive)
    (kernel_grad,) = torch.autograd.grad((spikes * weights).sum(), drive)
    torch.testing.assert_close(kernel_grad, plain_grad, rtol=1e-10, atol=1e-12)


def test_dropout_mask_matches_plain_simulation():
    neuron = AdaptiveLIF(10e-3, 5e-3, 50e-3, adapt_a=0.5, dropout=0.3, surrogate=SuperSpike(BETA))
    neuron.build(6, DT)
    neuron.double().train()
    weight = dense_weight(6, scale=2.0).requires_grad_()
    drive = make_drive(3, 40, (6,))

    torch.manual_seed(11)
    with use_backend("plain"):
        plain = simulate([neuron], [[drive]], recurrent=lambda sent: [[F.linear(sent[0], weight)]])
    torch.manual_seed(11)
    mask = neuron.transmission_mask(drive.shape, drive.device, drive.dtype)
    zeros = make_state(3, (6,), zero=True)
    spikes, _ = run_kernel(
        drive,
        zeros,
        neuron.step_parameters(),
        recurrence=LinearRecurrence("dense"),
        recurrent_weight=weight,
        mask=mask,
    )
    assert torch.equal(spikes, plain.outputs[0])

    weights = output_weights(spikes, ())[0]
    (plain_grad,) = torch.autograd.grad((plain.outputs[0] * weights).sum(), weight)
    (kernel_grad,) = torch.autograd.grad((spikes * weights).sum(), weight)
    torch.testing.assert_close(kernel_grad, plain_grad, rtol=1e-10, atol=1e-12)


def learnable_neuron(**options):
    torch.manual_seed(12)
    neuron = LearnableAdaptiveLIF(
        10e-3, 5e-3, 100e-3, learn_timescales="neuron", sigma_tau=0.3, surrogate=SuperSpike(BETA), **options
    )
    neuron.build(6, DT)
    return neuron.double()


def compare_with_product(neuron, state, recurrence=None, weight=None, mask=None):
    """Run the kernel on ``neuron.step_parameters()`` and the neuron's ``step`` loop, and compare them."""
    drive = make_drive(3, 30, (6,)).requires_grad_()
    state = tuple(value.clone().requires_grad_() for value in state)
    project = None
    if weight is not None:
        weight = weight.clone().requires_grad_()

        def project(transmitted):
            return recurrence.project(weight, transmitted)

    clamp_max = neuron.threshold + 0.01 if neuron.clamp_mem else None
    result = adaptive_lif_sequence(
        drive,
        *state,
        *neuron.step_parameters(),
        threshold=neuron.threshold,
        surrogate=neuron.surrogate,
        diff_reset=neuron.diff_reset,
        clamp_max=clamp_max,
        recurrence=recurrence,
        recurrent_weight=weight,
        mask=mask,
    )
    kernel_run = (result.spikes, tuple(result[1:]))
    product_run = product_loop(neuron, drive, AdaptiveLIFState(*state[:4]), state[4], project, mask)
    inputs = differentiable([drive, *state, *neuron.parameters(), weight])
    assert len(inputs) == 6 + 4 + (weight is not None)
    assert_runs_agree(kernel_run, product_run, inputs)


def test_learnable_adaptive_lif_matches_step_loop():
    compare_with_product(learnable_neuron(), make_state(3, (6,)))


@pytest.mark.parametrize(
    "options", [{"diff_reset": True}, {"clamp_mem": True}, {"diff_reset": True, "clamp_mem": True}]
)
def test_learnable_options_match_step_loop(options):
    generator = torch.Generator().manual_seed(13)
    mask = (torch.rand(3, 30, 6, generator=generator) < 0.8).double() / 0.8
    compare_with_product(
        learnable_neuron(**options),
        make_state(3, (6,)),
        recurrence=LinearRecurrence("dense"),
        weight=dense_weight(6),
        mask=mask,
    )


def test_stateful_chunks_match_step_loop():
    # Two calls in a row, the second starting from the detached final state of the first, as a
    # stateful population carries its state across batches.
    neuron = learnable_neuron()
    drive = make_drive(3, 20, (6,), seed=14)
    start = make_state(3, (6,), zero=True)
    with torch.no_grad():
        _, kernel_final = run_kernel(drive, start, neuron.step_parameters())
        _, product_final = product_loop(neuron, drive, AdaptiveLIFState(*start[:4]), start[4])
    for name, kernel_value, product_value in zip(STATE_NAMES, kernel_final, product_final):
        assert torch.equal(kernel_value, product_value), f"carried {name} differs"
    assert kernel_final[3].sum() > 0, "the carried state needs last spikes"
    compare_with_product(neuron, kernel_final)


def bad_call(**changes):
    arguments = {
        "drive": torch.zeros(2, 4, 3),
        "mem": torch.zeros(2, 3),
        "syn": torch.zeros(2, 3),
        "ada": torch.zeros(2, 3),
        "last_spikes": torch.zeros(2, 3),
        "pending": torch.zeros(2, 3),
        "decay_mem": 0.9,
        "decay_syn": 0.8,
        "decay_ada": 0.95,
        "ada_input_scale": 1.0,
        "strength": 0.3,
        "threshold": 1.0,
        "surrogate": SuperSpike(),
    }
    arguments.update(changes)
    return adaptive_lif_sequence(**arguments)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"drive": torch.zeros(2, 4)}, "drive must be"),
        ({"drive": torch.zeros(2, 0, 3)}, "drive must be"),
        ({"drive": torch.zeros(2, 4, 3, dtype=torch.int64)}, "floating-point"),
        ({"ada": torch.zeros(2, 4)}, "ada has shape"),
        ({"last_spikes": torch.zeros(3, 3)}, "last_spikes has shape"),
        ({"syn": torch.zeros(2, 3, dtype=torch.float64)}, "syn is torch.float64"),
        ({"mask": torch.ones(2, 5, 3)}, "mask has shape"),
        ({"strength": torch.ones(4)}, "strength has shape"),
        ({"decay_ada": torch.ones(2, 3)}, "decay_ada has shape"),
        ({"recurrence": LinearRecurrence("dense")}, "together"),
        ({"recurrent_weight": torch.zeros(3, 3)}, "together"),
        ({"surrogate": MultiSpike()}, "MultiSpike"),
    ],
)
def test_bad_input_raises(changes, message):
    with pytest.raises(ValueError, match=message):
        bad_call(**changes)


def test_non_numeric_parameter_raises():
    with pytest.raises(TypeError, match="decay_mem must be a float or a tensor"):
        bad_call(decay_mem="0.9")
