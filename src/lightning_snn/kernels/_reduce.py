"""Helpers shared by the sequence kernels: constants as tensors, gradients of decay factors."""

from typing import Optional, Union

import torch
from torch import Tensor


def as_constant(value: Union[float, Tensor], like: Tensor) -> Tensor:
    """Return ``value`` as a tensor in the dtype and on the device of ``like``.

    Every arithmetic op with a Python number first converts it to a tensor. Inside a loop over time
    steps these conversions cost about as much as the arithmetic itself, so the kernels convert once.
    The value is rounded to the dtype of ``like`` as the conversion would round it, so results do not
    change.
    """
    if isinstance(value, Tensor):
        return value
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def decay_gradient(decay: Union[float, Tensor], per_element: Optional[Tensor]) -> Optional[Tensor]:
    """Sum ``per_element`` ``(time, batch, *shape)`` (or batch first) down to the shape of ``decay``.

    Returns None when ``decay`` is a float or does not require a gradient.
    """
    if per_element is None or not isinstance(decay, Tensor) or not decay.requires_grad:
        return None
    return per_element.sum(dim=(0, 1)).sum_to_size(decay.shape)


def needs_grad(decay: Union[float, Tensor]) -> bool:
    """Return True when ``decay`` is a tensor that requires a gradient."""
    return isinstance(decay, Tensor) and decay.requires_grad
