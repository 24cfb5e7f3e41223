"""When does in-context learning appear? Train a GINC run and score GINC prompts every few steps.

    python benchmarks/ginc_curve.py [--every 200] [--shots 0,32] [--tasks ginc] [--prompts 500] [--name NAME]
                                    [override ...]          # e.g. attention=momentum optim.lr=4e-3 seed=2

The overrides compose with `experiment=ginc` exactly as train.py's do (model, optim, data, seed, ...), and the
loop is train.py's step: the same model init, precision (trainer.precision, auto resolved; 32-true or
bf16-mixed: the loop reproduces no other), AdamW groups, lr
schedule, gradient clipping and window order (the run's TokenDataModule). Every `every` steps (and after the last) the model answers the evaluator's own GINC
prompts (GincEvaluator, the same prompts as `python evaluate.py icl.seeds=[1] icl.max_examples=<prompts>`), and
the row gets the training tokens so far, the training seconds so far (steps only, evaluation excluded) and the
mean training loss of the last 20 steps. This is how the recipe in conf/recipe/ginc.yaml was chosen (README,
"How this recipe was chosen"). No checkpoint is written. Writes benchmarks/results/ginc_curve/<name>.json and .md
and prints the table.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import (  # noqa: E402
    RESULTS,
    check_name,
    check_out_dir,
    check_precision,
    machine_info,
    run_main,
    table,
    train_step,
    with_machine,
    write_json,
)

from momattn.io import atomic_write_text  # noqa: E402
from momattn.utils import positive_int  # noqa: E402


def compose_config(overrides: list[str], out_dir: str):
    """experiment=ginc + overrides as train.py composes them (paths under out_dir), validated like a run's."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from momattn.cli import CONF_DIR, check_overrides
    from momattn.config import load_train_config

    overrides = ["experiment=ginc", "logger=none", *overrides]
    check_overrides("train", overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = cfg.hydra.runtime.cwd = out_dir
    HydraConfig().set_config(cfg)
    return load_train_config(cfg)


def run(overrides: list[str], every: int, tasks: list[str], shots: list[int], prompts: int, log=print):
    """Train as train.py would, scoring GINC prompts every `every` steps: (result dict, the trained model)."""
    import tempfile

    import lightning.pytorch as pl

    from momattn.data.datamodule import StreamSampler, TokenDataModule
    from momattn.eval.config import IclConfig
    from momattn.eval.ginc import GincEvaluator, ginc_task, ginc_world
    from momattn.lit import LitGPT
    from momattn.model import GPT
    from momattn.tokenizer import build_tokenizer
    from momattn.training import _tokens

    with tempfile.TemporaryDirectory() as out_dir:
        c = compose_config(overrides, out_dir)
    check_precision(c.trainer["precision"])  # before the tokenizer and the data: one line, not a traceback
    pl.seed_everything(c.seed, workers=True, verbose=False)
    tokenizer = build_tokenizer(c.tokenizer, c.data, c.cache_dir)
    model_config = c.model_for(tokenizer.vocab_size)
    model = GPT(model_config).train()
    train, val = _tokens(c, tokenizer, model_config.vocab_size, model_config.block_size)
    dm = TokenDataModule(train, val, model_config.block_size, c.loader.batch_size, c.max_steps, c.accumulate,
                         c.loader.val_batches, c.seed, c.loader.num_workers)
    opt_conf = LitGPT(model, c.optim, c.max_steps).configure_optimizers()
    opt, sched = opt_conf["optimizer"], opt_conf["lr_scheduler"]["scheduler"]
    clip = c.optim.grad_clip
    world = ginc_world(c.resolved.get("data"))
    icl = IclConfig(tasks=tasks, shots=shots, seeds=[1], max_examples=prompts)
    evaluator = GincEvaluator(model, tokenizer, icl, world)
    task_objs = [ginc_task(t) for t in tasks]
    if any(t is None for t in task_objs):
        raise SystemExit(f"--tasks: every task must be a GINC task (ginc, ginc_l3, ginc_ood, ...), got {tasks}")
    check_tasks(evaluator, task_objs, shots, prompts, log)  # before training, not at the first score (review)
    rows, losses, train_s, step = [], [], 0.0, 0
    tokens_per_step = c.loader.batch_size * model_config.block_size * c.accumulate
    # the window order of train.py's first (single-process) run: TokenDataModule.train_dataloader at step 0
    batches = iter(dm._loader(dm.train_set, StreamSampler(0, c.max_steps * c.loader.batch_size * c.accumulate)))
    while step < c.max_steps:
        t0 = time.perf_counter()
        losses.append(train_step(model, opt, sched, batches, c.accumulate, clip, c.trainer["precision"]))
        train_s += time.perf_counter() - t0
        step += 1
        if step % every == 0 or step == c.max_steps:
            results = evaluator.evaluate_tasks(task_objs)
            row = {"step": step, "tokens": step * tokens_per_step, "train_s": round(train_s, 1),
                   "train_loss": round(statistics.fmean(losses[-20:]), 4)}
            for name, r in results.items():
                for k, s in r.shots.items():
                    row[f"{name} k={k}"] = None if not s.fits else round(100 * s.acc, 1)
            rows.append(row)
            log(json.dumps(row))
    result = {"overrides": overrides, "max_steps": c.max_steps, "tasks": tasks, "shots": shots, "prompts": prompts,
              "attention": c.model.attention.kind, "precision": c.trainer["precision"], "rows": rows}
    return result, model


def check_tasks(evaluator, task_objs: list, shots: list[int], prompts: int, log=print) -> None:
    """The tasks' prompts against the model's context and the prompt count, before any training (they were first
    met at step --every, after its minutes, in messages naming evaluate.py's keys): ConfigError naming the flags;
    a k that does not fit is said (its column reads '-')."""
    from momattn.errors import ConfigError
    from momattn.eval.ginc import check_prompt_count

    check_prompt_count(task_objs, prompts, key="--prompts")
    for t in task_objs:
        try:
            fit = evaluator.k_max_fit(t)
        except ConfigError as e:
            raise ConfigError(str(e).replace("icl.tasks: ", "--tasks: ", 1)) from None
        if over := [k for k in shots if k > fit]:
            log(f"note: --shots {','.join(map(str, over))}: at most {fit} examples of task '{t.name}' fit the "
                f"model's {evaluator.context}-token context; its column reads '-'")


def file_name(overrides: list[str]) -> str:
    """The results' file name from the overrides: one file in --out whatever they hold (a path's slashes made
    folders, and '..' could leave --out: found by review); a long one cut, with a hash of the whole."""
    import hashlib

    raw = "_".join(o.replace("=", "-") for o in overrides)
    name = re.sub(r"[^A-Za-z0-9._,+-]", "_", raw).strip(".") or "default"
    if name != (raw or "default") or len(name) > 120:  # characters replaced (a=b/c and a=b_c would share a file)
        name = name[:100] + "_" + hashlib.sha256(raw.encode()).hexdigest()[:12]
    return name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--every", type=positive_int, default=200, help="score the prompts every this many steps")
    ap.add_argument("--tasks", default="ginc", help="comma-separated GINC tasks (ginc, ginc_l3, ginc_ood, ...)")
    ap.add_argument("--shots", default="0,32", help="comma-separated k")
    ap.add_argument("--prompts", type=positive_int, default=500, help="prompts per (task, k)")
    ap.add_argument("--name", default=None, help="results file name (default: from the overrides)")
    ap.add_argument("--out", default=str(RESULTS / "ginc_curve"))
    ap.add_argument("overrides", nargs="*", help="train.py overrides, composed with experiment=ginc")
    a = ap.parse_args(argv)
    if a.every < 1 or a.prompts < 1:
        ap.error("--every and --prompts must be >= 1")
    from momattn.errors import UserError

    try:
        shots = [int(k) for k in a.shots.split(",")]
    except ValueError:
        ap.error(f"--shots must be comma-separated integers, got {a.shots!r}")
    check_out_dir(ap, Path(a.out))
    check_name(ap, a.name)
    name = a.name or file_name(a.overrides)  # before the run, not after its minutes
    try:
        result, _ = run(a.overrides, a.every, a.tasks.split(","), shots, a.prompts)
    except UserError as e:  # a misspelled override, a bad GINC setting, ...: the message, not a traceback
        print(f"ginc_curve.py: {e}", file=sys.stderr)
        return 2
    from momattn.hardware import precision_dtype_name

    # the precision it trained in (auto resolved): it was recorded as fp32 under bf16-mixed (found by review)
    result["machine"] = machine_info("cpu", {"bfloat16": "bf16", "float16": "fp16"}.get(
        precision_dtype_name(result["precision"]), "fp32"))
    out = Path(a.out)
    cols = list(result["rows"][0])
    md = table(cols, [["-" if r[k] is None else str(r[k]) for k in cols] for r in result["rows"]])
    head = f"GINC curve, `{' '.join(['experiment=ginc', *a.overrides])}` ({result['prompts']} prompts per k)\n\n"
    atomic_write_text(out / f"{name}.md", with_machine(head + md, result["machine"]) + "\n")
    write_json(out / f"{name}.json", result)
    print(head + md)
    return 0


if __name__ == "__main__":
    run_main(main)
