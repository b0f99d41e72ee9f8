"""LightningModules that train spiking networks, and the activity statistics they log."""

from lightning_snn.tasks.activity import mean_firing_rates, neuron_firing_rates, spiking_populations
from lightning_snn.tasks.classification import SNNClassifier

__all__ = ["SNNClassifier", "mean_firing_rates", "neuron_firing_rates", "spiking_populations"]
