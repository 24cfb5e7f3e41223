"""The CPU scan kernel: exponential moving averages stepped through time in the values' own layout.

    y = cpu_scan.ema(x, p, g, strict, fallback)    # x (B, T, C), unit channel stride; p, g (R, C) -> (B, T, C)

        s_t[r] = p[r] s_{t-1}[r] + x_t,   y_t = sum_r g[r] s_t[r]   (strict: sum_r g[r] p[r] s_{t-1}[r])

momentum_ema is R = 1 (p = each channel's head rate, g = 1, strict unless include_current); multirate_ema is
R rates per channel, inclusive. The kernel (momattn/csrc/ema_scan.cpp) reads the values in place (the strided
view a model splits from its qkv projection), keeps its states in float32 (float64 for float64 values) and
writes each output once, so a bf16 output is rounded once; its backward is the same recurrence run backward in
time, which also gives the rates' and weights' gradients (the derivative of each reverse state by its rate is
one more recurrence), with nothing full-size saved but the values. Several rates go through time in tiles with
four rates' states held in registers. Its tasks (batch row, channel block) run on torch's own OpenMP threads
where torch runs on GNU OpenMP (see _openmp). The chunked matmul scans of momattn/ops.py move channels to the
front or repeat (c x c) decay blocks to use matmuls; stepping through time needs neither (README, Benchmarks,
goal 2, for the measured effect). Evaluation with a cache (states in and out, no gradient) runs it too
(ema_with_states), from a shared prefix's state read in place.

The same library holds the elementwise pass of momattn/cpu_attention.py's attention backward (`softmax_grad`).
It is plain C++ with no PyTorch headers, built on first use with the system's compiler (`c++`, or $CXX) in
about two seconds into $MOMATTN_CACHE (default ~/.cache/momattn), keyed by the source, the compiler and this
CPU's flags (it is built for this CPU: -march=native), and called through ctypes. Where it cannot be built
(no compiler), momattn warns once and uses the matmul scans: results agree to float32 rounding in float32 (in
bf16 training the matmul scans round their chunk matmuls to bf16, README "Precision"). Not under torch.compile (the
matmul scans trace), not on CUDA (Triton there), not for gradients through states; a second derivative with
learned rates recomputes through the matmul scans (with fixed rates the backward is this kernel's reverse scan,
itself differentiable).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import re
import shlex
import shutil
import stat
import struct
import subprocess
import weakref
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "ema_scan.cpp"
_NAMES = {torch.float32: "ema_f32", torch.float64: "ema_f64", torch.bfloat16: "ema_bf16"}
DTYPES = frozenset(_NAMES)  # what the kernel scans
_LIB: ctypes.CDLL | bool | None = None  # None: not tried yet; False: could not be built
OPENMP = False  # whether the loaded kernel runs its tasks on torch's OpenMP threads (else its own threads)
_P, _I, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


PORTABLE = ["-O3", "-shared", "-fPIC", "-std=c++17", "-pthread"]


def _flags() -> list[str]:
    """For this CPU; _build falls back to PORTABLE where the compiler refuses them (e.g. -march=native)."""
    flags = [*PORTABLE, "-march=native"]
    if platform.machine() in ("x86_64", "AMD64"):
        flags.append("-mprefer-vector-width=512")  # where the CPU has AVX-512; ignored where it has not
    return flags


def _cpu_flags() -> str:
    """What -march=native compiles for: the CPU's feature flags (Linux), else the processor's name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return f"{platform.platform()} {platform.processor() or platform.machine()}"


@functools.cache
def _version(cxx: tuple[str, ...]) -> str:
    """`cxx --version`, asked once per process (the OpenMP choice and the cache key both read it)."""
    return subprocess.run([*cxx, "--version"], capture_output=True, text=True, timeout=30).stdout


