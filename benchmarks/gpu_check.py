"""The GPU run, ready to go: one script that a session lent a CUDA GPU runs as is (issue 11, goal 6).

    python benchmarks/gpu_check.py            # or: bash benchmarks/gpu_check.sh
    python benchmarks/gpu_check.py --steps 5 --no-compile   # shorter
    python benchmarks/gpu_check.py --smoke    # the training parts on a tiny model on CPU (what the test runs)
    python benchmarks/gpu_check.py --parts train --variants momentum/triton+compile --profile 3   # where time goes

On a CUDA GPU, within about 8 minutes (--budget for the training part, --deadline for the whole): (1) the
CUDA-only tests and the Triton scan's tests, (2) bench_attention.py --device cuda --dtype bf16 --quick,
(3) training throughput of the gpt2_124m model (12 x 768, context 1024, bf16 autocast, the loss inside the
model as train.py computes it, fused AdamW) for vanilla, momentum (each scan backend; learnable eta) and
multirate_ema with torch.compile off and on: tokens/s and MFU against the device's datasheet dense bf16 peak,
(4) the momentum scan alone (forward + backward at gpt2_124m's shape, bf16 values): the chunked matmul scan
against the Triton kernel (momattn/triton_scan.py), with scaled_dot_product_attention at the same shape for
scale. The report is rewritten after every part and before and after every training variant (a run cut short
keeps what it measured and names the variant it was on): gpu.json and gpu.md. Progress goes to stdout.
Without a GPU every GPU part is skipped, and the files say so, so that the script cannot rot on CPU-only
machines; --smoke runs the same code on CPU at toy size.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from momattn import ops  # noqa: E402
from momattn.hardware import describe, gpu_bf16_peak  # noqa: E402
from momattn.model import GPT, AttentionConfig, GPTConfig  # noqa: E402
from momattn.utils import positive_int  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import check_out, measured, run_main, write_json  # noqa: E402

from momattn.io import atomic_write_text  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
KINDS = ("vanilla", "momentum", "multirate_ema")


def datasheet_peak(name: str) -> float | None:
    return gpu_bf16_peak(name)  # momattn.hardware's table: train.py's MFU takes the same peak


def run(cmd: list[str], timeout: int) -> dict:
    """Run cmd in its own process group; past timeout the whole group is killed (pytest's xdist workers too, which
    would otherwise keep the GPU busy through the timings that follow)."""
    t0 = time.perf_counter()
    print(f"[gpu_check] {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        try:  # what it printed; a process that left the group could hold the pipe open, hence the timeout
            out = proc.communicate(timeout=10)[0] or ""
        except subprocess.TimeoutExpired:
            out = ""
        out, rc = out + "\n[gpu_check] timed out: process group killed", None
    seconds = round(time.perf_counter() - t0, 1)
    print(f"[gpu_check]   exit {rc} in {seconds} s", flush=True)
    return {"cmd": " ".join(cmd), "rc": rc, "seconds": seconds, "tail": out[-2000:]}


class Sync:
    """Wall-clock timing that waits for the device (a no-op on CPU)."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


UNFUSED = "triton-unfused"  # the Triton kernel as before session 34: scan in float32, attention's output added after


def with_backend(backend: str | None, fn):
    """fn() with ops.SCAN_BACKEND set to backend (None: as it is; UNFUSED: "triton" without the fused path)."""
    old = ops.SCAN_BACKEND
    ops.SCAN_BACKEND = "triton" if backend == UNFUSED else backend or old
    try:
        with mock.patch.object(ops, "_fuses_triton", lambda *a: False) if backend == UNFUSED else contextlib.nullcontext():
            return fn()
    finally:
        ops.SCAN_BACKEND = old


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    """The first quartile, the median and the third (inclusive method; one sample: itself thrice)."""
    return tuple(statistics.quantiles(xs, n=4, method="inclusive")) if len(xs) > 1 else (xs[0],) * 3


