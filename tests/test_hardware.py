"""momattn.hardware: glibc told to keep freed memory, so re-allocated tensors take no page faults (the entry points
and benchmarks call it); precision=auto on a CPU from its flags (bf16 with AMX only)."""

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


SLOWER = "avx512_bf16 without AMX: bf16 ran slower than fp32 on such a CPU"


@pytest.mark.parametrize("vendor,flags,expected,why", [
    ("GenuineIntel", (), "32-true", "a CPU without native bf16"),  # no bf16 instructions: emulated
    ("AuthenticAMD", (), "32-true", "a CPU without native bf16"),  # the AVX2-only EPYC of earlier rounds
    ("GenuineIntel", ("avx512_bf16", "amx_bf16", "amx_tile"), "bf16-mixed", "a CPU with AMX"),  # AMX
    # tiles the kernel does not let processes use (no amx_tile)
    ("GenuineIntel", ("avx512_bf16", "amx_bf16"), "32-true", SLOWER),
    # avx512_bf16 alone: slower than fp32 on the session-35 Xeon
    ("GenuineIntel", ("avx512_bf16",), "32-true", SLOWER),
    ("", ("avx512_bf16",), "32-true", SLOWER),  # a vendor not known: as Intel's
    # and 1.8x faster on the session-51 AMD EPYC (Zen 4), which auto trained in fp32
    ("AuthenticAMD", ("avx512_bf16",), "bf16-mixed",
     "an AMD CPU with avx512_bf16: bf16 trained 1.6x faster than fp32 on such a CPU"),
])
def test_precision_auto_on_a_cpu_takes_bf16_where_it_pays(vendor, flags, expected, why, monkeypatch):
    monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(hardware, "cpu_vendor", lambda: vendor)
    assert hardware.resolve_precision("auto", "cpu") == expected
    # the start line says why (it said only what: an avx512_bf16 CPU trained fp32 in silence; found by review)
    chosen = {"accelerator": "cpu", "precision": expected}
    assert hardware.precision_reason("auto", chosen) == hardware.precision_reason(None, chosen) == \
        f"auto: {why}; trainer.precision=... overrides"
    assert hardware.precision_reason("32-true", chosen) is None
    assert hardware.resolve_precision("32-true", "cpu") == "32-true"  # the user's choice wins
    assert hardware.resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    assert hardware.cpu_has_native_bf16() is bool(flags)
    monkeypatch.setattr(hardware.platform, "machine", lambda: "aarch64")  # x86 flags mean nothing elsewhere
    assert hardware.resolve_precision("auto", "cpu") == "32-true"
