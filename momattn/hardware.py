"""What the machine can do fast: native bf16 on this CPU (detected from its flags, never assumed), and AMX, the
training precision that `trainer.precision=auto` resolves to, and glibc's allocator told to keep freed memory.

On a CPU without avx512_bf16 / amx_bf16 PyTorch emulates bf16 matmuls, which can be 100x slower than fp32
(measured on an AVX2-only AMD EPYC: 0.3 vs 69 GFLOP/s for 2048^3), so bf16 is chosen only where it is native: with
AMX, or avx512_bf16 on an AMD CPU. On an Intel Xeon whose AMX is hidden from the guest (avx512_bf16 alone, session
35) oneDNN's bf16 matmul ran at 188 GFLOP/s against fp32's 340 (2048^3, 2 threads) and the main job's training step
at 0.66x its fp32 speed; with AMX the same step ran at 1.8-2.3x. On an AMD EPYC with avx512_bf16 and no AMX (Zen 4,
family 25 model 17, session 51) the bf16 matmul ran at 2.2-2.7x fp32's speed, the main job's step at 1.58x (1.66x
nanoGPT's fp32 step) and the main job at 1.54x (benchmarks/results/cpu_bf16_amd_zen4.json).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (Linux /proc/cpuinfo); empty where unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _cpuinfo(field: str) -> str | None:
    """The first value of a /proc/cpuinfo field ('model name', 'vendor_id'); None where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=1)
def cpu_vendor() -> str:
    """The CPU's vendor as the kernel reports it ('GenuineIntel', 'AuthenticAMD', ...); empty where unknown."""
    return _cpuinfo("vendor_id") or ""


def _x86_flags() -> frozenset[str]:
    """The CPU flags where they name x86 features (empty on other machines)."""
    return cpu_flags() if platform.machine().lower() in ("x86_64", "amd64") else frozenset()


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 matmuls in hardware (x86 avx512_bf16 or AMX)."""
    return any(f in _x86_flags() for f in NATIVE_BF16_FLAGS)


def cpu_has_amx() -> bool:
    """True where the CPU's AMX tiles multiply bf16 and the kernel lets processes use them (amx_bf16 and amx_tile
    in the flags; a hypervisor that does not pass AMX through leaves both out)."""
    return {"amx_bf16", "amx_tile"} <= _x86_flags()


def cpu_matmul_units() -> str:
    """What decides this CPU's bf16 matmul speed: 'amx', 'avx512_bf16' (without AMX) or '-' (neither)."""
    return "amx" if cpu_has_amx() else "avx512_bf16" if cpu_has_native_bf16() else "-"


def cpu_bf16_pays() -> bool:
    """True where bf16 trains faster than fp32 on this CPU: AMX, or avx512_bf16 on an AMD CPU (Zen 4 and later). An
    Intel CPU with avx512_bf16 alone ran bf16 at half fp32's speed (the module's docstring has the figures)."""
    return cpu_has_amx() or ("avx512_bf16" in _x86_flags() and cpu_vendor() == "AuthenticAMD")


def runs_on_gpu(accelerator: str | None) -> bool:
    """Whether a run with this trainer.accelerator trains on a CUDA GPU (auto: where one is available)."""
    import torch

    acc = str(accelerator or "auto").lower()
    return acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())


def _cuda_precision() -> str:
    import torch

    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def resolve_precision(precision: str | int | None, accelerator: str | None) -> str:
    """`auto` -> bf16-mixed on a GPU with bf16 (16-mixed on older GPUs), bf16-mixed on a CPU where bf16 pays (AMX,
    or avx512_bf16 on an AMD CPU), 32-true elsewhere. Any other value is returned as given (the user's choice wins).
    avx512_bf16 alone is not enough on Intel: on a Xeon whose hypervisor hides AMX, oneDNN's bf16 matmul ran at half
    fp32's speed and the main job at 0.59x (session 35); on an AMD EPYC (Zen 4) the main job ran at 1.6x (session 51).
    A start-up timing cannot settle it: under load (three runs starting at once) a probe read 0.72x, 0.93x and
    1.31x on that Xeon, so one run of three would have trained in the other precision."""
    if precision is not None and str(precision) != "auto":
        return str(precision)
    if runs_on_gpu(accelerator):
        return _cuda_precision()
    return "bf16-mixed" if cpu_bf16_pays() else "32-true"


def precision_reason(given: str | int | None, trainer: Mapping) -> str | None:
    """Why trainer.precision=auto (or unset) became trainer["precision"] here, for the start line; None where the
    precision was given (it was said as chosen, not why: an avx512_bf16 CPU without AMX trains fp32 in silence)."""
    if str(given) in ("16-mixed", "16") and trainer.get("precision") == "bf16-mixed":  # on a CPU (config.py)
        return f"{given} on a CPU: bf16-mixed (CPU autocast has no float16)"  # (it changed in silence: found by review)
    if given is not None and str(given) != "auto":
        return None
    if runs_on_gpu(trainer.get("accelerator")):
        why = "a GPU with bf16" if trainer.get("precision") == "bf16-mixed" else "a GPU without bf16"
    else:
        why = {"amx": "a CPU with AMX", "avx512_bf16": "an AMD CPU with avx512_bf16: bf16 trained 1.6x faster than "
               "fp32 on such a CPU" if cpu_bf16_pays() else "avx512_bf16 without AMX: bf16 ran slower than fp32 on "
               "such a CPU", "-": "a CPU without native bf16"}[cpu_matmul_units()]
    return f"auto: {why}; trainer.precision=... overrides"


