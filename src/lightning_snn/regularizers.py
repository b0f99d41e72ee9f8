"""Activity and weight regularizers that add a penalty to the training loss.

Activity regularizers keep spike counts in a useful range: lower bounds wake silent neurons, upper
bounds keep a layer sparse. Weight regularizers penalise large synaptic weights. Every regularizer
is a ``torch.nn.Module`` that returns a scalar tensor, so a training step adds it to the readout loss.
"""

from collections.abc import Sequence
from typing import Optional, Union

import torch
from torch import Tensor


def _normalize_dims(dims: Optional[Union[int, Sequence[int]]]) -> Optional[tuple[int, ...]]:
    """Turn ``dims`` into a tuple of axes, or ``None`` for a per-neuron penalty."""
    if dims is None:
        return None

    # bool is a subclass of int, and Stork uses dims=False for "per neuron", which here would
    # silently mean axis 0.
    if isinstance(dims, bool):
        raise ValueError(f"dims={dims} is invalid. Use dims=None for a per-neuron penalty.")

    if isinstance(dims, int):
        axes = (dims,)
    else:
        axes = tuple(dims)
    if not axes:
        raise ValueError("dims is empty. Use dims=None for a per-neuron penalty.")
    for axis in axes:
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise TypeError(f"dims must contain integer axes, got {axis!r} in {dims!r}.")
    if 0 in axes:
        raise ValueError(
            f"dims={dims!r} includes axis 0, the batch axis of the spike counts (batch, *neuron_shape). "
            "Average over neuron axes only (for example dims=-1), or use dims=None for a "
            "per-neuron penalty."
        )
    return axes


class ActivityRegularizer(torch.nn.Module):
    """Base class of penalties on the spike count of a layer.

    The regularizer counts the spikes of every sample and neuron over the whole trial,
    ``count = spikes.sum(dim=1)`` with shape ``(batch, *neuron_shape)``. With ``dims`` set, it first
    averages the count over those axes, which turns a per-neuron constraint into one on a population
    mean. It then applies :meth:`penalty` to ``count - threshold`` and returns
    ``strength * mean(penalty)`` over the remaining entries (samples and neurons or groups).

    The threshold is a number of spikes per trial, not a firing rate, so it scales with the trial
    length: 4 spikes in a 200 ms trial is a mean rate of 20 Hz.

    Useful settings of ``dims``, which index the count tensor ``(batch, *neuron_shape)``:

    * ``None``: one penalty per sample and neuron.
    * ``-1`` (or ``1``) for a dense layer: the population mean count of each sample.
    * ``-1`` for a Conv1d layer ``(channels, length)``: the mean count of each channel.
    * ``(-2, -1)`` for a Conv2d layer ``(channels, height, width)``: the mean count of each channel.

    Unlike Stork, which treats ``dims=0`` (and any other falsy value) as "per neuron", ``dims`` that
    include the batch axis 0 raise a ValueError here, and the per-neuron penalty is spelled
    ``dims=None``.

    Subclasses define :meth:`penalty`.

    Args:
        strength: Factor on the mean penalty, 0 or more.
        threshold: Spike count per trial at which the penalty starts or is centred.
        dims: Axes of the count tensor to average over before the penalty, or ``None`` for a
            per-neuron penalty. Axis 0 (batch) is rejected.
    """

    def __init__(
        self,
        strength: float = 1.0,
        threshold: float = 0.0,
        dims: Optional[Union[int, Sequence[int]]] = None,
    ) -> None:
        super().__init__()
        if strength < 0:
            raise ValueError(f"strength must be 0 or more, got {strength}.")
        self.strength = float(strength)
        self.threshold = float(threshold)
        self.dims = _normalize_dims(dims)

    def penalty(self, deviation: Tensor) -> Tensor:
        """Compute the element-wise penalty of ``deviation = count - threshold``."""
        raise NotImplementedError(f"{type(self).__name__} must implement penalty(deviation).")

    def forward(self, spikes: Tensor) -> Tensor:
        """Compute the penalty on the spike counts of one layer.

        Args:
            spikes: Spike sequence of the layer, shape ``(batch, time, *neuron_shape)``.

        Returns:
            A scalar tensor, ``strength`` times the mean penalty.
        """
        if spikes.dim() < 3:
            raise ValueError(
                f"spikes must have shape (batch, time, *neuron_shape) with at least 3 axes, "
                f"got shape {tuple(spikes.shape)}."
            )
        counts = spikes.sum(dim=1)

        if self.dims is not None:
            self._check_dims(counts.dim())
            counts = counts.mean(dim=self.dims)

        deviation = counts - self.threshold
        return self.strength * self.penalty(deviation).mean()

    def _check_dims(self, count_rank: int) -> None:
        # A negative axis can point at the batch axis only once the rank of the counts is known.
        for axis in self.dims:
            if not -count_rank <= axis < count_rank:
                raise ValueError(
                    f"dims={self.dims} is out of range for spike counts with {count_rank} axes "
                    f"(batch, *neuron_shape)."
                )
            if axis % count_rank == 0:
                raise ValueError(
                    f"dims={self.dims} includes the batch axis of spike counts with {count_rank} axes "
                    f"(batch, *neuron_shape). Average over neuron axes only."
                )

    def extra_repr(self) -> str:
        return f"strength={self.strength}, threshold={self.threshold}, dims={self.dims}"


