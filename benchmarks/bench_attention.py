"""Speed and memory of momentum attention against vanilla attention.

    python benchmarks/bench_attention.py                 # full run, about 5 minutes on a quiet 2-core CPU
    python benchmarks/bench_attention.py --quick         # smoke run, a minute or two
    python benchmarks/bench_attention.py --device cuda --dtype bf16
    python benchmarks/bench_attention.py --parts train --train-repeats 15 --out /tmp/train.json

Three measurements, every one forward + backward:
  layer  one attention layer (vanilla, momentum with eta 0.5 fixed or learnable, multirate_ema) over T;
  ema    `momentum_ema` alone against the naive (T, T) decay-matrix matmul of momattn.reference: linear
         against quadratic in T;
  train  a full training step of the default model (train.py's loss, backward, grad clip, AdamW) per variant.

Timing and memory: benchmarks/harness.py (medians of interleaved repeats, spread, contended samples retaken
within --patience seconds; peak memory from the allocator in a separate, untimed call).
Writes benchmarks/results/attention.json (every number, machine info) and attention.md (the tables).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from harness import (  # noqa: E402
    MEMORY_METHOD,
    QUARTILES,
    RESULTS,
    SCRATCH,
    Timer,
    check_out,
    machine_info,
    mib,
    pct,
    peak_memory,
    run_main,
    summarize,
    table,
    write_results,
)

from momattn.model import ATTENTION_CLASSES, GPT, AttentionConfig, GPTConfig  # noqa: E402
from momattn.ops import momentum_ema  # noqa: E402
from momattn.optim import OptimConfig, build_adamw, fused_adamw_ok  # noqa: E402
from momattn.reference import momentum_ema_matrix  # noqa: E402
from momattn.utils import positive_int  # noqa: E402

# issue 11's benchmark model (GPTConfig()'s defaults: the default model's width and depth, conf/model/small.yaml,
# at context 256, batch 16; the main job itself trains at context 512, batch 8)
N_EMBD, N_HEAD, N_LAYER, VOCAB, BLOCK, BATCH = 256, 4, 4, 4096, 256, 16
LAYER_TOKENS = 8192  # attention-layer benchmark: B = max(1, LAYER_TOKENS // T) sequences per call
# momentum_ema benchmark: a fixed batch, so time grows with T. One sequence keeps tensors small enough that
# CPU timings are not dominated by page faults (glibc hands big freed blocks back to the OS)
EMA_BATCH = 1
ETA = 0.5

# name -> attention config; "momentum_learnable" is the momentum kind with one learnable rate per head
VARIANTS = {
    "vanilla": dict(kind="vanilla"),
    "momentum": dict(kind="momentum", eta=ETA),
    "momentum_learnable": dict(kind="momentum", eta=ETA, learnable_eta=True),
    "multirate_ema": dict(kind="multirate_ema"),
}


@dataclass
class Case:
    """One thing to time: `prep` drops the gradients of the previous call, `run` does the work."""

    prep: Callable[[], object]
    run: Callable[[], object]
    kept: Callable[[], list[torch.Tensor]]  # the tensors `run` leaves alive (the gradients)

    def __call__(self) -> None:
        self.prep()
        self.run()

    def memory(self, device: torch.device) -> dict:
        """peak_memory of one run; kept_bytes (the gradients it leaves) should equal end_bytes: a check
        that the accounting saw every allocation and free."""
        self.prep()  # outside the measured window: frees of the previous gradients do not count
        mem = peak_memory(self.run, device)
        # CUDA's caching allocator hands out blocks in multiples of 512 bytes; the CPU's allocations are exact
        unit = 512 if device.type == "cuda" else 1
        kept = [t.untyped_storage().nbytes() for t in self.kept() if t is not None]
        return {**mem, "kept_bytes": sum(-(-n // unit) * unit for n in kept)}


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


# -----------------------------------------------------------------------------
# the three benchmarks


def bench_layers(Ts, device, dtype, timer: Timer) -> list[dict]:
    """One attention module per variant, forward + backward (input gradient included), B = 8192 // T."""
    rows = []
    for T in Ts:
        B = max(1, LAYER_TOKENS // T)
        torch.manual_seed(0)
        x = torch.randn(B, T, N_EMBD, device=device, requires_grad=True)
        gy = torch.randn(B, T, N_EMBD, device=device)  # incoming gradient, allocated before the call
        cases = {}
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

            cases[variant] = Case(prep, fwd_bwd, lambda layer=layer, x=x: [x.grad] + _grads(layer))
        times = timer.time(cases, device)
        for variant, case in cases.items():
            r = {
                "variant": variant,
                "T": T,
                "B": B,
                "tokens": B * T,
                **times[variant],
                "ms": 1e3 * times[variant]["median_s"],
                **case.memory(device),
            }
            rows.append(r)
            print(
                f"  layer  T={T:5d} B={B:2d} {variant:19s} {r['ms']:9.2f} ms  {mib(r['peak_bytes']):>8s} MiB",
                flush=True,
            )
    return rows


def bench_ema(Ts, device, dtype, timer: Timer, batch: int = EMA_BATCH) -> dict:
    """momentum_ema against the naive (T, T) matrix, forward + backward, a fixed batch, H=4 heads of 64."""
    D = N_EMBD // N_HEAD
    torch.manual_seed(0)
    v = torch.randn(batch, N_HEAD, min(Ts), D, device=device, dtype=torch.float64)
    max_abs_diff = (momentum_ema(v, ETA)[0] - momentum_ema_matrix(v, ETA)).abs().max().item()  # same numbers?
    ops = {"momentum_ema": lambda v: momentum_ema(v, ETA)[0], "naive": lambda v: momentum_ema_matrix(v, ETA)}
    rows = []
    for T in Ts:
        v = torch.randn(batch, N_HEAD, T, D, device=device, dtype=dtype, requires_grad=True)
        g = torch.randn_like(v)
        cases = {}
        for name, op in ops.items():

            def prep(v=v):
                v.grad = None

            def fwd_bwd(op=op, v=v, g=g):
                op(v).backward(g)

            cases[name] = Case(prep, fwd_bwd, lambda v=v: [v.grad])
        times = timer.time(cases, device)
        row = {"T": T, "B": batch, "H": N_HEAD, "D": D}
        for name, case in cases.items():
            row[name] = {**times[name], "ms": 1e3 * times[name]["median_s"], **case.memory(device)}
        row["speedup"] = row["naive"]["median_s"] / row["momentum_ema"]["median_s"]
        rows.append(row)
        ours, naive = row["momentum_ema"], row["naive"]
        print(
            f"  ema    T={T:5d} ours {ours['ms']:9.3f} ms {mib(ours['peak_bytes']):>8s} MiB"
            f"   naive {naive['ms']:9.3f} ms {mib(naive['peak_bytes']):>8s} MiB",
            flush=True,
        )
    by_T = {r["T"]: r for r in rows}
    ratios = {}
    if 1024 in by_T and 8192 in by_T:
        ratios = {n: by_T[8192][n]["median_s"] / by_T[1024][n]["median_s"] for n in ("momentum_ema", "naive")}
    return {
        "rows": rows,
        "time_ratio_8192_over_1024": ratios,
        "check": {"T": min(Ts), "dtype": "float64", "max_abs_diff": max_abs_diff},
    }


def _adamw(model: torch.nn.Module) -> torch.optim.AdamW:
    """train.py's AdamW (momattn.optim.build_adamw) with the optim defaults, fused where torch can."""
    return build_adamw(model, OptimConfig(), fused_adamw_ok([p for p in model.parameters() if p.requires_grad]))


def train_step_case(model: GPT, x: torch.Tensor, y: torch.Tensor, device, dtype) -> Case:
    """Forward and loss as train.py takes them (model(x, targets=y)), backward, grad clip 1.0 (optim.grad_clip
    default), AdamW."""
    opt = _adamw(model)

    def step():
        with _autocast(device, dtype):
            loss = model(x, targets=y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return Case(lambda: opt.zero_grad(set_to_none=True), step, lambda: _grads(model))


def paired_overhead(samples: list[float], vanilla: list[float]) -> dict:
    """Overhead vs vanilla from the samples of the same round (the harness takes one sample of every variant
    per round, round-robin): the median of the per-round ratios, with their interquartile range. A machine
    whose speed drifts or jumps between rounds (this one's steps alternate between ~1.0 and ~1.3 s) moves
    both samples of a round alike, so the ratio is steadier than the ratio of two medians."""
    ratios = [100 * (a / b - 1) for a, b in zip(samples, vanilla)]
    q = statistics.quantiles(ratios, n=4, method=QUARTILES) if len(ratios) >= 2 else [ratios[0]] * 3
    return {"overhead_vs_vanilla_paired_pct": statistics.median(ratios), "paired_q1_pct": q[0], "paired_q3_pct": q[2]}


def bench_train(shapes, device, dtype, timer: Timer) -> list[dict]:
    """A training step of the default model per variant."""
    rows = []
    for T, B in shapes:
        torch.manual_seed(0)
        x, y = (torch.randint(VOCAB, (B, T), device=device) for _ in range(2))
        cases, n_params = {}, {}
        for variant in VARIANTS:
            torch.manual_seed(0)
            model = GPT(_gpt_config(variant, T)).to(device)
            n_params[variant] = model.num_params()
            cases[variant] = train_step_case(model, x, y, device, dtype)
        times = timer.time(cases, device)
        van = times["vanilla"]
        for variant, case in cases.items():
            t = times[variant]
            r = {
                "variant": variant,
                "T": T,
                "B": B,
                "tokens_per_step": B * T,
                "params": n_params[variant],
                **t,
                "ms_per_step": 1e3 * t["median_s"],
                "tokens_per_s": B * T / t["median_s"],
                "overhead_vs_vanilla_pct": 100 * (t["median_s"] / van["median_s"] - 1),
                **paired_overhead(t["samples_s"], van["samples_s"]),
                "overhead_vs_vanilla_best_pct": 100 * (t["min_s"] / van["min_s"] - 1),
                "cpu_ms_per_step": 1e3 * t["cpu_median_s"],
                "cpu_overhead_vs_vanilla_pct": 100 * (t["cpu_median_s"] / van["cpu_median_s"] - 1),
                **case.memory(device),
            }
            rows.append(r)
            print(
                f"  train  T={T:5d} B={B:2d} {variant:19s} {r['ms_per_step']:9.1f} ms/step "
                f"{r['tokens_per_s']:9.0f} tok/s {r['overhead_vs_vanilla_pct']:+6.1f}%",
                flush=True,
            )
    return rows


# -----------------------------------------------------------------------------
# report


def _load(m: dict) -> str:
    a, b = m.get("loadavg_at_start"), m.get("loadavg_at_end")
    return f"{a[0]:.2f} at the start, {b[0]:.2f} at the end" if a and b else "unknown"


def scan_name(device: torch.device) -> str:
    """Which implementation scans the EMA ops' training paths on this device (momattn.ops.SCAN_BACKEND)."""
    from momattn import cpu_scan, ops

    if device.type == "cpu" and ops.SCAN_BACKEND in ("auto", "cpu") and cpu_scan.load() is not None:
        threads = "torch's OpenMP threads" if cpu_scan.OPENMP else "its own threads"
        return f"the CPU kernel (momattn/cpu_scan.py: float32 states, each output rounded once; on {threads})"
    if device.type == "cuda" and ops.SCAN_BACKEND in ("auto", "triton") and ops._triton_scan() is not None:
        return "Triton (momentum_ema), the matmul scans (multirate_ema)"
    return "the chunked matmul scans (momattn/ops.py)"


def attention_name(device: torch.device, dtype: str) -> str:
    """Which backward the training step's causal attention takes (momattn.cpu_attention.pays, less the tensors)."""
    from momattn import cpu_attention

    if device.type == "cpu" and dtype == "bf16" and cpu_attention.available():
        return (f"momattn/cpu_attention.py at T <= {cpu_attention.MAX_T} (SDPA's forward; matmuls on AMX and one C++ "
                "pass backward), SDPA's beyond")
    return "SDPA's"


def _render_header(res: dict) -> list[str]:
    m, s, c = res["machine"], res["settings"], res["contention"]
    # results written before the CPU kernel name no scan: the matmul scans, then with bf16 chunk matmuls
    scan = m.get("scan", "the EMA ops' chunk matmuls in bf16 with fp32 accumulation, their carried states fp32")
    dtype = m["dtype"] + (" (autocast)" if m["dtype"] != "fp32" else "") + f"; EMA scans: {scan}"
    if "attention" in m:  # recorded since session 44
        dtype += f"; attention backward: {m['attention']}"
    out = [
        f"{m['cpu']}; {m['torch_threads']} threads; torch {m['torch']}; device {m['device']}; {dtype}; "
        f"{m['date']}{'; --quick' if s['quick'] else ''}.",
        f"Times: median of {s['repeats']} samples per variant ({s['train_repeats']} for the training step), "
        f"taken round-robin across variants after warm-up (at least {s['warmup']} calls and "
        f"{s['min_sample_s']} s); a sample averages as many back-to-back calls as fill {s['min_sample_s']} s. "
        "Forward + backward throughout.",
        f"Peak memory: {s['memory_method']}.",
        f"Shared machine: {c['retaken']} of {c['samples']} timing samples were retaken because other processes "
        f"kept more than 0.25 cores busy; {c['kept_contended']} contended samples were kept (out of retries or "
        f"patience). Load average {_load(m)}.",
    ]
    if s.get("train_step_run"):
        out.append(f"Training step: {s['train_step_run']}.")
    if "memory_check" in res:
        mc = res["memory_check"]
        out.append(
            f"Memory accounting check: bytes still allocated after each call equal the gradients it "
            f"leaves in {mc['measurements'] - mc['end_bytes_not_kept_bytes']} of {mc['measurements']} "
            "measurements."
        )
    return out + [""]


def _render_layers(rows: list[dict]) -> list[str]:
    names, by = list(VARIANTS), {(r["T"], r["variant"]): r for r in rows}
    Ts = sorted({r["T"] for r in rows})
    times = [
        [str(T), str(by[T, names[0]]["B"])]
        + [
            f"{by[T, n]['ms']:.2f}"
            + (
                ""
                if n == "vanilla"
                else f" ({pct(100 * (by[T, n]['median_s'] / by[T, 'vanilla']['median_s'] - 1))})"
            )
            for n in names
        ]
        for T in Ts
    ]
    mems = [[str(T), str(by[T, names[0]]["B"])] + [mib(by[T, n]["peak_bytes"]) for n in names] for T in Ts]
    return [
        f"#### One attention layer, forward + backward (n_embd {N_EMBD}, {N_HEAD} heads, B = max(1, "
        f"{LAYER_TOKENS} // T): {LAYER_TOKENS} tokens per call)",
        "",
        "Time in ms (change vs vanilla):",
        "",
        table(["T", "B"] + names, times),
        "",
        "Peak memory in MiB:",
        "",
        table(["T", "B"] + names, mems),
        "",
    ]


def _render_ema(ema: dict, batch: int) -> list[str]:
    rows = [
        [
            str(r["T"]),
            f"{r['momentum_ema']['ms']:.3f}",
            f"{r['naive']['ms']:.3f}",
            f"{r['speedup']:.1f}x",
            mib(r["momentum_ema"]["peak_bytes"]),
            mib(r["naive"]["peak_bytes"]),
        ]
        for r in ema["rows"]
    ]
    out = [
        f"#### momentum_ema vs a naive (T, T) decay matrix, forward + backward (B {batch}, {N_HEAD} heads of "
        f"{N_EMBD // N_HEAD}, eta {ETA} fixed)",
        "",
        table(["T", "momentum_ema ms", "naive ms", "speed-up", "momentum_ema MiB", "naive MiB"], rows),
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
    return out + [
        f"Same numbers: max |momentum_ema - naive| = {chk['max_abs_diff']:.1e} in {chk['dtype']} at "
        f"T = {chk['T']}.",
        "",
    ]


def _render_train(rows: list[dict]) -> list[str]:
    def vs(r, key):
        return "-" if r["variant"] == "vanilla" else pct(r[key])

    cells = [
        [
            r["variant"],
            str(r["T"]),
            str(r["B"]),
            f"{r['ms_per_step']:.1f}",
            f"{r['iqr_pct']:.1f}%",
            f"{r['tokens_per_s']:,.0f}",
            vs(r, "overhead_vs_vanilla_pct"),
            "-" if r["variant"] == "vanilla" or "overhead_vs_vanilla_paired_pct" not in r else
            f"{pct(r['overhead_vs_vanilla_paired_pct'])} ({pct(r['paired_q1_pct'])}, {pct(r['paired_q3_pct'])})",
            f"{1e3 * r['min_s']:.1f}",
            vs(r, "overhead_vs_vanilla_best_pct"),
            f"{r['cpu_ms_per_step']:.1f}",
            vs(r, "cpu_overhead_vs_vanilla_pct"),
            mib(r["peak_bytes"]),
        ]
        for r in rows
    ]
    header = [
        "variant",
        "T",
        "B",
        "ms/step",
        "IQR",
        "tokens/s",
        "vs vanilla",
        "paired vs vanilla (IQR)",
        "best ms",
        "best vs vanilla",
        "CPU ms/step",
        "CPU vs vanilla",
        "peak MiB",
    ]
    return [
        "#### Training step of the default model (4 layers, n_embd 256, vocab 4096): forward, loss, "
        "backward, grad clip 1.0, AdamW",
        "",
        table(header, cells),
        "",
        "ms/step, tokens/s and vs vanilla are from the medians of wall time; IQR is the interquartile range "
        "of the samples over their median; paired is the median over rounds of each round's ratio to vanilla "
        "(every round times each variant once, so drift between rounds cancels), with the ratios' "
        "interquartile range; best is the fastest sample (the least disturbed by other "
        "processes); CPU is the median CPU time of this process (all threads), which other processes "
        "disturb less than wall time.",
        "",
    ]


def render(res: dict) -> str:
    """The markdown tables of one results file (also used by render_readme.py)."""
    out = _render_header(res)
    if res.get("attention_layer"):
        out += _render_layers(res["attention_layer"])
    if res.get("momentum_ema_vs_naive"):
        out += _render_ema(res["momentum_ema_vs_naive"], res["settings"]["ema_batch"])
    if res.get("train_step"):
        out += _render_train(res["train_step"])
    if res.get("targets"):
        out += ["#### Targets", ""]
        for t in res["targets"]:
            noisy = t["contended_samples_kept"]
            # a contended run's verdict is not one: a quick run on busy cores read "met" at -48% (found by review)
            verdict = (f"not judged: {noisy} samples taken while other processes were busy (on them it reads "
                       f"{'met' if t['met'] else 'missed'}); measure again on quiet cores") if noisy else \
                ("met" if t["met"] else "MISSED")
            out.append(f"- {t['what']}: {t['got']} (target {t['target']}): {verdict}")
        out.append("")
    return "\n".join(out)


def _vanilla_row(res: dict, T: int) -> dict:
    """The vanilla training-step row at length T, which every other variant's overhead is taken against."""
    return next(v for v in res["train_step"] if v["variant"] == "vanilla" and v["T"] == T)


def targets(res: dict) -> list[dict]:
    """Per training step vs vanilla (issue 11): momentum, fixed or learnable eta, at most +3%; multirate_ema at
    most +5%. momentum_ema linear in T."""
    out = []
    for r in res.get("train_step", []):
        if r["variant"] != "vanilla":
            van = _vanilla_row(res, r["T"])
            got = r.get("overhead_vs_vanilla_paired_pct", r["overhead_vs_vanilla_pct"])
            limit = 5.0 if r["variant"] == "multirate_ema" else 3.0
            out.append(
                {
                    "what": f"training step overhead of {r['variant']} vs vanilla at T={r['T']}",
                    "got": f"{got:+.1f}% (paired; ratio of medians {r['overhead_vs_vanilla_pct']:+.1f}%, best samples "
                    f"{r['overhead_vs_vanilla_best_pct']:+.1f}%, CPU time {r['cpu_overhead_vs_vanilla_pct']:+.1f}%)",
                    "target": f"<= +{limit:.0f}%",
                    "met": got <= limit,  # (judged on its rounding: +3.04% was met; found by review)
                    "value": got,
                    "contended_samples_kept": r["contended_samples_kept"] + van["contended_samples_kept"],
                    # a verdict on contended samples is none: the .md says "not judged", and so does the JSON
                    "judged": r["contended_samples_kept"] + van["contended_samples_kept"] == 0,
                }
            )
    ema = res.get("momentum_ema_vs_naive") or {}
    ratio = ema.get("time_ratio_8192_over_1024")
    if ratio:
        got = ratio["momentum_ema"]
        noisy = sum(
            r["momentum_ema"]["contended_samples_kept"] for r in ema["rows"] if r["T"] in (1024, 8192)
        )
        out.append(
            {
                "what": "momentum_ema time(8192) / time(1024)",
                "got": f"{got:.1f} (naive: {ratio['naive']:.1f})",
                "target": "close to 8 (linear); met at <= 10",
                "met": got <= 10.0,
                "value": got,
                "contended_samples_kept": noisy,
                "judged": noisy == 0,
            }
        )
    return out


def _timed_rows(res: dict) -> list[dict]:
    """Every row of `res` that holds timing samples (layer, training step, and both ops of the EMA part)."""
    timed = res.get("attention_layer", []) + res.get("train_step", [])
    return timed + [
        r[n] for r in res.get("momentum_ema_vs_naive", {}).get("rows", []) for n in ("momentum_ema", "naive")
    ]


def rerender(ap: argparse.ArgumentParser, path: Path) -> dict:
    """Re-derive every row's median and spread, the training step's paired overheads and the targets from the
    samples stored in `path` (an older file's spreads were taken with exclusive quartiles: rendered beside new
    rows, one table mixed two definitions)."""
    try:
        res = json.loads(path.read_text())
        if not isinstance(res, dict) or "settings" not in res or not _timed_rows(res):
            raise ValueError("no attention_layer, train_step or momentum_ema_vs_naive rows")
        for r in _timed_rows(res):
            r.update(summarize(r["samples_s"]))
        for r in res.get("train_step", []):
            r.update(paired_overhead(r["samples_s"], _vanilla_row(res, r["T"])["samples_s"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        ap.error(f"--rerender --out {path}: not a bench_attention results file ({e!r})")
    res["settings"]["quartiles"] = QUARTILES
    res["targets"] = targets(res)
    write_results(path, res, render(res))
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: two lengths, few repeats (a minute or two)"
    )
    ap.add_argument(
        "--parts", nargs="+", choices=["layer", "ema", "train"], default=["layer", "ema", "train"]
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
        "--ema-batch", type=positive_int, default=EMA_BATCH, help="batch of the momentum_ema vs naive benchmark"
    )
    ap.add_argument(
        "--train-repeats", type=positive_int, default=None, help="samples per variant of the training step"
    )
    ap.add_argument(
        "--patience",
        type=float,
        default=None,
        help="seconds the run may spend waiting out other processes and retaking contended samples "
        "(default 0 with --quick, else 150; 0 keeps every sample as measured)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON output; the markdown tables go next to it with the suffix .md (default: benchmarks/results/"
        "attention.json; with --quick, a scratch file in the temporary folder, never the committed results)",
    )
    ap.add_argument(
        "--rerender",
        action="store_true",
        help="time nothing: recompute the derived statistics and targets of --out from its stored samples and "
        "rewrite it and its .md",
    )
    args = ap.parse_args(argv)
    if args.out is None:  # a smoke run (--quick) overwrote the committed results by default (found by review)
        args.out = SCRATCH / "attention_quick.json" if args.quick else \
            RESULTS / "attention.json"  # (--rerender --quick rewrote the committed results: found by review)
    if args.rerender:
        return rerender(ap, args.out)

    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available here; use --device cpu")
    if args.threads is not None and args.threads < 1:  # a RuntimeError from torch.set_num_threads below 0
        ap.error(f"--threads={args.threads} must be >= 1 (or left out: every core this process may use)")
    if args.patience is not None and not 0 <= args.patience < float("inf"):  # (nan passed '< 0')
        ap.error(f"--patience={args.patience} must be a finite number >= 0 seconds (0 keeps every sample as measured)")
    check_out(ap, args.out)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    threads = args.threads or (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )
    torch.set_num_threads(threads or 1)

    if args.quick:
        layer_Ts, ema_Ts, train_shapes = [256, 1024], [256, 1024], [(BLOCK, BATCH)]
        opts, train_repeats, patience = {"repeats": 3, "warmup": 1, "min_sample_s": 0.05}, 3, 0.0
    else:
        layer_Ts = ema_Ts = [256, 512, 1024, 2048, 4096, 8192]
        train_shapes = [(BLOCK, BATCH), (1024, BATCH * BLOCK // 1024)]  # equal tokens per step
        opts, train_repeats, patience = {"repeats": 7, "warmup": 2, "min_sample_s": 0.2}, 15, 150.0
    train_repeats = args.train_repeats or train_repeats
    timer = Timer(**opts, patience_s=args.patience if args.patience is not None else patience)
    res = {
        "machine": {**machine_info(device, args.dtype), "scan": scan_name(device),
                    "attention": attention_name(device, args.dtype)},
        "settings": {
            "quick": args.quick,
            "parts": args.parts,
            **opts,
            "train_repeats": train_repeats,
            "memory_method": MEMORY_METHOD[device.type],
            "layer_batch_rule": f"B = max(1, {LAYER_TOKENS} // T)",
            "ema_batch": args.ema_batch,
            "eta": ETA,
            "variants": VARIANTS,
            "patience_s": timer.patience_s,
            "quartiles": QUARTILES,
            "dtype_note": "bf16: torch.autocast for layer and training step; bf16 inputs for the "
            "EMA ops (bf16 chunk matmuls accumulating in fp32, fp32 states between chunks)"
            if args.dtype == "bf16"
            else "fp32 throughout",
        },
    }
    t0 = time.perf_counter()
    print(f"bench_attention: {res['machine']['describe']}; {device}, {args.dtype}", flush=True)
    if "layer" in args.parts:
        res["attention_layer"] = bench_layers(layer_Ts, device, dtype, timer)
    if "ema" in args.parts:
        res["momentum_ema_vs_naive"] = bench_ema(ema_Ts, device, dtype, timer, args.ema_batch)
    if "train" in args.parts:
        train_timer = Timer(**{**opts, "repeats": train_repeats}, patience_s=timer.patience_s)
        res["train_step"] = bench_train(train_shapes, device, dtype, train_timer)
        timer.patience_s = train_timer.patience_s
    res["wall_s"] = time.perf_counter() - t0
    res["settings"]["patience_left_s"] = timer.patience_s
    timed = _timed_rows(res)
    res["contention"] = {
        "samples": sum(len(r["samples_s"]) for r in timed),
        "retaken": sum(r["samples_retaken"] for r in timed),
        "kept_contended": sum(r["contended_samples_kept"] for r in timed),
    }
    res["memory_check"] = {
        "measurements": len(timed),
        "end_bytes_not_kept_bytes": sum(r["end_bytes"] != r["kept_bytes"] for r in timed),
    }
    res["targets"] = targets(res)
    if hasattr(os, "getloadavg"):
        res["machine"]["loadavg_at_end"] = list(os.getloadavg())
    write_results(args.out, res, render(res))
    print(f"({res['wall_s']:.0f} s)")
    return res


if __name__ == "__main__":
    run_main(main)
