"""Speed and memory of momentum attention against vanilla attention.

    python benchmarks/bench_attention.py                 # full run, about 5 minutes on a quiet 2-core CPU
    python benchmarks/bench_attention.py --quick         # fewer lengths and repeats, about 1-2 minutes
    python benchmarks/bench_attention.py --device cuda --dtype bf16

Three measurements, every one forward + backward:
  1. one attention layer (vanilla, momentum with eta 0.5 fixed or learnable, multirate_ema) over T;
  2. `momentum_ema` alone against a naive (T, T) decay-matrix matmul: linear against quadratic in T;
  3. a full training step of the default model (cross-entropy, backward, grad clip, AdamW) per variant.

Times are medians over repeats taken round-robin across the variants (so slow drift of the machine hits
all of them alike), after warm-up. On a shared machine, a sample taken while other processes kept more
than a quarter of a core busy (/proc/stat) is retaken after they calm down, within --patience seconds;
what was retaken or kept anyway is reported. Peak memory is the most bytes allocated at once during one call,
above what was allocated before it (inputs, weights, optimizer state): on CUDA from
torch.cuda.max_memory_allocated, on CPU from the allocator's own alloc/free events recorded by
torch.profiler (profile_memory=True) in a separate, untimed call.

Writes benchmarks/results/attention.json (every number, machine info) and attention.md (the tables).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from momattn.model import ATTENTION_CLASSES, GPT, AttentionConfig, GPTConfig  # noqa: E402
from momattn.ops import momentum_ema  # noqa: E402

# the default model (conf/model/small.yaml) and its batch size (conf/data/staicc.yaml)
N_EMBD, N_HEAD, N_LAYER, VOCAB, BLOCK, BATCH = 256, 4, 4, 4096, 256, 16
LAYER_TOKENS = 8192  # attention-layer benchmark: B = max(1, LAYER_TOKENS // T) sequences per call
# momentum_ema benchmark: a fixed batch, so time grows with T. One sequence keeps tensors small enough that
# CPU timings are not dominated by page faults (glibc hands big freed blocks back to the OS)
EMA_BATCH = 1
ETA = 0.5
# a timing sample during which other processes kept more than this many CPU cores busy is retaken
CONTENTION_CORES, CONTENTION_RETRIES = 0.25, 4

# name -> attention config; "momentum_learnable" is the momentum kind with one learnable rate per head
VARIANTS = {
    "vanilla": dict(kind="vanilla"),
    "momentum": dict(kind="momentum", eta=ETA),
    "momentum_learnable": dict(kind="momentum", eta=ETA, learnable_eta=True),
    "multirate_ema": dict(kind="multirate_ema"),
}

MEMORY_METHOD = {
    "cuda": "torch.cuda.max_memory_allocated() minus memory_allocated() before the call "
    "(caching-allocator bytes of live tensors, after reset_peak_memory_stats)",
    "cpu": "torch.profiler(profile_memory=True): running sum of the CPU allocator's alloc/free events "
    "during one untimed call, maximum taken (every c10 CPU allocation, kernel scratch included; "
    "memory allocated before the call is not counted, nor are its frees)",
}


# -----------------------------------------------------------------------------
# timing and memory


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _busy_cpu_s() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat; steal included), or None."""
    try:
        with open("/proc/stat") as f:
            # user nice system idle iowait irq softirq steal, in clock ticks
            ticks = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    return time.process_time()  # user + system time of every thread of this process


def _sample(fn: Callable[[], object], number: int, device: torch.device) -> tuple[float, float, float | None]:
    """Wall seconds and this process's CPU seconds per call, over `number` back-to-back calls, and the CPU
    cores other processes kept busy meanwhile.

    The garbage collector is off while timing. The last number is (machine busy CPU time - this process's
    CPU time) / wall time, at /proc/stat's 10 ms tick resolution; None where /proc/stat is unreadable.
    """
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        _sync(device)
        busy0, own0, t0 = _busy_cpu_s(), _own_cpu_s(), time.perf_counter()
        for _ in range(number):
            fn()
        _sync(device)
        wall = time.perf_counter() - t0
        busy1, own1 = _busy_cpu_s(), _own_cpu_s()
    finally:
        if gc_was_on:
            gc.enable()
    others = None if busy0 is None or busy1 is None else max(0.0, (busy1 - busy0) - (own1 - own0)) / wall
    return wall / number, (own1 - own0) / number, others


