"""Readout losses that turn a readout sequence into a loss, class probabilities and predictions.

Every loss takes the readout sequence ``output`` laid out ``(batch, time, classes)``. The layout is
fixed, so there is no time-axis argument. Classification losses reduce the time axis in a
loss-specific way and take class ids ``(batch,)`` as targets. Regression losses compare the whole
sequence with a target sequence.
"""

from collections.abc import Sequence
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_output(output: Tensor) -> None:
    if output.dim() != 3:
        raise ValueError(
            f"output must be a readout sequence (batch, time, classes) with 3 axes, "
            f"got shape {tuple(output.shape)}."
        )


def _check_integer_dtype(target: Tensor) -> None:
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must contain integer class ids, got dtype {target.dtype}.")


def _check_class_target(output: Tensor, target: Tensor) -> Tensor:
    """Check class-id targets ``(batch,)`` against ``output`` and return them as int64."""
    _check_integer_dtype(target)
    if target.dim() != 1 or target.shape[0] != output.shape[0]:
        raise ValueError(
            f"target must contain one class id per sample, shape ({output.shape[0]},), "
            f"got shape {tuple(target.shape)}."
        )
    return target.long()


class ReadoutLoss(torch.nn.Module):
    """Base class of the readout losses.

    Subclasses implement :meth:`forward` and, for classification, :meth:`log_probabilities`.
    The base :meth:`probabilities` and :meth:`predict` derive from :meth:`log_probabilities`.
    """

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        """Compute the scalar loss of a batch.

        Args:
            output: Readout sequence, shape ``(batch, time, classes)``.
            target: Targets, whose shape depends on the loss.

        Returns:
            A scalar tensor.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement forward(output, target).")

    def log_probabilities(self, output: Tensor) -> Tensor:
        """Compute the log-probability of every class, shape ``(batch, classes)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement log_probabilities(output).")

    def probabilities(self, output: Tensor) -> Tensor:
        """Compute the probability of every class, shape ``(batch, classes)``."""
        return self.log_probabilities(output).exp()

    def predict(self, output: Tensor) -> Tensor:
        """Predict the most probable class id of every sample, shape ``(batch,)``."""
        return self.log_probabilities(output).argmax(dim=-1)


