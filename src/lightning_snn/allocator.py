"""Keep freed CPU memory in the process, so that large tensors of the next training step reuse it.

A training step over a whole spike sequence allocates tensors of tens to hundreds of MiB: membrane
sequences, convolution outputs and their gradients. glibc serves every request above its mmap
threshold (at most 32 MiB) with a fresh ``mmap`` and returns it to the kernel on ``free``. The next
step then touches new pages again, and the page faults cost about as much as the arithmetic. On the
DVS-sized convolutional network of ``benchmarks/`` they took a third of the step time.

:func:`retain_freed_memory` makes glibc to serve large requests from its heap instead and to keep
freed heap memory for reuse. The setting is process-wide: it changes how every library in the process
allocates, so the ``lightning-snn`` command applies it, while plain imports of the package do not.
The resident memory then stays at the peak of one step instead of falling back between steps.
"""

import ctypes
import ctypes.util
import sys
import warnings

# mallopt parameter numbers from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

#: Freed memory at the top of the heap is returned to the kernel only above this size (bytes), the
#: largest value mallopt takes (its argument is a C int): about 2 GiB.
TRIM_THRESHOLD_BYTES = 2**31 - 1
#: Extra bytes requested whenever the heap grows (256 MiB), which saves system calls while it grows.
TOP_PAD_BYTES = 1 << 28


_retaining = False


def retaining_freed_memory() -> bool:
    """Return True after :func:`retain_freed_memory` succeeded in this process."""
    return _retaining


def _glibc():
    """Return the loaded C library when it is glibc, else None."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    library = ctypes.CDLL(name)
    # gnu_get_libc_version exists only in glibc; musl and others lack mallopt's parameters too.
    if not hasattr(library, "gnu_get_libc_version") or not hasattr(library, "mallopt"):
        return None
    return library


def retain_freed_memory(warn: bool = True) -> bool:
    """Make glibc keep freed memory for reuse instead of mapping large blocks afresh on each request.

    Call it once at program start, before the first training step. It has no effect on other C
    libraries and platforms (macOS, Windows, musl), where it returns False.

    Args:
        warn: Warn when the C library is not glibc.

    Returns:
        True when glibc accepted the settings.
    """
    library = _glibc()
    if library is None:
        if not warn:
            return False
        warnings.warn(
            "retain_freed_memory() needs glibc (Linux); the allocator settings are unchanged.",
            RuntimeWarning,
            stacklevel=2,
        )
        return False

    # mallopt returns 1 on success. No mmap at all sends large requests to the heap.
    global _retaining
    accepted = [
        library.mallopt(_M_MMAP_MAX, 0),
        library.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
        library.mallopt(_M_TOP_PAD, TOP_PAD_BYTES),
    ]
    _retaining = all(result == 1 for result in accepted)
    return _retaining
