import pytest
import torch

from lightning_snn.regularizers import (
    ActivityL1,
    ActivityL2,
    ActivityRegularizer,
    LowerBoundL1,
    LowerBoundL2,
    UpperBoundL1,
    UpperBoundL2,
    WeightL1,
    WeightL2,
)


def dense_spikes() -> torch.Tensor:
    """Spikes (batch=2, time=3, neurons=2) whose counts are [[2, 1], [0, 3]]."""
    spikes = torch.zeros(2, 3, 2)
    spikes[0, 0, 0] = 1
    spikes[0, 2, 0] = 1
    spikes[0, 1, 1] = 1
    spikes[1, :, 1] = 1
    return spikes


# With threshold 1 the deviations are [[1, 0], [-1, 2]]. With threshold 2 they are [[0, -1], [-2, 1]].
@pytest.mark.parametrize(
    ("regularizer", "expected"),
    [
        (ActivityL2(strength=2.0, threshold=1.0), 2.0 * (1 + 0 + 1 + 4) / 4),
        (ActivityL1(strength=1.0, threshold=1.0), (1 + 0 + 1 + 2) / 4),
        (UpperBoundL1(strength=1.0, threshold=1.0), (1 + 0 + 0 + 2) / 4),
        (UpperBoundL2(strength=1.0, threshold=1.0), (1 + 0 + 0 + 4) / 4),
        (LowerBoundL1(strength=1.0, threshold=2.0), (0 + 1 + 2 + 0) / 4),
        (LowerBoundL2(strength=3.0, threshold=2.0), 3.0 * (0 + 1 + 4 + 0) / 4),
    ],
    ids=["ActivityL2", "ActivityL1", "UpperBoundL1", "UpperBoundL2", "LowerBoundL1", "LowerBoundL2"],
)
def test_activity_penalty_per_neuron(regularizer, expected):
    loss = regularizer(dense_spikes())

    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected)


def test_activity_population_mean_dense():
    # Population means per sample are 1.5 and 1.5, so both sit 0.5 above the threshold of 1.
    for dims in (-1, 1, [1]):
        loss = UpperBoundL2(strength=0.1, threshold=1.0, dims=dims)(dense_spikes())

        assert loss.item() == pytest.approx(0.1 * 0.25), f"dims={dims}"


def test_activity_population_mean_conv2d():
    # Spikes (batch=1, time=2, channels=2, height=2, width=2). Channel 0 counts [[2, 0], [0, 1]].
    spikes = torch.zeros(1, 2, 2, 2, 2)
    spikes[0, 0, 0, 0, 0] = 1
    spikes[0, 1, 0, 0, 0] = 1
    spikes[0, 1, 0, 1, 1] = 1

    loss = ActivityL2(threshold=0.0, dims=(-2, -1))(spikes)

    # Channel means are 0.75 and 0.
    assert loss.item() == pytest.approx((0.75**2 + 0.0) / 2)


def test_activity_per_channel_conv1d():
    # Spikes (batch=1, time=1, channels=2, length=4). The channel counts average to 0.5 and 1.
    spikes = torch.tensor([[[[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]]])

    loss = LowerBoundL1(threshold=1.0, dims=-1)(spikes)

    assert loss.item() == pytest.approx((0.5 + 0.0) / 2)


def test_activity_gradient_per_neuron():
    spikes = dense_spikes().requires_grad_()

    ActivityL2(strength=2.0, threshold=1.0)(spikes).backward()

    # d/dspike of strength * mean(d**2) is strength * 2 * d / 4 at every step of that neuron.
    deviation = torch.tensor([[1.0, 0.0], [-1.0, 2.0]])
    expected = (2.0 * 2 * deviation / 4)[:, None, :].expand(2, 3, 2)
    assert torch.allclose(spikes.grad, expected)


@pytest.mark.parametrize("dims", [0, (1, 0), [0, -1]])
def test_activity_dims_batch_rejected(dims):
    with pytest.raises(ValueError, match="batch axis"):
        ActivityL2(dims=dims)


def test_activity_negative_dims_batch_rejected():
    # Counts of a dense layer have 2 axes, so -2 is the batch axis.
    regularizer = ActivityL2(dims=-2)

    with pytest.raises(ValueError, match="batch axis"):
        regularizer(dense_spikes())


def test_activity_dims_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        ActivityL2(dims=2)(dense_spikes())


@pytest.mark.parametrize("dims", [False, True, ()])
def test_activity_dims_ambiguous_rejected(dims):
    with pytest.raises(ValueError, match="dims=None"):
        ActivityL2(dims=dims)


def test_activity_spikes_2d_rejected():
    with pytest.raises(ValueError, match="at least 3 axes"):
        ActivityL2()(torch.zeros(2, 3))


def test_activity_negative_strength_rejected():
    with pytest.raises(ValueError, match="strength"):
        UpperBoundL2(strength=-1.0)


def test_activity_base_penalty_abstract():
    with pytest.raises(NotImplementedError):
        ActivityRegularizer()(dense_spikes())


def test_weight_l2_value():
    weight = torch.tensor([[1.0, -2.0], [3.0, 0.0]])

    loss = WeightL2(strength=0.5)(weight)

    assert loss.item() == pytest.approx(0.5 * (1 + 4 + 9 + 0) / 4)


def test_weight_l1_value():
    weight = torch.tensor([[1.0, -2.0], [3.0, 0.0]])

    loss = WeightL1(strength=2.0)(weight)

    assert loss.item() == pytest.approx(2.0 * (1 + 2 + 3 + 0) / 4)


def test_weight_negative_strength_rejected():
    with pytest.raises(ValueError, match="strength"):
        WeightL1(strength=-0.1)
