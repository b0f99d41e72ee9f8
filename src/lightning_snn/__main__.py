"""Entry point of ``python -m lightning_snn``, the same command as ``lightning-snn``."""

import sys

from lightning_snn.cli import console_main

if __name__ == "__main__":
    sys.exit(console_main())
