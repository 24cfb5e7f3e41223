"""Speed and memory of momentum attention against vanilla attention.

    python benchmarks/bench_attention.py                 # full run, about 10 minutes on a 2-core CPU
    python benchmarks/bench_attention.py --quick         # fewer lengths and repeats, about 2 minutes
    python benchmarks/bench_attention.py --device cuda --dtype bf16

Three measurements, every one forward + backward:
  1. one attention layer (vanilla, momentum with eta 0.5 fixed or learnable, multirate_ema) over T;
  2. `momentum_ema` alone against a naive (T, T) decay-matrix matmul: linear against quadratic in T;
  3. a full training step of the default model (cross-entropy, backward, grad clip, AdamW) per variant.

Times are medians over repeats taken round-robin across the variants (so slow drift of the machine hits
all of them alike), after warm-up. Peak memory is the most bytes allocated at once during one call,
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
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from momattn.model import ATTENTION_CLASSES, GPT, AttentionConfig, GPTConfig  # noqa: E402
from momattn.ops import momentum_ema  # noqa: E402

# the default model (conf/model/small.yaml) and its batch size (conf/data/staicc.yaml)
N_EMBD, N_HEAD, N_LAYER, VOCAB, BLOCK, BATCH = 256, 4, 4, 4096, 256, 16
LAYER_TOKENS = 8192  # attention-layer benchmark: B = max(1, LAYER_TOKENS // T) sequences per call
EMA_BATCH = 1  # momentum_ema benchmark: fixed batch, so time grows with T
ETA = 0.5

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


def _sample(fn: Callable[[], object], number: int, device: torch.device) -> float:
    """Seconds per call, averaged over `number` back-to-back calls, with the garbage collector off."""
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        _sync(device)
        return (time.perf_counter() - t0) / number
    finally:
        if gc_was_on:
            gc.enable()


def time_interleaved(
    fns: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int, min_sample_s: float
) -> dict[str, dict]:
    """Median seconds per call of each fn. Each round times every fn once, in an order rotated each round."""
    number = {}
    for name, fn in fns.items():
        t = min(_sample(fn, 1, device) for _ in range(max(1, warmup)))
        number[name] = max(1, math.ceil(min_sample_s / max(t, 1e-9)))  # calls per sample
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    gc.collect()
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            samples[name].append(_sample(fns[name], number[name], device))
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
            "calls_per_sample": number[name],
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


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Most bytes allocated at once during one call of fn, above what was allocated before it."""
    gc.collect()
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type().name == "CPU"
    ]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()  # positive for an allocation, negative for a free
        peak = max(peak, live)
    return peak


