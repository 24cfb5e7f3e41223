"""momattn.hardware.keep_freed_memory: glibc told to keep freed memory, so re-allocated tensors take no page
faults (the entry points and benchmarks call it)."""

from __future__ import annotations

import platform
import resource

import pytest
import torch

from momattn import hardware


@pytest.fixture
def fresh(monkeypatch):
    hardware.keep_freed_memory.cache_clear()
    yield
    hardware.keep_freed_memory.cache_clear()


def test_can_be_turned_off(fresh, monkeypatch):
    monkeypatch.setenv("MOMATTN_KEEP_FREED_MEMORY", "0")
    assert hardware.keep_freed_memory() is False


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_tensors_are_reused_without_page_faults(fresh):
    """After it, allocating and freeing the same 16 MiB tensors again reuses their pages (with glibc's default, a
    freed block at the top of the heap is returned to the system and faulted in again)."""
    assert hardware.keep_freed_memory() is True

    def churn():
        a = torch.ones(2 << 20, dtype=torch.float64)  # 16 MiB: from the heap now (below the 32 MiB threshold)
        b = torch.ones(2 << 20, dtype=torch.float64)
        del a, b

    for _ in range(3):  # the heap settles
        churn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        churn()
    # glibc's default: every churn faults both tensors in again (10 x 2 x 4096 pages); kept: a few at most
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 2 * 8192
