"""Firing-rate statistics of the spike sequences that a network returns."""

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn


def spiking_populations(network: nn.Module, spikes: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Select the spike sequences of spiking populations.

    A :class:`~lightning_snn.nn.SpikingNetwork` reports the output of every hidden population, and a
    hidden layer may use a non-spiking model such as ``LeakyReadout``, whose output is a potential and
    has no firing rate. Populations are kept when ``network.populations()[name].spiking`` is true, and
    every entry is kept for networks without a ``populations()`` method.

    Args:
        network: The network that produced ``spikes``.
        spikes: Output sequences ``(batch, time, *shape)`` keyed by population name.

    Returns:
        The entries of ``spikes`` that belong to spiking populations, in their original order.
    """
    populations = network.populations() if hasattr(network, "populations") else {}
    return {
        name: sequence
        for name, sequence in spikes.items()
        if getattr(populations.get(name), "spiking", True)
    }


def mean_firing_rates(spikes: Mapping[str, Tensor], dt: float) -> dict[str, Tensor]:
    """Compute the mean firing rate of each population in Hz.

    The rate is the number of spikes per neuron and time step, averaged over the batch, the time steps
    and the neurons, divided by the time step: ``spikes.mean() / dt``.

    Args:
        spikes: Spike sequences ``(batch, time, *shape)`` of 0s and 1s, keyed by population name.
        dt: Simulation time step in seconds.

    Returns:
        One detached scalar tensor per population, in Hz.
    """
    _check_time_step(dt)
    return {name: sequence.detach().float().mean() / dt for name, sequence in spikes.items()}


def neuron_firing_rates(spikes: Mapping[str, Tensor], dt: float) -> dict[str, Tensor]:
    """Compute the firing rate of every neuron in Hz, averaged over the batch and the time steps.

    Args:
        spikes: Spike sequences ``(batch, time, *shape)`` of 0s and 1s, keyed by population name.
        dt: Simulation time step in seconds.

    Returns:
        One detached tensor of the population's shape per population, in Hz.
    """
    _check_time_step(dt)
    return {name: sequence.detach().float().mean(dim=(0, 1)) / dt for name, sequence in spikes.items()}


@contextlib.contextmanager
def eager_execution() -> Iterator[None]:
    """Run compiled modules eagerly inside the block.

    Occasional passes with other batch sizes or probes, such as initialization and monitoring, would
    each trigger a recompilation of a network compiled with ``torch.compile``. Before torch 2.6, which
    added ``torch.compiler.set_stance``, the block runs compiled code as usual.
    """
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is None:
        yield
        return
    with set_stance("force_eager"):
        yield


def _check_time_step(dt: float) -> None:
    if not dt > 0:
        raise ValueError(f"dt must be a positive time step in seconds, got {dt}.")
