"""Spiking neural networks trained with surrogate gradients, packaged for PyTorch Lightning."""

__version__ = "0.1.0"
