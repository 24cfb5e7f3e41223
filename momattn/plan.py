"""Plan a run before paying for it: python -m momattn.plan experiment=paper_350m trainer.devices=8 trainer.num_nodes=4

Parameters, tokens, FLOPs, memory per device for DDP and FSDP (and whether it fits), wall time and GPU-hours at a
stated MFU, and the accumulation that keeps the experiment's global batch on that many devices. Nothing is
allocated: the model is built on the meta device, memory comes from momattn.memory's estimate. MFU is an assumption
you state (--mfu, default 0.40) against a datasheet peak (--peak-tflops; default the H100 SXM's in the run's precision:
989 TFLOPS dense bf16/fp16, 66.9 fp32, 33.5 fp64, the figures Lightning measures such a run's MFU against),
and memory is weighed against --device-gib (default 80). A CPU run (trainer=cpu) is planned as train.py runs it
here: this machine's precision, the CPU's blocked loss, the RAM available; its time against --peak-tflops, or
else against the matmul peak that train.py's runs recorded for this CPU (cpu_peak_flops.json in the cache)."""

from __future__ import annotations

import argparse
import json
import math
import sys

from hydra.errors import HydraException

from momattn.errors import UserError

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")  # Lightning's names (AcceleratorRegistry, plus auto and gpu)

GIB = 2**30
# vocabulary sizes of the tokenizer kinds that do not train their own
FIXED_VOCAB = {"gpt2": 50257}
# an H100 SXM's dense peaks (TFLOPS) by the dtype a precision trains its matmuls in: Lightning's table, which a GPU
# run's MFU is measured against (momattn.hardware.GPU_BF16_PEAK for bf16/fp16); fp32 without TF32, torch's default
GPU_PEAK_TFLOPS = {"bfloat16": 989.0, "float16": 989.0, "float32": 66.9, "float64": 33.5}


def _vocab(c) -> tuple[int, str | None]:
    """(the ids the model will embed, a note where that is not yet known)."""
    t = c.tokenizer
    if t.kind in FIXED_VOCAB:
        return FIXED_VOCAB[t.kind], None
    if t.kind == "source" and hasattr(c.data, "n_symbols"):  # GINC's, without building its world
        return c.data.n_symbols + 1, None
    if t.kind == "source":  # any other source's own tokenizer (it fell to the BPE's 4,096: found by review)
        from momattn.tokenizer import source_tokenizer

        return source_tokenizer(c.data)().n_ids, None
    path = getattr(t, "path", None)
    if t.kind == "file":  # the file says how many tokens it has
        from momattn.tokenizer import file_tokenizer

        return file_tokenizer(path).n_ids, None  # a DataError naming a missing or damaged file
    asked = int(getattr(t, "vocab_size", 0) or 4096)
    from momattn.errors import UserError
    from momattn.tokenizer import bpe_cache_file, cached_bpe

    try:  # (the corpus need not be here: a plan made on a login node, the data on the cluster's disks)
        trained = cached_bpe(bpe_cache_file(asked, c.data, c.cache_dir), vocab_size=asked)
    except (UserError, OSError):
        trained = None
    if trained is not None:
        return trained.n_ids, None  # train.py's tokenizer: a corpus with fewer merges than asked gave fewer tokens
    return asked, (f"the BPE is not trained yet: {asked:,} tokens at most, fewer where the corpus has fewer "
                   "merges; train.py trains it first")


