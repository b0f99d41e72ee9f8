import math

import pytest
import torch
import torch.nn.functional as F

from lightning_snn.losses import (
    DictMeanSquareError,
    EveryStepCrossEntropy,
    LastStepCrossEntropy,
    MaxOverTimeCrossEntropy,
    MaxOverTimeFocalLoss,
    MeanSquareError,
    SumOverTimeCrossEntropy,
)


def two_class_output() -> torch.Tensor:
    """Readout (batch=2, time=3, classes=2).

    Sample 0: max over time [4, 2], sum [5, 2], last step [1, 0], time mean [5/3, 2/3].
    Sample 1: max over time [1, 3], sum [1, 3], last step [0, 3], time mean [1/3, 1].
    """
    return torch.tensor(
        [
            [[0.0, 2.0], [4.0, 0.0], [1.0, 0.0]],
            [[1.0, 0.0], [0.0, 0.0], [0.0, 3.0]],
        ]
    )


TARGET = torch.tensor([0, 1])


def softplus(x: float) -> float:
    """Two-class cross-entropy: -log_softmax of the target logit is log(1 + exp(other - target))."""
    return math.log1p(math.exp(x))


def test_max_over_time_loss():
    loss = MaxOverTimeCrossEntropy()(two_class_output(), TARGET)

    assert loss.item() == pytest.approx((softplus(2 - 4) + softplus(1 - 3)) / 2)


def test_sum_over_time_loss():
    loss = SumOverTimeCrossEntropy()(two_class_output(), TARGET)

    assert loss.item() == pytest.approx((softplus(2 - 5) + softplus(1 - 3)) / 2)


def test_last_step_loss():
    loss = LastStepCrossEntropy()(two_class_output(), TARGET)

    assert loss.item() == pytest.approx((softplus(0 - 1) + softplus(0 - 3)) / 2)


def test_max_over_time_predict():
    predictions = MaxOverTimeCrossEntropy().predict(two_class_output())

    assert predictions.tolist() == [0, 1]


def test_max_over_time_probabilities():
    probabilities = MaxOverTimeCrossEntropy().probabilities(two_class_output())

    assert probabilities.shape == (2, 2)
    assert probabilities[0, 0].item() == pytest.approx(1 / (1 + math.exp(2 - 4)))
    assert probabilities[1, 1].item() == pytest.approx(1 / (1 + math.exp(1 - 3)))


def test_every_step_target_broadcast():
    loss = EveryStepCrossEntropy()(two_class_output(), TARGET)

    # Log-softmax over classes at each of the 3 steps, then the mean over 2 samples x 3 steps.
    sample0 = softplus(2 - 0) + softplus(0 - 4) + softplus(0 - 1)
    sample1 = softplus(1 - 0) + softplus(0 - 0) + softplus(0 - 3)
    assert loss.item() == pytest.approx((sample0 + sample1) / 6)


def test_every_step_per_step_targets():
    target = torch.tensor([[1, 0, 0], [0, 0, 1]])

    loss = EveryStepCrossEntropy()(two_class_output(), target)

    sample0 = softplus(0 - 2) + softplus(0 - 4) + softplus(0 - 1)
    sample1 = softplus(0 - 1) + softplus(0 - 0) + softplus(0 - 3)
    assert loss.item() == pytest.approx((sample0 + sample1) / 6)


def test_every_step_predict_time_mean():
    loss = EveryStepCrossEntropy()
    output = two_class_output()

    # Mean per-step log-probabilities, renormalised, equal log_softmax of the time-mean logits.
    log_probabilities = loss.log_probabilities(output)

    assert log_probabilities[0, 0].item() == pytest.approx(-softplus(2 / 3 - 5 / 3))
    assert log_probabilities[1, 1].item() == pytest.approx(-softplus(1 / 3 - 1))
    assert loss.predict(output).tolist() == [0, 1]


def test_every_step_target_shape_rejected():
    with pytest.raises(ValueError, match=r"\(batch, time\)"):
        EveryStepCrossEntropy()(two_class_output(), torch.zeros(2, 4, dtype=torch.long))


def test_focal_gamma0_equals_cross_entropy():
    torch.manual_seed(0)
    output = torch.randn(4, 5, 3)
    target = torch.tensor([0, 2, 1, 2])

    focal = MaxOverTimeFocalLoss(gamma=0.0)(output, target)

    expected = F.cross_entropy(output.amax(dim=1), target)
    assert focal.item() == pytest.approx(expected.item(), rel=1e-5)


def test_focal_gamma2_value():
    loss = MaxOverTimeFocalLoss(gamma=2.0)(two_class_output(), TARGET)

    # Both samples have target probability sigmoid(2) after the max over time.
    p = 1 / (1 + math.exp(-2))
    assert loss.item() == pytest.approx(-((1 - p) ** 2) * math.log(p), rel=1e-5)


def test_focal_class_balanced_weights():
    # beta = 0.5: raw weights 0.5 / (1 - 0.5) = 1 and 0.5 / (1 - 0.125) = 4/7, sum 11/7, scaled to sum 2.
    loss = MaxOverTimeFocalLoss(samples_per_class=[1, 3], beta=0.5)

    assert loss.class_weights.tolist() == pytest.approx([14 / 11, 8 / 11])