class TimeReducedCrossEntropy(ReadoutLoss):
    """Cross-entropy on logits obtained by reducing the readout sequence over time.

    Subclasses define :meth:`reduce_time`, which maps ``(batch, time, classes)`` to logits
    ``(batch, classes)``. The loss is the mean negative log-likelihood over the batch.
    """

    def reduce_time(self, output: Tensor) -> Tensor:
        """Reduce the readout sequence to logits ``(batch, classes)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement reduce_time(output).")

    def log_probabilities(self, output: Tensor) -> Tensor:
        _check_output(output)
        return F.log_softmax(self.reduce_time(output), dim=-1)

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        """Compute the cross-entropy of a batch.

        Args:
            output: Readout sequence, shape ``(batch, time, classes)``.
            target: Class ids, shape ``(batch,)``.

        Returns:
            The mean negative log-likelihood over the batch.
        """
        _check_output(output)
        target = _check_class_target(output, target)
        return F.nll_loss(self.log_probabilities(output), target)


class MaxOverTimeCrossEntropy(TimeReducedCrossEntropy):
    """Cross-entropy on the maximum of each readout unit over time.

    The logit of a class is the peak membrane potential of its readout unit during the trial.
    """

    def reduce_time(self, output: Tensor) -> Tensor:
        return output.max(dim=1).values


class SumOverTimeCrossEntropy(TimeReducedCrossEntropy):
    """Cross-entropy on the sum of each readout unit over time."""

    def reduce_time(self, output: Tensor) -> Tensor:
        return output.sum(dim=1)


class LastStepCrossEntropy(TimeReducedCrossEntropy):
    """Cross-entropy on the readout at the last time step."""

    def reduce_time(self, output: Tensor) -> Tensor:
        return output[:, -1]


class EveryStepCrossEntropy(ReadoutLoss):
    """Cross-entropy applied at every time step and averaged over batch and time.

    Each step's readout is a vector of logits, normalised with log-softmax over the class axis.
    Stork applies log-softmax over axis 1, which for a ``(batch, time, classes)`` output is the time
    axis, but this class normalises over classes.

    :meth:`log_probabilities` averages the per-step log-probabilities over time and renormalises
    them over classes, which equals ``log_softmax`` of the time-averaged output. :meth:`predict`
    takes its argmax, the class with the highest mean per-step log-probability.
    """

    def log_probabilities(self, output: Tensor) -> Tensor:
        _check_output(output)

        # mean_t log_softmax(y_t) differs from mean_t y_t by a per-sample constant, which the
        # final log-softmax removes.
        return F.log_softmax(output.mean(dim=1), dim=-1)

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        """Compute the mean per-step cross-entropy of a batch.

        Args:
            output: Readout sequence, shape ``(batch, time, classes)``.
            target: Class ids, either ``(batch,)`` for one class per trial, which is used at every
                step, or ``(batch, time)`` for one class per step.

        Returns:
            The negative log-likelihood averaged over batch and time.
        """
        _check_output(output)
        batch_size, num_steps, num_classes = output.shape

        if target.dim() == 1:
            target = _check_class_target(output, target)
            target = target[:, None].expand(batch_size, num_steps)
        elif target.dim() == 2:
            if tuple(target.shape) != (batch_size, num_steps):
                raise ValueError(
                    f"per-step target must have shape (batch, time) = ({batch_size}, {num_steps}), "
                    f"got shape {tuple(target.shape)}."
                )
            _check_integer_dtype(target)
            target = target.long()
        else:
            raise ValueError(
                f"target must have shape (batch,) or (batch, time), got shape {tuple(target.shape)}."
            )

        log_probs = F.log_softmax(output, dim=-1)
        return F.nll_loss(log_probs.reshape(-1, num_classes), target.reshape(-1))


class MaxOverTimeFocalLoss(TimeReducedCrossEntropy):
    """Focal loss on the maximum of each readout unit over time, with optional class balancing.

    With ``p = clamp(softmax(max_t output), eps, 1 - eps)`` and one-hot targets ``y``, the loss of
    a sample is ``-sum_c w_c * y_c * (1 - p_c)**gamma * log(p_c)``, averaged over the batch. The
    factor ``(1 - p_c)**gamma`` down-weights samples that are already classified confidently
    (Lin et al. 2017, "Focal Loss for Dense Object Detection").

    Given ``samples_per_class``, the class weights follow the effective number of samples
    (Cui et al. 2019, "Class-Balanced Loss Based on Effective Number of Samples"):
    ``w_c = (1 - beta) / (1 - beta**n_c)``, normalised to sum to the number of classes. Without
    it, every ``w_c`` is 1.

    The loss sums over classes, so ``gamma=0`` without class weights equals the plain cross-entropy
    (for probabilities inside ``[eps, 1 - eps]``). Stork averages over classes as well, which makes
    its loss ``1 / classes`` times this one.

    Args:
        gamma: Focusing exponent, 0 or more. 0 disables focusing.
        eps: Clamp on the probabilities that keeps ``log(p)`` finite, in ``[0, 0.5)``.
        samples_per_class: Number of training samples of every class, which sets the class weights.
            ``None`` weighs all classes equally.
        beta: Effective-number parameter in ``[0, 1)``. 0 gives equal weights, and values near 1
            approach inverse class frequencies.
    """

    class_weights: Optional[Tensor]

    def __init__(
        self,
        gamma: float = 0.0,
        eps: float = 1e-7,
        samples_per_class: Optional[Sequence[int]] = None,
        beta: float = 0.99,
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be 0 or more, got {gamma}.")
        if not 0 <= eps < 0.5:
            raise ValueError(f"eps must be in [0, 0.5), got {eps}.")
        if not 0 <= beta < 1:
            raise ValueError(f"beta must be in [0, 1), got {beta}.")
        self.gamma = float(gamma)
        self.eps = float(eps)
        self.beta = float(beta)

        if samples_per_class is None:
            self.register_buffer("class_weights", None)
        else:
            self.register_buffer("class_weights", self._class_balanced_weights(samples_per_class, beta))

    @staticmethod
    def _class_balanced_weights(samples_per_class: Sequence[int], beta: float) -> Tensor:
        counts = torch.as_tensor(list(samples_per_class), dtype=torch.float64)
        if counts.dim() != 1 or counts.numel() == 0:
            raise ValueError(
                f"samples_per_class must be a non-empty list of counts, got {samples_per_class!r}."
            )
        if (counts < 1).any():
            raise ValueError(
                f"samples_per_class must be at least 1 for every class, got {samples_per_class!r}."
            )

        # 1 - beta**n is the effective number of samples times (1 - beta).
        weights = (1 - beta) / (1 - beta**counts)
        weights = weights * counts.numel() / weights.sum()
        return weights.to(torch.get_default_dtype())

    def reduce_time(self, output: Tensor) -> Tensor:
        return output.max(dim=1).values

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        """Compute the focal loss of a batch.

        Args:
            output: Readout sequence, shape ``(batch, time, classes)``.
            target: Class ids, shape ``(batch,)``.

        Returns:
            The focal loss averaged over the batch.
        """
        _check_output(output)
        target = _check_class_target(output, target)
        num_classes = output.shape[-1]
        if self.class_weights is not None and self.class_weights.numel() != num_classes:
            raise ValueError(
                f"samples_per_class has {self.class_weights.numel()} entries but the output has "
                f"{num_classes} classes. Give one count per class."
            )

        probs = F.softmax(self.reduce_time(output), dim=-1).clamp(self.eps, 1 - self.eps)

        # With one-hot targets, only the target class contributes to the sum over classes.
        target_prob = probs.gather(1, target[:, None]).squeeze(1)
        loss = -((1 - target_prob) ** self.gamma) * target_prob.log()
        if self.class_weights is not None:
            loss = loss * self.class_weights[target]
        return loss.mean()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, eps={self.eps}, beta={self.beta}"


def _prepare_mask(mask: Optional[Union[Tensor, Sequence]]) -> Optional[Tensor]:
    """Check a don't-care mask and convert it to floating point."""
    if mask is None:
        return None
    mask = torch.as_tensor(mask)
    if not mask.is_floating_point():
        mask = mask.to(torch.get_default_dtype())
    if (mask < 0).any():
        raise ValueError(
            "mask must contain weights of 0 or more (1 or True counts an entry, 0 ignores it)."
        )
    if not (mask > 0).any():
        raise ValueError(
            "mask is zero everywhere, so no entry would count. Pass mask=None to count all entries."
        )
    return mask


