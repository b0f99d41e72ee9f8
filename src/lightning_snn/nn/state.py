"""State handling shared by every neuron: fresh state per batch, or detached carry across batches."""

from typing import Any, Callable, Optional

import torch
from torch import nn


def detach_state(state: Any) -> Any:
    """Return ``state`` with every tensor detached, keeping NamedTuples, tuples and lists intact."""
    if isinstance(state, torch.Tensor):
        return state.detach()
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return type(state)(*(detach_state(item) for item in state))
    if isinstance(state, (tuple, list)):
        return type(state)(detach_state(item) for item in state)
    return state


def _leading_size(state: Any) -> Optional[int]:
    """Return the batch size of the first tensor found in ``state``."""
    if isinstance(state, torch.Tensor):
        return state.shape[0] if state.dim() > 0 else None
    if isinstance(state, (tuple, list)):
        for item in state:
            size = _leading_size(item)
            if size is not None:
                return size
    return None


class StatefulModule(nn.Module):
    """Owner of a module's dynamic state between calls.

    Each forward pass starts from a fresh state unless the module is ``stateful``. A stateful module
    continues from the state that the previous call ended in, detached from the previous graph
    (truncated backpropagation through time across batches). The carried state is a plain attribute,
    not a buffer, so it never lands in checkpoints or DDP broadcasts, and it is dropped when the batch
    size changes, when :meth:`reset_state` is called, or when the module moves to another device.

    Args:
        stateful: Carry the final state of one call into the next.
    """

    def __init__(self, stateful: bool = False) -> None:
        super().__init__()
        self.stateful = stateful
        self._carried_state: Any = None

    def begin_state(self, batch_size: int, make_fresh: Callable[[], Any]) -> Any:
        """Return the state to start a call from: the carried one when it fits, else ``make_fresh()``."""
        carried = self._carried_state
        if self.stateful and carried is not None and _leading_size(carried) == batch_size:
            return carried
        return make_fresh()

    def end_state(self, state: Any) -> None:
        """Keep the final state of a call, detached, when the module is stateful."""
        if self.stateful:
            self._carried_state = detach_state(state)

    def reset_state(self) -> None:
        """Forget the carried state so that the next call starts fresh."""
        self._carried_state = None

    def _apply(self, fn, recurse=True):
        # A carried state on the old device or in the old dtype would break the next call.
        self._carried_state = None
        return super()._apply(fn, recurse)
