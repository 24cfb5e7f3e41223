"""The training run's config, typed: `load_train_config` turns the composed Hydra config into one TrainConfig.

Each section's schema is the dataclass of the code it configures, so every default lives in one place:

    model      momattn.model.GPTConfig           (vocab_size comes from the tokenizer)
    attention  momattn.model.AttentionConfig
    optim      momattn.optim.OptimConfig
    data       the source its `_target_` names (momattn.data.sources) + momattn.data.sources.LoaderConfig
    tokenizer  momattn.tokenizer.TokenizerConfig
    eval       momattn.eval.config.EvalConfig
    trainer    lightning.pytorch.Trainer's arguments (max_steps and accumulate_grad_batches checked here)

A misspelled key or a wrong type stops the run at start-up with a message naming it.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from momattn import cpu_attention, ops
from momattn.data.sources import LOADER_KEYS, DataSource, LoaderConfig, make_source
from momattn.data.streaming import StreamingHubCorpus
from momattn.errors import ConfigError, UserError, did_you_mean
from momattn.eval.config import EvalConfig, under_eval
from momattn.hardware import precision_reason, resolve_precision
from momattn.io import NAME_MAX, cache_root, probe_write
from momattn.model import ATTENTION_KINDS, ATTENTION_SETTINGS, AttentionConfig, GPTConfig
from momattn.optim import OptimConfig
from momattn.schema import interpolation_error, typed
from momattn.tokenizer import TokenizerConfig, source_tokenizer
from momattn.wandb_runs import check_train_wandb, check_wandb_keys, check_wandb_names


@dataclass
class PathsConfig:
    root_dir: str = "."  # where ckpt_path=last searches outputs/ and multirun/ (new runs go to hydra.run.dir)
    output_dir: str = "."  # this run's folder: checkpoints, logs, summary.json, eval/
    cache_dir: str | None = None  # token and tokenizer cache


@dataclass
class RunConfig:
    """train.yaml's top-level settings."""

    tags: list[str] = field(default_factory=list)
    seed: int = 1337
    ckpt_path: str | None = None  # a .ckpt to resume, or `last`
    compile: bool = False  # torch.compile the model's forward
    optimized_metric: str = "val/loss"  # what run_train returns to a sweeper
    run_eval: bool = True  # the short evaluation (`eval` section) after training
    global_batch: int | None = None  # sequences per optimizer step over all devices: sets accumulate_grad_batches
    val_every_steps: int | None = None  # optimizer steps between validations: sets trainer.val_check_interval
    dist_timeout_s: int = 1800  # several processes: how long to wait for every one to join (and for a collective)


SECTIONS = ("model", "attention", "optim", "data", "tokenizer", "trainer", "logger", "callbacks", "paths", "eval")
TOP_LEVEL = (*(f.name for f in dataclasses.fields(RunConfig)), *SECTIONS)


