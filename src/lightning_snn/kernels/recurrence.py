"""Linear recurrent projections (dense or convolutional) together with their adjoints.

The fused kernels run a population's recurrence themselves. They need three maps: transmitted spikes
to the drive of the next step, its transpose for the backward pass through time, and the weight
gradient over the whole sequence. The weight gradient is one matmul or one convolution
over all time steps, computed after the backward loop.
"""

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

RecurrenceKind = Literal["dense", "conv1d", "conv2d"]


class LinearRecurrence(NamedTuple):
    """Description of a bias-free recurrent connection ``drive = W * transmitted``.

    ``"dense"`` maps flattened populations with ``weight`` of shape ``(units, units)``. The convolution
    kinds use stride 1, dilation 1 and the given ``padding``, so they keep the population shape.
    """

    kind: RecurrenceKind
    padding: tuple[int, ...] = ()

    def project(self, weight: Tensor, spikes: Tensor) -> Tensor:
        """Map transmitted spikes ``(batch, *shape)`` to recurrent drive ``(batch, *shape)``."""
        if self.kind == "dense":
            drive = F.linear(spikes.reshape(spikes.shape[0], -1), weight)
            return drive.reshape(spikes.shape)
        if self.kind == "conv1d":
            return F.conv1d(spikes, weight, None, 1, self.padding)
        return F.conv2d(spikes, weight, None, 1, self.padding)

    def transpose(self, weight: Tensor, grad_drive: Tensor) -> Tensor:
        """Map a gradient w.r.t. the drive back to a gradient w.r.t. the transmitted spikes."""
        if self.kind == "dense":
            grad = grad_drive.reshape(grad_drive.shape[0], -1) @ weight
            return grad.reshape(grad_drive.shape)
        if self.kind == "conv1d":
            return F.conv_transpose1d(grad_drive, weight, None, 1, self.padding)
        return F.conv_transpose2d(grad_drive, weight, None, 1, self.padding)

    def weight_gradient(self, weight: Tensor, spikes: Tensor, grad_drive: Tensor) -> Tensor:
        """Return ``dL/dW`` from transmitted spikes and drive gradients, both ``(n, *shape)``."""
        if self.kind == "dense":
            count = spikes.shape[0]
            return grad_drive.reshape(count, -1).t() @ spikes.reshape(count, -1)
        if self.kind == "conv1d":
            return torch.nn.grad.conv1d_weight(spikes, weight.shape, grad_drive, 1, self.padding)
        return torch.nn.grad.conv2d_weight(spikes, weight.shape, grad_drive, 1, self.padding)
