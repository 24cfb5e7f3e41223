"""Training step of the working tree's model against the same model at an earlier git revision, interleaved
in one process (so a busy machine hits both alike): did a change to ops.py / model.py cost any speed?

    python benchmarks/compare_revisions.py --rev HEAD --T 256 --repeats 9 --out /tmp/compare.json

The revision's momattn/ops.py and momattn/model.py are loaded from `git show` as separate modules; the rest
of momattn is shared. Same weights (seed 0), data and optimizer as bench_attention.py's training step.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_attention import BATCH, BLOCK, VARIANTS, VOCAB, _gpt_config, train_step_case  # noqa: E402
from harness import RESULTS, Timer, machine_info, pct, table, write_results  # noqa: E402

from momattn import model as model_now  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _module_from_source(name: str, source: str) -> types.ModuleType:
    spec = importlib.util.spec_from_loader(name, loader=None)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    exec(compile(source, f"<{name}>", "exec"), mod.__dict__)
    return mod


def model_at(rev: str) -> types.ModuleType:
    """momattn.model as of `rev`, importing that revision's momattn.ops."""

    def show(path):
        return subprocess.run(
            ["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout

    tag = "momattn_rev_" + "".join(c if c.isalnum() else "_" for c in rev)
    _module_from_source(f"{tag}_ops", show("momattn/ops.py"))
    return _module_from_source(
        f"{tag}_model", show("momattn/model.py").replace("from momattn.ops ", f"from {tag}_ops ")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rev", default="HEAD")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--T", type=int, default=BLOCK)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--min-sample-s", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, default=RESULTS / "compare_revisions.json")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device, T = torch.device("cpu"), args.T
    B = max(1, BATCH * BLOCK // T)
    old = model_at(args.rev)
    torch.manual_seed(0)
    x, y = (torch.randint(VOCAB, (B, T)) for _ in range(2))
    cases = {}
    for variant in args.variants:
        for label, mod in ((args.rev, old), ("worktree", model_now)):
            torch.manual_seed(0)
            cfg = _gpt_config(variant, T)
            gpt = mod.GPT(
                mod.GPTConfig(**{**cfg.__dict__, "attention": mod.AttentionConfig(**VARIANTS[variant])})
            )
            cases[f"{variant} @ {label}"] = train_step_case(gpt, x, y, device, torch.float32)
    times = Timer(repeats=args.repeats, warmup=2, min_sample_s=args.min_sample_s).time(cases, device)
    rows = []
    for variant in args.variants:
        a, b = times[f"{variant} @ {args.rev}"], times[f"{variant} @ worktree"]
        rows.append(
            [
                variant,
                f"{1e3 * a['median_s']:.1f} ({a['iqr_pct']:.1f}%)",
                f"{1e3 * b['median_s']:.1f} ({b['iqr_pct']:.1f}%)",
                pct(100 * (b["median_s"] / a["median_s"] - 1)),
                pct(100 * (b["min_s"] / a["min_s"] - 1)),
            ]
        )
    md = "\n".join(
        [
            f"Training step, T={T}, B={B}, fp32: ms (IQR) at {args.rev} and in the working tree, medians of "
            f"{args.repeats} interleaved samples.",
            "",
            table(["variant", args.rev, "worktree", "change (median)", "change (best)"], rows),
        ]
    )
    write_results(
        args.out, {"machine": machine_info(device), "rev": args.rev, "T": T, "B": B, "times": times}, md
    )


if __name__ == "__main__":
    main()