# -----------------------------------------------------------------------------
# the three benchmarks


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

            def fwd_bwd(layer=layer, x=x, gy=gy):
                layer.zero_grad(set_to_none=True)
                x.grad = None
                with _autocast(device, dtype):
                    y = layer(x)
                y.backward(gy.to(y.dtype))

            fns[variant] = fwd_bwd
        times = time_interleaved(fns, device, **opts)
        for variant, fn in fns.items():
            mem = peak_bytes(fn, device)
            rows.append(
                {
                    "variant": variant,
                    "T": T,
                    "B": B,
                    "tokens": B * T,
                    **times[variant],
                    "ms": 1e3 * times[variant]["median_s"],
                    "peak_bytes": mem,
                }
            )
            print(
                f"  layer  T={T:5d} B={B:2d} {variant:19s} {rows[-1]['ms']:9.2f} ms  {mem / 2**20:8.1f} MiB",
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


def bench_ema(Ts, device, dtype, opts) -> dict:
    """momentum_ema against the naive matrix, forward + backward, fixed batch EMA_BATCH, H=4 heads of 64."""
    D = N_EMBD // N_HEAD
    rows = []
    torch.manual_seed(0)
    v = torch.randn(EMA_BATCH, N_HEAD, min(Ts), D, device=device, dtype=torch.float64)
    max_abs_diff = (momentum_ema(v, ETA) - naive_momentum(v, ETA)).abs().max().item()  # same numbers?
    for T in Ts:
        v = torch.randn(EMA_BATCH, N_HEAD, T, D, device=device, dtype=dtype, requires_grad=True)
        g = torch.randn_like(v)
        fns = {}
        for name, op in (("momentum_ema", momentum_ema), ("naive", naive_momentum)):

            def fwd_bwd(op=op, v=v, g=g):
                v.grad = None
                op(v, ETA).backward(g)

            fns[name] = fwd_bwd
        times = time_interleaved(fns, device, **opts)
        row = {"T": T, "B": EMA_BATCH, "H": N_HEAD, "D": D}
        for name, fn in fns.items():
            row[name] = {
                **times[name],
                "ms": 1e3 * times[name]["median_s"],
                "peak_bytes": peak_bytes(fn, device),
            }
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
                opt.zero_grad(set_to_none=True)
                with _autocast(device, dtype):
                    logits = model(x)
                loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # optim.grad_clip default
                opt.step()

            fns[variant] = step
        times = time_interleaved(fns, device, **opts)
        base = times["vanilla"]["median_s"]
        for variant, fn in fns.items():
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
                    "peak_bytes": peak_bytes(fn, device),
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
    m, s = res["machine"], res["settings"]
    names = list(VARIANTS)
    out = [
        "## Attention benchmarks",
        "",
        f"{m['cpu']}; {m['torch_threads']} threads; torch {m['torch']}; device {m['device']}; {m['dtype']}"
        f"{' (autocast; fp32 accumulation in the EMA ops)' if m['dtype'] != 'fp32' else ''}; {m['date']}"
        f"{'; --quick' if s['quick'] else ''}.",
        f"Times: median of {s['repeats']} repeats taken round-robin across variants, after {s['warmup']} "
        f"warm-up call(s); forward + backward throughout. Peak memory: {s['memory_method']}.",
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
        f"(B {EMA_BATCH}, {N_HEAD} heads of {N_EMBD // N_HEAD}, eta {ETA} fixed)",
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
    c = ema["check"]
    out += [
        f"Same numbers: max |momentum_ema - naive| = {c['max_abs_diff']:.1e} "
        f"in {c['dtype']} at T = {c['T']}.",
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
            _mib(r["peak_bytes"]),
        ]
        for r in res["train_step"]
    ]
    out += [_table(["variant", "T", "B", "ms/step", "IQR", "tokens/s", "vs vanilla", "peak MiB"], rows), ""]
    return "\n".join(out)


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
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(threads)

    if args.quick:
        layer_Ts, ema_Ts, train_shapes = [256, 1024, 4096], [256, 1024, 8192], [(BLOCK, BATCH)]
        opts = {"repeats": 3, "warmup": 1, "min_sample_s": 0.02}
    else:
        layer_Ts = ema_Ts = [256, 512, 1024, 2048, 4096, 8192]
        train_shapes = [(BLOCK, BATCH), (1024, BATCH * BLOCK // 1024)]  # equal tokens per step
        opts = {"repeats": 7, "warmup": 2, "min_sample_s": 0.05}

    res = {
        "machine": machine_info(device, args.dtype),
        "settings": {
            "quick": args.quick,
            **opts,
            "memory_method": MEMORY_METHOD[device.type],
            "layer_batch_rule": f"B = max(1, {LAYER_TOKENS} // T)",
            "ema_batch": EMA_BATCH,
            "eta": ETA,
            "variants": VARIANTS,
            "dtype_note": "bf16: torch.autocast for layer and training step; bf16 inputs for the "
            "EMA ops (accumulated in fp32)"
            if args.dtype == "bf16"
            else "fp32 throughout",
        },
    }
    t0 = time.perf_counter()
    print(f"bench_attention: {res['machine']['cpu']}, {threads} threads, {device}, {args.dtype}", flush=True)
    res["attention_layer"] = bench_layers(layer_Ts, device, dtype, opts)
    res["momentum_ema_vs_naive"] = bench_ema(ema_Ts, device, dtype, opts)
    res["train_step"] = bench_train(train_shapes, device, dtype, opts)
    res["wall_s"] = time.perf_counter() - t0
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
