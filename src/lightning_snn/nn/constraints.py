"""Weight constraints, applied in place after initialization and after every optimizer step."""

from typing import Optional

import torch
from torch import Tensor


class WeightConstraint:
    """Base class: a projection applied in place to a weight tensor."""

    def __call__(self, weight: Tensor) -> None:
        raise NotImplementedError


class MinMaxConstraint(WeightConstraint):
    """Clip every weight into ``[min, max]`` (projected gradient descent).

    ``MinMaxConstraint(min=0.0)`` keeps weights non-negative, which is how Dale's-law layers keep each
    neuron purely excitatory or inhibitory.

    Args:
        min: Lower bound, or None for no lower bound.
        max: Upper bound, or None for no upper bound.
    """

    def __init__(self, min: Optional[float] = None, max: Optional[float] = None) -> None:
        if min is None and max is None:
            raise ValueError("MinMaxConstraint needs at least one of min and max.")
        if min is not None and max is not None and min > max:
            raise ValueError(f"MinMaxConstraint has min {min} above max {max}.")
        self.min = min
        self.max = max

    @torch.no_grad()
    def __call__(self, weight: Tensor) -> None:
        weight.clamp_(min=self.min, max=self.max)

    def __repr__(self) -> str:
        return f"MinMaxConstraint(min={self.min}, max={self.max})"