# dense bf16 / fp16 tensor-core peaks (FLOP/s) from NVIDIA's datasheets, by a part of the device's name. Lightning's
# own table misses "NVIDIA H200" (it knows "H200 SXM1" / "NVL1" names, at the 2,000 TFLOPS sparse figure)
GPU_BF16_PEAK = {"H200": 989e12, "H200 NVL": 835e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12,
                 "GH200": 989e12, "A100": 312e12, "L40S": 362e12, "L40": 181e12, "A10G": 70e12, "L4": 121e12,
                 "RTX 4090": 165e12, "A6000": 155e12}


def is_mig(name: str) -> bool:
    """Whether a CUDA device name (torch.cuda.get_device_name) is a MIG slice ("... MIG 1g.10gb"): a part of the
    GPU's compute, whose peak no table holds."""
    import re

    return bool(re.search(r"(?<![A-Za-z0-9])MIG(?![A-Za-z0-9])", name))


def gpu_bf16_peak(name: str) -> float | None:
    """The dense bf16 peak of a CUDA device by its name (torch.cuda.get_device_name), or None where unknown: the
    longest entry the name holds as a word ("NVIDIA L40" is an L40, not an L4). A MIG slice ("... MIG 1g.10gb")
    has a part of the GPU's compute: None, not the whole GPU's peak (its MFU read up to 7x low)."""
    import re

    if is_mig(name):
        return None
    hits = [k for k in GPU_BF16_PEAK if re.search(rf"(?<![A-Za-z0-9]){re.escape(k)}(?![A-Za-z0-9])", name, re.I)]
    return GPU_BF16_PEAK[max(hits, key=len)] if hits else None


def resolve_device(name: str) -> str:
    """device=auto -> cuda if available, else cpu; a ConfigError for cuda on a machine without a GPU."""
    import torch

    from momattn.errors import ConfigError

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(str(name))
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={name!r} is not a device; use device=auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} but no CUDA GPU is available; use device=cpu or device=auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device={name} but this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                              f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device={name} but MPS is not available here; use device=cpu or device=auto")
    elif dev.type != "cpu":
        raise ConfigError(f"device={name} is not supported; use device=auto, cpu, cuda or cuda:N")
    return str(name)


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def precision_dtype_name(precision: str) -> str:
    """The torch dtype's name that a Lightning precision setting ('32-true', 'bf16-mixed', '16-mixed', ...) trains
    its matmuls in."""
    p = str(precision)
    return "bfloat16" if "bf16" in p else "float16" if p.startswith("16") else "float64" if p.startswith("64") \
        else "float32"


def cpu_peak_key(dtype_name: str, threads: int, torch_version: str) -> str:
    """The key of this CPU's matmul peak in the record train.py keeps (cpu_peak_flops.json in the cache): what
    decides the speed. One CPU name covers hosts with and without AMX (bf16 1835 against 188 GFLOP/s), and a shared
    cache kept the best of both."""
    return f"{cpu_name()} | {cpu_matmul_units()} | {dtype_name} | {threads} threads | torch {torch_version}"


def describe() -> str:
    """One line for logs and benchmark records."""
    import torch

    cpu = cpu_name()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    bf16 = "native bf16, AMX" if cpu_has_amx() else "native bf16, no AMX" if cpu_has_native_bf16() else "no native bf16"
    return f"{cpu} ({torch.get_num_threads()} threads, {bf16}); {gpu}; torch {torch.__version__}"


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # the most older 64-bit glibc accept; blocks above it are still mapped one by one
TRIM_THRESHOLD = 1 << 30


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for the next allocations instead of returning it to the system.

    PyTorch's CPU tensors come from malloc, and with glibc's defaults a large tensor freed at the top of the heap is
    returned to the system, so the next step maps it again and takes a page fault per 4 KiB on first touch: the
    default model's bf16 training step re-faulted about 21,000 pages (84 MB) per step, about 6% of it
    (vanilla 230 -> 212 ms per step with this; ICL scoring's cached rows 10% faster). Sets M_MMAP_THRESHOLD to
    32 MiB (the most older 64-bit glibc accept) and M_TRIM_THRESHOLD to 1 GiB (the process keeps up to that much
    freed memory mapped). The entry
    points and the benchmarks call it once; MOMATTN_KEEP_FREED_MEMORY=0 turns it off. Returns whether it applied
    (glibc only: not on macOS, Windows or musl).
    """
    if os.environ.get("MOMATTN_KEEP_FREED_MEMORY", "1") == "0" or platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    except (OSError, AttributeError):
        return False
    if ok:
        log.debug("glibc malloc keeps freed memory (M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 1 GiB)")
    return ok
