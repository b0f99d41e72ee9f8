"""Optimizers used to train spiking networks."""

from collections.abc import Callable
from typing import Optional

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT


class SMORMS3(Optimizer):
    """Simon Funk's SMORMS3 ("squared mean over root mean squared, cubed").

    SMORMS3 is an RMSprop variant whose averaging window ``mem`` adapts per entry. The window
    lengthens while gradients fluctuate, which averages out the noise, and falls back to ``mem = 1``
    when they point in a steady direction. The step size is capped by ``g**2 / g2``, the squared
    mean over the mean square of recent gradients. That ratio is at most 1, close to 0 for noisy
    gradients and close to 1 for consistent ones. For every parameter, with state
    ``mem = 1``, ``g = 0``, ``g2 = 0`` at the start, one step is::

        r = 1 / (mem + 1)
        g = (1 - r) * g + r * grad
        g2 = (1 - r) * g2 + r * grad**2
        mem = 1 + mem * (1 - g**2 / (g2 + eps))
        lr_t = min(lr, g**2 / (g2 + eps))          # element-wise
        param = param - lr_t * grad / (sqrt(g2) + eps)

    There is no weight decay. Parameters whose ``grad`` is ``None`` are skipped.

    Args:
        params: Parameters or parameter groups to optimize.
        lr: Maximum learning rate, greater than 0.
        eps: Small constant in both denominators, 0 or more. With ``eps=0``, an entry whose
            gradients have all been exactly 0 computes ``0 / 0`` and turns to nan.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, eps: float = 1e-16) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be greater than 0, got {lr}.")
        if not eps >= 0:
            raise ValueError(f"eps must be 0 or more, got {eps}.")
        super().__init__(params, {"lr": lr, "eps": eps})

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        """Perform one optimization step.

        Args:
            closure: Optional function that re-evaluates the model and returns the loss.

        Returns:
            The loss returned by ``closure``, or ``None`` without one.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError("SMORMS3 does not support sparse gradients. Use dense gradients.")
                self._update(param, param.grad, group["lr"], group["eps"])

        return loss

    def _update(self, param: Tensor, grad: Tensor, lr: float, eps: float) -> None:
        state = self.state[param]
        if not state:
            state["mem"] = torch.ones_like(param, memory_format=torch.preserve_format)
            state["g"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["g2"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        mem, g, g2 = state["mem"], state["g"], state["g2"]

        # Running means of the gradient and its square over a window of about mem + 1 steps.
        r = 1 / (mem + 1)
        g.mul_(1 - r).addcmul_(r, grad)
        g2.mul_(1 - r).addcmul_(r, grad * grad)

        # Consistent gradients (g**2 close to g2) reset mem to 1, and noisy ones grow it by up to 1 per step.
        consistency = g * g / (g2 + eps)
        mem.mul_(1 - consistency).add_(1)

        step_size = consistency.clamp(max=lr)
        param.addcdiv_(step_size * grad, g2.sqrt().add_(eps), value=-1)
