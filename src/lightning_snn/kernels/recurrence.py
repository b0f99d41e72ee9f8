"""Linear recurrent projections (dense or convolutional) together with their adjoints.

The fused kernels run a population's recurrence themselves. They need three maps: transmitted spikes
to the drive of the next step, its transpose for the backward pass through time, and the weight
gradient over the whole sequence. The weight gradient is one matmul or one convolution
over all time steps, computed after the backward loop.

Recurrences on the CPU use event-driven paths when the spikes are sparse. A dense forward map then adds
one weight column per spike of the step, and its weight gradient adds one gradient row per spike of the
sequence (:mod:`.events`). A convolutional one adds the kernel taps that each spike reaches, in the
compiled loop, and gets its weight gradient from the spikes of the sequence (:mod:`.convolution`). All
of them sum in another order than a matmul or a convolution, so results agree with the dense path up
to float rounding.
"""

from typing import Callable, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_snn.kernels import convolution
from lightning_snn.kernels import events as event_kernels
from lightning_snn.kernels.backend import kernels_enabled

#: Spikes of one step with at most this fraction of nonzero entries are projected event by event.
#: One step of a batch of 64 x 256 recurrent neurons through a 256 x 256 weight took 90 us as a matmul
#: (one thread, 2-core AVX-512 x86-64 VM). Event by event it took 40 / 51 / 59 us at 2 / 5 / 10 % density.
STEP_EVENT_DENSITY_THRESHOLD = 0.1

#: The same for a convolutional recurrence run by the compiled kernels. One step of a batch of 64 through
#: a kernel of 5 took 199 us as a dense convolution and 178 / 306 us event by event at 10 / 20 % density
#: for 16 channels x 68 positions. For 64 channels x 5 positions it took 171 us dense and 90 / 146 us by
#: events (benchmarks/event_convolution.py, same machine). The threshold sits between the break-even
#: densities.
CONV_STEP_EVENT_DENSITY_THRESHOLD = 0.15

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

    def step_projector(self, weight: Tensor) -> Callable[[Tensor], Tensor]:
        """Return a function equivalent to ``project(weight, spikes)`` for the steps of one sequence.

        For a dense recurrence on the CPU it projects each step event by event whenever that step's
        spikes are sparse enough (see ``STEP_EVENT_DENSITY_THRESHOLD``).
        """
        if not self._events_allowed(weight):
            return lambda spikes: self.project(weight, spikes)
        weight_t = weight.t().contiguous()

        def project(spikes: Tensor) -> Tensor:
            rows = spikes.reshape(spikes.shape[0], -1)
            events = event_kernels.find_events(rows)
            if events.count > STEP_EVENT_DENSITY_THRESHOLD * rows.numel():
                return self.project(weight, spikes)
            return event_kernels.events_matmul(events, weight_t).reshape(spikes.shape)

        return project

    def step_event_density(self, weight: Tensor) -> float:
        """Return the spike density up to which the compiled kernels project a step event by event (0 for never)."""
        if self.kind != "dense":
            return CONV_STEP_EVENT_DENSITY_THRESHOLD if kernels_enabled() else 0.0
        return STEP_EVENT_DENSITY_THRESHOLD if self._events_allowed(weight) else 0.0

    def forward_weight(self, weight: Tensor) -> Tensor:
        """Return the weight in the layout of the compiled forward kernel: ``W^T`` for dense, else ``W``."""
        if self.kind == "dense":
            return weight.detach().t().contiguous()
        return weight.detach().contiguous()

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
            rows = spikes.reshape(count, -1)
            grad_rows = grad_drive.reshape(count, -1)
            if self._events_allowed(weight) and event_kernels.estimate_density(rows) <= (
                event_kernels.EVENT_DENSITY_THRESHOLD
            ):
                events = event_kernels.find_events(rows)
                return event_kernels.events_weight_gradient(events, grad_rows.contiguous())
            return grad_rows.t() @ rows
        stride = (1,) * len(self.padding)
        return convolution.conv_weight_gradient(spikes, grad_drive, weight, stride, self.padding)

    def _events_allowed(self, weight: Tensor) -> bool:
        """Return True when this recurrence may take the event-driven path."""
        return (
            self.kind == "dense"
            and weight.device.type == "cpu"
            and weight.shape[0] >= event_kernels.EVENT_MIN_OUTPUTS
            and event_kernels.EVENT_DENSITY_THRESHOLD > 0.0
            and kernels_enabled()
        )