class ActivityL2(ActivityRegularizer):
    """Two-sided squared penalty ``(count - threshold)**2`` that pulls counts towards the threshold."""

    def penalty(self, deviation: Tensor) -> Tensor:
        return deviation.square()


class ActivityL1(ActivityRegularizer):
    """Two-sided absolute penalty ``|count - threshold|``."""

    def penalty(self, deviation: Tensor) -> Tensor:
        return deviation.abs()


class UpperBoundL1(ActivityRegularizer):
    """Penalty ``relu(count - threshold)`` on counts above the threshold."""

    def penalty(self, deviation: Tensor) -> Tensor:
        return torch.relu(deviation)


class LowerBoundL1(ActivityRegularizer):
    """Penalty ``relu(threshold - count)`` on counts below the threshold."""

    def penalty(self, deviation: Tensor) -> Tensor:
        return torch.relu(-deviation)


class UpperBoundL2(ActivityRegularizer):
    """Penalty ``relu(count - threshold)**2`` on counts above the threshold, which keeps a layer sparse."""

    def penalty(self, deviation: Tensor) -> Tensor:
        return torch.relu(deviation).square()


class LowerBoundL2(ActivityRegularizer):
    """Penalty ``relu(threshold - count)**2`` on counts below the threshold, which wakes silent neurons."""

    def penalty(self, deviation: Tensor) -> Tensor:
        return torch.relu(-deviation).square()


class WeightRegularizer(torch.nn.Module):
    """Base class of penalties on a weight tensor, ``strength * mean(penalty(weight))``.

    Subclasses define :meth:`penalty`.

    Args:
        strength: Factor on the mean penalty, 0 or more.
    """

    def __init__(self, strength: float = 1.0) -> None:
        super().__init__()
        if strength < 0:
            raise ValueError(f"strength must be 0 or more, got {strength}.")
        self.strength = float(strength)

    def penalty(self, weight: Tensor) -> Tensor:
        """Compute the element-wise penalty of ``weight``."""
        raise NotImplementedError(f"{type(self).__name__} must implement penalty(weight).")

    def forward(self, weight: Tensor) -> Tensor:
        """Compute the penalty on one weight tensor.

        Args:
            weight: Weight tensor of any shape.

        Returns:
            A scalar tensor, ``strength`` times the mean penalty over all entries.
        """
        return self.strength * self.penalty(weight).mean()

    def extra_repr(self) -> str:
        return f"strength={self.strength}"


class WeightL2(WeightRegularizer):
    """Squared penalty ``strength * mean(weight**2)``."""

    def penalty(self, weight: Tensor) -> Tensor:
        return weight.square()


class WeightL1(WeightRegularizer):
    """Absolute penalty ``strength * mean(|weight|)``, which favours sparse weights."""

    def penalty(self, weight: Tensor) -> Tensor:
        return weight.abs()