def plan(overrides: list[str], mfu: float = 0.40, peak_tflops: float | None = None,
         device_gib: float | None = None) -> dict:
    """The plan as a dict. peak_tflops: per GPU (None: 989), or per machine for a CPU run (None: no time).
    device_gib: memory per GPU (None: 80), or a CPU run's RAM per machine (None: this machine's available RAM)."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import momattn.config as config
    from momattn.cli import CONF_DIR, check_overrides
    from momattn.memory import available_memory, blocked_loss_for, estimate_train_memory, n_params
    from momattn.model import GPT

    check_overrides("train", overrides)
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    with open_dict(cfg):  # nothing is written: the run folder is only named
        cfg.hydra.runtime.output_dir = cfg.hydra.runtime.cwd = "."
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    # plan a GPU, many-node run from any machine: no GPU nor launcher needed here
    # (trainer.devices=auto counts this machine's GPUs: at least one is assumed; trainer.devices=N plans N)
    # precision=auto plans a bf16 GPU (an H100/H200-class device, as --peak-tflops), not this machine's CPU; a run
    # with trainer.accelerator=cpu is planned as train.py would run it here
    acc = cfg.trainer.get("accelerator")
    if isinstance(acc, str) and acc.lower() not in ACCELERATORS:  # a GPU plan was made for accelerator=foo
        from momattn.errors import ConfigError, did_you_mean

        raise ConfigError(f"trainer.accelerator={acc!r} is not an accelerator Lightning knows; choose one of "
                          f"{', '.join(ACCELERATORS)}.{did_you_mean(acc.lower(), ACCELERATORS)}")
    real = config._cuda_available, config.check_launch_environment, config._cuda_device_count, config.resolve_precision

    def precision_for(p, acc):
        if torch.cuda.is_available() or str(acc or "").lower() == "cpu":
            return real[3](p, acc)
        return "bf16-mixed" if p in (None, "auto") else str(p)

    gpus = max(1, real[2]())
    config._cuda_available, config.check_launch_environment, config._cuda_device_count, config.resolve_precision = (
        (lambda: True), (lambda *a, **k: None), (lambda: gpus), precision_for)
    from momattn import wandb_runs

    key_check, wandb_runs.require_api_key = wandb_runs.require_api_key, lambda: None  # no W&B run starts here
    try:
        c = config.load_train_config(cfg)
    finally:
        (config._cuda_available, config.check_launch_environment, config._cuda_device_count,
         config.resolve_precision) = real
        wandb_runs.require_api_key = key_check
    on_cpu = str(c.trainer.get("accelerator") or "auto").lower() == "cpu"
    _check_trainer(c, on_cpu)
    vocab, vocab_note = _vocab(c)
    m = c.model_for(vocab)
    parameters = n_params(m)  # exact; a model too large for a tensor (model.n_embd=1e9) is one line, not a traceback
    with torch.device("meta"):  # shapes only: nothing is allocated
        meta = GPT(m)
        flops_per_token, m_flops_params = meta.flops_per_token(), meta.num_params()
    world = config.world_size(c.trainer)
    seqs = c.loader.batch_size * world * c.accumulate
    tokens_per_step = seqs * m.block_size
    tokens = tokens_per_step * c.max_steps
    flops = flops_per_token * tokens
    precision = c.trainer["precision"]
    # (trainer=cpu: no (B T, V) logits, momattn/loss.py; it was planned as a GPU run, 6.5x under train.py's check)
    blocked = blocked_loss_for(precision, not on_cpu)
    ddp = estimate_train_memory(m, c.loader.batch_size, precision, blocked_loss=blocked, off_cuda=on_cpu)
    fsdp_states = estimate_train_memory(m, c.loader.batch_size, precision, blocked_loss=blocked, shards=world,
                                        off_cuda=on_cpu).states
    fsdp = fsdp_states + ddp.activations + ddp.logits
    given_peak = peak_tflops is not None
    if not on_cpu and peak_tflops is None:  # a 32-true run measured against the bf16 peak was planned 15x too fast
        peak_tflops = GPU_PEAK_TFLOPS[_peak_dtype(precision)]
    if peak_tflops and mfu * peak_tflops * 1e12 < 1e6:  # underflowed to 0 (a ZeroDivisionError), or a time of
        # 300 digits
        raise UserError(f"--mfu={mfu:g} x --peak-tflops={peak_tflops:g} is below 1 MFLOP/s: too small a "
                        "speed to plan with")
    if on_cpu:  # the processes of one machine share its RAM (memory.check_fits)
        per_node = c.trainer.get("devices") if isinstance(c.trainer.get("devices"), int) else 1
        ram = device_gib * GIB if device_gib else available_memory("cpu")  # --device-gib was ignored here
        limit = ram / max(1, per_node) / GIB if ram else None
        nodes = c.trainer.get("num_nodes") if isinstance(c.trainer.get("num_nodes"), int) else 1
        # one process: train.py's record is keyed by its torch threads, which Lightning changes for several
        recorded = None if peak_tflops is not None or world != 1 else _recorded_peak(c.cache_dir, precision)
        if recorded is not None:  # this CPU's own speed in this precision, as train.py measures its MFU against
            peak_tflops = recorded[0] / 1e12
        seconds = flops / (mfu * peak_tflops * 1e12 * max(1, nodes)) if peak_tflops else None
    else:
        limit, recorded = device_gib or 80.0, None
        seconds = flops / (mfu * peak_tflops * 1e12 * world)
    fits = None if limit is None else "ddp" if ddp.total / GIB <= limit else "fsdp" if fsdp / GIB <= limit else "no"
    one = estimate_train_memory(m, 1, precision, blocked_loss=blocked, shards=world, off_cuda=on_cpu)  # batch 1
    return {
        "overrides": overrides, "attention": m.attention.kind, "n_layer": m.n_layer, "n_embd": m.n_embd,
        "n_head": m.n_head, "block_size": m.block_size, "vocab_size": m.vocab_size, "vocab_note": vocab_note, "parameters": parameters,
        "parameters_in_flops": m_flops_params,
        "processes": world, "micro_batch": c.loader.batch_size, "accumulate_grad_batches": c.accumulate,
        "global_batch_sequences": seqs, "tokens_per_step": tokens_per_step, "max_steps": c.max_steps,
        "tokens": tokens, "flops_per_token": flops_per_token, "flops": flops, "precision": precision,
        "precision_dtype": _peak_dtype(precision), "peak_given": given_peak,
        "memory_per_device_gib": {"ddp": ddp.total / GIB, "fsdp": fsdp / GIB,
                                  "states_ddp": ddp.states / GIB, "states_fsdp": fsdp_states / GIB,
                                  "activations": ddp.activations / GIB, "logits": ddp.logits / GIB,
                                  "fsdp_batch_1": one.total / GIB},
        "accelerator": "cpu" if on_cpu else "gpu", "memory_limit_gib": limit, "fits": fits, "dropout": m.dropout,
        "memory_limit_given": device_gib is not None,
        "mfu_assumed": mfu, "peak_tflops_per_device": peak_tflops,
        "peak_recorded": None if recorded is None else {"runs": recorded[1], "record": str(recorded[2])},
        "wall_hours": None if seconds is None else seconds / 3600,
        "gpu_hours": None if on_cpu else seconds * world / 3600,
        "global_batch": c.global_batch, "val_check_interval": c.trainer.get("val_check_interval"),
        "val_every_steps": c.val_every_steps,
        "optim": {"lr": c.optim.lr, "schedule": c.optim.schedule, "warmup_steps": c.optim.warmup_steps,
                  "min_lr_ratio": c.optim.min_lr_ratio, "power": c.optim.power, "betas": list(c.optim.betas),
                  "eps": c.optim.eps, "weight_decay": c.optim.weight_decay, "grad_clip": c.optim.grad_clip},
    }


def _peak_dtype(precision: str) -> str:
    """The dtype whose peak a GPU plan assumes: the precision's matmul dtype; Transformer Engine's FP8 precisions
    at the bf16 peak (as a lower bound: their FP8 matmuls peak higher), not fp32's."""
    from momattn.hardware import precision_dtype_name

    return "bfloat16" if "transformer-engine" in str(precision) else precision_dtype_name(precision)