def _openmp(cxx: list[str]) -> list[str]:
    """["-fopenmp"] where this process's torch runs on GNU OpenMP (a libgomp.so.1 is loaded: the Linux wheels') and
    the compiler is GCC's: the kernel then runs its tasks on torch's own OpenMP threads (the libgomp.so.1 it links
    is the one already loaded, by that name). Its own threads would compete with torch's OpenMP workers, which keep
    spinning on the other cores for a while after each op: in a training step that made the kernel take about
    twice its time alone. Not where libgomp.so.1 is not loaded (a wheel with a renamed copy, Intel's or LLVM's
    runtime: the kernel would load a second thread pool), nor with clang (its -fopenmp links LLVM's runtime).
    Like torch's own parallel ops, the OpenMP build hangs in a child forked after the parent used OpenMP
    (a libgomp limitation; DataLoader workers do not call the kernel). MOMATTN_SCAN_OPENMP=0 turns it off."""
    if os.environ.get("MOMATTN_SCAN_OPENMP", "1") == "0":
        return []
    try:
        ctypes.CDLL("libgomp.so.1", mode=getattr(os, "RTLD_NOLOAD", 4) | ctypes.RTLD_LOCAL)  # only if loaded
        version = _version(tuple(cxx))
    except (OSError, subprocess.SubprocessError):
        return []
    return [] if "clang" in version.lower() else ["-fopenmp"]


def _build(cxx: list[str], extra: list[str]) -> Path:
    """The kernel's shared library built with flags + extra, into the cache unless it is there already and intact
    (its bytes match the digest recorded beside it: a truncated file, from a crash before its bytes reached the
    disk, crashed every momentum run with SIGBUS when loaded). Built under a lock, through a temporary file that
    remove_stale_temps clears if the build is killed."""
    from momattn.io import _host, cache_root, file_lock, lock_beside, remove_stale_temps

    version = _version(tuple(cxx))
    key = hashlib.sha256("\0".join([SOURCE.read_text(), *cxx, version, " ".join(_flags() + extra),
                                    _cpu_flags()]).encode())
    cache = _private(cache_root())  # (MOMATTN_CACHE='~/...' was built into a folder named ~ of the working folder)
    lib = cache / f"ema_scan-{key.hexdigest()[:16]}.so"
    if _intact(lib):
        return lib
    if lib.is_file() and not _digest_file(lib).exists() and not _writable(lib.parent):
        # an older momattn's build in a read-only cache: no digest to check it by, and none can be written; loaded
        # only where its ELF tables end within the file (a truncated one crashed the process with a bus error)
        if _elf_whole(lib):
            return lib
        raise _CacheUnwritable(f"the cached CPU scan kernel {lib} is cut short, and its folder cannot be written to "
                               "build it again; remove it, or set MOMATTN_CACHE to a writable folder")
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _CacheUnwritable(f"the kernel cache folder {cache} cannot be made ({e.strerror}); set MOMATTN_CACHE "
                               "to a writable folder") from None
    if not _writable(cache):  # four full builds (with and without OpenMP, native and portable) failed at the link,
        raise _CacheUnwritable(f"the kernel cache folder {cache} cannot be written; set MOMATTN_CACHE to a "
                               "writable folder")  # 13 s a process, and said so at the end of 11 lines (review)
    with file_lock(lock_beside(lib), waiting="the CPU scan kernel"):
        if _intact(lib):  # another process built it while this one waited
            return lib
        if lib.exists():
            log.warning("momattn: the cached CPU scan kernel %s does not match its recorded digest (damaged, or "
                        "from an older momattn); building it again", lib)
        remove_stale_temps(cache, pattern=".ema_scan-*.tmp*")  # the cache folder may be shared: the kernel's own
        tmp = cache / f".{lib.name}.{os.urandom(4).hex()}.tmp{os.getpid()}@{_host()}"
        try:
            for flags in (_flags(), PORTABLE):
                res = subprocess.run([*cxx, *flags, *extra, "-o", str(tmp), str(SOURCE)], capture_output=True,
                                     text=True, timeout=300)
                if not res.returncode:
                    break
            else:
                said = _errors(res.stderr) or res.stdout.strip()[-2000:]
                raise RuntimeError(f"{' '.join(cxx)} failed with exit status {res.returncode}"
                                   + (f": {said}" if said else ", saying nothing"))
            with open(tmp, "rb") as f:  # its bytes on disk before the name says it is built
                os.fsync(f.fileno())
                digest = hashlib.sha256(f.read()).hexdigest()
            os.replace(tmp, lib)
            _digest_file(lib).write_text(digest + "\n")  # last: a library without it is built again
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return lib


