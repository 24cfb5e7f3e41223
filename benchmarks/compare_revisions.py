"""Training step of the working tree's model against the same model at an earlier git revision, interleaved
in one process (so a busy machine hits both alike): did a change to ops.py / model.py cost any speed?

    python benchmarks/compare_revisions.py --rev HEAD --T 256 --repeats 9 --out /tmp/compare.json
    python benchmarks/compare_revisions.py --rev HEAD --part ema   # momentum_ema alone, fixed and learnable eta
    python benchmarks/compare_revisions.py --rev HEAD --part icl   # ICL scoring, cached and full prompts
    python benchmarks/compare_revisions.py --rev HEAD --part ema --dtype bf16   # the ops on bf16 values (autocast's)

The revision's momattn/ops.py and momattn/model.py (and its CPU kernel, momattn/cpu_scan.py with its C++ source,
built for it) are loaded from `git show` as separate modules; the rest of momattn is shared. Same weights (seed 0), data and optimizer as bench_attention.py's training step.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_attention import (  # noqa: E402
    BATCH,
    BLOCK,
    VARIANTS,
    VOCAB,
    _gpt_config,
    paired_overhead,
    train_step_case,
)
from harness import RESULTS, Timer, check_out, machine_info, pct, run_main, table, write_results  # noqa: E402

from momattn import model as model_now  # noqa: E402
from momattn.errors import UserError  # noqa: E402
from momattn.utils import positive_int  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _module_from_source(name: str, source: str) -> types.ModuleType:
    spec = importlib.util.spec_from_loader(name, loader=None)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    exec(compile(source, f"<{name}>", "exec"), mod.__dict__)
    return mod


def _show(rev: str, path: str) -> str:
    return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def _tag(rev: str) -> str:
    return "momattn_rev_" + "".join(c if c.isalnum() else "_" for c in rev)


def cpu_scan_at(rev: str) -> types.ModuleType | None:
    """momattn.cpu_scan as of `rev`, building that revision's kernel source (None before it existed)."""
    try:
        files = {p: _show(rev, f"momattn/{p}") for p in ("cpu_scan.py", "csrc/ema_scan.cpp")}
    except subprocess.CalledProcessError:
        return None
    root = Path(tempfile.mkdtemp(prefix=f"{_tag(rev)}_"))
    atexit.register(shutil.rmtree, root, True)  # the built kernel stays in the cache
    for p, text in files.items():
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_text(text)
    name = f"{_tag(rev)}_cpu_scan"
    spec = importlib.util.spec_from_file_location(name, root / "cpu_scan.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def ops_at(rev: str) -> types.ModuleType:
    """momattn.ops as of `rev`, with that revision's CPU kernel where it had one."""
    source, scan = _show(rev, "momattn/ops.py"), cpu_scan_at(rev)
    if scan is not None:
        if "from momattn import cpu_scan\n" not in source:
            raise RuntimeError(f"{rev}'s momattn/ops.py does not import cpu_scan as expected: its kernel cannot be swapped in")
        source = source.replace("from momattn import cpu_scan\n", f"import {scan.__name__} as cpu_scan\n")
    return _module_from_source(f"{_tag(rev)}_ops", source)


def model_at(rev: str) -> types.ModuleType:
    """momattn.model as of `rev`, importing that revision's momattn.ops."""
    ops = ops_at(rev)
    return _module_from_source(
        f"{_tag(rev)}_model", _show(rev, "momattn/model.py").replace("from momattn.ops ", f"from {ops.__name__} ")
    )


def config_for(mod: types.ModuleType, cfg, attention: dict, rev: str):
    """mod's GPTConfig with today's settings `cfg` and attention: a field an older revision's class lacks is left
    out (said once); one it needs and does not take (an older AttentionConfig) is one line, not a TypeError
    traceback (found by review: --rev HEAD~950)."""
    import dataclasses

    have = {f.name for f in dataclasses.fields(mod.GPTConfig)}
    settings = {k: v for k, v in cfg.__dict__.items() if k != "attention"}
    dropped = sorted(set(settings) - have)
    if dropped and dropped != getattr(mod, "_said_dropped", None):
        mod._said_dropped = dropped
        print(f"[compare_revisions] --rev {rev}'s GPTConfig has no {', '.join(dropped)}: its model is built "
              f"without {'it' if len(dropped) == 1 else 'them'}", flush=True)
    try:
        return mod.GPTConfig(**{k: v for k, v in settings.items() if k in have},
                             attention=mod.AttentionConfig(**attention))
    except (TypeError, ValueError) as e:
        raise UserError(f"--rev {rev}: its model cannot be built with these settings ({e}); choose a later "
                        "revision") from None


def compare_ema(args) -> None:
    """momentum_ema forward + backward at one training step's worth of values (4 layers x B x T tokens of
    256 channels, 4 heads), read as the model reads them (a strided view of a qkv tensor), eta 0.5 fixed and
    learnable per head, and multirate_ema (8 learned rates per channel, as the model's layer calls it), at
    `rev` and in the working tree, interleaved."""
    from momattn import ops as ops_now

    old = ops_at(args.rev)
    T = args.T
    B = 4 * max(1, BATCH * BLOCK // T)  # 4 layers' worth of one step's tokens
    torch.manual_seed(0)
    qkv = torch.randn(B, T, 3 * 256).to(DTYPES[args.dtype])  # bf16: the values autocast hands the ops

    def case(mod, learnable):
        def fn():
            eta = torch.full((4,), 0.5, requires_grad=True) if learnable else torch.tensor(0.5)
            v = qkv[:, :, 512:].detach().requires_grad_()
            out = mod.momentum_ema(v.view(B, T, 4, 64).transpose(1, 2), eta)[0]
            out.backward(torch.ones_like(out))

        return fn

    delta, gamma = torch.randn(256, 8) * 0.2, torch.randn(256, 8) / 16

    def multirate(mod):
        def fn():
            d, g = delta.clone().requires_grad_(), gamma.clone().requires_grad_()
            v = qkv[:, :, 512:].detach().requires_grad_()
            out = mod.multirate_ema(v, torch.sigmoid(d), g)[0]
            out.backward(torch.ones_like(out))

        return fn

    kinds = ("fixed", "learnable", "multirate")
    cases = {f"{kind} @ {label}": multirate(mod) if kind == "multirate" else case(mod, kind == "learnable")
             for kind in kinds for label, mod in ((args.rev, old), ("worktree", ops_now))}
    times = Timer(repeats=args.repeats, warmup=2, min_sample_s=args.min_sample_s).time(cases, torch.device("cpu"))
    rows = []
    for kind in kinds:
        a, b = times[f"{kind} @ {args.rev}"], times[f"{kind} @ worktree"]
        paired = paired_overhead(b["samples_s"], a["samples_s"])
        rows.append([kind if kind == "multirate" else f"eta {kind}", f"{1e3 * a['median_s']:.2f} ({a['iqr_pct']:.1f}%)",
                     f"{1e3 * b['median_s']:.2f} ({b['iqr_pct']:.1f}%)",
                     pct(100 * (b["median_s"] / a["median_s"] - 1)),
                     f"{pct(paired['overhead_vs_vanilla_paired_pct'])} ({pct(paired['paired_q1_pct'])}, "
                     f"{pct(paired['paired_q3_pct'])})"])
    md = "\n".join([
        f"momentum_ema and multirate_ema (8 rates per channel) forward + backward, B={B} x T={T} x 256 channels "
        f"(one training step's values, 4 layers; momentum: 4 heads of 64), {args.dtype} values: ms (IQR) at {args.rev} "
        f"and in the "
        f"working tree, medians of {args.repeats} interleaved samples.",
        "",
        table(["op", args.rev, "worktree", "change (medians)", "change (paired, IQR)"], rows),
    ])
    # the values' dtype in the record (every bf16 comparison was written as fp32: found by review)
    write_results(args.out, {"machine": machine_info(torch.device("cpu"), args.dtype), "rev": args.rev, "part": "ema", "T": T,
                             "B": B, "dtype": args.dtype, "times": times}, md)


def scoring_at(rev: str) -> types.ModuleType:
    """momattn.eval.scoring as of `rev` (it takes the model as an argument: any revision's GPT runs in it)."""
    return _module_from_source(f"{_tag(rev)}_scoring", _show(rev, "momattn/eval/scoring.py"))


def compare_icl(args) -> None:
    """ICL answer scoring (bench_icl_cache.py's cases at 64 queries, k demonstrations, 2 or 5 answers) with the
    prefix cache and as full prompts, at `rev` and in the working tree (its model, ops and scorer), same weights,
    interleaved."""
    from bench_icl_cache import make_case

    from momattn.eval import scoring as scoring_now

    old_model = model_at(args.rev)
    old_scoring = scoring_at(args.rev)
    cases, rows_of = {}, {}
    for kind in args.kinds:
        models = {}
        for label, mod in ((args.rev, old_model), ("worktree", model_now)):
            torch.manual_seed(0)
            models[label] = mod.GPT(mod.GPTConfig(block_size=512, attention=mod.AttentionConfig(kind=kind))).eval()
        models["worktree"].load_state_dict(models[args.rev].state_dict())
        for k in args.shots:
            for n_answers in args.answers:
                prefix, rows = make_case(torch.Generator().manual_seed(k), 4096, k, 64, n_answers)
                full = [(prefix + q, a) for q, a in rows]
                for label, sc in ((args.rev, old_scoring), ("worktree", scoring_now)):
                    m = models[label]
                    cases[f"{kind} k={k} a={n_answers} cached @ {label}"] = (
                        lambda sc=sc, m=m, prefix=prefix, rows=rows: sc.PrefixScorer(m, prefix).score(rows))
                    cases[f"{kind} k={k} a={n_answers} full @ {label}"] = (
                        lambda sc=sc, m=m, full=full: sc.PrefixScorer(m, []).score(full))
                rows_of[(kind, k, n_answers)] = (prefix, rows)
    with torch.no_grad():
        times = Timer(repeats=args.repeats, warmup=1, min_sample_s=0.0).time(cases, torch.device("cpu"))
    out = []
    for kind, k, n_answers in rows_of:
        key = f"{kind} k={k} a={n_answers}"
        t = {f"{w} @ {lab}": times[f"{key} {w} @ {lab}"]["median_s"] for w in ("cached", "full")
             for lab in (args.rev, "worktree")}
        out.append([kind, str(k), str(n_answers),
                    f"{t[f'cached @ {args.rev}']:.3f}", f"{t['cached @ worktree']:.3f}",
                    pct(100 * (t["cached @ worktree"] / t[f"cached @ {args.rev}"] - 1)),
                    f"{t[f'full @ {args.rev}']:.3f}", f"{t['full @ worktree']:.3f}",
                    pct(100 * (t["full @ worktree"] / t[f"full @ {args.rev}"] - 1)),
                    f"{t[f'full @ {args.rev}'] / t[f'cached @ {args.rev}']:.1f}x",
                    f"{t['full @ worktree'] / t['cached @ worktree']:.1f}x"])
    md = "\n".join([
        f"ICL answer scoring, 64 queries (bench_icl_cache.py's cases at --examples 64), model 4 x 256, vocab 4096, context 512, fp32: "
        f"seconds at {args.rev} and in the working tree (same weights), medians of {args.repeats} interleaved samples.",
        "",
        table(["attention", "k", "answers", f"cached {args.rev}", "cached now", "change", f"full {args.rev}",
               "full now", "change", f"speed-up {args.rev}", "speed-up now"], out),
    ])
    write_results(args.out, {"machine": machine_info(torch.device("cpu")), "rev": args.rev, "part": "icl",
                             "times": times}, md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rev", default="HEAD")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--T", type=positive_int, default=BLOCK)
    ap.add_argument("--repeats", type=positive_int, default=9)
    ap.add_argument("--min-sample-s", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, default=RESULTS / "compare_revisions.json")
    ap.add_argument("--part", choices=["step", "ema", "icl"], default="step",
                    help="step: the model's training step; ema: momentum_ema forward + backward alone; icl: ICL "
                         "answer scoring, cached and full prompts")
    ap.add_argument("--kinds", nargs="+", default=["vanilla", "momentum", "multirate_ema"], help="--part icl")
    ap.add_argument("--shots", nargs="+", type=positive_int, default=[4, 19], help="--part icl")
    ap.add_argument("--answers", nargs="+", type=positive_int, default=[2, 5], help="--part icl")
    ap.add_argument("--dtype", choices=list(DTYPES), default="fp32",
                    help="--part step / ema: bf16 = the step under CPU autocast / bf16 values for the ops")
    args = ap.parse_args()
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads={args.threads} must be >= 1 (or left out: torch's choice)")
    if not 0 < args.min_sample_s < float("inf"):  # (nan and inf passed '<= 0', then a ValueError traceback)
        ap.error(f"--min-sample-s={args.min_sample_s} must be a finite number > 0 seconds")
    rev = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{args.rev}^{{commit}}"], cwd=ROOT,
                         capture_output=True, text=True)
    if rev.returncode != 0:
        ap.error(f"--rev {args.rev}: not a commit of this repository ({ROOT}); e.g. --rev HEAD or --rev HEAD~3")
    check_out(ap, args.out)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.part == "ema":
        return compare_ema(args)
    if args.part == "icl":
        return compare_icl(args)
    device, T = torch.device("cpu"), args.T
    B = max(1, BATCH * BLOCK // T)
    old = model_at(args.rev)
    torch.manual_seed(0)
    x, y = (torch.randint(VOCAB, (B, T)) for _ in range(2))
    cases = {}
    for variant in args.variants:
        for label, mod in ((args.rev, old), ("worktree", model_now)):
            torch.manual_seed(0)
            gpt = mod.GPT(config_for(mod, _gpt_config(variant, T), VARIANTS[variant], args.rev))
            cases[f"{variant} @ {label}"] = case = train_step_case(gpt, x, y, device, DTYPES[args.dtype])
            if mod is old:
                try:  # one step now: a model of another interface (model(x, targets=y)) failed mid-timing
                    case()
                except (TypeError, AttributeError, ValueError) as e:
                    raise UserError(f"--rev {args.rev}: its model does not take today's training step ({e}); "
                                    "choose a later revision") from None
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
            f"Training step, T={T}, B={B}, {args.dtype}: ms (IQR) at {args.rev} and in the working tree, medians of "
            f"{args.repeats} interleaved samples.",
            "",
            table(["variant", args.rev, "worktree", "change (median)", "change (best)"], rows),
        ]
    )
    write_results(
        args.out, {"machine": machine_info(device, args.dtype), "rev": args.rev, "T": T, "B": B, "dtype": args.dtype,
                   "times": times}, md
    )


if __name__ == "__main__":
    run_main(main)
