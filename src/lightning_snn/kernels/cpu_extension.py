"""The C++ CPU kernels of ``csrc/``, compiled once per machine on first use.

``lif_steps.cpp`` fuses the elementwise work of LIF time steps: the sequence kernel calls one function
per step (or per sequence) instead of about ten torch ops, whose dispatch costs more than the
arithmetic on small populations. ``pooling.cpp`` max-pools spike maps with a one-byte window index,
``events.cpp`` lists the nonzero entries of sparse inputs for the event-driven projections, and
``convolution.cpp`` convolves sparse spike maps event by event.

The sources are compiled with :func:`torch.utils.cpp_extension.load` into torch's extension cache
(``~/.cache/torch_extensions`` unless ``TORCH_EXTENSIONS_DIR`` names another folder). This takes one to
two minutes on two cores, once per machine, torch version and kernel version. When no C++ compiler is
available, or the environment variable ``LIGHTNING_SNN_NO_CPP=1`` is set, the kernels run the same
steps with torch ops, which gives the same results more slowly.
"""

import hashlib
import os
import re
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch

#: Setting this environment variable to 1 keeps the kernels on torch ops.
DISABLE_VARIABLE = "LIGHTNING_SNN_NO_CPP"
SOURCES = [Path(__file__).with_name("csrc") / name for name in ("lif_steps.cpp", "pooling.cpp", "events.cpp", "convolution.cpp", "bindings.cpp")]
# -ffp-contract=off forbids fused multiply-adds, which would round differently from the torch ops of
# the plain loop and could flip a spike at the threshold.
COMPILER_FLAGS = ["-O3", "-ffp-contract=off"]
# The kernels are compiled on the machine that runs them, so they may use all of its vector
# instructions. The build name then includes the CPU's feature flags, so that machines sharing a home
# folder each build their own copy.
NATIVE_FLAGS = ["-march=native"]

_module: Optional[ModuleType] = None
_tried = False


def _cpu_features() -> Optional[str]:
    """Return the CPU feature flags from /proc/cpuinfo, or None where the file is missing."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _flag_sets() -> list[list[str]]:
    """Return the compiler flags to try in order: native instructions first where the CPU is known."""
    if _cpu_features() is None:
        return [COMPILER_FLAGS]
    return [COMPILER_FLAGS + NATIVE_FLAGS, COMPILER_FLAGS]


def _extension_name(flags: list[str]) -> str:
    # One build per torch version (an extension built against another torch may not load), per CPU
    # feature set and flags (native instructions) and per content of the sources and the header,
    # which torch's own change check does not cover.
    version = re.sub(r"\W", "_", torch.__version__)
    digest = hashlib.sha1(((_cpu_features() or "") + " ".join(flags)).encode())
    for path in sorted(SOURCES[0].parent.iterdir()):
        digest.update(path.read_bytes())
    return f"lightning_snn_cpu_kernels_torch{version}_{digest.hexdigest()[:10]}"


def _build_directory(name: str) -> Path:
    from torch.utils import cpp_extension

    try:
        return Path(cpp_extension._get_build_directory(name, verbose=False))
    except AttributeError:  # a torch without the private helper: its documented default
        return Path(cpp_extension.get_default_build_root()) / name


def _build(flags: list[str]) -> ModuleType:
    """Compile (or load the cached build of) the kernels with ``flags``, reporting a fresh build."""
    from torch.utils import cpp_extension

    name = _extension_name(flags)
    build_directory = _build_directory(name)
    compiling = not (build_directory / f"{name}.so").exists()
    if compiling:
        print(
            f"lightning_snn: compiling the C++ CPU kernels into {build_directory} (one to two minutes, "
            "once per machine and kernel version; TORCH_EXTENSIONS_DIR sets the cache folder)",
            file=sys.stderr,
            flush=True,
        )
    started = time.perf_counter()
    module = cpp_extension.load(name=name, sources=[str(source) for source in SOURCES], extra_cflags=flags)
    if compiling:
        print(f"lightning_snn: compiled the C++ CPU kernels in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return module


def load() -> Optional[ModuleType]:
    """Return the compiled kernels, compiling them on the first call; None if unavailable."""
    global _module, _tried
    if _tried:
        return _module
    _tried = True
    if os.environ.get(DISABLE_VARIABLE, "") not in ("", "0"):
        return None

    errors = []
    for flags in _flag_sets():
        try:
            _module = _build(flags)
            return _module
        except Exception as error:  # noqa: BLE001 - any build failure means "try the next flags"
            errors.append(f"{' '.join(flags)}: {type(error).__name__}: {error}")
    warnings.warn(
        f"Could not compile the C++ CPU kernels ({'; '.join(errors)}). The sequence kernels fall back to "
        f"torch ops, which give the same results more slowly. Install a C++ compiler (g++ or clang++) to "
        f"enable them, or set {DISABLE_VARIABLE}=1 to skip this attempt.",
        RuntimeWarning,
        stacklevel=2,
    )
    return None


def available_for(tensor: torch.Tensor) -> Optional[ModuleType]:
    """Return the kernels when they can run on ``tensor`` (float32/64 on the CPU), else None."""
    if tensor.device.type != "cpu" or tensor.dtype not in (torch.float32, torch.float64):
        return None
    return load()