def _check_trainer(c, on_cpu: bool) -> None:
    """What train.py refuses of the trainer's values is refused here too: a CPU run's trainer is made as train.py
    makes it (strategy, precision, devices); a GPU one cannot be made without a GPU, so its strategy's name alone."""
    if on_cpu:
        from momattn.console import quiet_console
        from momattn.training import check_trainer

        quiet_console()
        check_trainer(c)
        return
    from lightning.pytorch.strategies import StrategyRegistry

    from momattn.errors import ConfigError, did_you_mean

    name, known = c.trainer.get("strategy"), StrategyRegistry.available_strategies()
    if isinstance(name, str) and name != "auto" and name not in known:
        raise ConfigError(f"trainer.strategy={name!r} is not a strategy Lightning knows (ddp, fsdp, auto, ...)."
                          f"{did_you_mean(name, known)}")


def _validation(p: dict) -> str:
    interval = p["val_check_interval"]
    if not isinstance(interval, int):
        return f"trainer.val_check_interval={interval!r}"
    how = ("from val_every_steps" if p["val_every_steps"] else  # Lightning counts micro-batches, not steps
           "set val_every_steps to keep it in steps whatever the accumulation")
    return (f"every {interval / p['accumulate_grad_batches']:g} optimizer steps (trainer.val_check_interval={interval} "
            f"micro-batches; {how})")