def scan_timing(device: str, shape: tuple[int, int, int, int], reps: int) -> list[dict]:
    """Median ms of forward + backward of momentum_ema per scan backend, and of SDPA, at shape (B, H, T, D)."""
    B, H, T, D = shape
    clock, rows = Sync(device), []
    qkv = torch.randn(B, T, 3 * H * D, device=device, dtype=torch.bfloat16, requires_grad=True)
    q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in qkv.split(H * D, dim=2))  # (B, H, T, D) views
    g = torch.randn(B, H, T, D, device=device, dtype=torch.bfloat16)

    def time_it(fn) -> dict:
        """median ms over reps calls, with the quartiles"""
        fn()
        ms = []
        for _ in range(reps):
            t0 = clock.now()
            fn()
            ms.append(1000 * (clock.now() - t0))
        q1, med, q3 = quartiles(ms)
        return {"ms": round(med, 3), "ms_iqr": [round(q1, 3), round(q3, 3)]}

    def scan():
        torch.autograd.backward(ops.momentum_ema(v, 0.5)[0], g)

    def sdpa():
        torch.autograd.backward(F.scaled_dot_product_attention(q, k, v, is_causal=True), g)

    kernel = triton_usable(device)
    backends = ("torch", "triton") if kernel is not None else ("torch",)
    runs = [(b, None) for b in backends]
    if kernel is not None:  # the Triton scan's two forms: chunked where the GPU would idle (the default), and not
        ch = kernel.chunk_length(B, T, H * D, torch.device(device))
        rows.append({"op": "triton scan: chunk length at this shape (0: whole sequences)", "config": str(ch)})
        runs.append(("triton", "0"))
    for backend, chunk in runs:
        name = f"momentum_ema, {backend} scan" + (", whole sequences (MOMATTN_TRITON_CHUNK=0)" if chunk else "")
        try:
            with mock.patch.dict(os.environ, {"MOMATTN_TRITON_CHUNK": chunk} if chunk is not None else {}):
                rows.append({"op": name, **with_backend(backend, lambda: time_it(scan))})
        except Exception as e:
            rows.append({"op": name, "error": repr(e)[:300]})
    if kernel is not None:  # as the model calls it: attention's output added; in the kernel, or after it (before)
        add = torch.randn(B, H, T, D, device=device, dtype=torch.bfloat16, requires_grad=True)

        def scan_add():
            torch.autograd.backward(ops.momentum_ema(v, 0.5, add=add)[0], g)

        for name, backend in [("momentum_ema + attention output, triton scan, added in the kernel", "triton"),
                              ("momentum_ema + attention output, triton scan, added after (float32 out)", UNFUSED)]:
            try:
                rows.append({"op": name, **with_backend(backend, lambda: time_it(scan_add))})
            except Exception as e:
                rows.append({"op": name, "error": repr(e)[:300]})
    rows.append({"op": "scaled_dot_product_attention (causal)", **time_it(sdpa)})
    if kernel is not None:
        xv, a = v.transpose(1, 2).reshape(B, T, H * D), torch.full((1,), 0.5, device=device)
        try:
            rows.append({"op": "triton kernel alone, forward",
                         **time_it(lambda: kernel.decay_scan(xv, a, True, False))})
        except Exception as e:
            rows.append({"op": "triton kernel alone, forward", "error": repr(e)[:300]})
        # the autotuner's choice per tuning key (forward and backward calls may differ), where it keeps them
        for key, config in (getattr(getattr(kernel, "_tuned", None), "cache", None) or {}).items():
            rows.append({"op": f"triton scan: autotuned block for key {key}", "config": str(config)})
    return rows


