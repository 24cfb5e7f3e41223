"""momattn.cpu_scan: the C++ kernel that scans both ops' training paths on CPU (SCAN_BACKEND "auto" there).

The tests of tests/test_ops.py that exercise a training path (no states) run here again with the kernel, against
the same float64 references; the rest check what is the kernel's own: one rounding of a bf16 output, nothing
full-size saved for fixed rates, thread-independent results, agreement with the matmul scans, the fallback."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from momattn import cpu_scan, ops
from momattn.ops import momentum_ema
from tests.test_ops import (  # noqa: F401  (collected here, with the kernel)
    F64,
    mom,
    mr,
    multirate_bf16_grads,
    test_backward_inside_autocast,
    test_final_states_stay_in_the_accumulation_dtype_at_every_length,
    test_learnable_rate_gradient_is_accurate_in_float32_at_every_rate,
    test_low_precision_inputs_get_grads_of_their_dtype,
    test_memory_is_linear_in_T,
    test_momentum_chained_states_equal_one_pass,
    test_momentum_default_chunk_and_eta_shape_1,
    test_momentum_eta_exactly_zero,
    test_momentum_fixed_rate_gradgradcheck,
    test_momentum_fixed_rate_gradients_match_naive,
    test_momentum_float32_matches_naive,
    test_momentum_grad_parity_with_naive,
    test_momentum_gradcheck,
    test_momentum_initial_state_matches_naive,
    test_momentum_long_sequence_eta_near_one,
    test_momentum_matches_naive,
    test_momentum_token_by_token_after_prefix,
    test_multirate_chained_states_equal_one_pass,
    test_multirate_custom_backward_matches_naive,
    test_multirate_default_chunk_float32,
    test_multirate_empty_batch_or_channels,
    test_multirate_grad_parity_with_naive,
    test_multirate_gradcheck,
    test_multirate_initial_state_matches_naive,
    test_multirate_matches_naive,
    test_multirate_p_exactly_zero,
    test_multirate_second_derivatives,
    test_multirate_token_by_token_after_prefix,
    test_small_rates_float32_match_float64,
    test_states_stay_float32_for_low_precision_inputs,
    test_strided_inputs_match_contiguous,
)

COMPILER = any(shutil.which(c) for c in ("c++", "g++", "clang++"))


@pytest.fixture(autouse=True)
def kernel(monkeypatch):
    """Every test here scans with the kernel; it must build wherever there is a compiler (CI has one)."""
    if not COMPILER:
        pytest.skip("no C++ compiler: the kernel cannot be built here (the matmul scans are used)")
    assert cpu_scan.load() is not None, "the CPU scan kernel did not build (see the warning)"
    monkeypatch.setattr(ops, "SCAN_BACKEND", "cpu")


@pytest.fixture
def carry():
    """test_ops' carry variants are the matmul scans'; the kernel has one way."""
    return "kernel"


def test_the_kernel_runs(monkeypatch):
    """The training paths and evaluation with states call the kernel here (so the tests above test it), and not once
    it is switched off."""
    calls = []
    real = cpu_scan._forward
    monkeypatch.setattr(cpu_scan, "_forward", lambda *a: calls.append(1) or real(*a))
    v = torch.randn(2, 3, 20, 4, requires_grad=True)
    mom(v, 0.5)
    mr(torch.randn(2, 20, 6), torch.rand(6, 2), torch.randn(6, 2))
    momentum_ema(v, 0.5, output_final_state=True)  # states with a gradient to take: the matmul scans
    assert len(calls) == 2
    with torch.no_grad():  # states without one (evaluation with a cache): the kernel
        momentum_ema(v, 0.5, output_final_state=True)
    assert len(calls) == 3
    # float16, forced onto the kernel, which does not take it: the matmul scans, said once (in silence: review)
    monkeypatch.setattr(ops, "_SAID_CPU", set())
    with pytest.warns(UserWarning, match="SCAN_BACKEND is 'cpu', but the CPU scan kernel takes float32, bfloat16 "
                                         "and float64 values, not torch.float16: the matmul scans run these"):
        mom(v.detach().half(), 0.5)
    assert len(calls) == 3
    monkeypatch.setattr(ops, "SCAN_BACKEND", "torch")
    mom(v, 0.5)
    assert len(calls) == 3


def test_bf16_output_rounded_once():
    """bf16 values, float32 states: each output is the float32 sum rounded once, within 2^-8 relative of the exact
    sum of the bf16 values (plus float32 accumulation), at every rate (2048 of them) and length; in training and
    evaluation alike (batch-independent)."""
    torch.manual_seed(0)
    for v, eta, inc in [
        (torch.rand(1, 2048, 128, 16), torch.linspace(0.02, 0.98, 2048), False),
        (torch.randn(2, 3, 1000, 8), torch.tensor([0.999, 0.3, 0.0]), True),
        (torch.randn(2, 3, 3000, 8), torch.tensor([0.5, 0.9, 0.99]), False),
    ]:
        v = v.bfloat16()
        out = mom(v.detach().requires_grad_(), eta, inc).detach()
        assert out.dtype == torch.bfloat16
        exact = mom(v.double(), eta.double(), inc)
        scale = mom(v.double().abs(), eta.double(), inc)
        err = (out.double() - exact).abs()
        assert (err <= 2.0**-8 * exact.abs() + 2.0**-16 * scale).all(), (err / scale).max().item()
        assert torch.equal(mom(v, eta, inc), out)  # no gradient: the same path
    x = torch.randn(3, 500, 24).bfloat16()
    p, gamma = torch.sigmoid(torch.randn(24, 8) * 1.5), torch.randn(24, 8)
    out = mr(x, p, gamma)
    exact = mr(x.double(), p.double(), gamma.double())
    scale = mr(x.double().abs(), p.double(), gamma.double().abs())
    assert ((out.double() - exact).abs() <= 2.0**-8 * exact.abs() + 2.0**-16 * scale).all()


@pytest.mark.parametrize("include_current", [False, True])
def test_bf16_gradients(include_current):
    """bf16 values and output gradient: the values' gradient rounded once, the rates' (float32) within 0.5% of the
    exact one (the matmul scans' bf16 path: 5%)."""
    torch.manual_seed(0)
    v, w = torch.randn(4, 3, 300, 16).bfloat16(), torch.randn(4, 3, 300, 16).bfloat16()
    grads = {}
    for dtype in (F64, torch.bfloat16):
        eta = torch.tensor([0.3, 0.9, 0.99], dtype=F64 if dtype == F64 else torch.float32, requires_grad=True)
        x = v.to(dtype).requires_grad_()
        momentum_ema(x, eta, include_current)[0].backward(w.to(dtype))
        grads[dtype] = x.grad.double(), eta.grad.double()
    (dv, de), (dv64, de64) = grads[torch.bfloat16], grads[F64]
    scale = mom(w.double().abs().flip(2), torch.tensor([0.3, 0.9, 0.99], dtype=F64), include_current).flip(2)
    assert ((dv - dv64).abs() <= 2.0**-8 * dv64.abs() + 2.0**-16 * scale).all()
    assert (de - de64).abs().max() <= 0.005 * de64.abs().max()
    got = multirate_bf16_grads()
    for low, exact in zip(got[torch.bfloat16], got[F64]):
        assert (low - exact).abs().max() <= 0.005 * exact.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_agrees_with_the_matmul_scans(dtype, monkeypatch):
    """The model's shapes and strides (a slice of the qkv projection), both ops, all gradients: the kernel and
    the matmul scans agree to their precision."""
    torch.manual_seed(0)
    B, T, H, D, R = 2, 300, 4, 16, 8
    C = H * D
    qkv = torch.randn(B, T, 3 * C)
    w = torch.randn(B, T, C)
    p0, g0 = torch.sigmoid(torch.randn(C, R)), torch.randn(C, R) * 0.3
    out = {}
    for backend in ("cpu", "torch"):
        monkeypatch.setattr(ops, "SCAN_BACKEND", backend)
        base = qkv.to(dtype).clone().requires_grad_()
        eta = torch.tensor([0.2, 0.5, 0.8, 0.95], requires_grad=True)
        p, g = p0.clone().requires_grad_(), g0.clone().requires_grad_()
        v = base[..., 2 * C :]
        y1 = mom(v.view(B, T, H, D).transpose(1, 2), eta).transpose(1, 2).reshape(B, T, C)
        y2 = mr(v, p, g)
        ((y1.float() + y2.float()) * w).sum().backward()
        out[backend] = [t.float() for t in (y1, y2, base.grad, eta.grad, p.grad, g.grad)]
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for a, b in zip(out["cpu"], out["torch"]):
        assert ((a - b).abs().max() / b.abs().max()).item() < tol


def test_fixed_rates_save_nothing_full_size():
    """Fixed rates: the values' gradient is the reverse scan of the output's, so nothing full-size is saved; rates
    that learn keep the values (a view of the input) alone."""

    def saved(eta):
        sizes = []
        v = torch.randn(2, 4, 150, 8, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            out = mom(v, eta)
        out.sum().backward()
        return sum(s >= v.numel() for s in sizes)

    assert saved(0.5) == 0 and saved(torch.tensor([0.3, 0.5, 0.7, 0.9])) == 0
    assert saved(torch.tensor([0.3, 0.5, 0.7, 0.9], requires_grad=True)) == 1


@pytest.mark.parametrize("C", [200, 208])  # the per-channel loops; the tiled path (C % 16 == 0)
def test_results_do_not_depend_on_threads(C):
    _thread_independent(C)


def _thread_independent(C: int) -> None:
    torch.manual_seed(0)
    v = torch.randn(5, 70, C, requires_grad=True)
    p, g = torch.rand(C, 3, requires_grad=True), torch.randn(C, 3, requires_grad=True)
    res = []
    old = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            for t in (v, p, g):
                t.grad = None
            y = mr(v, p, g)
            y.backward(torch.ones_like(y))
            res.append([y, v.grad, p.grad, g.grad])
    finally:
        torch.set_num_threads(old)
    for other in res[1:]:
        assert all(torch.equal(a, b) for a, b in zip(res[0], other))


def _no_fallback(*_):
    raise AssertionError("no second derivative here")


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize(("R", "T"), [(2, 70), (3, 70), (5, 70), (8, 70), (4, 1), (3, 5)])
def test_tiled_rates_agree_with_float64(strict, R, T):
    """Two or more rates on C % 16 == 0 channels in float32 / bf16 take the kernel's tiled path (time tiles, rates
    in registers); float64 takes the per-channel loops. 80 channels: a 64-channel block and a 16-channel one; 70
    steps: tiles of 32, 32 and 6 (1 and 5: one short tile); heads of 40 channels cross the 64-channel block;
    R = 3, 5: groups of 4, 2, 1; the initial states not contiguous."""
    gen = torch.Generator().manual_seed(R + 10 * strict)
    B, C, H = 3, 80, 2
    qkv = torch.randn(B, T, 3 * C, generator=gen)
    x = qkv[..., C : 2 * C]  # (B, T, C) strided, as split from qkv
    add = torch.randn(B, T, H, C // H, generator=gen).transpose(1, 2)  # (B, H, T, D): attention's layout
    p, w = torch.rand(R, C, generator=gen) * 0.99, torch.randn(R, C, generator=gen)
    s0 = torch.randn(B, R, C, generator=gen).transpose(1, 2)  # (B, C, R), not contiguous
    gy = torch.randn(B, T, C, generator=gen)

    y64, last64 = cpu_scan.ema_with_states(x.double(), p.double(), w.double(), strict, s0.double(), True,
                                           add.double())
    y32, last32 = cpu_scan.ema_with_states(x, p, w, strict, s0, True, add)
    torch.testing.assert_close(y32.double(), y64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last32.double(), last64, rtol=1e-5, atol=1e-5)

    def grads(dtype, rates):
        base = qkv.to(dtype).clone().requires_grad_()
        xs = base[..., C : 2 * C]
        ps, ws = (t.to(dtype if dtype == torch.float64 else torch.float32).clone().requires_grad_(rates) for t in (p, w))
        adds = add.to(dtype).clone().requires_grad_()
        y = cpu_scan.ema(xs, ps, ws, strict, _no_fallback, adds)
        y.backward(gy.to(dtype))
        return y, base.grad, ps.grad, ws.grad, adds.grad

    for rates in (True, False):  # without rate gradients the backward is the forward run backward in time
        ref, f32 = grads(torch.float64, rates), grads(torch.float32, rates)
        for a, b in zip(f32, ref):
            if b is not None:
                torch.testing.assert_close(a.double(), b, rtol=2e-5, atol=2e-5)
    # bf16 values: the same float32 sums, rounded once
    xb, addb = x.bfloat16(), add.bfloat16()
    yb = cpu_scan.ema_with_states(xb, p, w, strict, None, False, addb)[0]
    assert torch.equal(yb, cpu_scan.ema_with_states(xb.float(), p, w, strict, None, False, addb.float())[0].bfloat16())


def test_unbuildable_kernel_falls_back_with_one_warning(monkeypatch, caplog):
    """No compiler: one warning, then the matmul scans (the same numbers); SCAN_BACKEND "cpu" says why it fails."""
    monkeypatch.setattr(cpu_scan, "_LIB", None)
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    monkeypatch.setattr(ops, "SCAN_BACKEND", "auto")
    v = torch.randn(2, 3, 40, 4, dtype=F64)
    with caplog.at_level("WARNING"):
        out = mom(v, 0.6)
        mom(v, 0.6)
    assert sum("could not be built" in r.message for r in caplog.records) == 1
    monkeypatch.setattr(ops, "SCAN_BACKEND", "torch")
    torch.testing.assert_close(out, mom(v, 0.6), rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(ops, "SCAN_BACKEND", "cpu")
    with pytest.raises(RuntimeError, match="SCAN_BACKEND is 'cpu' but the CPU scan kernel cannot be built"):
        mom(v, 0.6)


def test_built_once_into_the_cache(tmp_path, monkeypatch):
    """The library is keyed by source, compiler and CPU: a second load reuses the file."""
    monkeypatch.setenv("MOMATTN_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_scan, "_LIB", None)
    assert cpu_scan.load() is not None
    built = list(tmp_path.glob("ema_scan-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(cpu_scan, "_LIB", None)
    assert cpu_scan.load() is not None and built[0].stat().st_mtime_ns == stamp
    assert not list(tmp_path.glob("tmp*")) and not list(tmp_path.glob(".*.tmp*"))


def test_the_cache_named_with_a_tilde_is_the_home_folders_for_the_kernel_as_for_the_tokens(tmp_path, monkeypatch):
    # MOMATTN_CACHE='~/mc': the token cache went to $HOME/mc, the kernel into a folder named ~ of the working folder
    # (rebuilt in every folder; `rm -rf ~` to clean it up; found by review)
    from momattn.config import TrainConfig

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MOMATTN_CACHE", "~/mc")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cpu_scan, "_intact", lambda lib: True)  # taken as built: the path alone is asked
    assert cpu_scan._build(["true"], []).parent == tmp_path / "home" / "mc"
    assert TrainConfig.cache_dir.fget(SimpleNamespace(loader=SimpleNamespace(cache_dir=None),
                                                      paths=SimpleNamespace(cache_dir=None))) == tmp_path / "home" / "mc"
    monkeypatch.setenv("MOMATTN_CACHE", "")  # empty: unset (the token cache was the working folder)
    assert cpu_scan._build(["true"], []).parent == tmp_path / "home" / ".cache" / "momattn"


def test_a_damaged_cached_kernel_is_built_again_not_loaded(tmp_path, monkeypatch, caplog):
    """A truncated library (its bytes not on disk before a crash) crashed every momentum run with SIGBUS when
    loaded, and an empty one was passed over for another build, each kept for good (found by review); a killed
    build's temporary file stayed in the cache."""
    import os
    import time

    from momattn.io import _host

    assert cpu_scan.load() is not None  # built in this worker's cache: copied, not built again (5 s a build)
    monkeypatch.setenv("MOMATTN_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_scan, "OPENMP", cpu_scan.OPENMP)  # restored with _LIB
    lib = Path(cpu_scan._LIB._name)
    for built in (lib, cpu_scan._digest_file(lib)):
        (tmp_path / built.name).write_bytes(built.read_bytes())
    lib = tmp_path / lib.name
    monkeypatch.setattr(cpu_scan, "_LIB", None)
    assert cpu_scan.load() is not None and cpu_scan._LIB._name == str(lib)
    good = lib.read_bytes()
    killed = tmp_path / f".{lib.name}.0123abcd.tmp{2**22 + 1}@{_host()}"  # a build killed: its PID is gone
    killed.write_bytes(good[:100])
    os.utime(killed, (time.time() - 3600,) * 2)
    for damage in (b"", b"\0" * len(good)):  # seen as the truncated file below is (one build each: not repeated)
        (tmp_path / "damaged").write_bytes(damage)  # in place of the file (this process maps the one it loaded)
        os.replace(tmp_path / "damaged", lib)
        assert not cpu_scan._intact(lib)
    for damage in (good[:5000],):
        (tmp_path / "damaged").write_bytes(damage)  # in place of the file (this process maps the one it loaded)
        os.replace(tmp_path / "damaged", lib)
        monkeypatch.setattr(cpu_scan, "_LIB", None)
        with caplog.at_level("WARNING"):
            assert cpu_scan.load() is not None
        assert "does not match its recorded digest (damaged, or from an older momattn); building it again" in \
            caplog.text
        caplog.clear()
        assert lib.read_bytes() != damage and cpu_scan._intact(lib)
        torch.testing.assert_close(mom(torch.ones(1, 1, 3, 2, dtype=F64), 0.5)[0, 0, :, 0],
                                   torch.tensor([0.0, 0.5, 0.75], dtype=F64))
    assert not killed.exists()
    # an older momattn's build (no digest beside it) in a cache this process cannot write: loaded as before (a
    # rebuild there failed, and the kernel was turned off)
    cpu_scan._digest_file(lib).unlink()
    built = lib.stat().st_mtime_ns
    monkeypatch.setattr(cpu_scan, "_writable", lambda folder: False)
    monkeypatch.setattr(cpu_scan, "_LIB", None)
    with caplog.at_level("WARNING"):
        assert cpu_scan.load() is not None
    assert lib.stat().st_mtime_ns == built and "building it again" not in caplog.text
    # ... unless it is cut short: loaded unchecked, its first call was a bus error (found by review)
    (tmp_path / "cut").write_bytes(good[:100000])
    os.replace(tmp_path / "cut", lib)
    monkeypatch.setattr(cpu_scan, "_LIB", None)
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert cpu_scan.load() is None
    assert f"the cached CPU scan kernel {lib} is cut short, and its folder cannot be written" in caplog.text


def test_a_cache_folder_that_cannot_be_written_is_said_at_once(tmp_path, monkeypatch, caplog):
    """Four full builds (with and without OpenMP, native and portable flags) failed at the link, 13 s in every
    process, and the warning's 11 lines ended with the cause (found by review)."""
    monkeypatch.setenv("MOMATTN_CACHE", str(tmp_path / "ro"))
    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(cpu_scan, "_writable", lambda folder: False)
    monkeypatch.setattr(cpu_scan, "_LIB", None)
    ran = []
    real = cpu_scan.subprocess.run
    monkeypatch.setattr(cpu_scan.subprocess, "run", lambda cmd, **kw: ran.append(cmd) or real(cmd, **kw))
    with caplog.at_level("WARNING"):
        assert cpu_scan.load() is None
    assert f"the kernel cache folder {tmp_path / 'ro'} cannot be written; set MOMATTN_CACHE" in caplog.text
    assert not [c for c in ran if "-o" in c]  # no build tried
    # a compiler's warnings and notes are left out of a failed build's message: its errors are the cause
    said = "a.cpp:1:1: warning: AVX512F vector return without AVX512F enabled changes the ABI [-Wpsabi]\n" \
           "  note: here\n/usr/bin/ld: cannot open output file x.so: Read-only file system\n"
    assert cpu_scan._errors(said) == "/usr/bin/ld: cannot open output file x.so: Read-only file system"


def test_a_cache_others_can_write_holds_the_kernel_in_a_folder_of_this_users_own(tmp_path, monkeypatch):
    """A library planted under the kernel's predictable name in a shared cache, with its digest beside it, was
    loaded and ran its code (found by review): where other users can write the cache, the kernel is built and read
    in a folder only this user can write."""
    import os

    tmp_path = tmp_path.resolve()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # as /tmp: others write, none renames another's entry
    own = cpu_scan._private(shared)
    assert own == shared / f"user-{os.getuid()}" and (own.stat().st_mode & 0o777) == 0o700
    assert cpu_scan._private(own) == own and cpu_scan._private(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "link").symlink_to(shared)  # followed once, at the check (relinked before the load: review)
    assert cpu_scan._private(tmp_path / "link") == own
    # where another user could rename this user's folder: no sticky bit, or another's folder (a link in /tmp)
    open_to_all = tmp_path / "open"
    open_to_all.mkdir()
    open_to_all.chmod(0o777)
    with pytest.raises(cpu_scan._CacheUnwritable, match="open can be written by other users, and has no sticky bit: "
                                                        ".*; chmod o-w "):
        cpu_scan._private(open_to_all)
    # a cache of this user's that its group may write (umask 002, Debian's for users; the kernel fell back to the
    # matmul scans in every run: found by review): a folder of this user's own in it; one momattn makes is not
    group = tmp_path / "group"
    group.mkdir()
    group.chmod(0o775)
    assert cpu_scan._private(group) == group / f"user-{os.getuid()}"
    old = os.umask(0o002)
    try:
        assert cpu_scan._private(tmp_path / "made") == tmp_path / "made"
    finally:
        os.umask(old)
    assert (tmp_path / "made").stat().st_mode & 0o777 == 0o755
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    foreign.chmod(0o1777)
    if os.getuid() == 0:
        os.chown(foreign, 12345, -1)
    else:
        me = os.getuid()
        monkeypatch.setattr(os, "getuid", lambda: me + 1)
    (tmp_path / "tmp_link").symlink_to(foreign)
    with pytest.raises(cpu_scan._CacheUnwritable, match=r"foreign can be written by other users, and belongs to "
                                                        r"another \(uid"):
        cpu_scan._private(tmp_path / "tmp_link")
    monkeypatch.undo()
    (tmp_path / "elsewhere").mkdir()
    other = tmp_path / "shared2"
    other.mkdir()
    other.chmod(0o1777)
    (other / f"user-{os.getuid()}").symlink_to(tmp_path / "elsewhere")  # planted: a link to another folder
    with pytest.raises(cpu_scan._CacheUnwritable, match="is not this user's own"):
        cpu_scan._private(other)
    monkeypatch.setenv("MOMATTN_CACHE", str(shared))
    monkeypatch.setattr(cpu_scan, "OPENMP", cpu_scan.OPENMP)  # restored with _LIB
    monkeypatch.setattr(cpu_scan, "_LIB", None)
    assert cpu_scan.load() is not None and Path(cpu_scan._LIB._name).parent == own


def test_flags_the_compiler_refuses_fall_back_to_portable_ones(tmp_path, monkeypatch):
    """-march=native is not every compiler's (Apple's clang on arm64): the build retries with portable flags."""
    monkeypatch.setenv("MOMATTN_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_scan, "_LIB", None)
    monkeypatch.setattr(cpu_scan, "_flags", lambda: [*cpu_scan.PORTABLE, "-fno-such-flag-in-any-compiler"])
    assert cpu_scan.load() is not None
    torch.testing.assert_close(mom(torch.ones(1, 1, 3, 2, dtype=F64), 0.5)[0, 0, :, 0],
                               torch.tensor([0.0, 0.5, 0.75], dtype=F64))


def test_openmp_is_torchs_own(tmp_path, monkeypatch):
    """Where torch runs on GNU OpenMP (the Linux wheels), the kernel is built with OpenMP and runs on torch's
    threads: no second OpenMP runtime is loaded."""
    maps = Path("/proc/self/maps")
    if not maps.exists() or "libgomp" not in maps.read_text():
        pytest.skip("torch does not run on GNU OpenMP here: the kernel uses its own threads")
    cxx = [shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")]
    if "clang" in subprocess.run([*cxx, "--version"], capture_output=True, text=True).stdout.lower():
        pytest.skip("the compiler is clang: its OpenMP runtime is not torch's, so the kernel uses its own threads")
    assert cpu_scan._openmp(cxx) == ["-fopenmp"]
    fake = tmp_path / "clang++"  # clang's -fopenmp would load LLVM's runtime beside torch's: not used
    fake.write_text("#!/bin/sh\necho 'clang version 17.0.6'\n")
    fake.chmod(0o755)
    assert cpu_scan._openmp([str(fake)]) == []
    monkeypatch.setenv("MOMATTN_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_scan, "OPENMP", cpu_scan.OPENMP)  # restored with _LIB
    monkeypatch.setattr(cpu_scan, "_LIB", None)

    def runtimes():
        return {line.split()[-1] for line in maps.read_text().splitlines() if "omp" in line.rsplit("/", 1)[-1]}

    before = runtimes()
    assert cpu_scan.load() is not None
    assert b"GOMP_parallel" in next(tmp_path.glob("ema_scan-*.so")).read_bytes() and cpu_scan.OPENMP
    assert runtimes() == before  # torch's libgomp.so.1, no second runtime
    _thread_independent(208)


def test_openmp_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("MOMATTN_SCAN_OPENMP", "0")
    assert cpu_scan._openmp([shutil.which("c++") or shutil.which("g++") or "c++"]) == []


def test_without_openmp_the_kernel_has_its_own_threads(tmp_path, monkeypatch):
    """A compiler without OpenMP (here: a flag it refuses in its place) builds the kernel without it."""
    monkeypatch.setenv("MOMATTN_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_scan, "OPENMP", cpu_scan.OPENMP)  # restored with _LIB
    monkeypatch.setattr(cpu_scan, "_LIB", None)
    monkeypatch.setattr(cpu_scan, "_openmp", lambda cxx: ["-fno-such-flag-in-any-compiler"])
    assert cpu_scan.load() is not None
    (lib,) = tmp_path.glob("ema_scan-*.so")
    assert b"GOMP_parallel" not in lib.read_bytes() and not cpu_scan.OPENMP
    _thread_independent(208)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_add_is_added_and_gets_the_output_gradient(backend, monkeypatch):
    """add (the attention output) lands in the output, fused into the kernel's write or added after it; its
    gradient is the output's. multirate_ema takes (B, T, C) or (B, H, T, D) heads; a dtype other than the values'
    is added after the scan."""
    monkeypatch.setattr(ops, "SCAN_BACKEND", backend)
    torch.manual_seed(0)
    B, H, T, D = 2, 3, 37, 4
    v = torch.randn(B, T, 3 * H * D, dtype=F64)[..., : H * D]
    w = torch.randn(B, T, H * D, dtype=F64)
    cases = [
        (lambda x, a: mom(x.view(B, T, H, D).transpose(1, 2), torch.tensor([0.2, 0.5, 0.9], dtype=F64),
                          add=a).transpose(1, 2).reshape(B, T, H * D), (B, H, T, D)),
        (lambda x, a: mr(x, torch.rand(H * D, 2, dtype=F64, generator=torch.Generator().manual_seed(1)),
                         torch.randn(H * D, 2, dtype=F64, generator=torch.Generator().manual_seed(2)), add=a),
         (B, H, T, D)),
    ]
    for fn, heads in cases:
        for shape in (heads, (B, T, H * D)) if fn is cases[1][0] else (heads,):
            add = torch.randn(*shape, dtype=F64, requires_grad=True)
            x = v.clone().requires_grad_()
            out = fn(x, add)
            ref_x = v.clone().requires_grad_()
            merged = add.detach().transpose(1, 2).reshape(B, T, H * D) if add.dim() == 4 else add.detach()
            ref = fn(ref_x, None) + merged
            torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
            (out * w).sum().backward()
            (ref * w).sum().backward()
            torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-12, atol=1e-12)
            want = w.view(B, T, H, D).transpose(1, 2) if add.dim() == 4 else w
            torch.testing.assert_close(add.grad, want)
    low = mom(v.float().view(B, T, H, D).transpose(1, 2), 0.5, add=torch.ones(B, H, T, D, dtype=F64))
    assert low.dtype == F64  # float32 values, float64 addend: promoted as a plain add would
    with pytest.raises(ValueError, match=r"momentum_ema: add must have the output's shape \(2, 3, 37, 4\)"):
        mom(v.view(B, T, H, D).transpose(1, 2), 0.5, add=torch.zeros(B, T, H * D, dtype=F64))
    with pytest.raises(ValueError, match="multirate_ema: add must have the output's shape .* or .B, H, T, D. heads"):
        mr(v, torch.rand(H * D, 2, dtype=F64), torch.randn(H * D, 2, dtype=F64), add=torch.zeros(B, 5, T, 7))


@pytest.mark.parametrize("kind", ["momentum", "multirate_ema"])
def test_model_steps_agree_with_the_matmul_scans(kind, monkeypatch):
    """A model step (forward, loss, backward) with the kernel (the attention output added in it) and with the
    matmul scans: the same loss and gradients (float32)."""
    from momattn.model import GPT, AttentionConfig, GPTConfig

    x = torch.randint(0, 64, (2, 40))
    res = {}
    for backend in ("cpu", "torch"):
        monkeypatch.setattr(ops, "SCAN_BACKEND", backend)
        torch.manual_seed(0)
        m = GPT(GPTConfig(block_size=64, vocab_size=64, n_layer=2, n_head=2, n_embd=32,
                          attention=AttentionConfig(kind=kind, learnable_eta=kind == "momentum")))
        loss = m(x, targets=x)
        loss.backward()
        res[backend] = [loss.detach()] + [p.grad for p in m.parameters()]
    for a, b in zip(res["cpu"], res["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_cxx_may_carry_arguments(tmp_path, monkeypatch):
    """$CXX as build tools set it, with arguments ("ccache g++", "g++ -w"); a malformed one falls back."""
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    monkeypatch.setenv("CXX", f"{cxx} -w")
    monkeypatch.setenv("MOMATTN_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_scan, "_LIB", None)
    assert cpu_scan.load() is not None
    monkeypatch.setenv("CXX", f'{cxx} "-O2')  # no closing quotation
    monkeypatch.setattr(cpu_scan, "_LIB", None)
    assert cpu_scan.load() is None


def test_states_from_a_shared_prefix_match_the_matmul_scans(monkeypatch):
    """Evaluation with a cache: rows continuing one prefix's state (expanded: batch stride 0), the attention output
    added, final states out; the kernel and the matmul scans agree, and the kernel refuses to be differentiated."""
    torch.manual_seed(0)
    B, H, T, D, R = 3, 2, 11, 4, 3
    v = torch.randn(B, T, 3 * H * D)[..., : H * D]
    add = torch.randn(B, H, T, D)
    s_mom = torch.randn(1, H, D).expand(B, H, D)
    s_mr = torch.randn(1, H * D, R).expand(B, H * D, R)
    p, gamma = torch.rand(H * D, R), torch.randn(H * D, R)
    got = {}
    for backend in ("cpu", "torch"):
        monkeypatch.setattr(ops, "SCAN_BACKEND", backend)
        with torch.no_grad():
            got[backend] = [
                *momentum_ema(v.view(B, T, H, D).transpose(1, 2), torch.tensor([0.3, 0.9]), False, s_mom, True,
                              add=add),
                *ops.multirate_ema(v, p, gamma, s_mr, True, add=add),
            ]
    for a, b in zip(got["cpu"], got["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="has no backward"):
        cpu_scan.ema_with_states(v.requires_grad_(), p.t(), gamma.t(), False, None, True)


# the kernels whose backward joins attention's value gradient: this C++ kernel, and the Triton kernel (CUDA; here in
# Triton's CPU interpreter, which conftest.py chooses)
KERNELS = ["cpu", "triton"]


def _kernel(backend):
    """The module of a kernel backend ("torch", the matmul scans: None)."""
    if backend == "triton":
        pytest.importorskip("triton")
        if torch.cuda.is_available():  # the interpreter is off there; the CPU tensors here need it
            pytest.skip("with CUDA the Triton kernel is tested on the GPU (tests/test_triton_scan.py)")
        from momattn import triton_scan

        return triton_scan
    return cpu_scan if backend == "cpu" else None


def _linked_layer_grads(backend, dtype, monkeypatch, linked=True, eta_learnable=False, create_graph=False):
    """A momentum attention layer's forward and backward (float64 weights cast by autocast where bf16): the input's
    and the weights' gradients, and how many times the linked backward ran."""
    from momattn import model as mm
    from momattn.model import AttentionConfig, GPTConfig

    monkeypatch.setattr(ops, "SCAN_BACKEND", backend)
    if not linked:
        monkeypatch.setattr(mm.MomentumAttention, "link_values", lambda self, v: (v, None))
    joined = []
    module = _kernel(backend)
    if module is not None:
        real = module._joined_backward
        monkeypatch.setattr(module, "_joined_backward", lambda *a: joined.append(1) or real(*a))
    torch.manual_seed(0)
    layer = mm.MomentumAttention(GPTConfig(block_size=40, n_embd=32, n_head=4, attention=AttentionConfig(
        kind="momentum", eta=0.6, learnable_eta=eta_learnable)))
    x = torch.randn(3, 40, 32, requires_grad=True)
    w = torch.randn(3, 40, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = layer(x)
    params = [x] + list(layer.parameters())
    grads = torch.autograd.grad((out.float() * w).sum(), params, create_graph=create_graph)
    if create_graph:  # a second derivative through the first
        grads = torch.autograd.grad(sum((g * g).sum() for g in grads), params)
    return [g.detach() for g in grads], len(joined)


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_linked_backward_gives_the_same_gradients_in_one_pass(name, dtype, monkeypatch):
    """With a fixed eta, the kernel's backward waits for attention's and writes both value gradients' sum (once per
    layer): the gradients of the unlinked kernel and of the matmul scans (bf16: one rounding instead of two)."""
    linked, n = _linked_layer_grads(name, dtype, monkeypatch)
    assert n == 1
    unlinked, n0 = _linked_layer_grads(name, dtype, monkeypatch, linked=False)
    matmul, _ = _linked_layer_grads("torch", dtype, monkeypatch)
    assert n0 == 0
    if dtype == torch.float32:
        for a, b, c in zip(linked, unlinked, matmul):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)  # the same sums, added in another order
            torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5)
        return
    # bf16 values: the linked sum is rounded once, the unlinked one twice: at least as close to float32's gradients
    exact, _ = _linked_layer_grads(name, torch.float32, monkeypatch)
    for a, b, e in zip(linked, unlinked, exact):
        err_linked, err_unlinked = ((a - e).norm() / e.norm()).item(), ((b - e).norm() / e.norm()).item()
        assert err_linked < 1e-2 and err_linked <= 1.01 * err_unlinked, (err_linked, err_unlinked)


@pytest.mark.parametrize("name", KERNELS)
def test_the_link_stands_aside_for_learned_rates_and_second_derivatives(name, monkeypatch):
    """A learned eta needs its gradient at once (no join; the matmul scans' gradients), and a double backward runs
    the differentiable path (an op-level graph: CPU attention has no second derivative)."""
    got, n = _linked_layer_grads(name, torch.float32, monkeypatch, eta_learnable=True)
    want, _ = _linked_layer_grads("torch", torch.float32, monkeypatch, eta_learnable=True)
    assert n == 0
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

    dtype = F64 if name == "cpu" else torch.float32  # the Triton kernel leaves float64 to the matmul scans

    def second(backend):
        monkeypatch.setattr(ops, "SCAN_BACKEND", backend)
        v = torch.randn(2, 2, 30, 16, dtype=dtype, generator=torch.Generator().manual_seed(0)).requires_grad_()
        v_attn, link = ops.link_values(v)
        assert (link is not None) == (backend != "torch")
        out = mom(v, 0.6, add=v_attn.sin(), link=link)  # sin: a stand-in for attention, twice differentiable
        (g,) = torch.autograd.grad((out * out).sum(), v, create_graph=True)
        return torch.autograd.grad((g * g).sum(), v)[0]

    tol = 1e-9 if dtype == F64 else 1e-5
    torch.testing.assert_close(second(name), second("torch"), rtol=tol, atol=tol)


def test_the_joined_backward_reads_any_attention_gradient_and_refuses_a_wrong_link():
    """Attention's value gradient in another layout (or dtype) is added after the kernel; a link on values other
    than the scanned ones is named."""
    torch.manual_seed(0)
    B, H, T, D = 2, 2, 9, 16
    gy = torch.randn(B, T, H * D)
    p, g = torch.full((1, H * D), 0.7), torch.ones(1, H * D)
    want = cpu_scan._joined_backward(gy, p, g, True, torch.zeros(B, H, T, D))
    dv = torch.randn(B, H, D, T).transpose(2, 3)  # channels not at unit stride
    torch.testing.assert_close(cpu_scan._joined_backward(gy, p, g, True, dv), want + dv)
    dv64 = torch.randn(B, H, T, D, dtype=F64)
    torch.testing.assert_close(cpu_scan._joined_backward(gy, p, g, True, dv64), want + dv64)
    dv = torch.randn(B, H, T, D)
    torch.testing.assert_close(cpu_scan._joined_backward(gy, p, g, True, dv), want + dv, rtol=1e-6, atol=1e-6)
    other_heads = torch.randn(B, 4, T, 8)  # another split of the same channels: the same memory, read as such
    torch.testing.assert_close(cpu_scan._joined_backward(gy, p, g, True, other_heads).transpose(1, 2).reshape(B, T, -1),
                               (want.transpose(1, 2).reshape(B, T, -1) + other_heads.transpose(1, 2).reshape(B, T, -1)),
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(RuntimeError, match=r"a linked scan of \(2, 9, 32\) values got attention's gradient of "
                                           r"\(2, 2, 5, 16\)"):
        cpu_scan._joined_backward(gy, p, g, True, torch.zeros(B, H, 5, D))


def _two_views(backend, monkeypatch):
    """An op-level graph laid out as the model's: the scan and attention read two views of the same merged values
    (sin: a stand-in for attention, twice differentiable)."""
    monkeypatch.setattr(ops, "SCAN_BACKEND", backend)
    B, H, T, D = 2, 2, 30, 16
    vm = torch.randn(B, T, H * D, generator=torch.Generator().manual_seed(0)).requires_grad_()
    vs = vm.view(B, T, H, D).transpose(1, 2)  # the scan's view
    va, link = ops.link_values(vm.view(B, T, H, D).transpose(1, 2))  # attention's
    y = va.sin()
    out = mom(vs, 0.6, add=y, link=link)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    return vm, vs, y, (out * w).sum()


@pytest.mark.parametrize("name", KERNELS)
def test_a_backward_pass_that_will_not_reach_attention_keeps_the_scans_value_gradient(name, monkeypatch):
    """The scan defers to the join only in a pass that will run it: a gradient for the scan's own view (the join
    not on the way) is the scan's, as without the link."""
    _, vs, _, loss = _two_views("torch", monkeypatch)
    (want,) = torch.autograd.grad(loss, vs)
    _, vs, _, loss = _two_views(name, monkeypatch)
    (got,) = torch.autograd.grad(loss, vs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", KERNELS)
def test_a_pass_cut_short_leaves_nothing_for_the_next(name, monkeypatch):
    """An error between the scan's backward and the join's leaves a deferred gradient behind; the next pass (here
    with create_graph, which the scan answers itself) must not add it again."""
    vm, _, y, loss = _two_views("torch", monkeypatch)
    want = torch.autograd.grad(loss, vm)[0]
    vm, _, y, loss = _two_views(name, monkeypatch)
    handle = y.register_hook(lambda g: (_ for _ in ()).throw(RuntimeError("stop")))
    with pytest.raises(RuntimeError, match="stop"):
        torch.autograd.grad(loss, vm, retain_graph=True)
    handle.remove()
    (got,) = torch.autograd.grad(loss, vm, create_graph=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_an_addend_with_rate_gradients_is_refused_by_name():
    x = torch.randn(1, 5, 16)
    p, g = torch.full((1, 16), 0.5), torch.ones(1, 16)
    with pytest.raises(ValueError, match="takes an addend only without rate gradients"):
        cpu_scan._backward(x, x, p, g, True, True, add=torch.zeros(1, 5, 16))