@dataclass(kw_only=True)
class TrainConfig(RunConfig):
    model: GPTConfig  # its vocab_size is a placeholder until the tokenizer is known: see model_for
    optim: OptimConfig
    data: DataSource
    loader: LoaderConfig
    tokenizer: TokenizerConfig
    paths: PathsConfig
    trainer: dict[str, Any]  # lightning.pytorch.Trainer's arguments (with _target_), precision resolved
    max_steps: int
    accumulate: int  # trainer.accumulate_grad_batches
    eval: EvalConfig | None = None
    callbacks: dict[str, Any] = field(default_factory=dict)
    logger: dict[str, Any] = field(default_factory=dict)
    resolved: dict[str, Any] = field(default_factory=dict)  # the resolved config, stored in every checkpoint
    precision_note: str | None = None  # why trainer.precision (auto; 16-mixed on a CPU) became what runs (start line)

    @property
    def cache_dir(self) -> Path:
        return Path(self.loader.cache_dir or self.paths.cache_dir or cache_root()).expanduser()

    def model_for(self, vocab_size: int) -> GPTConfig:
        """The model config for a tokenizer of vocab_size tokens, padded up to a multiple of vocab_multiple."""
        m = self.model.vocab_multiple
        return dataclasses.replace(self.model, vocab_size=-(-vocab_size // m) * m)


MAX_DIST_TIMEOUT_S = 10**8  # dist_timeout_s's bound (torch's store timeout overflows past ~9.2e9 s)

def _resolve(cfg: DictConfig | Mapping) -> dict[str, Any]:
    """The composed config as plain, resolved containers (Hydra's own `hydra` node dropped)."""
    if not isinstance(cfg, DictConfig):
        return dict(cfg)
    if "hydra" in cfg:  # tests compose with return_hydra_config=True; the run itself never needs that node
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise interpolation_error(cfg, e) from None


def _model(node: Mapping | None, attention: AttentionConfig) -> GPTConfig:
    node = node or {}
    if "vocab_size" in node:
        raise ConfigError("model.vocab_size is set from the tokenizer (padded up to a multiple of "
                          "model.vocab_multiple); remove it from the model config")
    if "attention" in node:
        raise ConfigError("model.attention: attention has its own section; use attention=momentum "
                          "attention.eta=0.5 (conf/attention/)")
    return typed(GPTConfig, node, "model", unlisted=("vocab_size",), attention=attention)


# Lightning's precision settings (lightning.fabric.connector._PRECISION_INPUT), and momattn's auto (momattn.hardware)
PRECISIONS = ("auto", "bf16-mixed", "16-mixed", "32-true", "bf16-true", "16-true", "64-true", "32", "16", "bf16", "64",
              "transformer-engine", "transformer-engine-float16")


OWN_TRAINER_ARGS = {  # Trainer arguments that momattn.training passes itself, and where to set what they would
    "gradient_clip_val": "set optim.grad_clip (0 or null: no clipping)",
    "callbacks": "choose them with the callbacks group (callbacks=default, +callbacks.NAME._target_=...)",
    "logger": "choose it with the logger group (logger=wandb | csv | none)",
    "default_root_dir": "a run writes to its folder (hydra.run.dir, paths.output_dir)",
    "plugins": "momattn's checkpoint writer (atomic files) is the one plugin it passes",
}




def _runs_on_cpu(trainer: Mapping) -> bool:
    accelerator = str(trainer.get("accelerator") or "auto").lower()
    return accelerator == "cpu" or (accelerator == "auto" and not _cuda_available() and not _mps_available())


def max_time(span: Any) -> datetime.timedelta | None:
    """trainer.max_time ('DD:HH:MM:SS' or a mapping such as {hours: 2}) as a span of whole seconds, rounded up ({seconds:
    0.5} became 00:00:00:00, and the run stopped at once); None for null; a ConfigError for anything else."""
    # an int: "trainer could not be created: 'int' object has no attribute ..."
    if span is not None and not isinstance(span, str | Mapping):
        raise ConfigError(f"trainer.max_time={span!r} must be a time: 'DD:HH:MM:SS' (e.g. '00:02:00:00') or a mapping "
                          "such as {hours: 2}, or null")
    shown = span if isinstance(span, str) else dict(span or {})  # as given, in the messages below
    if isinstance(span, str):  # '00:05:00' was "trainer could not be created: `Timer(...)`", 0 stopped at once
        fields = span.split(":")
        if len(fields) != 4 or not all(f.strip().isascii() and f.strip().isdigit() for f in fields):  # not '²'
            raise ConfigError(f"trainer.max_time={span!r} must be 'DD:HH:MM:SS' (four fields, e.g. '00:02:00:00' for "
                              "two hours) or a mapping such as {hours: 2}")
        span = dict(zip(("days", "hours", "minutes", "seconds"), map(int, fields), strict=True))
    if not isinstance(span, Mapping):
        return None
    try:  # Lightning takes a dict but not Hydra's DictConfig ("Missing key total_seconds")
        td = datetime.timedelta(**dict(span))
    except (TypeError, ValueError, OverflowError) as e:
        raise ConfigError(f"trainer.max_time={shown!r} is not a time span ({e}); use days, hours, minutes, "
                          "seconds, e.g. {hours: 2}") from None
    if td.total_seconds() <= 0:  # {minutes: -5} stopped the run at once
        raise ConfigError(f"trainer.max_time={shown!r} must be a time span > 0")
    return datetime.timedelta(seconds=-(-td // datetime.timedelta(seconds=1)))


def _trainer(node: Mapping | None) -> tuple[dict[str, Any], int, int]:
    """(Trainer arguments with precision=auto resolved for this machine, max_steps, accumulate_grad_batches)."""
    trainer = dict(node or {})
    for key, where in OWN_TRAINER_ARGS.items():  # train.py passes these itself: a value here was dropped, silently
        if key in trainer:
            raise ConfigError(f"trainer.{key} is set by momattn, so this value would be ignored; {where}")
    steps = [trainer.get("max_steps"), trainer.get("accumulate_grad_batches", 1)]
    optional = {k: trainer[k] for k in ("num_nodes", "log_every_n_steps", "check_val_every_n_epoch")
                if trainer.get(k) is not None}
    for key, value in {"max_steps": steps[0], "accumulate_grad_batches": steps[1], **optional}.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**62:  # (sampler lengths)
            raise ConfigError(f"trainer.{key}={value!r} must be an integer >= 1")
    for key, ok, says in (("num_sanity_val_steps", lambda v: v >= -1, "-1 (all), 0 (none) or a number of batches"),
                          ("max_epochs", lambda v: v == -1 or v >= 1,  # -1 or null: no limit
                           "null, -1 or an integer >= 1 (max_steps ends the run)")):
        value = trainer.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not ok(value)):
            raise ConfigError(f"trainer.{key}={value!r} must be {says}")
    if (td := max_time(trainer.get("max_time"))) is not None:
        trainer["max_time"] = f"{td.days:02d}:{td.seconds // 3600:02d}:{td.seconds // 60 % 60:02d}:{td.seconds % 60:02d}"
    limit = trainer.get("limit_train_batches")  # 0 "finished" at step 0 and wrote a summary of an untrained model
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | float) or not limit > 0
                              or (isinstance(limit, float) and limit > 1 and not limit.is_integer())):
        raise ConfigError(f"trainer.limit_train_batches={limit!r} must be a number of batches >= 1, a fraction "
                          "in (0, 1] (a float) or null; trainer.max_steps sets how long the run trains")
    interval = trainer.get("val_check_interval")  # an int, a float, or a time (Lightning's "DD:HH:MM:SS", a dict)
    if isinstance(interval, bool) or (isinstance(interval, int) and interval < 1) or (
            isinstance(interval, float) and not (0 < interval <= 1 and trainer.get("check_val_every_n_epoch"))):
        raise ConfigError(f"trainer.val_check_interval={interval!r}: use a number of training batches >= 1 (an int), "
                          "a fraction of an epoch in (0, 1] with trainer.check_val_every_n_epoch set (a float; the "
                          "default config validates by batches, not epochs), a time such as '00:00:10:00', or null")
    trainer.setdefault("use_distributed_sampler", False)  # Lightning's default (true) where a trainer yaml omits it
    if trainer["use_distributed_sampler"] is not False:  # Lightning would re-shard momattn's shards
        raise ConfigError(f"trainer.use_distributed_sampler={trainer['use_distributed_sampler']!r}: momattn shards "
                          "the training stream by rank itself, resumably (momattn/data/datamodule.py); a "
                          "DistributedSampler on top would drop or repeat samples. Leave it false")
    if (given := trainer.get("accelerator")) is not None and not isinstance(given, str):  # 123 or [cpu]: a traceback
        raise ConfigError(f"trainer.accelerator={given!r} must be one of auto, cpu, gpu, cuda, mps, tpu")  # (in .lower())
    accelerator = str(trainer.get("accelerator") or "auto").lower()
    if accelerator in ("gpu", "cuda") and not _cuda_available():  # before any tokenizing or data building
        strategy = str(trainer.get("strategy") or "").lower()
        multi = next((s for s in ("fsdp", "ddp") if s in strategy), None)  # trainer=cpu would drop the strategy
        raise ConfigError(f"trainer.accelerator={accelerator} but this machine has no CUDA GPU "
                          "(torch.cuda.is_available() is False); " + (
                              f"keep trainer={multi} on CPU processes with trainer.accelerator=cpu trainer.devices="
                              f"<processes> (trainer=cpu trains one process without {multi.upper()})" if multi else
                              "use trainer=cpu (or trainer=default, which picks what is there)"))
    precision = trainer.get("precision")
    if precision is not None and str(precision) not in PRECISIONS:  # before any tokenizing, not at Trainer(...)
        raise ConfigError(f"trainer.precision={precision!r} is not a precision.{did_you_mean(str(precision), PRECISIONS)} "
                          f"Choose one of {', '.join(PRECISIONS)}")
    trainer["precision"] = resolve_precision(precision, trainer.get("accelerator"))
    if _runs_on_cpu(trainer) and str(trainer["precision"]) in ("16-mixed", "16"):  # Lightning runs it as bf16-mixed on a CPU (CPU
        trainer["precision"] = "bf16-mixed"  # autocast has no fp16 there): the start line and checkpoints say so
    world_size(trainer)  # trainer.devices checked here too
    strategy = trainer.get("strategy")
    if isinstance(strategy, str) and strategy.startswith(SPAWNED):  # spawn: a pickling traceback after the data was
        # built; fork: trained, then refused the weights file Lightning hands back (found by review)
        raise ConfigError(f"trainer.strategy={strategy} starts its processes from this one (spawn or fork), which "
                          "momattn's run does not support (its callbacks and checkpoint hand-over); use "
                          "trainer=ddp (or trainer=fsdp), which starts them as separate commands")
    check_launch_environment(trainer)
    return trainer, steps[0], steps[1]


SPAWNED = ("ddp_spawn", "ddp_fork", "ddp_notebook", "fsdp_spawn")  # Lightning's strategies that fork or spawn


def _eval(node: Mapping | None, run_eval: bool, source: Any = None) -> EvalConfig | None:
    """The end-of-run evaluation's settings; with run_eval, its task names, and that they suit the training data
    (GINC tasks on GINC, text tasks on text), are checked now, not after training."""
    if node is None and run_eval:  # eval=null or ~eval beside run_eval=true skipped the evaluation silently (review)
        raise ConfigError("eval=null (or ~eval) with run_eval=true: the end-of-run evaluation has no settings. To skip "
                          "it write run_eval=false; its parts are turned off one by one (eval.icl.enabled=false, "
                          "eval.ppl.enabled=false)")
    if node is None:
        return None
    try:
        cfg = EvalConfig.from_mapping(node, "eval")
    except UserError as e:
        raise under_eval(e) from None
    if run_eval and cfg.icl.enabled:
        from momattn.data.ginc import GincCorpus
        from momattn.eval.ginc import GincTask, check_ginc_icl
        from momattn.eval.tasks import resolve_tasks

        tasks = resolve_tasks(cfg.icl.tasks, key="eval.icl.tasks")
        ginc = isinstance(source, GincCorpus)
        wrong = [t.name for t in tasks if isinstance(t, GincTask) != ginc]
        if wrong:
            raise ConfigError(
                f"eval.icl.tasks: {', '.join(wrong)} " + (
                    "are text tasks, and this run trains on GINC (its tokenizer knows only the GINC symbols); use "
                    "eval.icl.tasks=[ginc,ginc_ood] (or experiment=ginc, which sets them), or run_eval=false"
                    if ginc else "are GINC tasks, which need a run trained with data=ginc; use text tasks "
                    "(e.g. eval.icl.tasks=[sst2,trec]) or run_eval=false"))
        check_ginc_icl(tasks, cfg.icl, prefix="eval.icl.")  # GINC tasks on a GINC run
    return cfg


LOGGED = ("val/loss", "val/ppl", "train/loss", "train/lr")  # what run_train can return to a sweeper


def _in_search() -> bool:
    """Whether this is a trial of an Optuna search (its sweeper reads optimized_metric from each trial)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    from momattn.sweep_jobs import optuna_search

    return optuna_search(HydraConfig.get())


def _on_command_line(key: str) -> bool:
    """Whether the job's command line (a sweep job's own overrides included) sets `key` (key=, +key=, ++key=)."""
    from hydra.core.hydra_config import HydraConfig

    from momattn.cli import _last

    return HydraConfig.initialized() and _last([str(o) for o in HydraConfig.get().overrides.task], key) is not None


SCORES = tuple(m for m in LOGGED if m != "train/lr")  # each better lower


def _check_logged(key: str, metric: Any) -> None:
    if metric not in LOGGED:
        raise ConfigError(f"{key}={metric!r} is not a metric training logs.{did_you_mean(str(metric), SCORES)} "
                          f"Choose one of {', '.join(SCORES)}")
    if metric not in SCORES:  # a search took the smallest lr, a checkpoint the one at the schedule's end
        raise ConfigError(f"{key}={metric} is the learning-rate schedule, not a score of the model; choose one of "
                          f"{', '.join(SCORES)}")


def _check_checkpoint_callback(name: str, cb: Mapping) -> None:
    """A ModelCheckpoint's monitor is a score training logs, its mode picks the lowest, and the one that keeps
    last.ckpt names its folder: with dirpath null Lightning wrote into the first logger's folder
    (<run>/csv/checkpoints), where resuming found nothing and started the run anew over its metrics."""
    if cb.get("monitor") is not None:
        _check_logged(f"callbacks.{name}.monitor", cb["monitor"])
        if cb.get("mode") == "max":  # (another value is Lightning's to refuse: "mode can be min, max")
            # what mode=max does, by the callback (an EarlyStopping keeps no checkpoint; found by review)
            does = (f"would stop the run once {cb['monitor']} stops rising" if "EarlyStopping" in
                    str(cb.get("_target_", "")) else f"would keep the checkpoint of the worst {cb['monitor']} as the "
                    "best")
            raise ConfigError(f"callbacks.{name}.mode={cb.get('mode')!r} {does}: every score training logs is better "
                              "lower. Leave mode=min")
    if "ModelCheckpoint" in str(cb.get("_target_", "")) and cb.get("save_last") and cb.get("dirpath") is None:
        raise ConfigError(f"callbacks.{name}.dirpath=null: Lightning would write last.ckpt into the first logger's "
                          "folder, where resuming (ckpt_path=last), SIGTERM saves, sweeps and evaluate.py do not look "
                          "(a resume would start the run anew). Leave it at ${paths.output_dir}/checkpoints")


LAUNCHER_ENV = ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID", "MASTER_ADDR")


def check_launch_environment(trainer: Mapping, environ: Mapping | None = None) -> None:
    """Several nodes need a launcher (SLURM's srun, torchrun, or MASTER_ADDR/MASTER_PORT/NODE_RANK by hand); the
    first node's rendezvous port must be free. Both are checked before any work."""
    import os
    import socket

    env = os.environ if environ is None else environ
    nodes, processes = trainer.get("num_nodes", 1) or 1, world_size(trainer)
    several = nodes > 1 or processes > 1
    if several:  # one process reads none of them (a stale MASTER_ADDR is no concern)
        _check_launch_values(env, nodes, max(1, processes // nodes))
    if nodes > 1 and not any(env.get(k) for k in LAUNCHER_ENV):
        raise ConfigError(f"trainer.num_nodes={nodes} but no launcher environment was found ({', '.join(LAUNCHER_ENV)}"
                          " are unset): start one process per node with srun (SLURM) or torchrun, or set "
                          "MASTER_ADDR, MASTER_PORT and NODE_RANK on every node (README: More than one machine)")
    port, rank = env.get("MASTER_PORT"), str(env.get("NODE_RANK", env.get("SLURM_NODEID", "0")))
    first = rank == "0" and not env.get("TORCHELASTIC_RUN_ID") and all(  # srun's tasks: SLURM_PROCID
        str(env.get(k, "0")) == "0" for k in ("RANK", "LOCAL_RANK", "GROUP_RANK", "SLURM_PROCID"))
    here = ("127.0.0.1", "localhost", socket.gethostname()) + (("", None) if nodes == 1 else ())
    # one node: Lightning's launcher starts the other processes, and rank 0 listens (on 127.0.0.1 by default); a
    # port in use there failed at once, as "did not all meet within dist_timeout_s", its children left waiting
    if several and port and first and env.get("MASTER_ADDR") in here and not _rendezvous_up():
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port an earlier run left in TIME_WAIT is free
            try:
                sock.bind(("", int(port)))
            except OSError as e:
                who = "the first node listens there for the others" if nodes > 1 else \
                    "the first process listens there for the others it starts"
                raise ConfigError(f"MASTER_PORT={port} is in use on this machine ({e.strerror}); {who}: choose a "
                                  "free port, e.g. MASTER_PORT=29501, or unset it (one node: Lightning finds one)") \
                    from None


def _check_launch_values(env: Mapping, nodes: int, per_node: int = 1) -> None:
    """MASTER_PORT, MASTER_ADDR and NODE_RANK values that torch or Lightning failed on only later: a traceback
    (MASTER_PORT=abc, 70000 or empty), or a wait of 1.7 x dist_timeout_s blamed on a firewall (a MASTER_ADDR that
    does not resolve, said as a warning; a NODE_RANK beyond num_nodes)."""
    import socket
    import sys

    port = env.get("MASTER_PORT")
    if port is not None and not (str(port).strip().isdigit() and 1 <= int(port) <= 65535):
        raise ConfigError(f"MASTER_PORT={port!r} must be a port number in 1..65535, e.g. MASTER_PORT=29501 (or unset "
                          "it on one node: Lightning finds one)")
    addr = env.get("MASTER_ADDR")
    if addr is not None and not str(addr).strip():  # MASTER_ADDR=$HEADNODE with HEADNODE unset
        raise ConfigError("MASTER_ADDR is set but empty: give the first node's host name or address (or unset it on "
                          "one node)")
    if addr:
        try:
            socket.getaddrinfo(str(addr), None)
        except (OSError, UnicodeError) as e:  # said, not refused: a master's DNS name may appear only once it starts
            print(f"[momattn] warning: MASTER_ADDR={addr} does not resolve to an address now "
                  f"({getattr(e, 'strerror', e)}); the processes wait up to dist_timeout_s for it: check the first "
                  "node's host name if it never does", file=sys.stderr, flush=True)
    local = env.get("LOCAL_RANK")  # (a process started by hand as local rank 1 of one: Lightning's IndexError)
    if local is not None and str(local).isdigit() and int(local) >= per_node:
        raise ConfigError(f"LOCAL_RANK={local} but trainer.devices gives {per_node} process(es) per node: a node's "
                          f"local ranks are 0..{per_node - 1}; start as many processes on each node as trainer.devices "
                          "(e.g. torchrun --nproc_per_node), or raise trainer.devices")
    for key in ("NODE_RANK", "SLURM_NODEID") if nodes > 1 else ("NODE_RANK",):  # one node: NODE_RANK must be 0
        rank = env.get(key)
        if rank is not None and not (str(rank).isdigit() and int(rank) < nodes):
            # (NODE_RANK=2 with 2 nodes waited dist_timeout_s for a node that never comes)
            raise ConfigError(f"{key}={rank!r} must be a node index in 0..{nodes - 1} (trainer.num_nodes={nodes}): "
                              "each node gets its own, the first node 0")


def _rendezvous_up() -> bool:
    """Whether this process has joined its process group already (a sweep's later job: the port is its own)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def world_size(trainer: Mapping) -> int:
    """Processes that train together: trainer.devices (an integer, or a list of device ids) x trainer.num_nodes."""
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1) or 1
    if str(trainer.get("accelerator") or "").lower() == "cpu" and (
            devices == -1 or isinstance(devices, (list, tuple)) or (isinstance(devices, str) and "," in devices)):
        raise ConfigError(f"trainer.devices={devices!r}: on a CPU give a number of processes >= 1 (device ids and -1 "
                          "are for GPUs)")  # Lightning refused it, after the plan had counted it
    if devices == "auto" or devices == -1:  # Lightning's meaning: every GPU here, else one CPU process
        gpu = str(trainer.get("accelerator") or "auto").lower() in ("gpu", "cuda", "auto") and _cuda_available()
        devices = max(1, _cuda_device_count()) if gpu else 1
    if isinstance(devices, str) and re.fullmatch(r"\s*\d+\s*", devices):  # Lightning's "2": a count
        devices = int(devices)
    elif isinstance(devices, str) and re.fullmatch(r"[\d\s,]+", devices) and "," in devices:  # "0,1": device ids
        devices = [d for d in devices.split(",") if d.strip()]
    if isinstance(devices, (list, tuple)):
        devices = len(devices)
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ConfigError(f"trainer.devices={devices!r}: use a number of devices >= 1, a list of device ids, or "
                          "auto (every GPU here)")
    return devices * int(nodes)


def accumulation_for(global_batch: int, batch_size: int, trainer: Mapping) -> int:
    """accumulate_grad_batches so that batch_size x processes x accumulation = global_batch sequences."""
    world = world_size(trainer)
    per_step = batch_size * world
    if isinstance(global_batch, bool) or not isinstance(global_batch, int) or global_batch < 1:
        raise ConfigError(f"global_batch={global_batch!r} must be an integer >= 1 (sequences per optimizer step), or "
                          "null to set trainer.accumulate_grad_batches yourself")
    if global_batch % per_step:
        options = [b for b in (1, 2, 4, 8, 16, 32, 64) if global_batch % (b * world) == 0]
        fix = (f"data.batch_size among {options} works" if options else
               f"no data.batch_size does with {world} processes: use a process count that divides {global_batch}")
        raise ConfigError(f"global_batch={global_batch} is not a multiple of data.batch_size={batch_size} x "
                          f"{world} processes (trainer.devices x trainer.num_nodes); {fix}")
    return global_batch // per_step


def _cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count()


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _mps_available() -> bool:
    import torch

    return torch.backends.mps.is_available()


TOKENIZER_SETTINGS = {"vocab_size": ("bpe",), "path": ("file",)}  # the tokenizer kinds that read each key


def _check_kind_keys(section: str, node: Mapping | None, readers: Mapping[str, tuple[str, ...]], kind: str,
                     owner: str, fix: str) -> None:
    """A ConfigError for a key of a section (attention, tokenizer) set, though this run's kind does not read it
    (readers: key -> the kinds that do): it would be ignored. owner and fix are templates of {kinds}, {first}."""
    for key, value in (node or {}).items():
        kinds = readers.get(key)
        if kinds and value is not None and kind not in kinds:
            names = {"kinds": " and ".join(kinds), "first": kinds[0], "key": f"{section}.{key}"}
            raise ConfigError(f"{section}.{key} applies to {owner.format(**names)} only, and this run's is {kind}, "
                              f"so it would be ignored; drop it, or {fix.format(**names)}")


def empty_ckpt_path(value: str) -> ConfigError:
    return ConfigError(f"ckpt_path={value!r} is empty: give a checkpoint to resume (a .ckpt file, or last for this "
                       "folder's newest run), or leave ckpt_path out to start a new run")


def load_train_config(cfg: DictConfig | Mapping) -> TrainConfig:
    """The composed config, resolved once and checked section by section, or a ConfigError naming the culprit."""
    raw = _resolve(cfg)
    for key in raw:
        if key not in TOP_LEVEL:
            raise ConfigError(f"'{key}' is not a top-level config key.{did_you_mean(key, TOP_LEVEL)} Keys "
                              f"there: {', '.join(TOP_LEVEL)}")
    run = typed(RunConfig, {k: v for k, v in raw.items() if k not in SECTIONS}, "")
    if not 0 <= run.seed < 2**32:  # Lightning's seed_everything raised a ValueError inside training
        raise ConfigError(f"seed={run.seed} must lie in [0, 2**32 - 1]")
    if run.ckpt_path is not None and not str(run.ckpt_path).strip():  # ckpt_path=$CKPT with CKPT unset trained anew
        raise empty_ckpt_path(run.ckpt_path)
    if run.dist_timeout_s < 1:
        raise ConfigError(f"dist_timeout_s={run.dist_timeout_s}: the seconds to wait for every node must be >= 1")
    if run.dist_timeout_s > MAX_DIST_TIMEOUT_S:  # torch's store overflowed past ~9e9 s: its C++ frames, then advice
        # to raise it further (found by review)
        raise ConfigError(f"dist_timeout_s={run.dist_timeout_s}: the seconds to wait for every node must be <= "
                          f"{MAX_DIST_TIMEOUT_S} (about 3 years), which torch can hold; give that for no limit")
    if not str((raw.get("paths") or {}).get("output_dir", ".") or "").strip():  # its '/checkpoints' was blamed
        raise ConfigError("paths.output_dir is empty: it is the run folder; leave it (it follows hydra.run.dir), or "
                          "give the run folder with hydra.run.dir=<folder>")
    for section, key in (("paths", "cache_dir"), ("data", "cache_dir")):  # '' was read as unset: the default cache
        if isinstance(value := (raw.get(section) or {}).get(key), str) and not value.strip():
            raise ConfigError(f"{section}.{key} is empty" + (" (or MOMATTN_CACHE is set to nothing)" if section ==
                              "paths" else "") + "; give a folder, or null for the default (MOMATTN_CACHE, else "
                              "~/.cache/momattn)")
    # attention=vanilla +attention.eta=0.9 trained vanilla, eta unused (checked before AttentionConfig's own check,
    # which names the Python API's fix)
    if (kind := (raw.get("attention") or {}).get("kind", AttentionConfig.kind)) in ATTENTION_KINDS:
        _check_kind_keys("attention", raw.get("attention"), ATTENTION_SETTINGS, kind, "{kinds} attention",
                         "choose attention={first}" + (  # a resume repeats its recorded command line, which may hold
                             # one such setting from before it was refused (second diff review)
                             "; on a resume, a setting of the run's recorded command line is left out with ~{key}"
                             if run.ckpt_path not in (None, "null") else ""))
    attention = typed(AttentionConfig, raw.get("attention"), "attention")  # (an unknown kind named here)
    data = raw.get("data") or {}
    source = make_source(data)
    tokenizer = typed(TokenizerConfig, raw.get("tokenizer"), "tokenizer")
    # tokenizer=gpt2 +tokenizer.vocab_size=300 was ignored silently (the groups hold their keys as null)
    _check_kind_keys("tokenizer", raw.get("tokenizer"), TOKENIZER_SETTINGS, tokenizer.kind, "tokenizer={kinds}",
                     f"choose the group tokenizer={tokenizer.kind} (which holds only its own keys)")
    if tokenizer.kind == "source":
        source_tokenizer(source)  # the source has one: checked now, not after the cache is built
    elif run.run_eval and type(source).__name__ == "GincCorpus":  # refused only once trained and tokenized
        raise ConfigError(f"data=ginc with tokenizer={tokenizer.kind}: GINC's evaluation reads GINC symbol i as "
                          f"token i, which only tokenizer=source keeps (a {tokenizer.kind} tokenizer cuts the symbols "
                          "into pieces of its own); use tokenizer=source (experiment=ginc sets it), or "
                          "run_eval=false to train on GINC as plain text")
    _check_logged("optimized_metric", run.optimized_metric)
    for name, lg in (raw.get("logger") or {}).items():  # 0 was a ZeroDivisionError at Lightning's first CSV row
        flush = lg.get("flush_logs_every_n_steps", 1) if isinstance(lg, Mapping) else 1
        if isinstance(flush, bool) or not isinstance(flush, int) or flush < 1:
            raise ConfigError(f"logger.{name}.flush_logs_every_n_steps={flush!r} must be an integer >= 1")
        save_dir = lg.get("save_dir", ".") if isinstance(lg, Mapping) else "."  # (a logger without one: its own)
        if not isinstance(save_dir, str | os.PathLike) or (isinstance(save_dir, str) and not save_dir.strip()):
            # null or 5: "expected str, bytes or os.PathLike object" once the data and model were built
            raise ConfigError(f"logger.{name}.save_dir={save_dir!r} must be a folder path (the default is the run "
                              "folder, ${paths.output_dir})")
        if isinstance(lg, Mapping) and "wandb" in str(lg.get("_target_", "")).lower():
            check_wandb_names(lg, f"logger.{name}")
            check_train_wandb(lg, f"logger.{name}")
            if str(lg.get("_target_", "")).endswith("loggers.wandb_logger"):
                check_wandb_keys(lg, f"logger.{name}")
    for name, cb in (raw.get("callbacks") or {}).items():  # a typo here failed only at the first validation
        if isinstance(cb, Mapping):
            _check_checkpoint_callback(name, cb)
    given = (raw.get("trainer") or {}).get("precision") if isinstance(raw.get("trainer"), Mapping) else None
    trainer, max_steps, accumulate = _trainer(raw.get("trainer"))
    no_val = trainer.get("limit_val_batches")
    if isinstance(no_val, int | float) and not isinstance(no_val, bool) and no_val == 0 and _in_search() and str(
            run.optimized_metric).startswith("val/"):  # every trial trained, then failed: "must be float-castable"
        raise ConfigError(f"trainer.limit_val_batches={no_val} turns validation off, so no trial of this search would "
                          f"log optimized_metric={run.optimized_metric} for the sampler (each would train, then fail); "
                          "keep validation on in a search (or optimize train/loss)")
    # said now, not at the first training step (a kernel matters only to the momentum kinds' scan)
    if problem := ops.backend_problem(kernel=attention.kind != "vanilla", on_cpu=_runs_on_cpu(trainer)):
        raise ConfigError(problem)
    if problem := cpu_attention.setting_problem():
        raise ConfigError(problem)
    loader = typed(LoaderConfig, {k: v for k, v in data.items() if k in LOADER_KEYS}, "data")
    if loader.num_workers and isinstance(source, StreamingHubCorpus):
        raise ConfigError(f"data.num_workers={loader.num_workers}: a streamed corpus (data=hf_stream) is read in order "
                          "by one background thread, and worker processes would each read the whole stream; set "
                          "data.num_workers=0")
    if run.global_batch is not None:
        derived = accumulation_for(run.global_batch, loader.batch_size, trainer)
        if accumulate not in (1, derived):  # one the user set, which global_batch would silently replace
            raise ConfigError(f"global_batch={run.global_batch} gives trainer.accumulate_grad_batches={derived} "
                              f"(data.batch_size={loader.batch_size} x {world_size(trainer)} processes), but it is set "
                              f"to {accumulate}; drop one of the two (global_batch=null keeps yours)")
        accumulate = trainer["accumulate_grad_batches"] = derived
    if run.val_every_steps is not None:  # Lightning counts micro-batches, so the interval follows the accumulation
        if isinstance(run.val_every_steps, bool) or run.val_every_steps < 1:
            raise ConfigError(f"val_every_steps={run.val_every_steps!r} must be an integer >= 1 (optimizer steps "
                              "between validations), or null to use trainer.val_check_interval")
        given = trainer.get("val_check_interval")
        if _on_command_line("trainer.val_check_interval") and given != run.val_every_steps * accumulate and \
                os.environ.get("LOCAL_RANK", "0") == "0":  # one the user typed was replaced without a word (review);
            # said, not refused: a resume repeats the run's own overrides, so both may be on its command line
            print(f"[momattn] note: val_every_steps={run.val_every_steps} sets trainer.val_check_interval to "
                  f"{run.val_every_steps * accumulate} micro-batches; the trainer.val_check_interval={given} given is "
                  "not used (val_every_steps=null uses it)", file=sys.stderr)
        trainer["val_check_interval"] = run.val_every_steps * accumulate
    interval = trainer.get("val_check_interval")
    every_epoch = trainer.get("check_val_every_n_epoch")  # a run is one epoch of max_steps optimizer steps
    if every_epoch is not None and every_epoch > 1:  # it never validated: no val/loss, no best checkpoint, exit 0
        raise ConfigError(f"trainer.check_val_every_n_epoch={every_epoch}: a momattn run is one epoch "
                          f"(trainer.max_steps={max_steps} steps), so it would never validate; validate by steps with "
                          "val_every_steps=N (and trainer.check_val_every_n_epoch=null)")
    if every_epoch is not None and isinstance(interval, int) and interval > max_steps * accumulate:
        # Lightning: "val_check_interval (10) must be less than or equal to the number of the training batches"
        culprit = (f"val_every_steps={run.val_every_steps} ({interval} batches)" if run.val_every_steps is not None
                   else f"trainer.val_check_interval={interval} batches")
        raise ConfigError(f"{culprit} is more than the run's one epoch of "
                          f"{max_steps * accumulate} with trainer.check_val_every_n_epoch set; lower it, or set "
                          "trainer.check_val_every_n_epoch=null (batches are then counted across the run)")
    if accumulate > 1 and isinstance(interval, int) and interval % accumulate:
        steps = -(-interval // accumulate)
        raise ConfigError(f"trainer.val_check_interval={interval} micro-batches is not a whole number of optimizer "
                          f"steps (trainer.accumulate_grad_batches={accumulate}): a validation inside a step would "
                          "write checkpoints that a resume cannot continue exactly; set val_every_steps (optimizer "
                          f"steps), e.g. val_every_steps={steps} (every {steps * accumulate} micro-batches)")
    raw["trainer"] = trainer  # checkpoints record the precision that ran
    if raw.get("optim") is None:  # optim=null or ~optim trained on the dataclass's defaults without a word (an
        # experiment's lr, betas and schedule replaced): found by review
        raise ConfigError("optim=null (or ~optim): the optimizer's section is needed; set its keys one by one "
                          "(optim.lr=3e-4, optim.schedule=cosine, ...)")
    optim = typed(OptimConfig, raw.get("optim"), "optim")
    precision = str(trainer["precision"])
    if precision in ("16-true", "transformer-engine-float16") and optim.eps <= 2**-25:  # 0 in float16 (least 2^-24)
        # it trained to a final val/ppl of 5e21 (then capped at e^50) without an error: the loss grew but stayed finite
        raise ConfigError(f"trainer.precision={precision} holds the weights and AdamW's state in float16, where "
                          f"optim.eps={optim.eps:g} rounds to 0 (float16's smallest value is 6e-8), so AdamW's step "
                          "m / (sqrt(v) + eps) explodes where the second moment underflows and the run diverges; raise optim.eps (1e-4 is "
                          "usual in float16), or train with trainer.precision="
                          + ("bf16-mixed" if _runs_on_cpu(trainer) else "16-mixed") + " or bf16-true")
    c = TrainConfig(
        **dataclasses.asdict(run),
        model=_model(raw.get("model"), attention),
        optim=optim,
        data=source,
        loader=loader,
        tokenizer=tokenizer,
        paths=typed(PathsConfig, raw.get("paths"), "paths"),
        trainer=trainer,
        max_steps=max_steps,
        accumulate=accumulate,
        eval=_eval(raw.get("eval"), bool(run.run_eval), source),
        callbacks=raw.get("callbacks") or {},
        logger=raw.get("logger") or {},
        resolved=raw,
        precision_note=precision_reason(given, trainer),
    )
    _check_folders(c)
    from momattn.trust import check_resumed_config

    check_resumed_config(raw)  # a command line from a checkpoint: its targets checked; else the user's, trusted
    return c


def _check_folders(c: TrainConfig) -> None:
    """The folders a run writes (the token and tokenizer cache, its output, checkpoint and logger folders) can be
    made and written: each failed inside training (a file in the cache's place: NotADirectoryError after the
    tokenizer had been trained)."""
    own = c.loader.cache_dir and str(c.loader.cache_dir) != str(c.paths.cache_dir)  # not the ${paths.cache_dir}
    key = "data.cache_dir" if own else "paths.cache_dir" if c.paths.cache_dir else "MOMATTN_CACHE"
    folders = {key: c.cache_dir, "paths.output_dir": Path(c.paths.output_dir).expanduser()}
    for group, entries, field_ in (("callbacks", c.callbacks, "dirpath"), ("logger", c.logger, "save_dir")):
        for name, conf in (entries or {}).items():
            if isinstance(conf, Mapping) and isinstance(conf.get(field_), str):
                folders[f"{group}.{name}.{field_}"] = Path(conf[field_]).expanduser()
    names = dict(folders)  # and the names a run writes under them, which failed at the first checkpoint save
    for group, entries, fields in (("callbacks", c.callbacks, ("filename",)), ("logger", c.logger, ("name", "version"))):
        for name, conf in (entries or {}).items():
            for field_ in fields:
                if isinstance(conf, Mapping) and isinstance(conf.get(field_), str):
                    names[f"{group}.{name}.{field_}"] = Path(conf[field_])
    for key, path in names.items():
        if long := next((part for part in path.parts if len(os.fsencode(part)) > NAME_MAX), None):
            raise ConfigError(f"{key}: the name '{long[:40]}...' ({len(os.fsencode(long))} bytes) is longer than a "
                              f"file or folder name may be ({NAME_MAX} bytes on most filesystems); shorten it")
    for name, conf in (c.callbacks or {}).items():
        filename = conf.get("filename") if isinstance(conf, Mapping) else None
        if isinstance(filename, str) and filename.strip():
            parts = Path(checkpoint_file_name(filename, conf, c.trainer.get("max_steps"))).parts
            if written := next((part for part in parts if len(os.fsencode(part)) > NAME_MAX), None):
                raise ConfigError(f"callbacks.{name}.filename: the checkpoint files it names, such as "
                                  f"'{written[:40]}...' ({len(os.fsencode(written))} bytes), are longer than a file name "
                                  f"may be ({NAME_MAX} bytes on most filesystems), so the first save would fail; "
                                  "shorten it")
    for key, path in folders.items():
        _check_folder(key, path)
    _check_own_folders(c)


def checkpoint_file_name(template: str, conf: Mapping, max_steps: Any) -> str:
    """The path (below its folder) Lightning's ModelCheckpoint makes from a filename template, near enough:
    `{step}` at the run's last step, any other value as a long float, a version suffix where the callback adds one
    (Lightning's own ModelCheckpoint; momattn's to a name without the step) and `.ckpt`. Checking the template alone passed a
    251-byte name that failed at the first save, its steps lost."""
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    steps = max_steps if isinstance(max_steps, int) and max_steps > 0 else 10**9
    names = re.findall(r"\{([^:}]*)", template)
    values = {n: torch.tensor(steps) if n in ("step", "epoch") else torch.tensor(-1.2345678901234567e-300,
                                                                                dtype=torch.float64) for n in names}
    try:
        base = ModelCheckpoint._format_checkpoint_name(
            ModelCheckpoint, template, values, auto_insert_metric_name=conf.get("auto_insert_metric_name", True)
            is not False)
    except (ValueError, KeyError, IndexError, TypeError):  # a template Lightning cannot format is named elsewhere
        return template
    own = "momattn." in str(conf.get("_target_", ""))
    counter = conf.get("enable_version_counter", not own)  # momattn's: off, but for a name without the step where
    # several files are kept under a monitor (callbacks.ModelCheckpoint; one kept file is rewritten: diff review)
    counter = counter or own and "{step" not in template and conf.get("monitor") is not None and \
        conf.get("save_top_k", 1) not in (0, 1)
    return base + ("-v99" if counter else "") + ".ckpt"  # (room for 99 versions)


def _check_own_folders(c: TrainConfig) -> None:
    """The checkpoint folder of the ModelCheckpoint that keeps last.ckpt is the run folder's checkpoints/, and other
    checkpoint folders and a CSV logger's write inside the run folder: a folder outside it is shared by every run
    given it (a second run wrote over the first's last.ckpt, or started the first's metrics.csv anew, exit 0), and
    resuming (ckpt_path=last), SIGTERM saves, sweeps and evaluate.py sweep_dir= look in <run>/checkpoints only.
    Paths compare both as written and with links followed (a checkpoints/ linked to another disk is the run's)."""
    run = Path(c.paths.output_dir).expanduser()

    def same(a: Path, b: Path) -> bool:
        return Path(os.path.abspath(a)) == Path(os.path.abspath(b)) or a.resolve() == b.resolve()

    def inside(p: Path) -> bool:
        return any(same(q, run) for q in (p, *Path(os.path.abspath(p)).parents, *p.resolve().parents))

    disk = "put the run folder there: hydra.run.dir=/disk/run (hydra.sweep.dir=/disk/sweep for a sweep)"
    for name, conf in (c.callbacks or {}).items():
        filename = conf.get("filename") if isinstance(conf, Mapping) else None
        if isinstance(filename, str) and not filename.strip():  # '' was Lightning's default name, in silence
            raise ConfigError(f"callbacks.{name}.filename is empty; give a name such as 'best-{{step}}', or null for "
                              "Lightning's default")
        if isinstance(filename, str) and (Path(filename).is_absolute() or ".." in Path(filename).parts):
            # '../../esc-{step}' or '/x/best': the best checkpoint was written outside the run folder, shared by every
            # run given it, where resuming and evaluate.py do not look
            raise ConfigError(f"callbacks.{name}.filename='{filename}' leads out of its checkpoint folder: every run "
                              "given it writes there, over each other's; name a file inside the folder, e.g. "
                              "'best-{step}' (to keep checkpoints on another disk, " + disk + ")")
        where = conf.get("dirpath") if isinstance(conf, Mapping) else None
        if not isinstance(where, str):
            continue
        p = Path(where).expanduser()
        if conf.get("save_last") and not same(p, run / "checkpoints"):
            raise ConfigError(f"callbacks.{name}.dirpath='{where}': the checkpoint callback that keeps last.ckpt writes "
                              f"into the run folder's checkpoints/ ({run / 'checkpoints'}), where resuming, SIGTERM "
                              "saves, sweeps and evaluate.py look for it, and a folder outside the run is shared by "
                              "every run given it (the next run writes over its last.ckpt). Leave it at "
                              f"${{paths.output_dir}}/checkpoints; to keep checkpoints on another disk, {disk}")
        if not inside(p):
            raise ConfigError(f"callbacks.{name}.dirpath='{where}' is outside the run folder ({run}): every run given "
                              f"it writes its checkpoints there, over each other's; use a folder inside the run folder "
                              f"(${{paths.output_dir}}/...), or {disk}")
    for name, conf in (c.logger or {}).items():
        where = conf.get("save_dir") if isinstance(conf, Mapping) else None
        if "CSVLogger" not in str(conf.get("_target_", "") if isinstance(conf, Mapping) else "") or \
                not isinstance(where, str):
            continue
        if not inside(Path(where).expanduser()):
            raise ConfigError(f"logger.{name}.save_dir='{where}' is outside the run folder ({run}): every run given "
                              "it writes one metrics.csv there, and a new run starts it anew (the earlier run's rows "
                              "are lost). Leave it at ${paths.output_dir} (or a folder inside it)")
        for field_ in ("name", "version"):  # the folders under save_dir: '../..' or an absolute one led out too
            part = conf.get(field_)
            if isinstance(part, str) and part and not inside(Path(where).expanduser() / part):
                raise ConfigError(f"logger.{name}.{field_}='{part}' leads out of the run folder ({run}): every "
                                  "run given it writes one metrics.csv there, over the earlier run's rows. Give a "
                                  "plain folder name, or leave it at its default")

def _check_folder(key: str, path: Path) -> None:
    """The folder, or the first of its parents that exists, is a folder that can be written."""
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"{key}='{path}': {p} is a file, not a folder; a folder is needed there (or a path "
                                  "where one can be made)")
            try:
                probe_write(p)
            except OSError as e:
                raise ConfigError(f"{key}='{path}': {p} cannot be written ({e.strerror or e}); choose a writable "
                                  "folder") from None
            return
