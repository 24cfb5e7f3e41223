"""The CPU scan kernel's own time inside a running training step, on torch's OpenMP threads and on its own threads.

    python benchmarks/bench_kernel_step.py [--dtype bf16|fp32] [--T 256] [--rounds 5] [--steps 4]

For momentum (eta fixed and learnable) and multirate_ema it runs bench_attention.py's training step of the default
model (train.py's loss and AdamW, clipping) and times every call of the kernel inside it (momattn.cpu_scan's
forward and backward, per layer), and the step itself, vanilla's included; rounds go round-robin over the
variants. Each mode runs in its own process, since a process loads the kernel once: "openmp", its tasks on
torch's OpenMP threads (the default where torch runs on GNU OpenMP, see momattn.cpu_scan._openmp), and "own",
its own threads (MOMATTN_SCAN_OPENMP=0). torch's OpenMP workers spin for a while after each op: a kernel on its
own threads competes with them. Prints a table and writes --out and its .md (default: a scratch file in the
temporary folder; the README's runs name benchmarks/results/kernel_step_<dtype>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_attention import BATCH, BLOCK, VOCAB, _gpt_config, train_step_case  # noqa: E402
from harness import (  # noqa: E402
    SCRATCH,
    check_out,
    die_with_parent,
    machine_info,
    run_main,
    summarize,
    table,
    write_results,
)

from momattn import cpu_scan  # noqa: E402
from momattn.model import GPT  # noqa: E402
from momattn.utils import positive_int  # noqa: E402

MODES = {"openmp": "1", "own": "0"}  # MOMATTN_SCAN_OPENMP
KINDS = ("vanilla", "momentum", "momentum_learnable", "multirate_ema")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


class _KernelClock:
    """Wraps cpu_scan's forward and backward calls, adding up their wall time."""

    def __init__(self):
        self.s = {"forward": 0.0, "backward": 0.0}
        self.n = {"forward": 0, "backward": 0}
        for name in self.s:
            orig = getattr(cpu_scan, f"_{name}")

            def timed(*a, _orig=orig, _name=name, **kw):
                t = time.perf_counter()
                out = _orig(*a, **kw)
                self.s[_name] += time.perf_counter() - t
                self.n[_name] += 1
                return out

            setattr(cpu_scan, f"_{name}", timed)

    def reset(self) -> None:
        for name in self.s:
            self.s[name], self.n[name] = 0.0, 0


def worker(args) -> dict:
    """One mode, in this process: per variant, median over rounds of the step and of the kernel's calls."""
    if cpu_scan.load() is None:
        raise SystemExit("the CPU scan kernel could not be built here")
    torch.set_num_threads(args.threads or torch.get_num_threads())
    clock = _KernelClock()
    T, B = args.T, args.batch or BATCH * BLOCK // args.T
    x, y = (torch.randint(VOCAB, (B, T), generator=torch.Generator().manual_seed(i)) for i in range(2))
    cases = {}
    for kind in KINDS:
        torch.manual_seed(0)
        cases[kind] = train_step_case(GPT(_gpt_config(kind, T)), x, y, torch.device("cpu"), DTYPES[args.dtype])
        for _ in range(3):  # warm-up: the kernel's build, the allocator, the OpenMP team
            cases[kind]()
    samples = {kind: {"step_ms": [], "forward_us": [], "backward_us": []} for kind in KINDS}
    for _ in range(args.rounds):
        for kind, case in cases.items():
            clock.reset()
            t = time.perf_counter()
            for _ in range(args.steps):
                case()
            samples[kind]["step_ms"].append(1e3 * (time.perf_counter() - t) / args.steps)
            for name in ("forward", "backward"):
                if clock.n[name]:
                    samples[kind][f"{name}_us"].append(1e6 * clock.s[name] / clock.n[name])
    return {"openmp": cpu_scan.OPENMP, "threads": torch.get_num_threads(),
            "results": {k: {m: (statistics.median(v) if v else None) for m, v in s.items()} | {"samples": s}
                        for k, s in samples.items()}}


def _spread(samples: list[float] | None) -> str:
    """The interquartile range of a variant's step times, in % of their median (- for fewer than 2)."""
    if not samples or len(samples) < 2:
        return "-"
    return f"{summarize(samples)['iqr_pct']:.0f}%"