def _optimizer(o: dict) -> str:
    decay = {"cosine": f"cosine to {o['min_lr_ratio']:g} x lr",
             "polynomial": f"polynomial (power {o['power']:g}) to {o['min_lr_ratio']:g} x lr",
             "constant": "constant"}.get(o["schedule"], o["schedule"])
    return (f"AdamW lr {o['lr']:g}, {o['warmup_steps']:,} warm-up steps, then {decay}; betas "
            f"({o['betas'][0]:g}, {o['betas'][1]:g}), eps {o['eps']:g}, weight decay {o['weight_decay']:g}, "
            f"gradient clip {o['grad_clip'] or 'none'}")


def _tokens(n: float) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,.0f}"


def _hours(h: float) -> str:
    if h >= 24:
        return f"{h:.1f} h = {h / 24:.1f} days"
    if h >= 1:
        return f"{h:.1f} h"
    return f"{h * 60:.1f} min" if h >= 1 / 60 else f"{h * 3600:.1f} s" if h * 3600 >= 0.1 else "under 0.1 s"


def _count(n: float, unit: str = "") -> str:
    """27,524 -> 27.5K; 354,823,168 -> 354.8M (a small model read '0.0M parameters')."""
    for scale, suffix in ((1e12, "T"), (1e9, "G" if unit else "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.{2 if n < 10 * scale else 1}f}{' ' if unit else ''}{suffix}{unit}"
    return f"{n:,.0f}{' ' if unit else ''}{unit}"


def _gib(x: float) -> str:
    return f"{x:.1f} GiB" if x >= 0.1 else f"{x * 1024:.1f} MiB" if x * 1024 >= 0.1 else f"{x * 2**30:,.0f} B"


def _dropout(p: dict) -> str:
    """train.py's advice where the CPU keeps attention's T x T matrix for dropout (memory.check_fits)."""
    from momattn.memory import DROPOUT_ADVICE

    return DROPOUT_ADVICE if p["accelerator"] == "cpu" and (p.get("dropout") or 0) > 0 else ""


def _fits(p: dict) -> str:
    mem, limit, where = p["memory_per_device_gib"], p["memory_limit_gib"], \
        "per device (--device-gib)" if p["accelerator"] != "cpu" else "of the RAM per process (--device-gib)" \
        if p.get("memory_limit_given") else "of the RAM available per process here"
    if p["fits"] is None:
        return "not judged: this machine's available RAM is unknown"
    if p["fits"] == "ddp":
        return f"yes: DDP's {_gib(mem['ddp'])} within {_gib(limit)} {where}"
    if p["fits"] == "fsdp":
        return (f"only with FSDP (trainer=fsdp): DDP's {_gib(mem['ddp'])} is over {_gib(limit)} {where}, FSDP's "
                f"{_gib(mem['fsdp'])} within")
    if mem["states_fsdp"] > limit or mem["states_fsdp"] >= mem["activations"] + mem["logits"]:
        # the weights and AdamW's state alone (or mostly): no batch or context frees them
        # (a CPU's processes share one machine's RAM: more of them shard nothing)
        more = ("shard over more machines (trainer=fsdp trainer.accelerator=cpu trainer.num_nodes=N)"
                if p["accelerator"] == "cpu" else
                "shard over more devices") + " or train a smaller model"
    elif mem.get("fsdp_batch_1", 0) > limit:  # even a batch of 1 is over (as train.py's check says)
        more = (f"even data.batch_size=1 needs {_gib(mem['fsdp_batch_1'])}: train a smaller model (model.n_layer, "
                f"model.n_embd) or a shorter context (model.block_size){_dropout(p)}")
    else:
        more = ("lower data.batch_size (and raise trainer.accumulate_grad_batches to keep the tokens per step) or "
                f"model.block_size{_dropout(p)}")
    return f"NO: FSDP's {_gib(mem['fsdp'])} is over {_gib(limit)} {where}; {more} (train.py refuses it)"


def _recorded_peak(cache_dir, precision: str) -> tuple[float, int, object] | None:
    """(FLOP/s, runs, the record's path): this CPU's matmul peak in the precision's dtype, the best start-up
    measurement of train.py's runs here (momattn.callbacks.recorded_peak_flops), or None where none recorded it."""
    import torch

    from momattn import hardware

    path = cache_dir / "cpu_peak_flops.json"
    key = hardware.cpu_peak_key(hardware.precision_dtype_name(precision), torch.get_num_threads(), torch.__version__)
    try:
        entry = json.loads(path.read_text())[key]
        flops, runs = float(entry["flops"]), int(entry["runs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (flops, runs, path) if math.isfinite(flops) and flops > 0 and runs >= 1 else None


def _time(p: dict) -> str:
    if p["wall_hours"] is None:
        why = ("train.py's recorded matmul peak is read for one process only" if p["processes"] != 1 else
               "and no train.py run recorded this CPU's matmul peak in this precision yet")
        return (f"not estimated for a CPU run (no datasheet peak is assumed, {why}): pass --peak-tflops with this "
                "CPU's dense peak, or time a few steps with trainer.max_steps")
    hours = "" if p["gpu_hours"] is None else \
        f", {p['gpu_hours']:,.{0 if p['gpu_hours'] >= 10 else 2}f} GPU-hours"
    per = "per machine" if p["accelerator"] == "cpu" else "per device"
    said = "" if not p.get("peak_recorded") else (
        f" (this CPU's matmul peak: the best start-up measurement of {p['peak_recorded']['runs']} train.py run(s), "
        f"{p['peak_recorded']['record']}; --peak-tflops overrides it)")
    dtype = "" if p["accelerator"] == "cpu" or p.get("peak_given") else \
        f" (an H100 SXM's dense {_DTYPE_WORDS[p['precision_dtype']]} peak; --peak-tflops for another device)"
    return (f"{_hours(p['wall_hours'])} wall{hours}, at an ASSUMED MFU of {100 * p['mfu_assumed']:.0f}% of "
            f"{p['peak_tflops_per_device']:g} TFLOPS {per}{said}{dtype}")


_DTYPE_WORDS = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32 (no TF32)", "float64": "fp64"}


def render(p: dict) -> str:
    mem = p["memory_per_device_gib"]
    acc = (f"accumulate {p['accumulate_grad_batches']}" + (f" (from global_batch={p['global_batch']})"
                                                            if p["global_batch"] else ""))
    rows = [
        ("command", "python train.py " + " ".join(p["overrides"])),
        ("model", f"{p['n_layer']} layers x {p['n_embd']}, {p['n_head']} heads, context {p['block_size']}, "
                  f"{p['vocab_size']:,} embedding rows" + (f" ({p['vocab_note']})" if p.get("vocab_note") else "")
                  + f", {p['attention']} attention: {_count(p['parameters'])} parameters"),
        ("batch", f"{p['global_batch_sequences']} sequences = {p['tokens_per_step']:,} tokens per step: "
                  f"data.batch_size={p['micro_batch']} x {p['processes']} processes x {acc}"),
        ("tokens", f"{p['max_steps']:,} steps x {p['tokens_per_step']:,} = {_tokens(p['tokens'])} tokens"),
        ("validation", _validation(p)),
        ("optimizer", _optimizer(p["optim"])),
        ("FLOPs", f"{_count(p['flops_per_token'], 'FLOP')} per token (6N + 12 L d T, N = "
                  f"{_count(p['parameters_in_flops'])}: the parameters without the position embeddings) -> "
                  f"{p['flops']:.2e} in all"),
        ("memory/device", f"DDP ~{_gib(mem['ddp'])} (weights+grads+AdamW {_gib(mem['states_ddp'])}, activations "
                          f"{_gib(mem['activations'])}, logits {_gib(mem['logits'])}); FSDP full shard "
                          f"~{_gib(mem['fsdp'])} (states {_gib(mem['states_fsdp'])}); {p['precision']} on "
                          f"{'the CPU' if p['accelerator'] == 'cpu' else 'a GPU'}, micro-batch {p['micro_batch']}"),
        ("fits", _fits(p)),
        ("time", _time(p)),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def sweep_job(overrides: list[str]) -> tuple[list[str], str | None]:
    """(the overrides of the one run to plan, a note where the command line is a sweep): a sweep's first job (values
    with commas, or an experiment that sweeps, as experiment=reproduce's 27 jobs were planned as one default run
    without a word: found by review), an Optuna search's base values."""
    from omegaconf import OmegaConf

    from momattn.cli import check_overrides, hydra_section
    from momattn.sweep_jobs import plan_sweep

    sweep = plan_sweep("train", overrides)
    if sweep is None:
        _, cfg = hydra_section("train", overrides)
        if cfg is not None and "optuna" in str(OmegaConf.select(cfg, "hydra.sweeper._target_", default="")).lower():
            from hydra.core.override_parser.overrides_parser import OverridesParser

            from momattn.sweep_jobs import check_search

            check_search("train", overrides)  # its space, as train.py checks it (a hydra.sweeper.params.x=... sweep)
            parsed = OverridesParser.create().parse_overrides(list(overrides))
            base = [o.input_line for o in parsed if not o.is_sweep_override()]  # (optim.lr=interval(...) was
            # composed as one run's value: "requires --multirun", with -m given; flows review)
            return base, ("an Optuna search, whose trials are chosen as it runs: planned is one trial at the "
                          "search's base values; the search runs hydra.sweeper.n_trials of them")
        return overrides, None  # planned as given: Hydra says what it cannot compose
    if len(sweep.jobs) < 2:
        return overrides, None
    check_overrides("train", overrides, sweep.jobs)  # each job's options and keys, as train.py checks them (a
    # second job's attention=bogus was planned as 'a sweep of 2 runs': diff review)
    values: dict[str, set[str]] = {}
    for job in sweep.jobs:
        for o in job:
            values.setdefault(o.split("=", 1)[0], set()).add(o)
    differ = [k for k, v in values.items() if len(v) > 1]
    first = sweep.jobs[0]
    return first, (f"a sweep of {len(sweep.jobs)} runs, which differ in {', '.join(differ)}: planned is its first, "
                   f"{' '.join(o for o in first if o.split('=', 1)[0] in differ)}; each run costs its own, so plan "
                   "the others with their values (python -m momattn.plan <overrides> <their values>)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m momattn.plan", description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="train.py overrides, e.g. experiment=paper_350m trainer.devices=8")
    ap.add_argument("--mfu", type=float, default=0.40, help="model FLOPs utilisation to assume (default 0.40)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="dense peak per device in the run's precision (default an H100 SXM's: 989 bf16/fp16, 66.9 "
                         "fp32, 33.5 fp64); a CPU run: per machine "
                         "(default: the matmul peak train.py's runs recorded for this CPU, if any)")
    ap.add_argument("--device-gib", type=float, default=None,
                    help="memory per GPU that the plan must fit (default 80: an H100); a CPU run: the RAM per machine "
                         "(default: this machine's available RAM)")
    ap.add_argument("--json", action="store_true", help="print the plan as JSON")
    ap.add_argument("-m", "--multirun", action="store_true", help="accepted as train.py takes it: a sweep (values "
                    "with commas, or an experiment that sweeps) is planned by its first job, and said so")
    a = ap.parse_args(argv)
    try:
        if not 0 < a.mfu <= 1:  # (nan fails every check: it compares False)
            raise UserError(f"--mfu={a.mfu} must be in (0, 1]")
        for flag, v in (("--peak-tflops", a.peak_tflops), ("--device-gib", a.device_gib)):
            if v is not None and not 0 < v < math.inf:
                raise UserError(f"{flag}={v} must be a finite number above 0")
        from momattn.cli import check_hydra_overrides

        check_hydra_overrides("train", a.overrides)  # a hydra.* override Hydra cannot compose: one line, as
        # train.py says it (hydra.sweeper.params={...} was a traceback of OmegaConf's frames here)
        planned, note = sweep_job(a.overrides)
        p = plan(planned, a.mfu, a.peak_tflops, a.device_gib)
        if note:
            p["sweep"] = note
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except HydraException as e:  # an override Hydra cannot parse or compose: its message, as train.py shows it
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(json.dumps(p, indent=2) if a.json else render(p))
    if note:
        print(f"[momattn] note: {note}", file=sys.stderr)
    import torch

    if p["accelerator"] == "gpu" and not torch.cuda.is_available():  # on stderr: the plan itself is the same anywhere
        print("[momattn] note: this is a GPU plan (an H100/H200-class device unless --peak-tflops and --device-gib "
              "say otherwise); this machine has no GPU, and train.py would run here on its CPU: add trainer=cpu to "
              "plan that run", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
