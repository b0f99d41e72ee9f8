"""Entry point of ``python -m lightning_snn``, the same command as ``lightning-snn``."""

from lightning_snn.cli import main

if __name__ == "__main__":
    main()
