"""How much does encoding each demonstration prefix once (KV cache) speed up ICL answer scoring?

    python benchmarks/bench_icl_cache.py [--kinds vanilla momentum] [--examples 200] [--device cpu]

For k demonstrations (24 tokens each) and test queries (16-23 tokens) with 2 or 5 answers of one or two
tokens, it times
    naive   every (prefix + query + answer) row scored as a full prompt, batched (no cache)
    cached  the prefix encoded once, rows = query + answer on cache.expand(rows)   (momattn.eval.scoring)
with the same token budget per forward pass (medians of --repeats interleaved samples, benchmarks/harness.py),
checks both give the same log-probs, and times a bound beside them:
    free    the cached scorer with its attention over the shared prefix replaced by nothing (wrong log-probs:
            not a scorer, the speed-up the cache could reach if that attention cost nothing)
It prints a table (speed-up measured; `tokens` = how many fewer tokens
go through the model, the compute ratio) and writes benchmarks/results/icl_cache.json and .md.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import Timer, check_out, default_out, machine_info, run_main, table, write_results  # noqa: E402

import momattn.model as model_module  # noqa: E402
from momattn.eval.scoring import PrefixScorer  # noqa: E402
from momattn.model import GPT, AttentionConfig, GPTConfig  # noqa: E402
from momattn.utils import positive_int  # noqa: E402


def make_case(g: torch.Generator, vocab: int, k: int, n_examples: int, n_answers: int):
    def ids(n):
        return torch.randint(1, vocab, (n,), generator=g).tolist()

    prefix = [0] + [t for _ in range(k) for t in ids(24)]
    answers = [ids(1 + i % 2) for i in range(n_answers)]
    queries = [ids(16 + i % 8) for i in range(n_examples)]
    return prefix, [(q, a) for q in queries for a in answers]


def in_model(model, fn, repeats: int = 5) -> dict:
    """Where a scorer's time goes, over `repeats` calls (not the timed ones: the wrapper costs a little): the
    medians of its total and of the time inside the model's forward calls, and the tokens (padding included) the
    forward calls took."""
    fwd, inside, tokens = type(model).forward, [0.0], [0]

    def timed(self, idx, *a, **kw):
        t = time.perf_counter()
        out = fwd(self, idx, *a, **kw)
        inside[0] += time.perf_counter() - t
        tokens[0] += idx.numel()
        return out

    totals, models = [], []
    type(model).forward = timed
    try:
        for _ in range(repeats):
            inside[0], tokens[0] = 0.0, 0
            t = time.perf_counter()
            fn()
            totals.append(time.perf_counter() - t)
            models.append(inside[0])
    finally:
        type(model).forward = fwd
    return {"total_s": statistics.median(totals), "model_s": statistics.median(models), "model_tokens": tokens[0]}


def attention_free(fn):
    """fn with the attention over a shared prefix (the cached rows' attention) returning its queries instead: the
    same shape at no cost. Its log-probs are wrong; its time bounds what any faster attention could give."""
    def run():
        real = model_module.shared_prefix_attention
        model_module.shared_prefix_attention = lambda q, k, v, kp, vp: q  # (B, H, T, D)
        try:
            return fn()
        finally:
            model_module.shared_prefix_attention = real
    return run


def bench_case(model, prefix, rows, batch_tokens: int, timer: Timer, device) -> dict:
    """Naive and cached scoring of the same rows and the attention-free bound, timed interleaved, with the largest
    difference between naive and cached; then, in separate calls, how much of each one's time is inside the
    model and for how many tokens."""
    naive_rows = [(prefix + q, a) for q, a in rows]
    fns = {
        "naive": lambda: PrefixScorer(model, [], batch_tokens).score(naive_rows),
        "cached": lambda: PrefixScorer(model, prefix, batch_tokens).score(rows),
    }
    diff = max(abs(a[0] - b[0]) for a, b in zip(fns["naive"](), fns["cached"]()))
    if not diff <= 1e-3:  # the docstring's check (it only reported: a broken cache still timed; found by review)
        raise SystemExit(f"error: the cached scorer's log-probs differ from full-prompt scoring by {diff:.3g} "
                         "(more than 1e-3): the prefix cache is wrong; nothing is timed")
    times = timer.time({**fns, "free": attention_free(fns["cached"])}, device)
    split = {name: in_model(model, fn) for name, fn in fns.items()}
    # tokens through the model: every row re-reads the prefix vs. the prefix read once
    seqs = PrefixScorer._sequences(rows)
    cached_tok = len(prefix) + sum(len(sq.tokens) for sq in seqs)  # a continuation's last token is never fed
    naive_tok = cached_tok + (len(seqs) - 1) * len(prefix)
    return {
        "naive": times["naive"],
        "cached": times["cached"],
        "naive_s": times["naive"]["median_s"],
        "cached_s": times["cached"]["median_s"],
        "speedup": times["naive"]["median_s"] / times["cached"]["median_s"],
        "free_s": times["free"]["median_s"],  # the cached scorer with the prefix attention costing nothing
        "speedup_attention_free": times["naive"]["median_s"] / times["free"]["median_s"],
        "token_ratio": naive_tok / cached_tok,
        "max_abs_diff": diff,
        "in_model": split,
    }


def _per_token(r: dict) -> list[str]:
    s = r.get("in_model")  # results written before it was measured have none
    if not s:
        return ["-", "-", "-"]
    return [f"{1e6 * s['naive']['model_s'] / s['naive']['model_tokens']:.1f}",
            f"{1e6 * s['cached']['model_s'] / s['cached']['model_tokens']:.1f}", str(s["cached"]["model_tokens"])]


def _spread(r: dict) -> str:
    """The interquartile ranges of the naive and cached samples, in % of their medians (results written before
    the samples were kept: -)."""
    if not all(isinstance(r.get(k), dict) and "iqr_pct" in r[k] for k in ("naive", "cached")):
        return "-"
    return f"{r['naive']['iqr_pct']:.0f}% / {r['cached']['iqr_pct']:.0f}%"


def render(res: dict) -> str:
    """The markdown table of one results file (also used by render_readme.py)."""
    m = res.get("machine") or res.get("meta", {})
    rows = [
        [
            r["attention"],
            str(r["k"]),
            str(r["n_answers"]),
            str(r["prefix_tokens"]),
            f"{r['naive_s']:.3f}",
            f"{r['cached_s']:.3f}",
            f"{r['speedup']:.1f}x",
            _spread(r),
            f"{r['token_ratio']:.1f}x",
            f"{r['speedup_attention_free']:.1f}x" if "speedup_attention_free" in r else "-",
            f"{r['max_abs_diff']:.1e}",
            *_per_token(r),
        ]
        for r in res["results"]
    ]
    header = [
        "attention",
        "k",
        "answers",
        "prefix",
        "naive s",
        "cached s",
        "speed-up",
        "spread, naive / cached",
        "tokens",
        "attention free",
        "max \\|diff\\|",
        "us/token in model, naive",
        "cached",
        "cached tokens (padded)",
    ]
    timing = res.get("settings", {}).get("timing") or m.get("timing", "")
    machine = m.get("describe") or f"torch {m.get('torch')}, {m.get('threads')} threads, {m.get('device')}"
    speedups = [r["speedup"] for r in res["results"]]
    examples = res.get("settings", {}).get("examples", 64)  # results written before it was recorded: 64
    return "\n".join(
        [
            f"{machine}. Timing: {timing}. {examples} test queries after each prefix.",
            "",
            table(header, rows),
            "",
            f"Speed-up {min(speedups):.1f}-{max(speedups):.1f}x (medians; `spread`: each one's interquartile range "
            "over its samples, in % of its median); `tokens` is how many fewer tokens go through the "
            "model (the speed-up a cost proportional to tokens would give: the cache cannot beat it by much); "
            "`attention free` is the speed-up of the cached scorer with its attention over the prefix replaced by "
            "nothing (wrong log-probs: a bound that no faster attention kernel could beat); max |diff| is the largest difference of a log-probability between the two. Per token in model: the "
            "time inside the model's forward calls over the tokens they took (padding included), measured in "
            "separate calls after the timing; a cached token attends over the whole prefix and runs in smaller batches, "
            "so it costs more than a full prompt's.",
            "",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", nargs="+", default=["vanilla", "momentum", "multirate_ema"])
    ap.add_argument("--block-size", type=positive_int, default=512, help="the model's context (the main job's: 512)")
    # 19 x 24 + a query fills the 512 context, as the main job's k = max does
    ap.add_argument("--shots", nargs="+", type=positive_int, default=[4, 9, 19])
    ap.add_argument("--answers", nargs="+", type=positive_int, default=[2, 5])
    # evaluate.py scores every test example of a task (icl.max_examples, 200 by default) after one prefix
    ap.add_argument("--examples", type=positive_int, default=200, help="test queries after one prefix (default: "
                    "evaluate.py's icl.max_examples, 200)")
    ap.add_argument("--batch-tokens", type=positive_int, default=4096)
    ap.add_argument("--repeats", type=positive_int, default=7)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/icl_cache.json for the "
                    "default settings, else a scratch file (said)")
    args = ap.parse_args()
    from momattn.model import ATTENTION_KINDS as KINDS

    if bad := [k for k in args.kinds if k not in KINDS]:  # a ConfigError traceback from the model
        ap.error(f"--kinds: unknown {', '.join(bad)}; the attention kinds are {', '.join(KINDS)}")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):  # a RuntimeError from torch.device
        ap.error(f"--device {args.device}: give cpu, cuda or cuda:N")
    if args.device.startswith("cuda") and not torch.cuda.is_available():  # an AssertionError from torch
        ap.error(f"--device {args.device}: no CUDA device is available here; use --device cpu")
    if args.out is None:  # a trial run replaced the committed results and the README's table (found by review)
        args.out = default_out(ap, args, "icl_cache.json")
    check_out(ap, args.out)
    longest = 1 + 24 * max(args.shots) + 23 + 1  # <eot>, k demonstrations of 24 tokens, a query, an answer but its last
    if longest > args.block_size:
        ap.error(f"--shots {max(args.shots)} makes prompts of up to {longest} tokens, more than --block-size "
                 f"{args.block_size}; lower --shots or raise --block-size")

    device = torch.device(args.device)
    timer = Timer(repeats=args.repeats, warmup=1, min_sample_s=0.0)
    results = []
    for kind in args.kinds:
        torch.manual_seed(0)
        model = (
            GPT(GPTConfig(block_size=args.block_size, attention=AttentionConfig(kind=kind))).to(device).eval()
        )  # the main job's model: 4 layers, 256 wide, vocab 4096
        for k in args.shots:
            for n_answers in args.answers:
                prefix, rows = make_case(
                    torch.Generator().manual_seed(k), model.config.vocab_size, k, args.examples, n_answers
                )
                r = {
                    "attention": kind,
                    "k": k,
                    "n_answers": n_answers,
                    "prefix_tokens": len(prefix),
                    "rows": len(rows),
                    **bench_case(model, prefix, rows, args.batch_tokens, timer, device),
                }
                results.append(r)
                print(
                    f"  {kind:<14} k={k} answers={n_answers}: {r['naive_s']:.3f} s naive, {r['cached_s']:.3f} s "
                    f"cached, {r['speedup']:.1f}x",
                    flush=True,
                )
    settings = {
        "timing": f"medians of {args.repeats} samples, naive, cached and attention-free interleaved",
        "examples": args.examples,
        "batch_tokens": args.batch_tokens,
        "model": f"4 layers, 256 wide, vocab 4096, context {args.block_size} (the main job's model)",
        "demonstration_tokens": 24,
        "query_tokens": "16-23",
    }
    res = {"machine": machine_info(device), "settings": settings, "results": results}
    write_results(args.out, res, render(res))


if __name__ == "__main__":
    run_main(main)