def test_focal_class_balanced_loss():
    loss = MaxOverTimeFocalLoss(samples_per_class=[1, 3], beta=0.5)(two_class_output(), TARGET)

    expected = (14 / 11 * softplus(2 - 4) + 8 / 11 * softplus(1 - 3)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_focal_probability_clamp():
    output = torch.tensor([[[10.0, 0.0]]])

    loss = MaxOverTimeFocalLoss(eps=0.1)(output, torch.tensor([0]))

    assert loss.item() == pytest.approx(-math.log(0.9), rel=1e-5)


def test_focal_class_count_mismatch():
    loss = MaxOverTimeFocalLoss(samples_per_class=[1, 2, 3])

    with pytest.raises(ValueError, match="samples_per_class"):
        loss(two_class_output(), TARGET)


@pytest.mark.parametrize(
    "kwargs",
    [{"gamma": -1.0}, {"eps": 0.5}, {"beta": 1.0}, {"samples_per_class": [3, 0]}, {"samples_per_class": []}],
)
def test_focal_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        MaxOverTimeFocalLoss(**kwargs)


def test_cross_entropy_output_2d_rejected():
    with pytest.raises(ValueError, match=r"\(batch, time, classes\)"):
        MaxOverTimeCrossEntropy()(torch.zeros(2, 3), TARGET)


def test_cross_entropy_float_target_rejected():
    with pytest.raises(TypeError, match="integer class ids"):
        MaxOverTimeCrossEntropy()(two_class_output(), torch.tensor([0.0, 1.0]))


def test_cross_entropy_batch_mismatch_rejected():
    with pytest.raises(ValueError, match="one class id per sample"):
        SumOverTimeCrossEntropy()(two_class_output(), torch.tensor([0, 1, 1]))


def test_mse_value():
    output = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    target = torch.tensor([[[0.0, 2.0], [1.0, 1.0]]])

    loss = MeanSquareError()(output, target)

    assert loss.item() == pytest.approx((1 + 0 + 4 + 9) / 4)


def test_mse_masked_value():
    output = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    target = torch.tensor([[[0.0, 2.0], [1.0, 1.0]]])
    mask = torch.tensor([[True, False], [True, False]])

    loss = MeanSquareError(mask=mask)(output, target)

    # Only channel 0 counts: squared errors 1 and 4.
    assert loss.item() == pytest.approx((1 + 4) / 2)


def test_mse_list_mask():
    output = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    target = torch.tensor([[[0.0, 2.0], [1.0, 1.0]]])

    loss = MeanSquareError(mask=[1, 0])(output, target)

    assert loss.item() == pytest.approx((1 + 4) / 2)


def test_mse_predict_identity():
    output = torch.randn(2, 3, 4)

    assert MeanSquareError().predict(output) is output


def test_mse_probabilities_type_error():
    with pytest.raises(TypeError, match="no class probabilities"):
        MeanSquareError().probabilities(torch.zeros(1, 2, 2))


def test_mse_target_shape_rejected():
    with pytest.raises(ValueError, match="output shape"):
        MeanSquareError()(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3))


def test_mse_mask_shape_rejected():
    with pytest.raises(ValueError, match="does not broadcast"):
        MeanSquareError(mask=torch.ones(3))(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2))


def test_mse_zero_mask_rejected():
    with pytest.raises(ValueError, match="zero everywhere"):
        MeanSquareError(mask=torch.zeros(2))


def dict_patterns() -> torch.Tensor:
    """Two patterns (time=2, channels=1): all zeros and all ones."""
    return torch.tensor([[[0.0], [0.0]], [[1.0], [1.0]]])


def dict_output() -> torch.Tensor:
    """Sample 0 lies at distance 0.1 from pattern 0 and 0.5 from pattern 1, sample 1 at 0.905 and 0.005."""
    return torch.tensor([[[0.2], [0.4]], [[0.9], [1.0]]])


def test_dict_mse_loss():
    loss = DictMeanSquareError(dict_patterns())(dict_output(), torch.tensor([1, 1]))

    assert loss.item() == pytest.approx((0.5 + 0.005) / 2)


def test_dict_mse_distances():
    distances = DictMeanSquareError(dict_patterns()).pattern_distances(dict_output())

    assert distances.tolist() == [pytest.approx([0.1, 0.5]), pytest.approx([0.905, 0.005])]


def test_dict_mse_predict_nearest():
    predictions = DictMeanSquareError(dict_patterns()).predict(dict_output())

    assert predictions.tolist() == [0, 1]


def test_dict_mse_probabilities_softmax():
    probabilities = DictMeanSquareError(dict_patterns()).probabilities(dict_output())

    assert probabilities[0, 0].item() == pytest.approx(1 / (1 + math.exp(-0.4)))


def test_dict_mse_masked_distances():
    # Only the first time step counts.
    mask = torch.tensor([[1.0], [0.0]])

    distances = DictMeanSquareError(dict_patterns(), mask=mask).pattern_distances(dict_output())

    assert distances.tolist() == [pytest.approx([0.04, 0.64]), pytest.approx([0.81, 0.01])]


def test_dict_mse_list_patterns():
    loss = DictMeanSquareError([[[0.0], [0.0]], [[1.0], [1.0]]])

    assert torch.equal(loss.target_patterns, dict_patterns())


def test_dict_mse_ragged_patterns_rejected():
    with pytest.raises(ValueError, match="same shape"):
        DictMeanSquareError([torch.zeros(2, 1), torch.zeros(3, 1)])


def test_dict_mse_pattern_shape_mismatch():
    with pytest.raises(ValueError, match="target pattern shape"):
        DictMeanSquareError(dict_patterns())(torch.zeros(2, 3, 1), torch.tensor([0, 1]))
