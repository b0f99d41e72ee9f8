"""Session-wide test settings: one CPU thread, no network access, a headless matplotlib backend."""

import os
import socket
import urllib.request


import matplotlib
import pytest
import torch

# Without a GPU, Triton kernels run in Triton's interpreter. Triton reads the variable once, so it is
# set before any test can import Triton (Lightning and torch.compile import it too).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Agg draws to memory only, so figure logging works without a display.
matplotlib.use("Agg")

# Tests share a small machine; one thread per process avoids oversubscribing its cores.
torch.set_num_threads(1)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class NetworkAccessError(RuntimeError):
    """Raised when a test tries to reach the network, which the test suite forbids."""


def _reject(address) -> None:
    raise NetworkAccessError(f"Tests must not access the network; a connection to {address!r} was attempted.")


def _is_local(family: int, address) -> bool:
    if family == getattr(socket, "AF_UNIX", None):
        return True
    host = address[0] if isinstance(address, tuple) else address
    return host in LOOPBACK_HOSTS


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """Make every connection beyond this machine raise NetworkAccessError for the whole session.

    Unix sockets and connections to the loopback address stay allowed, because distributed (gloo)
    runs talk over 127.0.0.1.
    """
    original_connect = socket.socket.connect
    original_create_connection = socket.create_connection

    def connect(sock, address):
        if not _is_local(sock.family, address):
            _reject(address)
        return original_connect(sock, address)

    def create_connection(address, *args, **kwargs):
        if not _is_local(socket.AF_INET, address):
            _reject(address)
        return original_create_connection(address, *args, **kwargs)

    def urlopen(url, *args, **kwargs):
        _reject(getattr(url, "full_url", url))

    patcher = pytest.MonkeyPatch()
    patcher.setattr(socket.socket, "connect", connect)
    patcher.setattr(socket, "create_connection", create_connection)
    patcher.setattr(urllib.request, "urlopen", urlopen)
    yield
    patcher.undo()


@pytest.fixture(autouse=True)
def fixed_seed():
    """Seed Python, NumPy and torch before every test, so results do not depend on test order."""
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
