"""Framework overhead: train.py's training tokens/s against a bare PyTorch loop over the same model, optimizer and
data loader.

    python benchmarks/bench_framework.py [--recipe text|ginc] [--steps 120] [--repeats 3] [--attention vanilla]

Each repeat runs `python train.py recipe=<recipe> trainer.max_steps=<steps>` (no end-of-run evaluation; one
validation pass and one checkpoint, after the last step) and then, in this process, a bare loop: the GPT built
from that run's checkpoint config with the same seed, LitGPT.configure_optimizers' AdamW groups and lr schedule,
gradient clipping, and a DataLoader over TokenWindows of the run's own cached training tokens with the
StreamSampler train.py uses (uniform random tokens made the step ~15-25% slower on this CPU); forward and loss at
the run's precision (bf16 autocast where it trained in bf16-mixed), backward,
clip, step, schedule, zero_grad, loss.item() (Lightning reads the loss for its progress bar too). Both figures
are steady-state: tokens over the last `window` steps divided by the time between the ends of those steps
(Lightning's ThroughputMonitor in train.py, 20 step ends spanning 19 steps; the same 19 timed with perf_counter
here), so start-up,
the final validation and the checkpoint are left out of both. Repeats alternate which runs first; medians and
ranges are reported. Writes benchmarks/results/framework_<recipe>_<fp32|bf16>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import (  # noqa: E402
    check_out_dir,
    default_out,
    die_with_parent,
    machine_info,
    run_main,
    table,
    train_step,
    write_results,
)

from momattn.checkpoint import model_config_from, read_meta  # noqa: E402
from momattn.data.datamodule import StreamSampler, TokenWindows  # noqa: E402
from momattn.lit import LitGPT  # noqa: E402
from momattn.model import GPT  # noqa: E402
from momattn.optim import OptimConfig  # noqa: E402
from momattn.utils import positive_int  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 19  # steps between the first and last of momattn.training._throughput_monitor's 20 step ends
# (log_every_n_steps >= 20; it said 20 steps here, and the bare loop timed 20: found by review)


def run_train(recipe: str, attention: str, steps: int, out: Path) -> dict:
    cmd = [sys.executable, str(ROOT / "train.py"), f"recipe={recipe}", f"attention={attention}",
           f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}", "trainer.log_every_n_steps=50",
           "run_eval=false", "logger=none", f"hydra.run.dir={out}"]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, preexec_fn=die_with_parent)
    if proc.returncode != 0:
        raise SystemExit(f"train.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    meta = read_meta(out / "checkpoints" / "last.ckpt")["momattn"]
    return {"tokens_per_sec": summary["tokens_per_sec"], "wall_s": time.time() - t0, "meta": meta}


def run_tokens(meta: dict) -> np.ndarray:
    """The run's own training tokens, from the cache train.py built (its data config and tokenizer)."""
    from momattn.config import load_train_config
    from momattn.data.corpus import load_tokens
    from momattn.tokenizer import Tokenizer

    c = load_train_config(meta["config"])
    tokenizer = Tokenizer.from_json(meta["tokenizer"], name=meta.get("tokenizer_name", "tokenizer"))
    return load_tokens(c.data, tokenizer, "train", c.cache_dir, c.loader.num_proc)