class _CacheUnwritable(RuntimeError):
    """The cache cannot hold a build: no other build (without OpenMP) is tried."""


def _errors(said: str) -> str:
    """A compiler's error lines, without its warnings and notes (the -Wpsabi notes hid the cause at the end)."""
    lines = [line for line in said.splitlines() if re.search(r"error|cannot|undefined reference", line, re.I)]
    return "; ".join(lines[:5])[-2000:] if lines else said.strip()[-2000:]


def _elf_whole(lib: Path) -> bool:
    """Whether an ELF file holds the program and section tables its header points at (whole, not cut short)."""
    try:
        with open(lib, "rb") as f:
            head = f.read(64)
        size = lib.stat().st_size
    except OSError:
        return False
    if len(head) < 52 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
        return False
    order = "<" if head[5] == 1 else ">"
    if head[4] == 2:  # 64-bit: e_phoff, e_shoff at 0x20, 0x28; the counts at 0x36
        if len(head) < 64:
            return False
        phoff, shoff = struct.unpack_from(order + "QQ", head, 0x20)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", head, 0x36)
    else:  # 32-bit: at 0x1C, 0x20; the counts at 0x2A
        phoff, shoff = struct.unpack_from(order + "II", head, 0x1C)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", head, 0x2A)
    return 0 < shoff + shentsize * shnum <= size and phoff + phentsize * phnum <= size


def _private(cache: Path) -> Path:
    """The folder the kernel is cached in: `cache`, unless other users can write there (a shared cache, group- or
    world-writable), where a library planted under the predictable name, with its digest beside it, was loaded and
    ran its code (found by review): a folder of this user's own inside it then, which only this user can write.
    Such a folder is made only where no other user can rename it (a cache of this user's that only its group may
    write, as umask 002 makes them; or one of this user's or root's with the sticky bit, as /tmp), and a link is
    followed once, here: another user's link in /tmp could point elsewhere between this check and the load."""
    uid = getattr(os, "getuid", lambda: None)()
    try:
        made = not cache.exists()
        cache.mkdir(parents=True, exist_ok=True)  # made now, not after the check (a folder planted in between)
        cache = cache.resolve(strict=True)
        if made:  # under umask 002 (Debian's for users) it was group-writable: this user's alone
            cache.chmod(cache.stat().st_mode & ~0o022)
        st = cache.stat()
    except (OSError, RuntimeError):  # RuntimeError: a link loop
        return cache  # said where it is made
    if uid is None or (st.st_uid in (uid, 0) and not st.st_mode & 0o022):  # only this user (or root) writes here
        return cache
    if not (st.st_uid == uid and not st.st_mode & 0o002) and (st.st_uid not in (uid, 0) or
                                                              not st.st_mode & stat.S_ISVTX):
        raise _CacheUnwritable(f"the kernel cache folder {cache} can be written by other users, and " + (
            f"belongs to another (uid {st.st_uid})" if st.st_uid not in (uid, 0) else "has no sticky bit") +
            ": a folder of this user's own in it could be renamed and replaced with another's; " + (
                f"chmod o-w {cache}, or " if st.st_uid == uid else "") + "set MOMATTN_CACHE to a folder of your own")
    own = cache / f"user-{uid}"
    try:
        own.mkdir(mode=0o700, exist_ok=True)
        st = own.lstat()
    except OSError as e:
        raise _CacheUnwritable(f"the kernel cache folder {cache} is writable by other users, and a folder of this "
                               f"user's own cannot be made in it ({e.strerror}); set MOMATTN_CACHE to a folder of "
                               "your own") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        raise _CacheUnwritable(f"the kernel cache folder {own} is not this user's own (a link, another owner, or "
                               "open to others); set MOMATTN_CACHE to a folder of your own")
    return own