def _broadcast_mask(mask: Tensor, output: Tensor) -> Tensor:
    """Expand ``mask`` to the shape of ``output``, or raise if it does not broadcast to it."""
    try:
        shape = torch.broadcast_shapes(mask.shape, output.shape)
    except RuntimeError:
        shape = None
    if shape != output.shape:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the output shape "
            f"{tuple(output.shape)} (batch, time, channels)."
        )
    return mask.to(output.dtype).expand(output.shape)


def _masked_mean(values: Tensor, mask: Optional[Tensor], dims: Optional[tuple[int, ...]] = None) -> Tensor:
    """Average ``values`` over ``dims`` (all axes if ``None``), weighting entries by ``mask``."""
    if mask is None:
        return values.mean() if dims is None else values.mean(dim=dims)
    if dims is None:
        return (mask * values).sum() / mask.sum()
    return (mask * values).sum(dim=dims) / mask.sum(dim=dims)


class MeanSquareError(ReadoutLoss):
    """Mean squared error between the readout sequence and a target sequence.

    This is a regression loss: :meth:`predict` returns the output unchanged, and
    :meth:`log_probabilities` and :meth:`probabilities` raise TypeError because there are no classes.

    Args:
        mask: Optional don't-care mask, a tensor or nested list that broadcasts to the output
            ``(batch, time, channels)``, for example ``(time, channels)``. Entries where it is 0 (or
            False) are ignored, and the loss is the mean over the remaining entries. Float values
            act as the weights of a weighted mean.
    """

    mask: Optional[Tensor]

    def __init__(self, mask: Optional[Union[Tensor, Sequence]] = None) -> None:
        super().__init__()
        self.register_buffer("mask", _prepare_mask(mask))

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        """Compute the (masked) mean squared error of a batch.

        Args:
            output: Readout sequence, shape ``(batch, time, channels)``.
            target: Target sequence of the same shape.

        Returns:
            The mean squared error over the entries the mask counts.
        """
        _check_output(output)
        if target.shape != output.shape:
            raise ValueError(
                f"target must have the output shape {tuple(output.shape)}, got shape {tuple(target.shape)}."
            )
        mask = None if self.mask is None else _broadcast_mask(self.mask, output)
        return _masked_mean((output - target).square(), mask)

    def log_probabilities(self, output: Tensor) -> Tensor:
        raise TypeError(f"{type(self).__name__} is a regression loss and has no class probabilities.")

    def probabilities(self, output: Tensor) -> Tensor:
        raise TypeError(f"{type(self).__name__} is a regression loss and has no class probabilities.")

    def predict(self, output: Tensor) -> Tensor:
        """Return the output unchanged, since the readout sequence is itself the prediction."""
        return output


