"""Encoders that turn analog input vectors into binary spike rasters.

Both encoders take one sample ``(num_units,)`` or a batch ``(batch, num_units)`` and return float32
rasters of 0/1 laid out ``(num_steps, num_units)`` or ``(batch, num_steps, num_units)``. Flatten images
to vectors first.
"""

import math
from typing import Optional

import torch
from torch import Tensor, nn


def _check_input(x: Tensor) -> None:
    if x.dim() not in (1, 2):
        raise ValueError(
            f"Expected input of shape (num_units,) or (batch, num_units), got {tuple(x.shape)}; "
            f"flatten each sample to a vector first."
        )


def _min_max_scale(x: Tensor) -> Tensor:
    """Scale each sample (the last dimension) to [0, 1]. Constant samples become 0."""
    minimum = x.min(dim=-1, keepdim=True).values
    span = x.max(dim=-1, keepdim=True).values - minimum
    return torch.where(span > 0, (x - minimum) / span.clamp_min(torch.finfo(x.dtype).tiny), 0.0)


class LatencyEncoder(nn.Module):
    """Time-to-first-spike coding: a stronger input fires earlier, and each unit fires at most once.

    The encoder computes when a leaky integrator (time constant ``tau``, threshold ``threshold`` in the
    units of ``x``) driven by the constant current ``x`` would reach its threshold. The membrane reaches the threshold after::

        T = tau_eff * ln(x / (x - threshold))   for x > threshold,   tau_eff = tau / dt  (in steps)

    and never for ``x <= threshold``. The spike goes into bin ``floor(T)`` and is kept only if
    ``T < num_steps``. With the defaults (tau 50 ms, dt 1 ms, threshold 0.1) an input of 1 fires in bin 5
    (``T = 50 ln(1 / 0.9) = 5.27``) and 0.2 fires in bin 34. Inputs below
    ``0.1 e^2 / (e^2 - 1) = 0.1157`` fire at or after step 100. So the encoder expects inputs on a [0, 1]
    scale: scale them beforehand or set ``normalize``.

    Args:
        num_steps: Number of time steps of the output raster.
        dt: Duration of one time step in seconds.
        tau: Time constant of the integrator in seconds.
        threshold: Firing threshold in the units of the input; must be positive.
        normalize: Min-max scale each sample to [0, 1] over its units before encoding, so that its
            largest entry is 1 and its smallest 0. A constant sample becomes all zeros and gives no
            spikes. Leave it off when the inputs already share a fixed [0, 1] scale, which keeps the
            differences in overall intensity between samples.
    """

    def __init__(
        self,
        num_steps: int,
        dt: float = 1e-3,
        tau: float = 50e-3,
        threshold: float = 0.1,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {num_steps}.")
        if dt <= 0 or tau <= 0:
            raise ValueError(f"dt and tau must be positive times in seconds, got dt={dt} and tau={tau}.")
        if threshold <= 0:
            raise ValueError(f"threshold must be positive, got {threshold}.")
        self.num_steps = num_steps
        self.dt = dt
        self.tau = tau
        self.threshold = threshold
        self.normalize = normalize

    def first_spike_times(self, x: Tensor) -> Tensor:
        """Compute the firing time of each unit in (unbinned) steps.

        Args:
            x: Input ``(num_units,)`` or ``(batch, num_units)``.

        Returns:
            float tensor of the shape of ``x``; ``inf`` where the unit never fires.
        """
        _check_input(x)
        x = x.to(torch.get_default_dtype()) if not x.is_floating_point() else x
        if self.normalize:
            x = _min_max_scale(x)

        tau_steps = self.tau / self.dt
        fires = x > self.threshold
        # Silent units get a dummy input that keeps the logarithm finite, because torch.where below
        # evaluates both branches and then discards the dummy times.
        safe_x = torch.where(fires, x, torch.full_like(x, 2 * self.threshold))
        times = tau_steps * torch.log(safe_x / (safe_x - self.threshold))
        return torch.where(fires, times, torch.full_like(x, math.inf))

    def forward(self, x: Tensor) -> Tensor:
        """Encode ``x`` into a raster with at most one spike per unit.

        Args:
            x: Input ``(num_units,)`` or ``(batch, num_units)``.

        Returns:
            float32 raster ``(num_steps, num_units)`` or ``(batch, num_steps, num_units)``.
        """
        times = self.first_spike_times(x)
        bins = torch.floor(times)

        # Compare every step index with each unit's bin. The bin of a silent unit is inf, which matches
        # no step, so the unit stays 0.
        steps = torch.arange(self.num_steps, device=x.device, dtype=bins.dtype).unsqueeze(-1)
        return (steps == bins.unsqueeze(-2)).to(torch.float32)

    def extra_repr(self) -> str:
        return (
            f"num_steps={self.num_steps}, dt={self.dt}, tau={self.tau}, threshold={self.threshold}, "
            f"normalize={self.normalize}"
        )


class PoissonEncoder(nn.Module):
    """Rate coding: each unit fires in each time bin independently with a probability set by its input.

    Inside the stimulus window ``[start_frac * num_steps, stop_frac * num_steps)`` (in steps) a unit with
    input ``x`` fires at ``rate = x * max_rate`` (Hz), and outside it at ``background_rate``. Each bin
    then contains a spike with probability ``rate * dt`` (a Bernoulli draw per bin). This is the
    discrete-time form of a Poisson process and needs ``rate * dt <= 1``. Inputs are meant to lie in
    [0, 1], but larger ones are accepted while ``x * max_rate * dt`` stays at most 1.

    With the defaults (100 Hz, 1 ms, 100 steps) an input of 1 gives 10 spikes on average.

    Args:
        num_steps: Number of time steps of the output raster.
        dt: Duration of one time step in seconds.
        max_rate: Firing rate in Hz for an input of 1.
        start_frac: Start of the stimulus window as a fraction of ``num_steps``.
        stop_frac: End of the stimulus window (exclusive) as a fraction of ``num_steps``.
        background_rate: Firing rate in Hz outside the stimulus window.
    """

    def __init__(
        self,
        num_steps: int,
        dt: float = 1e-3,
        max_rate: float = 100.0,
        start_frac: float = 0.0,
        stop_frac: float = 1.0,
        background_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {num_steps}.")
        if dt <= 0:
            raise ValueError(f"dt must be a positive time step in seconds, got {dt}.")
        if max_rate < 0 or background_rate < 0:
            raise ValueError(
                f"max_rate and background_rate must be 0 Hz or more, got {max_rate} and {background_rate}."
            )
        for name, rate in [("max_rate", max_rate), ("background_rate", background_rate)]:
            if rate * dt > 1:
                raise ValueError(
                    f"{name} * dt = {rate} Hz * {dt} s = {rate * dt:g} exceeds 1, the most a time bin can "
                    f"hold; lower {name} to at most {1 / dt:g} Hz or shorten dt."
                )
        if not 0 <= start_frac <= stop_frac <= 1:
            raise ValueError(
                f"Expected 0 <= start_frac <= stop_frac <= 1, got start_frac={start_frac} and "
                f"stop_frac={stop_frac}."
            )
        self.num_steps = num_steps
        self.dt = dt
        self.max_rate = max_rate
        self.start_frac = start_frac
        self.stop_frac = stop_frac
        self.background_rate = background_rate

    def firing_probability(self, x: Tensor) -> Tensor:
        """Compute the spike probability of every time bin.

        Args:
            x: Input ``(num_units,)`` or ``(batch, num_units)``, non-negative.

        Returns:
            float tensor ``(num_steps, num_units)`` or ``(batch, num_steps, num_units)``.
        """
        _check_input(x)
        x = x.to(torch.get_default_dtype()) if not x.is_floating_point() else x
        if (x < 0).any():
            raise ValueError(f"Inputs must be 0 or more, got a minimum of {x.min().item()}.")
        peak = x.max().item() * self.max_rate * self.dt if x.numel() > 0 else 0.0
        if peak > 1:
            raise ValueError(
                f"The largest input {x.max().item():g} gives a spike probability of {peak:g} per bin, "
                f"above 1; scale the inputs to [0, 1] or lower max_rate."
            )

        steps = torch.arange(self.num_steps, device=x.device, dtype=x.dtype)
        in_window = (steps >= self.start_frac * self.num_steps) & (steps < self.stop_frac * self.num_steps)

        stimulus = (x * (self.max_rate * self.dt)).unsqueeze(-2)
        background = torch.full_like(stimulus, self.background_rate * self.dt)
        return torch.where(in_window.unsqueeze(-1), stimulus, background)

    def forward(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Draw one spike raster for ``x``.

        Args:
            x: Input ``(num_units,)`` or ``(batch, num_units)``, non-negative.
            generator: Source of the Bernoulli draws, on the device of ``x``; ``None`` uses the global
                torch RNG.

        Returns:
            float32 raster ``(num_steps, num_units)`` or ``(batch, num_steps, num_units)``.
        """
        probability = self.firing_probability(x)
        return torch.bernoulli(probability, generator=generator).to(torch.float32)

    def extra_repr(self) -> str:
        return (
            f"num_steps={self.num_steps}, dt={self.dt}, max_rate={self.max_rate}, "
            f"start_frac={self.start_frac}, stop_frac={self.stop_frac}, "
            f"background_rate={self.background_rate}"
        )