def _digest_file(lib: Path) -> Path:
    return lib.with_name(lib.name + ".sha256")


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


def _intact(lib: Path) -> bool:
    """The library is there and its bytes are the ones its build recorded."""
    try:
        return hashlib.sha256(lib.read_bytes()).hexdigest() == _digest_file(lib).read_text().strip()
    except OSError:
        return False


def load() -> ctypes.CDLL | None:
    """The kernel, built if needed (with OpenMP where torch has GNU OpenMP, else, or if that fails, without);
    None (after one warning) where it cannot be built."""
    global _LIB, OPENMP
    if _LIB is None:
        try:
            cxx = shlex.split(os.environ.get("CXX", "")) or [
                c for c in (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++"),) if c]
            if not cxx:
                raise RuntimeError("no C++ compiler found (c++, g++, clang++ or $CXX)")
            omp, without_omp = _openmp(cxx), None
            for extra in ([omp, []] if omp else [[]]):
                try:
                    lib = ctypes.CDLL(str(_build(cxx, extra)))
                    OPENMP = bool(extra)
                    break
                except (OSError, RuntimeError, subprocess.SubprocessError) as e:  # e.g. a compiler without OpenMP
                    if not extra or isinstance(e, _CacheUnwritable):
                        raise
                    without_omp = f"{' '.join(extra)} ({e})"
            if without_omp and not OPENMP:  # said only when the build without it worked (else the warning says all)
                log.info("momattn: the CPU scan kernel did not build or load with %s; it was built with its own "
                         "threads", without_omp)
            for name in _NAMES.values():
                getattr(lib, f"{name}_forward").restype = ctypes.c_int
                getattr(lib, f"{name}_backward").restype = ctypes.c_int
            for name in ("attn_grad_f32", "attn_grad_bf16"):  # momattn/cpu_attention.py's
                getattr(lib, name).restype = ctypes.c_int
            _LIB = lib
        except (OSError, RuntimeError, ValueError, AttributeError, subprocess.SubprocessError) as e:  # ValueError: a
            # malformed $CXX; AttributeError: a library without the kernel's functions
            from momattn.hardware import cpu_has_amx

            log.warning("momattn: the CPU scan kernel could not be built (%s); using the matmul scans of "
                        "momattn/ops.py instead (slower on CPU; the same results in float32, while in bf16 training "
                        "their chunk matmuls round to bf16)%s", e,
                        ", and SDPA's attention backward for bf16 training" if cpu_has_amx() else "")
            _LIB = False
    return _LIB or None


def supports(x: torch.Tensor) -> bool:
    """Whether the kernel can scan x (B, T, C) here: CPU, float32/bfloat16/float64, and the kernel builds."""
    return x.device.type == "cpu" and x.dtype in _NAMES and x.dim() == 3 and load() is not None


def _unit_channels(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 or x.size(-1) == 1 else x.contiguous()


def _ok(status: int) -> None:
    if status == 2:  # a call the kernel does not take (a bug here, not the input's)
        raise ValueError("cpu_scan: the kernel's backward takes an addend only without rate gradients")
    if status:
        raise RuntimeError("the CPU scan kernel could not get a thread or a buffer (out of memory?); "
                           "MOMATTN_SCAN_BACKEND=torch uses the matmul scans")


def _add_layout(add: torch.Tensor) -> tuple[int, int, int, int]:
    """Strides (batch, time, head) and head size of an addend: (B, T, C), or (B, H, T, D) heads (as attention
    returns them); channels at unit stride."""
    if add.dim() == 3:
        return add.stride(0), add.stride(1), 0, add.shape[2]
    return add.stride(0), add.stride(2), add.stride(1), add.shape[3]


def _forward(x: torch.Tensor, p: torch.Tensor, g: torch.Tensor, strict: bool, add: torch.Tensor | None = None,
             s0: torch.Tensor | None = None, final: torch.Tensor | None = None) -> torch.Tensor:
    """y (B, T, C); s0 / final: (B, C, R) views (any strides) of the states to start from / to fill."""
    B, T, C = x.shape
    y = torch.empty(B, T, C, dtype=x.dtype)
    ab, at, ah, D = _add_layout(add) if add is not None else (0, 0, 0, 1)
    ss = (ctypes.c_int64 * 6)(*(s0.stride() if s0 is not None else (0, 0, 0)),
                              *(final.stride() if final is not None else (0, 0, 0)))
    _ok(getattr(load(), _NAMES[x.dtype] + "_forward")(
        _P(x.data_ptr()), _I(B), _I(T), _I(C), _I(x.stride(0)), _I(x.stride(1)), _P(p.data_ptr()),
        _P(g.data_ptr()), _I(p.shape[0]), _INT(strict), _P(y.data_ptr()),
        _P(add.data_ptr() if add is not None else None), _I(ab), _I(at), _I(ah), _I(D),
        _P(s0.data_ptr() if s0 is not None else None), _P(final.data_ptr() if final is not None else None), ss,
        _INT(torch.get_num_threads())))
    return y


def _backward(x: torch.Tensor, gy: torch.Tensor, p: torch.Tensor, g: torch.Tensor, strict: bool, rates: bool,
              add: torch.Tensor | None = None):
    """dx (B, T, C), and with `rates` the rates' and weights' gradients; add (only without rates): another gradient
    of x, (B, T, C) or (B, H, T, D) heads with channels at unit stride, added to dx as it is written."""
    B, T, C = x.shape
    R = p.shape[0]
    dx = torch.empty(B, T, C, dtype=x.dtype)
    dp = torch.empty(B, R, C, dtype=p.dtype) if rates else None  # per batch row: summed below, thread-independent
    dg = torch.empty(B, R, C, dtype=p.dtype) if rates else None
    ab, at, ah, D = _add_layout(add) if add is not None else (0, 0, 0, 1)
    _ok(getattr(load(), _NAMES[x.dtype] + "_backward")(
        _P(x.data_ptr()), _I(x.stride(0)), _I(x.stride(1)), _P(gy.data_ptr()), _I(gy.stride(0)), _I(gy.stride(1)),
        _I(B), _I(T), _I(C), _P(p.data_ptr()), _P(g.data_ptr()), _I(R), _INT(strict), _P(dx.data_ptr()),
        _P(dp.data_ptr() if rates else None), _P(dg.data_ptr() if rates else None),
        _P(add.data_ptr() if add is not None else None), _I(ab), _I(at), _I(ah), _I(D), _INT(torch.get_num_threads())))
    return dx, (dp.sum(0) if rates else None), (dg.sum(0) if rates else None)


class ValueLink:
    """Hands the term's value gradient from the kernel's backward to attention's (see `link_values`)."""

    __slots__ = ("pending", "node", "__weakref__")

    def __init__(self):
        self.pending = None  # (backward pass id, dv -> dv plus the term's value gradient), set by _Scan's backward
        self.node = None  # a weak reference to the _Join node: the scan defers only to a pass that will run it

    def defer(self, finish) -> bool:
        """Leave the value gradient to the join, if this backward pass will run it (a pass may stop short of it:
        autograd.grad for a tensor between the two, an error); False: the scan must give it itself."""
        self.pending = None
        node = self.node() if self.node is not None else None
        if node is None or not torch._C._will_engine_execute_node(node):
            return False
        self.pending = (torch._C._current_graph_task_id(), finish)
        return True

    def finish(self, dv: torch.Tensor) -> torch.Tensor:
        """dv plus the value gradient deferred to it in this backward pass (none: dv)."""
        pending, self.pending = self.pending, None
        if pending is None or pending[0] != torch._C._current_graph_task_id():
            return dv
        return pending[1](dv)


class _Join(torch.autograd.Function):
    """The identity on the values attention reads. Its backward runs after attention's (whose output the scan
    took as its addend), and finishes the scan's deferred backward with attention's value gradient as the addend:
    one pass writes their sum, instead of the kernel's own output, a layout copy of attention's and their sum."""

    @staticmethod
    def forward(ctx, v, link):
        ctx.link = link
        return v.view_as(v)

    @staticmethod
    def backward(ctx, dv):
        return ctx.link.finish(dv), None


def link_values(v: torch.Tensor) -> tuple[torch.Tensor, ValueLink]:
    """(v for attention to read, a link for `ema(..., link=)`), for v (B, H, T, D) the heads view of the scan's
    values x (B, T, H*D). The scan must take attention's output (computed from the returned v) as its addend:
    then its backward waits for attention's and writes the two value gradients' sum in one pass (rates that
    need no gradient only; otherwise, or where the layouts do not suit, the link does nothing)."""
    link = ValueLink()
    out = _Join.apply(v, link)
    link.node = weakref.ref(out.grad_fn)
    return out, link


def addend_grad(gy: torch.Tensor, add_shape: torch.Size | None) -> torch.Tensor | None:
    """The gradient of an addend of a scan's output (B, T, C): the output's gradient gy, in the addend's shape,
    (B, T, C) or (B, H, T, D) heads (a view); None without an addend."""
    if add_shape is None or len(add_shape) == 3:
        return None if add_shape is None else gy
    B, H, T, D = add_shape
    return gy.view(B, T, H, D).transpose(1, 2)


class _Scan(torch.autograd.Function):
    """The kernel's forward and backward; the values are saved only for the rates' and weights' gradients
    (the values' own gradient is the reverse scan of the output's, which needs nothing full-size). An addend's
    gradient is the output's, in its shape."""

    @staticmethod
    def forward(ctx, x, p, g, strict, fallback, add, link):
        ctx.strict, ctx.fallback, ctx.link = strict, fallback, link
        ctx.rates = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        ctx.add_shape = None if add is None else add.shape
        ctx.save_for_backward(x if ctx.rates else None, p, g)
        return _forward(x, p.contiguous(), g.contiguous(), strict, add)

    @staticmethod
    def backward(ctx, gy):
        x, p, g = ctx.saved_tensors
        d_add = addend_grad(gy, ctx.add_shape) if ctx.needs_input_grad[5] else None
        if ctx.link is not None:
            ctx.link.pending = None  # nothing left from an earlier pass that stopped short of the join
        if torch.is_grad_enabled():  # create_graph: a differentiable backward
            if not ctx.rates:  # the reverse scan of gy, by this kernel (linear in gy)
                return ema(gy.flip(1), p, g, ctx.strict, ctx.fallback).flip(1), None, None, None, None, d_add, None
            # recompute through the matmul scans, from the saved inputs, so that the graph reaches them
            want = [t for t, need in zip((x, p, g), ctx.needs_input_grad) if need]
            grads = iter(torch.autograd.grad(ctx.fallback(x, p, g).to(x.dtype), want, gy, create_graph=True))
            return (*(next(grads) if need else None for need in ctx.needs_input_grad[:3]), None, None, d_add, None)
        if ctx.rates:
            dx, dp, dg = _backward(x, _unit_channels(gy), p.contiguous(), g.contiguous(), ctx.strict, True)
            return dx, dp, dg, None, None, d_add, None
        gy, p, g = _unit_channels(gy), p.contiguous(), g.contiguous()
        if ctx.link is not None and ctx.needs_input_grad[0] and ctx.needs_input_grad[5] \
                and ctx.link.defer(functools.partial(_joined_backward, gy, p, g, ctx.strict)):
            # attention (whose output was the addend) has yet to give its value gradient: finish there (_Join)
            return None, None, None, None, None, d_add, None
        dx = _backward(gy, gy, p, g, ctx.strict, False)[0]  # x unread
        return dx, None, None, None, None, d_add, None


def _joined_backward(gy, p, g, strict, dv):
    """The scan's value gradient plus attention's dv (B, H, T, D), returned as a (B, H, T, D) view of one
    (B, T, H*D) tensor; attention's gradient read in place where its layout and dtype suit the kernel."""
    B, H, T, D = dv.shape
    if gy.shape != (B, T, H * D):
        raise RuntimeError(f"cpu_scan: a linked scan of {tuple(gy.shape)} values got attention's gradient of "
                           f"{tuple(dv.shape)}: link_values must take the heads view of the scanned values")
    if dv.dtype == gy.dtype and dv.stride(-1) == 1:
        dx = _backward(gy, gy, p, g, strict, False, add=dv)[0]
        return dx.view(B, T, H, D).transpose(1, 2)
    dx = _backward(gy, gy, p, g, strict, False)[0]
    return dv + dx.view(B, T, H, D).transpose(1, 2)


def ema_with_states(x: torch.Tensor, p: torch.Tensor, g: torch.Tensor, strict: bool, s0: torch.Tensor | None,
                    final: bool, add: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The scan continuing from states s0 (B, C, R) (a prefix's, any strides; None: zeros) and, if `final`, the
    states after the last position, (B, C, R) in float32 (float64 for float64 x): evaluation and generation with a
    cache, which take no gradient (there is no backward for the states; the ops scan with the matmul scans then)."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, p, g, s0, add)):
        raise RuntimeError("cpu_scan.ema_with_states has no backward; use the matmul scans for gradients")
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    B, T, C = x.shape
    R = p.shape[0]
    if s0 is not None:
        s0 = s0.to(acc)
    last = torch.empty(B, C, R, dtype=acc) if final else None
    y = _forward(_unit_channels(x), p.to(acc).contiguous(), g.to(acc).contiguous(), strict,
                 None if add is None else _unit_channels(add), s0, last)
    return y, last


def ema(x: torch.Tensor, p: torch.Tensor, g: torch.Tensor, strict: bool,
        fallback: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        add: torch.Tensor | None = None, link: ValueLink | None = None) -> torch.Tensor:
    """The scan of x (B, T, C) by rates p and weights g (R, C), in float32 (float64 for float64 x), differentiable
    in all three; returns (B, T, C) in x's dtype. fallback(x, p, g) computes the same differentiably (the matmul
    scans), for a second derivative. add: a tensor of x's dtype added to the output before its rounding, (B, T, C)
    or (B, H, T, D) with H * D = C (an attention output: read in place, heads merged as the output is written).
    link: from `link_values` on the heads view of x, whose attention output is `add`."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    if add is not None:
        B, T, C = x.shape
        heads = add.dim() == 4 and (add.shape[0], add.shape[2], add.shape[1] * add.shape[3]) == (B, T, C)
        if add.dtype != x.dtype or not (heads or add.shape == x.shape):
            raise ValueError(f"cpu_scan.ema: add must be (B, T, C) = {tuple(x.shape)} or (B, H, T, D) with H * D = C, "
                             f"of dtype {x.dtype}; got {tuple(add.shape)} {add.dtype}")
        add = _unit_channels(add)
    return _Scan.apply(_unit_channels(x), p.to(acc), g.to(acc), strict, fallback, add, link)