class DictMeanSquareError(ReadoutLoss):
    """Mean squared error against target patterns picked from a fixed set by index.

    The target of a sample is an index into ``target_patterns``, each pattern a sequence
    ``(time, channels)``. The loss is the masked mean squared error between the output and the
    indexed patterns. :meth:`pattern_distances` returns the masked mean squared error of every
    sample to every pattern. :meth:`predict` returns the index of the nearest pattern, and
    :meth:`probabilities` is the softmax of the negative distances over the patterns.

    Args:
        target_patterns: Patterns stacked as a tensor ``(num_patterns, time, channels)``, or a
            sequence of ``(time, channels)`` tensors or nested lists.
        mask: Optional don't-care mask that broadcasts to the output ``(batch, time, channels)``,
            as in :class:`MeanSquareError`.
    """

    target_patterns: Tensor
    mask: Optional[Tensor]

    def __init__(
        self, target_patterns: Union[Tensor, Sequence], mask: Optional[Union[Tensor, Sequence]] = None
    ) -> None:
        super().__init__()
        self.register_buffer("target_patterns", self._stack_patterns(target_patterns))
        self.register_buffer("mask", _prepare_mask(mask))

    @staticmethod
    def _stack_patterns(target_patterns: Union[Tensor, Sequence]) -> Tensor:
        if isinstance(target_patterns, Tensor):
            patterns = target_patterns
        else:
            if len(target_patterns) == 0:
                raise ValueError("target_patterns is empty. Give at least one (time, channels) pattern.")
            try:
                patterns = torch.stack([torch.as_tensor(pattern) for pattern in target_patterns])
            except RuntimeError as error:
                raise ValueError(
                    f"target_patterns must all have the same shape (time, channels): {error}"
                ) from error

        if patterns.dim() != 3 or patterns.shape[0] == 0:
            raise ValueError(
                "target_patterns must stack to (num_patterns, time, channels) with at least one "
                f"pattern, got shape {tuple(patterns.shape)}."
            )
        if not patterns.is_floating_point():
            patterns = patterns.to(torch.get_default_dtype())
        return patterns

    def _check_pattern_shape(self, output: Tensor) -> None:
        _check_output(output)
        if output.shape[1:] != self.target_patterns.shape[1:]:
            raise ValueError(
                f"output steps and channels {tuple(output.shape[1:])} differ from the target pattern "
                f"shape {tuple(self.target_patterns.shape[1:])} (time, channels)."
            )

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        """Compute the (masked) mean squared error to the indexed patterns.

        Args:
            output: Readout sequence, shape ``(batch, time, channels)``.
            target: Pattern indices, shape ``(batch,)``.

        Returns:
            The mean squared error over the entries the mask counts.
        """
        self._check_pattern_shape(output)
        target = _check_class_target(output, target)
        mask = None if self.mask is None else _broadcast_mask(self.mask, output)
        return _masked_mean((output - self.target_patterns[target]).square(), mask)

    def pattern_distances(self, output: Tensor) -> Tensor:
        """Compute the masked mean squared error of every sample to every pattern.

        Args:
            output: Readout sequence, shape ``(batch, time, channels)``.

        Returns:
            Distances, shape ``(batch, num_patterns)``.
        """
        self._check_pattern_shape(output)

        # NOTE: the difference tensor has batch * num_patterns * time * channels entries, so large
        # pattern sets need small batches.
        square_error = (output[:, None] - self.target_patterns[None]).square()
        mask = None if self.mask is None else _broadcast_mask(self.mask, output)[:, None]
        return _masked_mean(square_error, mask, dims=(2, 3))

    def log_probabilities(self, output: Tensor) -> Tensor:
        """Compute ``log_softmax`` of the negative pattern distances, shape ``(batch, num_patterns)``."""
        return F.log_softmax(-self.pattern_distances(output), dim=-1)
