"""Where analyze.py's time goes on a default-width model (4 layers x 256; --ginc: context 256), 200 test examples.

    .venv/bin/python benchmarks/bench_analysis.py --ckpt /tmp/hG_run_full/checkpoints/last.ckpt --task sst2 --shots 4
    .venv/bin/python benchmarks/bench_analysis.py --ginc          # a random-init default-size GINC model, k=32

Prints a table (seconds per phase) and writes benchmarks/results/bench_analysis.json. The phases: prepare
(prompts), capture_zsl_icl (one forward per prompt, hooks), lr_select (the grid finetuned side by side and
scored on held-out rows), ft_test (finetuning at the chosen lr, queries recorded), capture_ft_rnd (FT and
random-update forwards), predict (the evaluator's scoring of ZSL / ICL / FT), metrics, dual_check. One pass, as a
user runs analyze.py: first-call costs (allocator warm-up, kernel builds) are included, not warmed away.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from harness import check_out, default_out, machine_info, run_main, write_json

from momattn.utils import positive_int  # noqa: E402


def ginc_model(n_symbols: int = 50):
    from momattn.data.ginc import GincCorpus
    from momattn.model import GPT, GPTConfig

    world = {"_target_": "momattn.data.ginc.GincCorpus", "n_symbols": n_symbols}
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=256, vocab_size=64, n_layer=4, n_head=4, n_embd=256)).eval()
    return model, GincCorpus(n_symbols=n_symbols).tokenizer(), {"data": world}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt")
    ap.add_argument("--task", default=None, help="the analysis task of --ckpt (default: sst2; --ginc's is ginc)")
    ap.add_argument("--shots", type=positive_int, default=None, help="demonstrations per prompt (default: 4; "
                    "--ginc: 32)")
    ap.add_argument("--ginc", action="store_true", help="random-init default-size model on GINC (k=32 unless "
                    "--shots says)")
    ap.add_argument("--max-examples", type=positive_int, default=200)
    ap.add_argument("--note", default="", help="how the machine was, e.g. 'alone on 2 cores' or 'contended'")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/bench_analysis.json for the default "
                    "settings (a row per model, task and shots, replaced), else a scratch file (said)")
    ap.add_argument("--threads", type=positive_int, default=None,
                    help="CPU threads (default: torch's choice, which follows OMP_NUM_THREADS)")
    args = ap.parse_args()
    if not args.ginc and not args.ckpt:
        ap.error("give --ckpt PATH (a trained checkpoint) or --ginc (a random-init GINC model)")
    if args.ginc and args.task not in (None, "ginc"):  # (it was ignored: the row said ginc, k=32)
        ap.error(f"--ginc analyses the GINC task, not --task {args.task}; give --ckpt for another task")
    if args.ginc and args.ckpt:
        ap.error("give --ckpt or --ginc, not both (--ginc makes a random-init model)")
    if args.out is None:  # a 4-example trial replaced the committed 200-example row the README quotes (review)
        args.out = str(default_out(ap, args, "bench_analysis.json", skip=(
            "out", "ckpt", "task", "shots", "ginc", "note", "threads")))  # (each of those a row of its own)
    check_out(ap, Path(args.out), suffixes=())
    try:  # the rows of earlier runs, read before the measurement: a damaged file failed only at the end
        old = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else []
        if not isinstance(old, list) or not all(isinstance(r, dict) for r in old):
            raise ValueError("not a list of rows")
    except (OSError, ValueError) as e:
        ap.error(f"--out {args.out}: not a bench_analysis results file ({e}); move it away or choose another")
    if args.threads is not None:  # (it read int(OMP_NUM_THREADS), a traceback for OpenMP's "2,1")
        torch.set_num_threads(args.threads)
    from momattn.analysis.config import AnalyzeConfig
    from momattn.analysis.runner import analyze

    if args.ginc:
        model, tok, run_config = ginc_model()
        task, shots, label = "ginc", args.shots or 32, "random-init 4x256 GINC model"
    else:
        from momattn.checkpoint import load_checkpoint, read_checkpoint

        model, tok = load_checkpoint(args.ckpt)
        run_config = dict(read_checkpoint(args.ckpt)["momattn"].get("config") or {})
        task, shots, label = args.task or "sst2", args.shots or 4, args.ckpt
    cfg = AnalyzeConfig(task=task, shots=shots, max_examples=args.max_examples)
    t0 = time.perf_counter()
    res = analyze(model, tok, run_config, cfg)
    wall = time.perf_counter() - t0
    row = {"model": label, "task": task, "shots": shots, "n_test": res.n_test, "n_lrs": len(cfg.lr_grid),
           "n_select": res.n_select, "wall_s": wall, "phases_s": res.timing_s, "threads": torch.get_num_threads(),
           "machine": machine_info("cpu"),  # the CPU model, threads, torch version and date
           "load_avg_1m_end": os.getloadavg()[0], "note": args.note}
    print(f"{label}  task={task} k={shots}  n_test={res.n_test}  lrs={len(cfg.lr_grid)}  select={res.n_select}")
    print(f"{'phase':<18}{'seconds':>10}")
    for k, v in res.timing_s.items():
        print(f"{k:<18}{v:>10.1f}")
    # one timed run (minutes): no spread; the machine and its load say how to read it (the table named neither and
    # the file it wrote was not said: found by review)
    print(f"one run; machine: {row['machine'].get('describe')}, {row['threads']} torch threads, load average "
          f"{row['load_avg_1m_end']:.1f} at the end")
    old = [r for r in old if (r.get("model"), r.get("task"), r.get("shots")) != (label, task, shots)]  # newest per case
    write_json(Path(args.out), old + [row], indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_main(main)