def _wait_quiet(max_s: float, max_other_cores: float) -> float:
    """Poll in 0.5 s windows until other processes keep at most max_other_cores busy; seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_s:
        busy0, own0, w0 = _busy_cpu_s(), _own_cpu_s(), time.perf_counter()
        time.sleep(0.5)
        busy1, own1 = _busy_cpu_s(), _own_cpu_s()
        if busy0 is None or busy1 is None:
            break
        if ((busy1 - busy0) - (own1 - own0)) / (time.perf_counter() - w0) <= max_other_cores:
            break
    return time.perf_counter() - t0


# seconds this run may still spend waiting for a quiet machine and retaking contended samples
_PATIENCE = {"left_s": 0.0}


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    device: torch.device,
    repeats: int,
    warmup: int,
    min_sample_s: float,
    max_other_cores: float = CONTENTION_CORES,
    retries: int = CONTENTION_RETRIES,
) -> dict[str, dict]:
    """Median seconds per call of each fn. Each round times every fn once, in an order rotated each round.

    The machine may be shared: a sample during which other processes kept more than `max_other_cores`
    CPU cores busy is retaken, after waiting (at most 60 s) for them to calm down, up to `retries` times
    while the run's patience (_PATIENCE) lasts; otherwise it is kept and counted as contended.
    """
    number = {}
    for name, fn in fns.items():
        # warm up for `warmup` calls and at least min_sample_s; the later half's median sets calls per sample
        warm: list[float] = []
        while len(warm) < max(1, warmup) or (sum(warm) < min_sample_s and len(warm) < 1000):
            warm.append(_sample(fn, 1, device)[0])
        t = statistics.median(warm[len(warm) // 2 :])
        number[name] = max(1, math.ceil(min_sample_s / max(t, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    others: dict[str, list[float]] = {name: [] for name in fns}
    retaken = dict.fromkeys(fns, 0)
    names = list(fns)
    gc.collect()
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            for attempt in range(retries + 1):
                t, c, busy = _sample(fns[name], number[name], device)
                if busy is None or busy <= max_other_cores or attempt == retries or _PATIENCE["left_s"] <= 0:
                    break
                retaken[name] += 1
                waited = _wait_quiet(min(60.0, _PATIENCE["left_s"]), max_other_cores)
                _PATIENCE["left_s"] -= t * number[name] + waited
            samples[name].append(t)
            cpu[name].append(c)
            others[name].append(busy if busy is not None else float("nan"))
    out = {}
    for name, s in samples.items():
        q = statistics.quantiles(s, n=4) if len(s) >= 2 else [s[0]] * 3
        med = statistics.median(s)
        out[name] = {
            "median_s": med,
            "min_s": min(s),
            "max_s": max(s),
            "iqr_pct": 100 * (q[2] - q[0]) / med,
            "samples_s": s,
            "cpu_median_s": statistics.median(cpu[name]),  # this process's CPU time: all threads
            "cpu_samples_s": cpu[name],
            "calls_per_sample": number[name],
            "other_cores_busy": others[name],
            "samples_retaken": retaken[name],
            "contended_samples_kept": sum(b > max_other_cores for b in others[name]),
        }
    return out


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler's start/stop lines, which kineto writes straight to file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@dataclass
class Case:
    """One thing to time: `prep` drops the gradients of the previous call, `run` does the work."""

    prep: Callable[[], object]
    run: Callable[[], object]
    kept: Callable[[], list[torch.Tensor]]  # the tensors `run` leaves alive (the gradients)

    def __call__(self) -> None:
        self.prep()
        self.run()


def measure_memory(case: Case, device: torch.device) -> dict:
    """Peak bytes allocated at once during one `run`, above what was allocated before it.

    `prep` runs first, outside the measured window, so frees of the previous call's gradients do not count
    against this one. end_bytes (still allocated when run returns) should equal kept_bytes (the gradients
    run leaves behind): a check that the accounting saw every allocation and free.
    """
    case.prep()
    gc.collect()
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        case.run()
        _sync(device)
        peak, end = torch.cuda.max_memory_allocated(device) - base, torch.cuda.memory_allocated(device) - base
    else:
        from torch.profiler import ProfilerActivity, profile

        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            case.run()
        events = [
            e
            for e in prof.profiler.kineto_results.events()
            if e.name() == "[memory]" and e.device_type().name == "CPU"
        ]
        events.sort(key=lambda e: e.start_ns())
        end = peak = 0
        for e in events:
            end += e.nbytes()  # positive for an allocation, negative for a free
            peak = max(peak, end)
    kept = sum(t.untyped_storage().nbytes() for t in case.kept() if t is not None)
    return {"peak_bytes": peak, "end_bytes": end, "kept_bytes": kept}


# -----------------------------------------------------------------------------
# the three benchmarks


def _grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad for p in module.parameters() if p.grad is not None]


def _autocast(device: torch.device, dtype: torch.dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()


def _gpt_config(variant: str, T: int) -> GPTConfig:
    return GPTConfig(
        block_size=T,
        vocab_size=VOCAB,
        n_layer=N_LAYER,
        n_head=N_HEAD,
        n_embd=N_EMBD,
        attention=AttentionConfig(**VARIANTS[variant]),
    )


def bench_layers(Ts, device, dtype, opts) -> list[dict]:
    """One attention module per variant, forward + backward (input gradient included), B = 8192 // T."""
    rows = []
    for T in Ts:
        B = max(1, LAYER_TOKENS // T)
        torch.manual_seed(0)
        x = torch.randn(B, T, N_EMBD, device=device, requires_grad=True)
        gy = torch.randn(B, T, N_EMBD, device=device)  # incoming gradient, allocated before the call
        fns = {}
        for variant in VARIANTS:
            cfg = _gpt_config(variant, T)
            layer = ATTENTION_CLASSES[cfg.attention.kind](cfg).to(device)

            def prep(layer=layer, x=x):
                layer.zero_grad(set_to_none=True)
                x.grad = None

            def fwd_bwd(layer=layer, x=x, gy=gy):
                with _autocast(device, dtype):
                    y = layer(x)
                y.backward(gy.to(y.dtype))

            fns[variant] = Case(prep, fwd_bwd, lambda layer=layer, x=x: [x.grad] + _grads(layer))
        times = time_interleaved(fns, device, **opts)
        for variant, case in fns.items():
            mem = measure_memory(case, device)
            rows.append(
                {
                    "variant": variant,
                    "T": T,
                    "B": B,
                    "tokens": B * T,
                    **times[variant],
                    "ms": 1e3 * times[variant]["median_s"],
                    **mem,
                }
            )
            print(
                f"  layer  T={T:5d} B={B:2d} {variant:19s} {rows[-1]['ms']:9.2f} ms  "
                f"{_mib(mem['peak_bytes']):>8s} MiB",
                flush=True,
            )
        del fns, x, gy
    return rows


def naive_momentum(v: torch.Tensor, eta: float) -> torch.Tensor:
    """sum_{i<t} eta^(t-i) v_i as one (T, T) decay matrix times v: O(T^2) time and memory."""
    T = v.size(2)
    acc = torch.promote_types(v.dtype, torch.float32)
    t = torch.arange(T, device=v.device, dtype=acc)
    lag = t[:, None] - t[None, :]  # (T, T) t - i
    W = torch.where(lag > 0, eta ** lag.clamp(min=0), 0.0)  # eta^(t-i) for i < t
    # sub-normal powers flushed to 0: left in, they slow a CPU matmul down ~1.7x, which would flatter ours
    W = torch.where(W < torch.finfo(acc).tiny, 0.0, W).to(v.dtype)
    return W @ v  # (T, T) @ (B, H, T, D) -> (B, H, T, D)


def bench_ema(Ts, device, dtype, opts, batch: int = EMA_BATCH) -> dict:
    """momentum_ema against the naive matrix, forward + backward, a fixed batch, H=4 heads of 64."""
    D = N_EMBD // N_HEAD
    rows = []
    torch.manual_seed(0)
    v = torch.randn(batch, N_HEAD, min(Ts), D, device=device, dtype=torch.float64)
    max_abs_diff = (momentum_ema(v, ETA) - naive_momentum(v, ETA)).abs().max().item()  # same numbers?
    for T in Ts:
        v = torch.randn(batch, N_HEAD, T, D, device=device, dtype=dtype, requires_grad=True)
        g = torch.randn_like(v)
        fns = {}
        for name, op in (("momentum_ema", momentum_ema), ("naive", naive_momentum)):

            def prep(v=v):
                v.grad = None

            def fwd_bwd(op=op, v=v, g=g):
                op(v, ETA).backward(g)

            fns[name] = Case(prep, fwd_bwd, lambda v=v: [v.grad])
        times = time_interleaved(fns, device, **opts)
        row = {"T": T, "B": batch, "H": N_HEAD, "D": D}
        for name, case in fns.items():
            row[name] = {**times[name], "ms": 1e3 * times[name]["median_s"], **measure_memory(case, device)}
        row["speedup"] = row["naive"]["median_s"] / row["momentum_ema"]["median_s"]
        rows.append(row)
        ours, naive = row["momentum_ema"], row["naive"]
        print(
            f"  ema    T={T:5d} ours {ours['ms']:9.3f} ms {_mib(ours['peak_bytes']):>8s} MiB"
            f"   naive {naive['ms']:9.3f} ms {_mib(naive['peak_bytes']):>8s} MiB",
            flush=True,
        )
        del fns, v, g
    by_T = {r["T"]: r for r in rows}
    ratios = {}
    if 1024 in by_T and 8192 in by_T:
        ratios = {
            name: by_T[8192][name]["median_s"] / by_T[1024][name]["median_s"]
            for name in ("momentum_ema", "naive")
        }
    return {
        "rows": rows,
        "time_ratio_8192_over_1024": ratios,
        "check": {"T": min(Ts), "dtype": "float64", "max_abs_diff": max_abs_diff},
    }


def _adamw(model: torch.nn.Module) -> torch.optim.AdamW:
    """As momattn/lit.py configures it (optim defaults): decay on 2-D weights only."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), eps=1e-8)


def bench_train(shapes, device, dtype, opts) -> list[dict]:
    """A training step of the default model per variant: forward, cross-entropy, backward, clip, AdamW."""
    rows = []
    for T, B in shapes:
        torch.manual_seed(0)
        x = torch.randint(VOCAB, (B, T), device=device)
        y = torch.randint(VOCAB, (B, T), device=device)
        fns, n_params = {}, {}
        for variant in VARIANTS:
            torch.manual_seed(0)
            model = GPT(_gpt_config(variant, T)).to(device)
            opt = _adamw(model)
            n_params[variant] = model.num_params()

            def step(model=model, opt=opt, x=x, y=y):
                with _autocast(device, dtype):
                    logits = model(x)
                loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # optim.grad_clip default
                opt.step()

            fns[variant] = Case(
                lambda opt=opt: opt.zero_grad(set_to_none=True), step, lambda model=model: _grads(model)
            )
        times = time_interleaved(fns, device, **opts)
        base, best, base_cpu = (times["vanilla"][k] for k in ("median_s", "min_s", "cpu_median_s"))
        for variant, case in fns.items():
            s = times[variant]["median_s"]
            rows.append(
                {
                    "variant": variant,
                    "T": T,
                    "B": B,
                    "tokens_per_step": B * T,
                    "params": n_params[variant],
                    **times[variant],
                    "ms_per_step": 1e3 * s,
                    "tokens_per_s": B * T / s,
                    "overhead_vs_vanilla_pct": 100 * (s / base - 1),
                    "overhead_vs_vanilla_best_pct": 100 * (times[variant]["min_s"] / best - 1),
                    "cpu_ms_per_step": 1e3 * times[variant]["cpu_median_s"],
                    "cpu_overhead_vs_vanilla_pct": 100 * (times[variant]["cpu_median_s"] / base_cpu - 1),
                    **measure_memory(case, device),
                }
            )
            r = rows[-1]
            print(
                f"  train  T={T:5d} B={B:2d} {variant:19s} {r['ms_per_step']:9.1f} ms/step "
                f"{r['tokens_per_s']:9.0f} tok/s {r['overhead_vs_vanilla_pct']:+6.1f}%",
                flush=True,
            )
        del fns
    return rows


# -----------------------------------------------------------------------------
# report


def machine_info(device: torch.device, dtype_name: str) -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "dtype": dtype_name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if hasattr(os, "getloadavg"):
        info["loadavg_at_start"] = list(os.getloadavg())
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _mib(b: int) -> str:
    return f"{b / 2**20:.1f}"


def _pct(x: float) -> str:
    return f"{x:+.1f}%"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def render(res: dict) -> str:
    m, s, c = res["machine"], res["settings"], res["contention"]
    names = list(VARIANTS)
    out = [
        "## Attention benchmarks",
        "",
        f"{m['cpu']}; {m['torch_threads']} threads; torch {m['torch']}; device {m['device']}; {m['dtype']}"
        f"{' (autocast; fp32 accumulation in the EMA ops)' if m['dtype'] != 'fp32' else ''}; {m['date']}"
        f"{'; --quick' if s['quick'] else ''}.",
        f"Times: median of {s['repeats']} samples per variant ({s['train_repeats']} for the training step), "
        f"taken round-robin across variants after "
        f"warm-up (at least {s['warmup']} calls and {s['min_sample_s']} s); a sample averages as many "
        f"back-to-back calls as fill {s['min_sample_s']} s. Forward + backward throughout.",
        f"Peak memory: {s['memory_method']}.",
        f"Shared machine: {c['retaken']} of {c['samples']} timing samples were retaken because other "
        f"processes kept more than {CONTENTION_CORES} cores busy; {c['kept_contended']} contended samples "
        f"were kept (out of retries or patience). Load average {_load(m)}.",
        f"Memory accounting check: bytes still allocated after each call equal the gradients it leaves in "
        f"{res['memory_check']['measurements'] - res['memory_check']['end_bytes_not_kept_bytes']} of "
        f"{res['memory_check']['measurements']} measurements.",
        "",
    ]

    layer = {(r["T"], r["variant"]): r for r in res["attention_layer"]}
    Ts = sorted({r["T"] for r in res["attention_layer"]})
    out += [
        f"### One attention layer, forward + backward (n_embd {N_EMBD}, {N_HEAD} heads, B = max(1, "
        f"{LAYER_TOKENS} // T): {LAYER_TOKENS} tokens per call)",
        "",
        "Time in ms (change vs vanilla):",
        "",
    ]
    rows = []
    for T in Ts:
        van = layer[(T, "vanilla")]["median_s"]
        cells = [
            f"{layer[(T, n)]['ms']:.2f}"
            + ("" if n == "vanilla" else f" ({_pct(100 * (layer[(T, n)]['median_s'] / van - 1))})")
            for n in names
        ]
        rows.append([str(T), str(layer[(T, names[0])]["B"])] + cells)
    out += [_table(["T", "B"] + names, rows), "", "Peak memory in MiB:", ""]
    rows = [
        [str(T), str(layer[(T, names[0])]["B"])] + [_mib(layer[(T, n)]["peak_bytes"]) for n in names]
        for T in Ts
    ]
    out += [_table(["T", "B"] + names, rows), ""]

    ema = res["momentum_ema_vs_naive"]
    out += [
        f"### momentum_ema vs a naive (T, T) decay matrix, forward + backward "
        f"(B {s['ema_batch']}, {N_HEAD} heads of {N_EMBD // N_HEAD}, eta {ETA} fixed)",
        "",
    ]
    rows = [
        [
            str(r["T"]),
            f"{r['momentum_ema']['ms']:.3f}",
            f"{r['naive']['ms']:.3f}",
            f"{r['speedup']:.1f}x",
            _mib(r["momentum_ema"]["peak_bytes"]),
            _mib(r["naive"]["peak_bytes"]),
        ]
        for r in ema["rows"]
    ]
    out += [
        _table(["T", "momentum_ema ms", "naive ms", "speed-up", "momentum_ema MiB", "naive MiB"], rows),
        "",
    ]
    ratio = ema["time_ratio_8192_over_1024"]
    if ratio:
        out += [
            f"time(8192) / time(1024): momentum_ema {ratio['momentum_ema']:.1f} (linear: 8), "
            f"naive {ratio['naive']:.1f} (quadratic: 64).",
            "",
        ]
    chk = ema["check"]
    out += [
        f"Same numbers: max |momentum_ema - naive| = {chk['max_abs_diff']:.1e} "
        f"in {chk['dtype']} at T = {chk['T']}.",
        "",
    ]

    out += [
        "### Training step of the default model (4 layers, n_embd 256, vocab 4096): forward, cross-entropy, "
        "backward, grad clip 1.0, AdamW",
        "",
    ]
    rows = [
        [
            r["variant"],
            str(r["T"]),
            str(r["B"]),
            f"{r['ms_per_step']:.1f}",
            f"{r['iqr_pct']:.1f}%",
            f"{r['tokens_per_s']:,.0f}",
            "-" if r["variant"] == "vanilla" else _pct(r["overhead_vs_vanilla_pct"]),
            f"{1e3 * r['min_s']:.1f}",
            "-" if r["variant"] == "vanilla" else _pct(r["overhead_vs_vanilla_best_pct"]),
            f"{r['cpu_ms_per_step']:.1f}",
            "-" if r["variant"] == "vanilla" else _pct(r["cpu_overhead_vs_vanilla_pct"]),
            _mib(r["peak_bytes"]),
        ]
        for r in res["train_step"]
    ]
    header = ["variant", "T", "B", "ms/step", "IQR", "tokens/s", "vs vanilla", "best ms", "best vs vanilla"]
    out += [
        _table(header + ["CPU ms/step", "CPU vs vanilla", "peak MiB"], rows),
        "",
        "ms/step, tokens/s and vs vanilla are from the medians of wall time; IQR is the interquartile range "
        "of the samples over their median; best is the fastest sample (the least disturbed by other "
        "processes); CPU is the median CPU time of this process (all threads), which other processes "
        "disturb less than wall time.",
        "",
    ]

    out += ["### Targets", ""]
    for t in res["targets"]:
        noisy = t["contended_samples_kept"]
        verdict = ("met" if t["met"] else "MISSED") + (
            f" (unreliable: {noisy} samples taken while other processes were busy)" if noisy else ""
        )
        out.append(f"- {t['what']}: {t['got']} (target {t['target']}): {verdict}")
    out.append("")
    return "\n".join(out)


def _load(m: dict) -> str:
    a, b = m.get("loadavg_at_start"), m.get("loadavg_at_end")
    return f"{a[0]:.2f} at the start, {b[0]:.2f} at the end" if a and b else "unknown"


def targets(res: dict) -> list[dict]:
    """The goals in the brief: momentum variants within 5% of vanilla per training step; EMA linear in T."""
    out = []
    for r in res["train_step"]:
        if r["variant"].startswith("momentum"):
            got = r["overhead_vs_vanilla_pct"]
            van = next(v for v in res["train_step"] if v["variant"] == "vanilla" and v["T"] == r["T"])
            out.append(
                {
                    "what": f"training step overhead of {r['variant']} vs vanilla at T={r['T']}",
                    "got": f"{got:+.1f}% (best samples {r['overhead_vs_vanilla_best_pct']:+.1f}%, "
                    f"CPU time {r['cpu_overhead_vs_vanilla_pct']:+.1f}%)",
                    "target": "<= +5%",
                    "met": round(got, 1) <= 5.0,
                    "value": got,
                    "contended_samples_kept": r["contended_samples_kept"] + van["contended_samples_kept"],
                }
            )
    ratio = res["momentum_ema_vs_naive"]["time_ratio_8192_over_1024"]
    if ratio:
        got = ratio["momentum_ema"]
        out.append(
            {
                "what": "momentum_ema time(8192) / time(1024)",
                "got": f"{got:.1f} (naive: {ratio['naive']:.1f})",
                "target": "close to 8 (linear); met at <= 10",
                "met": got <= 10.0,
                "value": got,
                "contended_samples_kept": sum(
                    r["momentum_ema"]["contended_samples_kept"]
                    for r in res["momentum_ema_vs_naive"]["rows"]
                    if r["T"] in (1024, 8192)
                ),
            }
        )
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="fewer lengths and repeats (about 2 minutes on 2 CPU cores)"
    )
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument(
        "--dtype",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: autocast for the layer and the training step, bf16 inputs for momentum_ema",
    )
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: every core this process may use)"
    )
    ap.add_argument(
        "--ema-batch", type=int, default=EMA_BATCH, help="batch of the momentum_ema vs naive benchmark"
    )
    ap.add_argument(
        "--patience",
        type=float,
        default=None,
        help="seconds the run may spend waiting out other processes and retaking contended samples "
        "(default 30 with --quick, else 150; 0 keeps every sample as measured)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "attention.json",
        help="JSON output; the markdown tables go next to it with the suffix .md",
    )
    args = ap.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available here; use --device cpu")
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    threads = args.threads or (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    torch.set_num_threads(threads)

    if args.quick:
        layer_Ts, ema_Ts, train_shapes = [256, 1024, 4096], [256, 1024, 8192], [(BLOCK, BATCH)]
        opts, train_repeats = {"repeats": 3, "warmup": 1, "min_sample_s": 0.1}, 5
    else:
        layer_Ts = ema_Ts = [256, 512, 1024, 2048, 4096, 8192]
        train_shapes = [(BLOCK, BATCH), (1024, BATCH * BLOCK // 1024)]  # equal tokens per step
        opts, train_repeats = {"repeats": 7, "warmup": 2, "min_sample_s": 0.2}, 15

    res = {
        "machine": machine_info(device, args.dtype),
        "settings": {
            "quick": args.quick,
            **opts,
            "train_repeats": train_repeats,
            "memory_method": MEMORY_METHOD[device.type],
            "layer_batch_rule": f"B = max(1, {LAYER_TOKENS} // T)",
            "ema_batch": args.ema_batch,
            "eta": ETA,
            "variants": VARIANTS,
            "dtype_note": "bf16: torch.autocast for layer and training step; bf16 inputs for the "
            "EMA ops (accumulated in fp32)"
            if args.dtype == "bf16"
            else "fp32 throughout",
        },
    }
    _PATIENCE["left_s"] = args.patience if args.patience is not None else (30.0 if args.quick else 150.0)
    res["settings"]["patience_s"] = _PATIENCE["left_s"]
    t0 = time.perf_counter()
    print(f"bench_attention: {res['machine']['cpu']}, {threads} threads, {device}, {args.dtype}", flush=True)
    res["attention_layer"] = bench_layers(layer_Ts, device, dtype, opts)
    res["momentum_ema_vs_naive"] = bench_ema(ema_Ts, device, dtype, opts, args.ema_batch)
    res["train_step"] = bench_train(train_shapes, device, dtype, {**opts, "repeats": train_repeats})
    res["wall_s"] = time.perf_counter() - t0
    res["settings"]["patience_left_s"] = _PATIENCE["left_s"]
    timings = [r for r in res["attention_layer"] + res["train_step"]]
    timings += [r[n] for r in res["momentum_ema_vs_naive"]["rows"] for n in ("momentum_ema", "naive")]
    res["contention"] = {
        "samples": sum(len(r["samples_s"]) for r in timings),
        "retaken": sum(r["samples_retaken"] for r in timings),
        "kept_contended": sum(r["contended_samples_kept"] for r in timings),
    }
    res["targets"] = targets(res)
    mems = [r for r in res["attention_layer"] + res["train_step"]]
    mems += [r[n] for r in res["momentum_ema_vs_naive"]["rows"] for n in ("momentum_ema", "naive")]
    res["memory_check"] = {
        "measurements": len(mems),
        "end_bytes_not_kept_bytes": sum(r["end_bytes"] != r["kept_bytes"] for r in mems),
    }
    if hasattr(os, "getloadavg"):
        res["machine"]["loadavg_at_end"] = list(os.getloadavg())

    md = render(res)
    print()
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(md + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.md')} ({res['wall_s']:.0f} s)")
    return res


if __name__ == "__main__":
    main()
