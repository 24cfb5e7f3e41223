"""momattn.hardware: glibc told to keep freed memory, so re-allocated tensors take no page faults (the entry points
and benchmarks call it); precision=auto on a CPU from its flags and, for avx512_bf16 without AMX, a matmul probe."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from momattn import hardware

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fresh(monkeypatch):
    hardware.keep_freed_memory.cache_clear()
    yield
    hardware.keep_freed_memory.cache_clear()


def test_can_be_turned_off(fresh, monkeypatch):
    monkeypatch.setenv("MOMATTN_KEEP_FREED_MEMORY", "0")
    assert hardware.keep_freed_memory() is False


HEAP = """
import ctypes
from momattn import hardware
applied = hardware.keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):  # struct mallinfo: ints (mallinfo2, with size_t, needs glibc 2.33)
    _fields_ = [(n, ctypes.c_int) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                            "uordblks", "fordblks", "keepcost")]
libc.mallinfo.restype = Info
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
block = libc.malloc(16 << 20)  # 16 MiB, a training step's activation size
mapped = libc.mallinfo().hblkhd  # bytes in blocks of their own (mmap), which free() hands back to the system
libc.free(block)
print(applied, mapped >= 16 << 20, libc.mallinfo().fordblks >= 16 << 20)  # kept free in the heap for reuse
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_a_freed_block_stays_in_the_heap_for_the_next_allocation():
    """With it, glibc serves a 16 MiB block from the heap and keeps it there when freed, so the next allocation
    reuses pages already mapped; with glibc's defaults the block gets a mapping of its own, unmapped on free, and
    every reuse faults its 4,096 pages in again (the training step's tens of thousands of faults per step: README). Each
    way in a fresh python: mallopt's settings are the process's, and a test worker's heap has a history."""
    seen = {}
    for keep in ("1", "0"):
        env = {**os.environ, "MOMATTN_KEEP_FREED_MEMORY": keep}
        out = subprocess.run([sys.executable, "-c", HEAP], env=env, cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        seen[keep] = out.stdout.split()
    assert seen == {"1": ["True", "False", "True"], "0": ["False", "True", "False"]}


@pytest.mark.parametrize("flags,speedup,expected,probed", [
    ((), 9.0, "32-true", False),  # no bf16 instructions: emulated, never timed (it would take seconds)
    (("avx512_bf16", "amx_bf16", "amx_tile"), 0.1, "bf16-mixed", False),  # AMX: bf16, no probe
    (("avx512_bf16", "amx_bf16"), 0.6, "32-true", True),  # tiles not usable (no amx_tile): as avx512_bf16 alone
    (("avx512_bf16",), 0.6, "32-true", True),  # avx512_bf16 alone, slower than fp32 (the session-35 Xeon)
    (("avx512_bf16",), 1.9, "bf16-mixed", True),  # avx512_bf16 alone, faster
    (("avx512_bf16",), hardware.BF16_MIN_SPEEDUP * 0.99, "32-true", True),  # a little faster is not enough
])
def test_precision_auto_on_a_cpu_follows_the_flags_and_the_probe(flags, speedup, expected, probed, monkeypatch):
    calls = []
    monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(hardware, "cpu_bf16_speedup", lambda: calls.append(1) or speedup)
    assert hardware.resolve_precision("auto", "cpu") == expected
    assert bool(calls) is probed
    assert hardware.resolve_precision("32-true", "cpu") == "32-true"  # the user's choice wins, unprobed
    assert hardware.resolve_precision("bf16-mixed", "cpu") == "bf16-mixed" and len(calls) == int(probed)


def test_the_bf16_probe_times_both_dtypes_without_touching_the_random_stream():
    import torch

    torch.manual_seed(123)
    state = torch.get_rng_state()
    ratio = hardware.cpu_bf16_speedup.__wrapped__(n=64, rounds=2)  # small: bf16 may be emulated on this CPU
    assert 0 < ratio < float("inf")
    assert torch.equal(torch.get_rng_state(), state)  # a run's dropout masks must not depend on the probe
