"""The allocator setting must let a large tensor reuse freed memory instead of faulting in new pages."""

import subprocess
import sys

import pytest

from lightning_snn.allocator import _glibc

# Allocates and frees a 100 MiB tensor repeatedly and prints the page faults of each allocation. glibc
# first carves the request from heap memory that was reserved but never touched, so the reuse shows
# only after a few rounds.
_PROBE = """
import resource, sys
import torch
from lightning_snn.allocator import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
for _ in range(16):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(25 << 20)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del x
"""
# 100 MiB are 25,600 pages of 4 KiB.
_PAGES = 25_600


def _faults(mode):
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=120, check=True
    )
    return [int(line) for line in result.stdout.split()]


needs_glibc = pytest.mark.skipif(_glibc() is None, reason="the allocator setting needs glibc")


@needs_glibc
def test_retain_freed_memory_reuses_pages():
    faults = _faults("retain")
    assert max(faults[-4:]) < _PAGES // 10


@needs_glibc
def test_default_allocator_faults_every_time():
    # The control: without the setting every allocation maps and faults in fresh pages.
    faults = _faults("default")
    assert min(faults[-4:]) > _PAGES // 2


def test_retain_freed_memory_warns_without_glibc(monkeypatch):
    import lightning_snn.allocator as allocator

    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    with pytest.warns(RuntimeWarning, match="needs glibc"):
        assert allocator.retain_freed_memory() is False


@needs_glibc
def test_retaining_flag_follows_the_setting():
    result = subprocess.run(
        [sys.executable, "-c", "from lightning_snn import allocator as a; print(a.retaining_freed_memory(), "
         "a.retain_freed_memory(), a.retaining_freed_memory())"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert result.stdout.split() == ["False", "True", "True"]