def render(res: dict) -> str:
    m, st = res["machine"], res["settings"]
    rows = []
    for kind in KINDS:
        for mode, r in res["modes"].items():
            if r is None:
                continue
            v = r["results"][kind]
            us = [f"{v[f'{n}_us']:.0f}" if v[f"{n}_us"] is not None else "-" for n in ("forward", "backward")]
            rows.append([kind, mode + ("" if r["openmp"] == (mode == "openmp") else " (unavailable: own threads)"),
                         *us, f"{v['step_ms']:.1f}", _spread(v.get("samples", {}).get("step_ms"))])
    threads = sorted({r["threads"] for r in res["modes"].values() if r and "threads" in r})
    # (the workers' own: the machine line's count is the cores', and --threads was nowhere: review)
    return "\n".join([
        f"{m.get('describe') or m.get('cpu')}; {st['dtype']}; "
        + (f"torch threads: {'/'.join(map(str, threads))}; " if threads else "")
        + f"T = {st['T']}, batch {st['B']}; medians over "
        f"{st['rounds']} rounds of {st['steps']} steps, round-robin over the variants; each mode in its own process.",
        "",
        table(["variant", "kernel threads", "kernel forward, us per layer", "kernel backward, us per layer",
               "step ms", "step spread (IQR)"], rows),
        "",
        "The kernel's calls are timed inside a running training step (momattn.cpu_scan's forward and backward, one "
        "call per layer each). `own`: MOMATTN_SCAN_OPENMP=0, the kernel's own threads, which compete with torch's "
        "OpenMP workers spinning after each op.",
        "",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    ap.add_argument("--T", type=positive_int, default=256)
    ap.add_argument("--batch", type=int, default=0, help="rows per step (default: as many as make 4,096 tokens)")
    ap.add_argument("--rounds", type=positive_int, default=5)
    ap.add_argument("--steps", type=positive_int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    ap.add_argument("--out", type=Path, default=None,
                    help="the results file (default: a scratch file in the temporary folder; the committed ones, "
                         "benchmarks/results/kernel_step_<dtype>.json, are written by naming them)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    for flag in ("batch", "threads"):  # caught inside the worker alone, which printed its whole traceback
        if getattr(args, flag) < 0:  # (the one at fault: both were named, found by review)
            ap.error(f"--{flag}={getattr(args, flag)} must be >= 0 (0: the default)")
    if not args.batch and args.T > BATCH * BLOCK:  # 4,096 // 8,192 = 0 rows: a table of empty batches
        ap.error(f"--T={args.T} is longer than the {BATCH * BLOCK} tokens a step holds by default; give --batch")
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.out is None:  # (a trial run wrote a results file beside the committed ones: found by review)
        args.out = SCRATCH / f"kernel_step_{args.dtype}.json"
    check_out(ap, args.out)
    machine = machine_info(torch.device("cpu"), args.dtype)  # its date and load: when the timing starts
    modes = {}
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--worker", "--dtype", args.dtype, "--T", str(args.T), "--batch",
               str(args.batch), "--rounds",
               str(args.rounds), "--steps", str(args.steps), "--threads", str(args.threads)]
        env = {**os.environ, "MOMATTN_SCAN_OPENMP": MODES[mode]}
        print(f"  {mode}: {' '.join(cmd[1:])}", flush=True)
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, preexec_fn=die_with_parent)
        if out.returncode:
            how = f"was killed by signal {-out.returncode}" if out.returncode < 0 else f"exited {out.returncode}"
            raise SystemExit(f"the {mode} worker {how}" + (f":\n{out.stderr[-3000:]}" if out.stderr.strip() else
                                                           " and printed nothing"))
        modes[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    settings = {"dtype": args.dtype, "T": args.T, "B": args.batch or BATCH * BLOCK // args.T, "rounds": args.rounds,
                "steps": args.steps}
    threads = {r["threads"] for r in modes.values() if r}
    if len(threads) == 1:  # what the workers timed with (machine_info read this process's torch, not --threads)
        machine["torch_threads"] = threads.pop()
    res = {"machine": machine, "settings": settings, "modes": modes}
    write_results(args.out, res, render(res))


if __name__ == "__main__":
    run_main(main)
