"""How much does encoding each demonstration prefix once (KV cache) speed up ICL answer scoring?

    python benchmarks/bench_icl_cache.py [--kinds vanilla momentum] [--examples 64] [--device cpu]

For k demonstrations (24 tokens each) and test queries (16-23 tokens) with 2 or 5 answers of one or two
tokens, it times
    naive   every (prefix + query + answer) row scored as a full prompt, batched (no cache)
    cached  the prefix encoded once, rows = query + answer on cache.expand(rows)   (momattn.eval.scoring)
with the same token budget per forward pass (best of --repeats, interleaved: other load hits both alike),
checks both give the same log-probs, prints a table (speed-up measured; `tokens` = how many fewer tokens
go through the model, the compute ratio) and writes benchmarks/results/icl_cache.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from momattn.eval.scoring import PrefixScorer  # noqa: E402
from momattn.model import GPT, AttentionConfig, GPTConfig  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "icl_cache.json"


def make_case(g: torch.Generator, vocab: int, k: int, n_examples: int, n_answers: int):
    def ids(n):
        return torch.randint(1, vocab, (n,), generator=g).tolist()

    prefix = [0] + [t for _ in range(k) for t in ids(24)]
    answers = [ids(1 + i % 2) for i in range(n_answers)]
    queries = [ids(16 + i % 8) for i in range(n_examples)]
    return prefix, [(q, a) for q in queries for a in answers]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_pair(model, prefix, rows, batch_tokens: int, repeats: int) -> tuple[float, float, list, list]:
    """Best-of-repeats seconds of naive and cached scoring, interleaved so that load from other processes
    hits both alike."""
    naive_rows = [(prefix + q, a) for q, a in rows]

    def naive_fn():
        return PrefixScorer(model, [], batch_tokens).score(naive_rows)

    def cached_fn():
        return PrefixScorer(model, prefix, batch_tokens).score(rows)

    naive, cached = naive_fn(), cached_fn()  # warm-up
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for i, fn in enumerate((naive_fn, cached_fn)):
            _sync()
            t0 = time.perf_counter()
            fn()
            _sync()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best[0], best[1], naive, cached


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", nargs="+", default=["vanilla", "momentum", "multirate_ema"])
    ap.add_argument("--shots", nargs="+", type=int, default=[4, 9])  # 9 x 24 + queries fills the 256 context
    ap.add_argument("--answers", nargs="+", type=int, default=[2, 5])
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    rows_out = []
    print(f"{'attention':<14}{'k':>3}{'answers':>8}{'prefix':>7}{'naive s':>9}{'cached s':>10}{'speed-up':>9}"
          f"{'tokens':>8}{'max |diff|':>12}")
    for kind in args.kinds:
        torch.manual_seed(0)
        model = GPT(GPTConfig(attention=AttentionConfig(kind=kind)))  # the default small model
        model = model.to(args.device).eval()
        for k in args.shots:
            for n_answers in args.answers:
                g = torch.Generator().manual_seed(k)
                prefix, rows = make_case(g, model.config.vocab_size, k, args.examples, n_answers)
                t_naive, t_cached, naive, cached = timed_pair(model, prefix, rows, args.batch_tokens,
                                                              args.repeats)
                diff = max(abs(a[0] - b[0]) for a, b in zip(naive, cached))
                # tokens through the model: every row re-reads the prefix vs. the prefix read once
                seqs = PrefixScorer._sequences(rows)
                naive_tok = sum(len(prefix) + len(sq.context) + len(sq.continuation) for sq in seqs)
                cached_tok = len(prefix) + sum(len(sq.context) + len(sq.continuation) for sq in seqs)
                rec = {"attention": kind, "k": k, "n_answers": n_answers, "prefix_tokens": len(prefix),
                       "rows": len(rows), "naive_s": t_naive, "cached_s": t_cached,
                       "speedup": t_naive / t_cached,
                       "token_ratio": naive_tok / cached_tok,
                       "max_abs_diff": diff}
                rows_out.append(rec)
                print(f"{kind:<14}{k:>3}{n_answers:>8}{len(prefix):>7}{t_naive:>9.3f}{t_cached:>10.3f}"
                      f"{t_naive / t_cached:>8.1f}x{naive_tok / cached_tok:>7.1f}x{diff:>12.2e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"timing": "best of --repeats, naive and cached interleaved", "device": args.device,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "platform": platform.platform(), "examples": args.examples, "batch_tokens": args.batch_tokens,
            "model": "GPTConfig() defaults: 4 layers, 256 wide, context 256, vocab 4096",
            "demonstration_tokens": 24, "query_tokens": "16-23"}
    args.out.write_text(json.dumps({"meta": meta, "results": rows_out}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