def bare_loop(meta: dict, steps: int, window: int = WINDOW) -> float:
    cfg = meta["config"]
    model_cfg = model_config_from(meta)
    batch, T = int(cfg["data"]["batch_size"]), model_cfg.block_size
    precision = str(cfg["trainer"]["precision"])  # what the run trained in (auto resolved, recorded in checkpoints)
    torch.manual_seed(int(cfg["seed"]))
    model = GPT(model_cfg).train()
    optim = OptimConfig(**cfg["optim"])
    opt_conf = LitGPT(model, optim, steps).configure_optimizers()
    opt, sched = opt_conf["optimizer"], opt_conf["lr_scheduler"]["scheduler"]
    tokens = run_tokens(meta)  # the very windows train.py read: the step's speed depends on the data
    loader = DataLoader(TokenWindows(tokens, T, int(cfg["seed"])), batch_size=batch, drop_last=True,
                        sampler=StreamSampler(0, steps * batch), generator=torch.Generator().manual_seed(0))
    ends, batches = [], iter(loader)
    for _ in range(steps):
        train_step(model, opt, sched, batches, clip=optim.grad_clip, precision=precision)
        ends.append(time.perf_counter())
    return window * batch * T / (ends[-1] - ends[-1 - window])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--recipe", default="text", choices=["text", "ginc"])
    ap.add_argument("--attention", default="vanilla")
    ap.add_argument("--steps", type=positive_int, default=120)
    ap.add_argument("--repeats", type=positive_int, default=3)
    ap.add_argument("--out", default=None, help="a folder: framework_<recipe>_<precision>.json goes there (default: "
                    "benchmarks/results for the default settings, else a scratch folder, said)")
    a = ap.parse_args(argv)
    if a.steps <= WINDOW:
        ap.error(f"--steps={a.steps} must exceed the {WINDOW}-step measuring window")
    if a.out is None:  # a trial run replaced the committed results (found by review)
        a.out = str(default_out(ap, a, "", skip=("out", "recipe")))  # (a file per recipe and precision)
    check_out_dir(ap, Path(a.out))
    rows, meta = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.repeats):
            # the order alternates (train.py first in repeats 1, 3, ...; the bare loop first, on the previous
            # run's config and tokens, in 2, 4, ...), so that neither always runs on a machine the other warmed
            if i % 2 and meta is not None:
                bare = bare_loop(meta, a.steps)
                run = run_train(a.recipe, a.attention, a.steps, Path(tmp) / f"run{i}")
            else:
                run = run_train(a.recipe, a.attention, a.steps, Path(tmp) / f"run{i}")
                bare = bare_loop(run["meta"], a.steps)
            meta = run["meta"]
            rows.append({"train_py": run["tokens_per_sec"], "bare": bare, "train_py_wall_s": round(run["wall_s"], 1),
                         "first": "bare" if i % 2 else "train.py"})
            print(f"repeat {i + 1}/{a.repeats}: train.py {run['tokens_per_sec']:,.0f} tokens/s, bare loop "
                  f"{bare:,.0f} tokens/s", flush=True)
    tp, bare = [r["train_py"] for r in rows], [r["bare"] for r in rows]
    overhead = [b / t - 1 for t, b in zip(tp, bare)]
    precision = str(meta["config"]["trainer"]["precision"])
    dtype = "bf16" if "bf16" in precision else "fp16" if precision.startswith("16") else "fp32"
    res = {"machine": machine_info("cpu", dtype), "precision": precision, "recipe": a.recipe,
           "attention": a.attention, "steps": a.steps,
           "window": WINDOW, "repeats": rows, "train_py_median": statistics.median(tp),
           "bare_median": statistics.median(bare), "overhead_median": statistics.median(overhead),
           "overhead_range": [min(overhead), max(overhead)], "threads": torch.get_num_threads(),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    md = "\n".join([
        f"## Framework overhead: train.py vs a bare loop (recipe={a.recipe}, attention={a.attention}, {precision}, "
        f"{a.steps} steps, last {WINDOW} measured, {a.repeats} repeats, the order alternating)", "",
        table(["", "train.py tokens/s", "bare loop tokens/s", "overhead (bare / train.py - 1)"],
              [[f"repeat {i + 1}", f"{r['train_py']:,.0f}", f"{r['bare']:,.0f}", f"{100 * o:+.1f}%"]
               for i, (r, o) in enumerate(zip(rows, overhead))] +
              [["median", f"{res['train_py_median']:,.0f}", f"{res['bare_median']:,.0f}",
                f"{100 * res['overhead_median']:+.1f}% (range {100 * min(overhead):+.1f} .. {100 * max(overhead):+.1f})"]]),
    ])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    write_results(out / f"framework_{a.recipe}_{dtype}.json", res, md)
    return res


if __name__ == "__main__":
    run_main(main)
