"""Choice between the plain autograd loop and the fused kernels, set once per process.

``"auto"`` (the default) runs a population through a fused kernel when the kernel supports every
feature in use, and projects sparse inputs event by event when their measured density is low.
``"plain"`` always runs the step-by-step autograd loop and dense projections. ``"fused"`` behaves like
``"auto"`` but raises when a population cannot use a fused kernel, so that tests and benchmarks can be
sure which code ran. Code traced by ``torch.compile`` always takes the plain path, which compiles
without graph breaks.
"""

import contextlib
from typing import Iterator, Literal

import torch

Backend = Literal["auto", "plain", "fused"]
_BACKENDS = ("auto", "plain", "fused")
_backend: str = "auto"


def set_backend(name: Backend) -> None:
    """Select the simulation backend: ``"auto"``, ``"plain"`` or ``"fused"`` (see the module docs)."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"Unknown kernel backend {name!r}; choose one of {_BACKENDS}.")
    _backend = name


def get_backend() -> str:
    """Return the selected backend name."""
    return _backend


@contextlib.contextmanager
def use_backend(name: Backend) -> Iterator[None]:
    """Select ``name`` inside a ``with`` block and restore the previous backend afterwards."""
    previous = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def kernels_enabled() -> bool:
    """Return True when fused and event-driven kernels may run (not ``"plain"``, not compiling)."""
    if _backend == "plain":
        return False
    return not torch.compiler.is_compiling()


def fused_required() -> bool:
    """Return True when an unsupported population must raise instead of falling back."""
    return _backend == "fused" and not torch.compiler.is_compiling()
