"""Neuron dynamics against traces computed by hand, plus state carry, dropout and learnable timescales."""

import math

import pytest
import torch

from lightning_snn.nn import (
    LIF,
    AdaptiveLIF,
    AmpaNmdaGabaLIF,
    DenseLayer,
    ExcInhAdaptiveLIF,
    ExcInhLIF,
    LeakyReadout,
    LearnableAdaptiveLIF,
    ReadoutLayer,
    SpikingNetwork,
    simulate,
)

# With dt = tau * ln 2 every decay factor is exactly 1/2, which keeps hand calculations short.
HALF_LIFE_DT = 1e-3
TAU_HALF = HALF_LIFE_DT / math.log(2.0)


def run_single(neuron, drives, shape=(1,)):
    """Simulate one built population on drive sequences given per receptor as (time, *shape) lists."""
    neuron.build(shape, HALF_LIFE_DT)
    sequences = [
        None if drive is None else torch.tensor(drive, dtype=torch.float64).reshape(1, len(drive), *shape)
        for drive in drives
    ]
    result = simulate([neuron.double()], [sequences])
    return result.outputs[0][0]


def test_lif_trace_by_hand():
    neuron = LIF(tau_mem=TAU_HALF, tau_syn=TAU_HALF, record=("mem", "syn"))
    # Drive 4 produced at step 0 reaches the current at step 1 (I_2 = 4).
    spikes = run_single(neuron, [[4.0] + [0.0] * 9])

    # U_{t+1} after each step t: 0, 0, 2 (= 0.5 * 4), reset to 0 at the spike step 3, then the
    # current keeps charging: 0.5 * 0 + 0.5 * 1, 0.5 * 0.5 + 0.5 * 0.5, ...
    expected_mem = [0.0, 0.0, 2.0, 0.0, 0.5, 0.5, 0.375, 0.25, 0.15625, 0.09375]
    expected_syn = [0.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625]
    expected_spikes = [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    assert spikes.flatten().tolist() == expected_spikes
    assert neuron.recorded["mem"].flatten().tolist() == expected_mem
    assert neuron.recorded["syn"].flatten().tolist() == expected_syn


def test_lif_three_neurons_by_hand():
    neuron = LIF(tau_mem=TAU_HALF, tau_syn=TAU_HALF, threshold=0.5, record=("mem",))
    drive = [[1.0, 0.0, 3.0], [1.0, 0.0, 0.0]] + [[0.0, 0.0, 0.0]] * 6
    spikes = run_single(neuron, [drive], shape=(3,))

    # Neuron 0: I = 0, 1, 1.5, 0.75 ...; U = 0, 0, 0.5, 1.0 -> spike at step 4 (U_4 = 1 > 0.5).
    # Neuron 1: no drive, stays at rest. Neuron 2: I_2 = 3, U_3 = 1.5 > 0.5 -> spike at step 3.
    assert spikes[:, 0].tolist() == [0, 0, 0, 0, 1, 0, 0, 0]
    assert spikes[:, 1].tolist() == [0] * 8
    assert spikes[:, 2].tolist() == [0, 0, 0, 1, 0, 0, 0, 0]
    mem = neuron.recorded["mem"][0]
    assert mem[:5, 0].tolist() == [0.0, 0.0, 0.5, 1.0, 0.0]
    assert mem[:4, 2].tolist() == [0.0, 0.0, 1.5, 0.0]


def test_readout_trace_by_hand():
    neuron = LeakyReadout(tau_mem=TAU_HALF, tau_syn=TAU_HALF, initial_state=-1.0)
    output = run_single(neuron, [[2.0] + [0.0] * 5]).flatten().tolist()
    # Y_1 = -0.5, Y_2 = -0.25, Y_3 = -0.125 + 0.5 * 2, Y_4 = 0.4375 + 0.5 * 1, ...
    assert output == [-0.5, -0.25, 0.875, 0.9375, 0.71875, 0.484375]


def test_adaptive_lif_trace_by_hand():
    neuron = AdaptiveLIF(tau_mem=TAU_HALF, tau_syn=TAU_HALF, tau_ada=TAU_HALF, adapt_a=1.0, threshold=0.5, record=("mem", "ada"))
    spikes = run_single(neuron, [[2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]).flatten().tolist()

    # I_t: 0, 0, 2, 3, 1.5, 0.75, 0.375; U: 1 at step 3 -> spike, reset; 0.75 at step 5 -> spike.
    # The spike of step 3 charges the trace at step 4 (A_5 = 1), the one of step 5 at step 6.
    assert spikes == [0, 0, 0, 1, 0, 1, 0, 0]
    mem = neuron.recorded["mem"].flatten().tolist()
    ada = neuron.recorded["ada"].flatten().tolist()
    assert mem[:6] == [0.0, 0.0, 1.0, 0.0, 0.75, 0.0]
    assert ada[:7] == [0.0, 0.0, 0.0, 0.0, 1.0, 0.5, 1.25]
    # U_7 = 0.5 * U_6 + 0.5 * (I_6 - A_6) with U_6 = 0 (reset), I_6 = 0.375 and A_6 = 0.5.
    assert mem[6] == 0.5 * (0.375 - 0.5)


def scalar_exc_inh(drive_exc, drive_inh, threshold, adapt_a=None):
    """E/I LIF (optionally adaptive) with all decays 1/2, written out step by step."""
    mem = exc = inh = ada = last = 0.0
    spikes, mems = [], []
    pending_exc = pending_inh = 0.0
    for t in range(len(drive_exc)):
        spike = 1.0 if mem > threshold else 0.0
        new_exc = 0.5 * exc + pending_exc
        new_inh = 0.5 * inh + pending_inh
        net = exc - inh
        if adapt_a is not None:
            new_ada = 0.5 * ada + last
            net -= adapt_a * ada
            ada, last = new_ada, spike
        mem = (0.5 * mem + 0.5 * net) * (1.0 - spike)
        exc, inh = new_exc, new_inh
        pending_exc, pending_inh = drive_exc[t], drive_inh[t]
        spikes.append(spike)
        mems.append(mem)
    return spikes, mems


@pytest.mark.parametrize("adaptive", [False, True])
def test_exc_inh_trace_by_hand(adaptive):
    drive_exc = [3.0, 1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    drive_inh = [0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    if adaptive:
        neuron = ExcInhAdaptiveLIF(TAU_HALF, TAU_HALF, TAU_HALF, tau_ada=TAU_HALF, adapt_a=0.5, threshold=0.6, record=("mem",))
        expected_spikes, expected_mem = scalar_exc_inh(drive_exc, drive_inh, 0.6, adapt_a=0.5)
    else:
        neuron = ExcInhLIF(TAU_HALF, TAU_HALF, TAU_HALF, threshold=0.6, record=("mem",))
        expected_spikes, expected_mem = scalar_exc_inh(drive_exc, drive_inh, 0.6)
    spikes = run_single(neuron, [drive_exc, drive_inh]).flatten().tolist()
    assert sum(expected_spikes) >= 1
    assert spikes == expected_spikes
    assert neuron.recorded["mem"].flatten().tolist() == pytest.approx(expected_mem, abs=1e-15)


def test_ampa_nmda_gaba_trace_by_hand():
    neuron = AmpaNmdaGabaLIF(TAU_HALF, TAU_HALF, TAU_HALF, TAU_HALF, threshold=10.0, record=("mem", "nmda"))
    run_single(neuron, [[4.0] + [0.0] * 5, [0.0, 2.0, 0.0, 0.0, 0.0, 0.0]])
    # AMPA_t: 0, 0, 4, 2, 1, 0.5; GABA_t: 0, 0, 0, 2, 1, 0.5; NMDA_{t+1} = 0.5 NMDA_t + 0.5 AMPA_t.
    # NMDA after each step: 0, 0, 2, 2, 1.5, 1.0
    assert neuron.recorded["nmda"].flatten().tolist() == [0.0, 0.0, 2.0, 2.0, 1.5, 1.0]
    # net_t = (AMPA_t + NMDA_t) / 2 - GABA_t, with NMDA_t = 0, 0, 0, 2, 2, 1.5; U_{t+1} = 0.5 U_t + 0.5 net_t
    net = [0.0, 0.0, 2.0, (2 + 2) / 2 - 2, (1 + 2) / 2 - 1, (0.5 + 1.5) / 2 - 0.5]
    mem, expected = 0.0, []
    for value in net:
        mem = 0.5 * mem + 0.5 * value
        expected.append(mem)
    assert neuron.recorded["mem"].flatten().tolist() == pytest.approx(expected, abs=1e-15)


def test_learnable_adaptation_constraint_clips_negative_strength():
    neuron = LearnableAdaptiveLIF()
    neuron.build(5, 1e-3)
    with torch.no_grad():
        neuron.adapt_strength.copy_(torch.tensor([-1.0, 0.5, -0.1, 2.0, 0.0]))
    neuron.apply_constraints()
    assert neuron.adapt_strength.tolist() == [0.0, 0.5, 0.0, 2.0, 0.0]
    decay = neuron.step_parameters().ada
    assert decay.shape == (5,)
    assert bool(((decay > 0) & (decay < math.exp(-1e-3 / 1.0))).all())


def three_layer_network(weight=5.0, **neuron_kwargs):
    torch.manual_seed(0)
    network = SpikingNetwork(
        [DenseLayer(16, LIF(20e-3, 10e-3, **neuron_kwargs)) for _ in range(3)],
        ReadoutLayer(4, LeakyReadout(0.2, 10e-3, **{k: v for k, v in neuron_kwargs.items() if k == "stateful"})),
        input_shape=8,
        dt=1e-3,
    )
    with torch.no_grad():
        for connection in network.connections():
            connection.weight.fill_(weight)
    return network


@pytest.mark.parametrize("input_step", [0, 5])
def test_latency_three_layers_and_readout(input_step):
    network = three_layer_network()
    x = torch.zeros(1, 30, 8)
    silent = network(x)
    x[0, input_step] = 1.0
    driven = network(x)
    first = {}
    for name in ("layer1", "layer2", "layer3"):
        first[name] = int(driven.spikes[name][0].sum(-1).nonzero()[0])
    changed = (driven.output - silent.output).abs().sum(-1)[0].nonzero()
    assert first == {"layer1": input_step + 3, "layer2": input_step + 6, "layer3": input_step + 9}
    assert int(changed[0]) == input_step + 11


def test_stateful_carry_equals_one_long_run():
    x = (torch.rand(2, 40, 8, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    whole = three_layer_network()(x)
    network = three_layer_network(stateful=True)
    first = network(x[:, :25])
    second = network(x[:, 25:])
    for name in ("layer1", "layer2", "layer3"):
        torch.testing.assert_close(torch.cat([first.spikes[name], second.spikes[name]], 1), whole.spikes[name])
    torch.testing.assert_close(torch.cat([first.output, second.output], 1), whole.output)


def test_stateless_network_starts_fresh_each_call():
    x = (torch.rand(2, 40, 8, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    network = three_layer_network()
    network(x[:, :25])
    fresh = three_layer_network()(x[:, 25:])
    again = network(x[:, 25:])
    torch.testing.assert_close(again.output, fresh.output)


def test_reset_and_batch_change_drop_carried_state():
    x = (torch.rand(2, 20, 8, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    network = three_layer_network(stateful=True)
    fresh = three_layer_network()(x)
    network(x)
    network.reset_state()
    torch.testing.assert_close(network(x).output, fresh.output)
    network(x)
    single = network(x[:1])
    torch.testing.assert_close(single.output, three_layer_network()(x[:1]).output)


def test_carried_state_is_detached():
    network = three_layer_network(stateful=True)
    x = (torch.rand(2, 20, 8) < 0.3).float()
    network(x)
    layer = network.layers[0]
    state, pending = layer.neuron._carried_state
    assert not state.mem.requires_grad
    assert not pending[0].requires_grad


def test_dropout_applies_only_to_transmitted_spikes():
    torch.manual_seed(3)
    x = (torch.rand(4, 50, 8) < 0.3).float()
    plain = three_layer_network(weight=0.35)
    dropped = three_layer_network(weight=0.35, dropout=0.5)
    dropped.train()
    torch.manual_seed(4)
    out_plain, out_dropped = plain(x), dropped(x)
    assert out_plain.spikes["layer2"].sum() > 0

    # The first layer's own spikes do not depend on its dropout; what it sends on does.
    torch.testing.assert_close(out_dropped.spikes["layer1"], out_plain.spikes["layer1"])
    assert not torch.equal(out_dropped.spikes["layer2"], out_plain.spikes["layer2"])
    transmitted = dropped.layers[0](([x])).transmitted
    assert set(transmitted.unique().tolist()) <= {0.0, 2.0}

    dropped.eval()
    torch.testing.assert_close(dropped(x).output, plain(x).output)


def test_learned_timescales_start_at_nominal_values():
    for mode, shape in (("layer", ()), ("neuron", (6,))):
        neuron = LIF(20e-3, 10e-3, learn_timescales=mode)
        neuron.build(6, 1e-3)
        assert neuron.timescale_params["mem"].shape == shape
        params = neuron.step_parameters()
        torch.testing.assert_close(params.mem.expand(6), torch.full((6,), math.exp(-1e-3 / 20e-3)))
        torch.testing.assert_close(params.syn.expand(6), torch.full((6,), math.exp(-1e-3 / 10e-3)))


def test_learned_timescales_receive_gradients():
    neuron = LIF(20e-3, 10e-3, learn_timescales="neuron", record=("mem",))
    layer = DenseLayer(6, neuron, input_shape=4, dt=1e-3)
    layer([torch.rand(2, 15, 4) * 3])
    neuron.recorded["mem"].sum().backward()
    for name in ("mem", "syn"):
        grad = neuron.timescale_params[name].grad
        assert grad is not None
        assert grad.abs().sum() > 0


def test_log_normal_heterogeneity():
    torch.manual_seed(0)
    neuron = ExcInhLIF(20e-3, 10e-3, 20e-3, sigma_tau=0.3)
    neuron.build(4000, 1e-3)
    log_scale = torch.log(neuron.tau("mem") / 20e-3)
    assert abs(float(log_scale.mean())) < 0.02
    assert abs(float(log_scale.std()) - 0.3) < 0.02
    assert neuron.step_parameters().exc.shape == (4000,)


def test_clamp_and_diff_reset():
    clamped = LIF(TAU_HALF, TAU_HALF, clamp_mem=True, record=("mem",))
    run_single(clamped, [[10.0] + [0.0] * 5])
    assert float(clamped.recorded["mem"].max()) == pytest.approx(1.01)

    grads = {}
    for diff_reset in (False, True):
        torch.manual_seed(0)
        neuron = LIF(20e-3, 10e-3, diff_reset=diff_reset, record=("mem",))
        layer = DenseLayer(5, neuron, input_shape=3, dt=1e-3)
        with torch.no_grad():
            layer.connection.weight.fill_(3.0)
        layer([torch.ones(1, 30, 3)])
        neuron.recorded["mem"].sum().backward()
        grads[diff_reset] = layer.connection.weight.grad.clone()
    assert not torch.equal(grads[False], grads[True])


def test_record_rejects_unknown_state():
    with pytest.raises(ValueError, match="Cannot record"):
        LIF(record=("voltage",)).build(3, 1e-3)


def test_unbuilt_neuron_error_says_how_to_fix():
    with pytest.raises(RuntimeError, match="build"):
        LIF().step_parameters()


def test_record_given_as_string_is_rejected():
    with pytest.raises(TypeError, match=r"\('mem',\)"):
        LIF(record="mem")


def test_nonpositive_threshold_is_rejected():
    with pytest.raises(ValueError, match="threshold must be positive"):
        LIF(threshold=-1.0)


def test_time_units_in_milliseconds_warn():
    with pytest.warns(UserWarning, match="milliseconds"):
        LIF(tau_mem=20e-3, tau_syn=10e-3).build(3, dt=1.0)
    with pytest.warns(UserWarning, match="milliseconds"):
        LIF(tau_mem=20.0, tau_syn=10.0).build(3, dt=1e-3)


def test_coarse_time_step_does_not_warn(recwarn):
    LIF(tau_mem=20e-3, tau_syn=5e-3).build(3, dt=10e-3)
    assert not [w for w in recwarn if "milliseconds" in str(w.message)]


def test_learnable_adaptive_lif_trace_by_hand():
    # tau_ada * sigmoid(0) = TAU_HALF gives an adaptation decay of 1/2 and spike input scale 1 - 1/2.
    neuron = LearnableAdaptiveLIF(TAU_HALF, TAU_HALF, tau_ada=2 * TAU_HALF, threshold=0.5, record=("mem", "ada"))
    neuron.build((2,), HALF_LIFE_DT)
    with torch.no_grad():
        neuron.ada_timescale_param.zero_()
        neuron.adapt_strength.copy_(torch.tensor([1.0, 0.0]))
    drive = [[2.0, 2.0], [2.0, 2.0]] + [[0.0, 0.0]] * 6
    spikes = run_single(neuron, [drive], shape=(2,))

    # Both neurons: I_t = 0, 0, 2, 3, 1.5, 0.75, 0.375, ...; U_3 = 1 -> spike at 3 and reset.
    # Neuron 0 (b = 1): A_5 = 0.5 * s_3 = 0.5, A_6 = 0.25 + 0.5 * s_4 = 0.25, so
    # U_5 = 0.5 * (I_4 - A_4) = 0.75 -> spike at 5; U_7 = 0.5 * (I_6 - A_6) = 0.5 * (0.375 - 0.25).
    # Neuron 1 (b = 0) follows the plain LIF: the same spikes, U_7 = 0.5 * 0.375.
    assert spikes[:, 0].tolist() == [0, 0, 0, 1, 0, 1, 0, 0]
    assert spikes[:, 1].tolist() == [0, 0, 0, 1, 0, 1, 0, 0]
    ada = neuron.recorded["ada"][0]
    mem = neuron.recorded["mem"][0]
    assert ada[:7, 0].tolist() == [0.0, 0.0, 0.0, 0.0, 0.5, 0.25, 0.625]
    assert mem[6, 0].item() == 0.5 * (0.375 - 0.25)
    assert mem[6, 1].item() == 0.5 * 0.375
