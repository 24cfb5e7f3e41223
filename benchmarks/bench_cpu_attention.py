"""Causal attention's forward + backward on the CPU: SDPA (its CPU flash kernel) against momattn/cpu_attention.py.

    python benchmarks/bench_cpu_attention.py [--shapes 8x4x512x64 16x4x256x64 ...] [--dtypes bf16 fp32]

Per shape (batch x heads x context x head size) and dtype: the median wall time of one forward and backward of
each, interleaved (benchmarks/harness.py), the speed-up, and the gradients' error against float64 SDPA (relative
Frobenius norm, the worst of dq, dk, dv) for both. The model takes cpu_attention only for bf16 training on a CPU
with AMX, at T <= 512 (momattn.cpu_attention.pays, MAX_T); fp32 and longer contexts are timed to show why not. Prints a table and writes
benchmarks/results/cpu_attention.json and .md (--out to change).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import Timer, check_out, default_out, machine_info, run_main, table, write_results  # noqa: E402

from momattn import cpu_attention, cpu_scan  # noqa: E402
from momattn.hardware import cpu_has_amx  # noqa: E402
from momattn.utils import positive_int  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# the main job (conf/model/small.yaml at context 512, batch 8), bench_attention.py's training step (T 256, 1024), and
# 2048, all at 8192 tokens
SHAPES = ("16x4x256x64", "8x4x512x64", "4x4x1024x64", "2x4x2048x64")


def _shape(text: str) -> tuple[int, int, int, int]:
    try:
        dims = tuple(int(x) for x in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 4 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape BxHxTxD of four positive integers, e.g. 8x4x512x64")
    return dims  # type: ignore[return-value]


def _case(shape, dtype):
    B, H, T, D = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, 3 * H * D, generator=g).to(dtype)  # as the model splits its qkv projection
    qkv = [t.view(B, T, H, D).transpose(1, 2).detach().requires_grad_() for t in x.split(H * D, dim=2)]
    go = torch.randn(B, H, T, D, generator=g).to(dtype)

    def run(fn):
        def step():
            for t in qkv:
                t.grad = None
            fn(*qkv).backward(go)
        return step

    def grads(fn, inputs, grad):
        for t in inputs:
            t.grad = None
        fn(*inputs).backward(grad)
        return [t.grad.double() for t in inputs]

    ref = grads(_sdpa, [t.detach().double().requires_grad_() for t in qkv], go.double())
    errors = {name: max(((a - r).norm() / r.norm()).item() for a, r in zip(grads(fn, qkv, go), ref) if r.norm())
              for name, fn in (("sdpa", _sdpa), ("cpu_attention", cpu_attention.causal))}
    return {"sdpa": run(_sdpa), "cpu_attention": run(cpu_attention.causal)}, errors


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", type=_shape, nargs="+", default=[_shape(s) for s in SHAPES], metavar="BxHxTxD")
    ap.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["bf16", "fp32"])
    ap.add_argument("--repeats", type=positive_int, default=7)
    ap.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--patience", type=float, default=120.0,
                    help="seconds the run may spend waiting out other processes and retaking contended samples "
                         "(default 120; 0 keeps every sample as measured)")
    ap.add_argument("--out", type=Path, default=None,
                    help="the results file (default: the committed benchmarks/results/cpu_attention.json with the "
                         "default shapes, dtypes and repeats; else a scratch file in the temporary folder)")
    args = ap.parse_args()
    if args.out is None:  # (a trial run on one small shape replaced the committed results: found by review)
        args.out = default_out(ap, args, "cpu_attention.json", skip=("out", "threads", "patience"))
    check_out(ap, args.out)
    if not args.patience >= 0:
        ap.error(f"--patience={args.patience} must be >= 0 seconds (0 keeps every sample as measured)")
    if cpu_scan.load() is None:
        print("the CPU kernel cannot be built here (see the warning above): nothing to compare", file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    timer = Timer(repeats=args.repeats, warmup=2, min_sample_s=0.2, patience_s=args.patience)
    rows, results = [], []
    for shape in args.shapes:
        for name in args.dtypes:
            fns, errors = _case(shape, DTYPES[name])
            stats = timer.time(fns, torch.device("cpu"))
            sdpa, ours = stats["sdpa"]["median_s"], stats["cpu_attention"]["median_s"]
            results.append({"shape": list(shape), "dtype": name, "stats": stats, "grad_error_vs_float64": errors,
                            "speedup": sdpa / ours})
            rows.append(["x".join(map(str, shape)), name, f"{sdpa * 1e3:.2f} (IQR {stats['sdpa']['iqr_pct']:.0f}%)",
                         f"{ours * 1e3:.2f} (IQR {stats['cpu_attention']['iqr_pct']:.0f}%)", f"{sdpa / ours:.2f}x",
                         f"{errors['sdpa']:.1e}", f"{errors['cpu_attention']:.1e}"])
    info = machine_info("cpu")
    md = (f"# Causal attention on the CPU: forward + backward\n\n{info['cpu']}; {info['torch_threads']} threads; "
          f"AMX: {'yes' if cpu_has_amx() else 'no'}; torch {info['torch']}; {info['date']}. Medians of "
          f"{args.repeats} interleaved samples (ms per forward and backward; IQR over the median). Gradient error: "
          "the worst of dq, dk, dv against float64 SDPA, relative Frobenius norm.\n\n"
          + table(["B x H x T x D", "dtype", "SDPA ms", "cpu_attention ms", "speed-up", "SDPA error",
                   "cpu_attention error"], rows)
          + f"\n\nThe model takes cpu_attention for bf16 training on a CPU with AMX at T <= {cpu_attention.MAX_T} "
          "(momattn.cpu_attention.pays).")
    settings = {"repeats": args.repeats, "patience_s": args.patience, "patience_left_s": timer.patience_s}
    write_results(args.out, {"machine": info, "amx": cpu_has_amx(), "settings": settings, "results": results}, md)
    return 0


if __name__ == "__main__":
    run_main(main)