def kernel_profile(step, steps: int, device: str, top: int = 8) -> dict:
    """torch.profiler over `steps` calls of step(): per step, the wall time, the time the device spent in kernels
    (on CPU: the profiled ops' own CPU time) and the kernels that took most of it. Where the kernels' sum is well
    under the wall time the device waits on the host: launches, Python, syncs."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    clock = Sync(device)
    with profile(activities=acts) as prof:
        t0 = clock.now()
        for _ in range(steps):
            step()
        wall = (clock.now() - t0) / steps
    own = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, own, 0) > 0]
    if device == "cuda":  # kernels only: the CPU-side ops that launched them carry no device time of their own
        events = [e for e in events if getattr(e, "device_type", None) != torch.autograd.DeviceType.CPU]
    busy = sum(getattr(e, own) for e in events) / 1e3 / steps  # ms per step
    events.sort(key=lambda e: -getattr(e, own))
    return {"wall_ms": round(1000 * wall, 2), "kernel_ms": round(busy, 2),
            "busy": round(busy / (1000 * wall), 3) if wall > 0 else None,
            "top": [{"name": e.key[:90], "ms": round(getattr(e, own) / 1e3 / steps, 3),
                     "calls": round(e.count / steps, 1)} for e in events[:top]]}


def throughput(kind: str, compile_: bool | str, steps: int, batch: int, backend: str | None = None,
               learnable: bool = False, cfg_kw: dict | None = None, device: str = "cuda", profile: int = 0) -> dict:
    """tokens/s of full training steps (forward, cross-entropy, backward, clip, AdamW) in bf16 autocast.
    compile_: False (eager), True (torch.compile's default mode) or a torch.compile mode name. profile: that many
    more steps under torch.profiler after the timed ones (kernel_profile), reported under "profile"."""
    torch.manual_seed(0)
    if compile_:
        torch._dynamo.reset()
    kw = cfg_kw or dict(block_size=1024, vocab_size=50304, n_layer=12, n_head=12, n_embd=768)
    attn = AttentionConfig(kind=kind, learnable_eta=True) if learnable else AttentionConfig(kind=kind)
    cfg = GPTConfig(attention=attn, **kw)
    model = GPT(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device == "cuda")
    fwd = torch.compile(model, mode=compile_ if isinstance(compile_, str) else None) if compile_ else model
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size + 1), device=device)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = fwd(x[:, :-1], targets=x[:, 1:])  # the loss inside the model (compiled with it), as train.py's
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def run():
        clock = Sync(device)
        t_start = clock.now()
        for _ in range(3):  # warm-up (and compilation)
            step()
        t0 = clock.now()
        warm, times = t0 - t_start, []  # each step timed on its own (one device sync a step): median and spread
        for _ in range(steps):
            step()
            t1 = clock.now()
            times.append(t1 - t0)
            t0 = t1
        return times, warm, kernel_profile(step, profile, device) if profile else None

    times, warm, prof = with_backend(backend, run)
    dt, (q1, _, q3) = statistics.median(times), quartiles(times)
    tokens = batch * cfg.block_size
    peak = datasheet_peak(torch.cuda.get_device_name(0)) if device == "cuda" else None
    flops = model.flops_per_token() * tokens / dt
    name = kind + (f" ({backend} scan)" if backend else "") + (" learnable eta" if learnable else "")
    mfu = round(flops / peak, 4) if peak else None
    over = mfu is not None and mfu > 1.0  # above the datasheet's peak: a timing that is wrong, not a fast step
    return {"attention": name, "compile": compile_, "batch": batch, "ms_per_step": round(1000 * dt, 1),
            "ms_iqr": [round(1000 * q1, 1), round(1000 * q3, 1)], "steps_timed": len(times),
            "tokens_per_s": round(tokens / dt), "mfu": None if over else mfu,
            **({"mfu_refused": f"{100 * mfu:.1f}% of the datasheet peak: a timing error"} if over else {}),
            "warmup_s": round(warm, 1),
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
            **({"profile": prof} if prof else {})}


# (attention, scan backend, learnable eta, compiled (or a torch.compile mode), batch multiple), most important
# first: a run past --budget skips the rest. Labels for --variants: attention[/backend][/learnable][+compile[:mode]][xN].
# The last three try the levers left for vanilla's MFU (issue 11: 45% at 124M): a larger batch, CUDA graphs
# (reduce-overhead: fewer launches), autotuned matmul/fusion choices (max-autotune without graphs; its autotuning
# can take minutes, so it runs only when named in --variants: benchmarks/device_run.sh gives it a call of its own).
# momentum/triton-unfused is session 33's kernel path (float32 scan, attention's output added after), beside the
# fused one in the same run: their ratio is the fused path's gain, free of the drift between device sessions.
VARIANTS = [("vanilla", None, False, False, 1), ("momentum", "torch", False, False, 1),
            ("momentum", "triton", False, False, 1), ("momentum", UNFUSED, False, False, 1),
            ("momentum", None, True, False, 1),
            ("multirate_ema", None, False, False, 1), ("vanilla", None, False, True, 1),
            ("momentum", "triton", False, True, 1), ("momentum", "torch", False, True, 1),
            ("momentum", None, True, True, 1), ("multirate_ema", None, False, True, 1), ("vanilla", None, False, True, 2),
            ("vanilla", None, False, True, 4), ("momentum", "torch", False, True, 2), ("momentum", "triton", False, True, 2),
            ("vanilla", None, False, "reduce-overhead", 2),
            ("vanilla", None, False, "max-autotune-no-cudagraphs", 2)]


def triton_usable(device: str):
    """momattn.triton_scan where it can run here: on CUDA, or on a CPU in Triton's interpreter (TRITON_INTERPRET=1);
    None elsewhere (an installed Triton without a GPU has no driver to run on)."""
    kernel = ops._triton_scan()
    return kernel if kernel is not None and (device == "cuda" or os.environ.get("TRITON_INTERPRET") == "1") else None


def smoke_report(path: Path) -> bool:
    """Whether path holds a --smoke report (toy sizes on a CPU: nothing measured on a device)."""
    import json

    try:
        return json.loads(Path(path).read_text()).get("smoke") is True
    except (OSError, ValueError, AttributeError):
        return False


def scratch_out() -> Path:
    """Where a run that measures no GPU writes (a CPU machine, --smoke): never over the stored device results."""
    import tempfile

    return Path(tempfile.gettempdir()) / "momattn_gpu_check" / "gpu.json"


def label(kind: str, backend: str | None, learnable: bool, compile_: bool | str, mult: int) -> str:
    mode = f"+compile:{compile_}" if isinstance(compile_, str) else ("+compile" if compile_ else "")
    return kind + (f"/{backend}" if backend else "") + ("/learnable" if learnable else "") + mode + (f"x{mult}" if mult > 1 else "")


def markdown(report: dict) -> str:
    lines = [f"Machine: {report['machine']}; {report['date']}", ""]
    if report.get("skipped"):
        return "\n".join(lines + [f"Skipped: {report['skipped']}", ""])
    for name, r in report.get("commands", {}).items():
        lines.append(f"- {name}: exit {r['rc']} in {r['seconds']} s (`{r['cmd']}`)")
    if report.get("scan"):
        lines += ["", f"The momentum term alone, forward + backward, (B, H, T, D) = {tuple(report['scan_shape'])}, "
                      "bf16 values (median ms" + (", its quartiles beside it" if any("ms_iqr" in r for r in report["scan"])
                                                  else "") + "):", "", "| op | ms |", "|---|---:|"]
        lines += [f"| {r['op']} | {r.get('config') or _ms(r) or 'error: ' + r.get('error', '')[:80]} |"
                  for r in report["scan"]]
    # reports before session 15 took an eager float32 cross-entropy of the logits outside the (compiled) model
    loss = report.get("loss", "an eager float32 cross-entropy outside the model")
    what = ("a toy model (--smoke: 1 x 32, T 32, on the CPU, to exercise the code, not to measure it"
            if report.get("smoke") else "gpt2_124m (12 x 768, T 1024") + ", bf16 autocast"
    adam = "AdamW" if report.get("smoke") else "fused AdamW"
    timed = [r for r in report.get("throughput", []) if "ms_per_step" in r]
    if timed and not any("ms_iqr" in r for r in timed):  # a report before session 54: a mean
        per = "mean over the timed steps"
    else:  # (a table of skipped rows alone read "mean": review)
        per = (f"median of {max([r.get('steps_timed', 0) for r in timed] or [0])} steps timed one by one (its "
               "quartiles beside it); tokens/s and MFU from the median")
    lines += ["", f"Training steps of {what}, {loss}, {adam}; the learnable-eta and multirate rows use the "
                  f"default scan backend). ms/step: {per}:", "",
              "| attention | compile | batch | ms/step | tokens/s | MFU | vs vanilla | warm-up s | peak GiB |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    # vanilla rows: against the first vanilla row of their compile setting (a compile mode: default compile), which
    # shows what batch and mode gain; other rows: against vanilla at their compile setting and batch where it ran
    base: dict = {}
    same: dict = {}
    for r in report.get("throughput", []):
        if r.get("attention") == "vanilla" and "tokens_per_s" in r:
            base.setdefault(r["compile"], r["tokens_per_s"])
            same.setdefault((r["compile"], r["batch"]), r["tokens_per_s"])
    for r in report.get("throughput", []):
        if "tokens_per_s" not in r:
            why = (f"error: {r['error'][:80]}" if "error" in r else f"skipped: {r['skipped']}" if "skipped" in r
                   else f"started {r.get('started_s')} s in, did not finish")
            batch = f" {r['batch']} " if "batch" in r else " "  # (rows written before session 51 have none)
            lines.append(f"| {r['attention']} | {r['compile']} |{batch}| | {why} | | | | |")
            continue
        ref = base.get(True) if isinstance(r["compile"], str) else base.get(r["compile"])
        if r["attention"] != "vanilla":
            ref = same.get((r["compile"], r["batch"]), ref)
        rel = f"{r['tokens_per_s'] / ref:.3f}x" if ref else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else (
            f"refused ({r['mfu_refused']})" if r.get("mfu_refused") else "n/a")
        mem = r.get("peak_mem_gib")
        lines.append(f"| {r['attention']} | {r['compile']} | {r['batch']} | {_ms(r, 'ms_per_step')} | "
                     f"{r['tokens_per_s']:,} | {mfu} | {rel} | {r.get('warmup_s', '')} | {'' if mem is None else mem} |")
    for r in report.get("throughput", []):
        pr = r.get("profile")
        if not pr:
            continue
        where = "kernels on the GPU" if not report.get("smoke") else "ops' own CPU time (--smoke)"
        lines += ["", f"Profile of {r['attention']}, compile {r['compile']}, batch {r['batch']}: {pr['wall_ms']} ms "
                      f"per step, {pr['kernel_ms']} ms of it {where} ({100 * (pr['busy'] or 0):.0f}% busy); the "
                      "largest:", "", "| kernel | ms/step | calls/step |", "|---|---:|---:|"]
        lines += [f"| `{k['name']}` | {k['ms']} | {k['calls']} |" for k in pr["top"]]
    return "\n".join(lines + ["", "Targets (issue 11): vanilla >= 45% MFU at 124M in bf16; momentum >= 0.95x "
                                   "vanilla's tokens/s.", ""])


def _ms(r: dict, key: str = "ms"):
    """'12.3 (12.1-12.6)': a median with its quartiles where the row has them; '' where it has no time."""
    if r.get(key) is None:
        return ""
    iqr = r.get("ms_iqr")
    return f"{r[key]} ({iqr[0]}-{iqr[1]})" if iqr else f"{r[key]}"


def write(report: dict, out: Path) -> str:
    out.parent.mkdir(parents=True, exist_ok=True)
    md = "# GPU check\n\n" + markdown(report)
    atomic_write_text(out.with_suffix(".md"), md)
    write_json(out, report, indent=2)  # atomic: a run killed by its timeout mid-write keeps the rows it had
    return md


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--steps", type=positive_int, default=10)
    ap.add_argument("--batch", type=positive_int, default=16)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--budget", type=float, default=240.0,
                    help="seconds from the start of the training part; variants that would start after it are "
                         "skipped (and said so)")
    ap.add_argument("--deadline", type=float, default=400.0,
                    help="seconds from the script's start after which no training variant starts either (the tests "
                         "and the benchmark before them can run long); the scan timing, last, runs regardless")
    ap.add_argument("--variants", default="", help="comma-separated labels of the training variants to run "
                    f"(default all): {', '.join(label(*v) for v in VARIANTS)}")
    ap.add_argument("--parts", default="tests,bench,scan,train", help="comma-separated: tests,bench,scan,train")
    ap.add_argument("--smoke", action="store_true", help="the training and attention parts on CPU at toy size (exercises the code; "
                    "the CUDA tests and the kernel benchmark are skipped)")
    ap.add_argument("--profile", type=int, default=0, metavar="STEPS",
                    help="after each training variant's timed steps, this many more under torch.profiler: the "
                         "kernels' share of the step and the largest kernels (where the time goes)")
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/gpu.json on a CUDA machine; "
                    "a temporary folder where nothing is measured on a GPU (no CUDA, or --smoke)")
    a = ap.parse_args()
    # a misspelled part or variant would run nothing, silently, on a device lent for minutes
    bad_parts = set(filter(None, a.parts.split(","))) - {"tests", "bench", "scan", "train"}
    if bad_parts:
        ap.error(f"--parts: unknown {', '.join(sorted(bad_parts))}; the parts are tests, bench, scan, train")
    labels = [label(*v) for v in VARIANTS]
    bad = [v for v in filter(None, a.variants.split(",")) if v not in labels]
    if bad:
        ap.error(f"--variants: unknown {', '.join(bad)}; the variants are {', '.join(labels)}")
    if a.profile < 0:
        ap.error(f"--profile={a.profile} must be >= 0 steps (0: no profile)")
    if not a.budget >= 0 or not a.deadline >= 0:  # 0: no training variant starts
        ap.error(f"--budget={a.budget} and --deadline={a.deadline} must be >= 0 seconds")
    if a.out is None:
        a.out = RESULTS / "gpu.json" if torch.cuda.is_available() and not a.smoke else scratch_out()
    check_out(ap, a.out)  # before the device's minutes, not after them
    t_start = time.perf_counter()
    report: dict = {"machine": describe(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "smoke": a.smoke,
                    "scan_backend_default": ops.SCAN_BACKEND, "loss": "the loss inside the model"}
    if not torch.cuda.is_available() and not a.smoke:
        report["skipped"] = "no CUDA device on this machine: the CUDA tests, the bf16 attention benchmark, " \
                            "the gpt2_124m throughput runs and the momentum scan's timing need one (run this script " \
                            "where a GPU is lent; --smoke runs every part on CPU at toy size)"
        if measured(a.out) and not smoke_report(a.out):  # device_run.sh gpu on a CPU host passed the stored
            # results' path and wiped them (a --smoke report, in the scratch folder by default, is no device run's)
            print(f"[gpu_check] skipped: {report['skipped']}. {a.out} holds a device run's results and is left as "
                  "it is; pass --out elsewhere to keep this note", file=sys.stderr)
            return 0
        print(write(report, a.out))
        stored = RESULTS / "gpu.json"
        print(f"[gpu_check] written to {a.out} (and .md)" + (
            "; the stored device results are untouched" if a.out.resolve() != stored.resolve() else ""))
        return 0
    device = "cpu" if a.smoke else "cuda"
    py = sys.executable
    report["commands"] = {}
    parts = set(a.parts.split(","))
    if not a.smoke and "tests" in parts:
        report["commands"]["cuda tests"] = run(
            [py, "-m", "pytest", "-q", "-x", "--slow", "-n", "4", "tests/test_ops.py", "tests/test_model.py", "tests/test_triton_scan.py", "-k",
             "cuda or triton"], 150)
        write(report, a.out)
    if not a.smoke and "bench" in parts:
        report["commands"]["bench_attention"] = run(
            [py, "benchmarks/bench_attention.py", "--device", "cuda", "--dtype", "bf16", "--quick", "--out",
             str(a.out.with_name("attention_cuda.json"))], 150)
        write(report, a.out)
    report["throughput"] = []
    t_train = time.perf_counter()
    wanted = set(filter(None, a.variants.split(","))) if "train" in parts else set()
    toy = dict(block_size=32, vocab_size=128, n_layer=1, n_head=2, n_embd=32) if a.smoke else None
    for kind, backend, learnable, compile_, mult in VARIANTS:
        name = label(kind, backend, learnable, compile_, mult)
        if "train" not in parts or (wanted and name not in wanted) \
                or (not wanted and isinstance(compile_, str) and compile_.startswith("max-autotune")):
            continue
        # the batch in every row: two skipped vanilla rows (x2, x4) read the same in gpu.md (found by review)
        row = {"attention": kind + (f" ({backend} scan)" if backend else "") + (" learnable eta" if learnable else ""),
               "compile": compile_, "batch": mult * (2 if a.smoke else a.batch)}
        why = ("torch.compile is off (--no-compile)" if compile_ and a.no_compile else
               "torch.compile is off under --smoke" if compile_ and a.smoke else
               "Triton is not usable here" if backend in ("triton", UNFUSED) and triton_usable(device) is None else None)
        if why:  # a variant --variants names says why it did not run (it was left out of the table without a word)
            if wanted:
                report["throughput"].append({**row, "skipped": why})
                print(f"[gpu_check] {name}: skipped, {why}", flush=True)
            continue
        now = time.perf_counter()
        if now - t_train > a.budget or now - t_start > a.deadline:
            why = f"past the {a.budget:.0f} s budget" if now - t_train > a.budget else f"past the {a.deadline:.0f} s deadline"
            report["throughput"].append({**row, "skipped": why})
            print(f"[gpu_check] {name}: skipped, {why}", flush=True)
            continue
        # a row that says it started, written before the run: a call cut off mid-variant (its compilation can take
        # minutes) still tells which variant it was on
        report["throughput"].append({**row, "started_s": round(now - t_start, 1)})
        write(report, a.out)
        print(f"[gpu_check] {name}: running ({now - t_start:.0f} s in)", flush=True)
        try:
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()  # each row's peak its own
            r = throughput(kind, compile_, 2 if a.smoke else a.steps, row["batch"], backend, learnable, toy, device,
                           a.profile)
            print(f"[gpu_check]   {r['tokens_per_s']:,} tokens/s, MFU {r['mfu']}, warm-up {r['warmup_s']} s", flush=True)
        except Exception as e:  # one failing variant (e.g. a compile error) must not lose the rest
            r = {**row, "error": repr(e)[:500]}
            print(f"[gpu_check]   error: {r['error'][:200]}", flush=True)
        report["throughput"][-1] = r
        write(report, a.out)
    if "scan" in parts:  # last: the training rows are the targets; an error here loses nothing measured before
        report["scan_shape"] = (2, 2, 64, 16) if a.smoke else (16, 12, 1024, 64)
        print(f"[gpu_check] the momentum term alone at {report['scan_shape']}", flush=True)
        try:
            report["scan"] = scan_timing(device, report["scan_shape"], 2 if a.smoke else 20)
        except Exception as e:
            report["scan"] = [{"op": "scan timing", "error": repr(e)[:300]}]
        write(report, a.out)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    print(write(report, a.out))
    return 0


if __name__ == "__main__":
    run_main(main)
