"""Callbacks and plugins that keep work safe: atomic checkpoint files, a checkpoint on SIGTERM (preemption), and
throughput/MFU on any device (on CPU against a measured, stated matmul peak). Fault injection for the tests lives
in momattn/faults.py and is added through the config, never through this module."""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.throughput import Throughput as FabricThroughput
from lightning.pytorch import callbacks as lightning_callbacks
from lightning.pytorch.callbacks import Callback, ThroughputMonitor
from lightning.pytorch.trainer.states import RunningStage, TrainerFn
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from momattn import hardware
from momattn import lightning_compat as compat
from momattn.checkpoint import read_checkpoint
from momattn.errors import ConfigError, DataError
from momattn.io import atomic_torch_save, atomic_write_text, file_lock, lock_beside, swap_into


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint files for Lightning, written by momattn.io.atomic_torch_save (temp file, fsync, rename, fsync
    of the folder: a kill at any moment leaves the previous complete file in place; Lightning's own writer opens
    the target) and read by momattn.checkpoint.read_checkpoint (weights only: a resume never runs code)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        p = Path(path)
        if not p.is_dir() or p.is_symlink():
            atomic_torch_save(checkpoint, p)
            return
        # an FSDP run's sharded folder (last.ckpt/), its run resumed without FSDP: the file takes the folder's place
        # (a file cannot be renamed over a folder: the run failed at its first save, its steps lost)
        new = p.with_name(f".{p.name}.new")
        atomic_torch_save(checkpoint, new)
        swap_into(new, p)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        from momattn.trust import clean_checkpoint_paths

        ckpt = read_checkpoint(path, verify=True)  # on the CPU; Lightning moves every state onto its device
        clean_checkpoint_paths(ckpt)  # a stored ModelCheckpoint state names files of its own folder only
        return ckpt


class ModelCheckpoint(lightning_callbacks.ModelCheckpoint):
    """Lightning's, with last.ckpt always the newest state: Lightning >= 2.5 rewrites "last" only at a step where it
    also saves a top-k file, so after a validation that did not improve the monitor, and at the end of a run,
    last.ckpt lagged behind (a resume or an evaluation of last.ckpt then took an older model). Here last.ckpt is
    also written after every validation and when training ends, unless this step was saved already, or the
    validation fell inside a gradient accumulation (a state that a resume could not continue exactly). No
    version counter: last.ckpt is one file that PreemptionCheckpoint may have written too (not last-v1.ckpt).
    save_last=link keeps Lightning's meaning, a link to the newest file it saved, where that file holds the newest
    state; where none does (a validation that did not improve, the run's end), last.ckpt is a file of its own."""

    def __init__(self, *args, enable_version_counter: bool = False, **kwargs):
        super().__init__(*args, enable_version_counter=enable_version_counter, **kwargs)
        if self.filename is not None:  # a broken template failed at the first checkpoint, after all those steps
            self._check_filename()
        every = "every_n_train_steps" if self._every_n_train_steps else \
            "train_time_interval" if self._train_time_interval else None
        if every and self.monitor is not None:  # (found by review)
            raise ConfigError(
                f"{every} with monitor={self.monitor}: Lightning saves those checkpoints at the end of a step, before "
                "its validation, so a 'best' file would hold weights never validated, scored with an earlier "
                "validation's value. The best is chosen at each validation (trainer.val_check_interval); for step "
                f"files as well, add a checkpoint callback with monitor=null and {every}, e.g. "
                "+callbacks.steps={_target_: momattn.callbacks.ModelCheckpoint, dirpath: ${paths.output_dir}/steps, "
                f"{every}: ..., save_top_k: -1, save_last: false}}")

    def _check_filename(self) -> None:
        """Format the template once: Lightning fills the metrics it names with integer zeros, on which a float's
        format ({val/loss:.3}) fails, so a second try gives the metrics but epoch and step float zeros."""
        if self.filename == self.CHECKPOINT_NAME_LAST:
            raise ConfigError(f"filename='{self.filename}' names the best checkpoints as last.ckpt, which is rewritten "
                              "with the newest state after every validation: the best would be lost; e.g. "
                              "filename='best-step{step}'")
        if "{step" not in self.filename and self.monitor is None and self.save_top_k not in (0, 1):
            # Lightning hands each save the name of the one before as the file to replace: the version counter
            # stops there, and every step file took the same name (steps 2 and 4 lost to step 6: diff review)
            raise ConfigError(f"filename='{self.filename}' has no {{step}}, and with monitor=null each of the "
                              f"save_top_k={self.save_top_k} saves would take the name of the one before; put the "
                              "step in it, e.g. filename='step{step}'")
        named = [n for n in re.findall(r"\{([^:}!]*)", self.filename) if n not in ("epoch", "step")]
        error = None
        for metrics in ({}, {n: torch.tensor(0.0) for n in named}):
            try:
                self.format_checkpoint_name(metrics)
                return
            except (ValueError, KeyError, IndexError, AttributeError, TypeError) as e:
                error = error or e
        raise ConfigError(f"filename={self.filename!r} is not a checkpoint name template ({error}); metrics go in "
                          "braces, e.g. filename='best-step{step}-{val/loss:.3f}'") from None

    def _get_metric_interpolated_filepath_name(self, monitor_candidates, trainer, del_filepath=None) -> str:
        """A best file's name, with Lightning's version counter (-v1) where the name has no step: two validations
        whose val/loss formats alike ('best-{val/loss:.2f}') had one name, and the later, worse model replaced the
        better one, which stayed "best" in the run's report (found by review). A name with the step is one step's,
        rewritten only when that step is trained again (a resume), as it should be."""
        if "{step" in (self.filename or "{step}"):  # (None: Lightning's default name, {epoch}-{step})
            return super()._get_metric_interpolated_filepath_name(monitor_candidates, trainer, del_filepath)
        was, self._enable_version_counter = self._enable_version_counter, True  # (off for last.ckpt: one file)
        try:
            return super()._get_metric_interpolated_filepath_name(monitor_candidates, trainer, del_filepath)
        finally:
            self._enable_version_counter = was

    _lightning = inspect.signature(lightning_callbacks.ModelCheckpoint.__init__)  # its keys, for the config check
    __init__.__signature__ = _lightning.replace(parameters=[
        p.replace(default=False) if p.name == "enable_version_counter" else p for p in _lightning.parameters.values()])
    del _lightning

    def load_state_dict(self, state_dict: dict) -> None:
        """A run folder moved or copied before its resume (another disk, another mount point on a node): Lightning
        dropped the best-k tracking because the saved dirpath differs, so a later worse score took best.ckpt's
        place and save_top_k=1 left two best files. The saved paths are rebased to this folder where the file is
        there, and tracking goes on as in place."""
        old = state_dict.get("dirpath")
        if old is None or self.dirpath is None or Path(old) == Path(self.dirpath):
            return super().load_state_dict(state_dict)

        def here(path):  # the same file in this folder, or None
            if not path or Path(path).parent != Path(old):
                return None
            moved = Path(self.dirpath) / Path(path).name
            return str(moved) if moved.exists() else None

        best_k = {here(p): v for p, v in (state_dict.get("best_k_models") or {}).items()}
        if None in best_k or here(state_dict.get("best_model_path")) is None:
            # not this run's files (a fork into a new folder): tracking starts afresh here. Lightning's own
            # load kept the source's best_model_path, which a fork that trained nothing reported as its best
            if rank_zero_only.rank == 0:  # (set by Lightning: spawned DDP workers have no RANK variable)
                print(f"[momattn] checkpoints: the resumed checkpoint was saved in {old}, not in this run's "
                      f"{self.dirpath}: best-checkpoint tracking starts afresh here", file=sys.stderr, flush=True)
            return None
        state = dict(state_dict, dirpath=self.dirpath, best_k_models=best_k,
                     best_model_path=here(state_dict["best_model_path"]),
                     kth_best_model_path=here(state_dict.get("kth_best_model_path")) or "",
                     last_model_path=here(state_dict.get("last_model_path")) or "")
        super().load_state_dict(state)

    def _refresh_last(self, trainer) -> None:
        """last.ckpt written with this step's state where no file holds it yet (skipped: this step was saved)."""
        if self.save_last not in (True, "link") or self._should_skip_saving_checkpoint(trainer):
            return
        if compat.mid_accumulation(trainer):
            return  # mid-accumulation: the next step boundary's validation or the run's end writes it
        link, self.save_last = self.save_last, True  # link: no file holds this step's weights to link to, so a
        try:  # real last.ckpt (they were lost: last.ckpt linked to an older best, and a resume trained those steps
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))  # again: found by review); the
        finally:  # next best file saved makes it a link again
            self.save_last = link

    def on_validation_end(self, trainer, pl_module) -> None:
        if compat.mid_accumulation(trainer) and not trainer.sanity_checking:
            # nor a top-k file: Lightning would write last.ckpt with it, a state no resume continues exactly (an
            # int val_check_interval that is not whole steps is refused at start-up; a time or fraction is not)
            if not getattr(self, "_said_mid_accumulation", False) and trainer.is_global_zero:
                self._said_mid_accumulation = True
                print("[momattn] a validation fell inside a gradient accumulation (trainer.val_check_interval is a "
                      "time or a fraction): no checkpoint is written at such validations; val_every_steps validates "
                      "at optimizer steps", file=sys.stderr, flush=True)
            return
        super().on_validation_end(trainer, pl_module)
        if not trainer.sanity_checking:
            self._refresh_last(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        self._refresh_last(trainer)


class PreemptionCheckpoint(Callback):
    """On SIGTERM, finish the current optimizer step (and the validation due at it), write last.ckpt there and stop
    with a resume command (train.py then exits 143, saved but not done: momattn.training.PREEMPTED_EXIT).

    Lightning's own handler raises its flag, and Lightning stops wherever it next looks at it: after this callback's
    hook of the step (nothing saved), or at the first batch of a validation (which a resume then skips); under DDP
    it also runs a broadcast inside the signal handler, which only the signalled rank enters (the ranks then
    deadlock against the next collective). So this callback replaces that notifier: a SIGTERM only marks the run
    (and is passed on to the ranks Lightning started); the callback saves at the step boundary, again after the
    validation of that step if one runs (the resume must not skip it), and then stops the run (Lightning's flag, or
    SIGTERMException before the next batch). Under DDP the ranks agree on the step at every step boundary (one
    all-reduce of a flag: any rank's signal counts), as the checkpoint is written by all of them."""

    def __init__(self, dirpath: str | os.PathLike):
        self.dirpath = Path(dirpath)
        self.pending = False  # a SIGTERM not yet acted on
        self.saved_path: Path | None = None
        self.saved_step: int | None = None  # the step saved for a SIGTERM: the run stops before the next one
        self.data_error_step: int | None = None  # the step saved when the training data failed to read on
        self.start_step = 0  # the step this fit started from (a resume's)
        self.compiled = False  # whether the model's forward is torch.compile'd: its first step builds the kernels
        self.stepped = False  # whether this fit finished a step

    def on_fit_start(self, trainer, pl_module):
        def on_sigterm(signum, frame):
            if not self.pending and trainer.strategy.launcher is not None:
                trainer.strategy.launcher.kill(signum)  # the ranks Lightning started get it too, as Lightning does
            if not self.pending and self.compiled and not self.stepped and trainer.global_rank == 0:
                # the save waits for the first step, which torch.compile builds for a minute or more, without a
                # word: SLURM's SIGKILL 30 s after its SIGTERM came first (found by review). (os.write: a print
                # inside a signal handler can meet stderr's buffer mid-write)
                os.write(2, b"[momattn] SIGTERM received during the first step, which torch.compile is still "
                            b"building (a minute or more): the checkpoint is written when that step ends. Where a "
                            b"SIGKILL follows sooner, train with compile=false\n")
            self.pending = True

        # in Lightning's handler (registered right after this hook, restored when fit ends) in place of its notifier
        compat.replace_sigterm_notifier(trainer, on_sigterm)

    def _asked(self, trainer) -> bool:
        """Whether any rank has a SIGTERM to act on (a collective under DDP: call it on every rank at once)."""
        if trainer.received_sigterm:  # Lightning's flag, raised by something other than a signal
            compat.set_received_sigterm(trainer, False)
            self.pending = True
        return trainer.strategy.reduce_boolean_decision(self.pending, all=False)

    def _save(self, trainer) -> None:
        self.pending = False
        self.saved_path, self.saved_step = self.dirpath / "last.ckpt", trainer.global_step
        trainer.save_checkpoint(self.saved_path)

    def on_train_start(self, trainer, pl_module):
        self.start_step = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.saved_step is not None:  # no validation followed the step saved for the SIGTERM
            raise SIGTERMException

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.stepped = True
        if compat.mid_accumulation(trainer):  # wait for the step boundary (the same micro-batch on every rank)
            return
        if self.saved_step is None and self._asked(trainer):
            self._save(trainer)  # if a validation runs now, on_validation_end saves again after it

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or compat.mid_accumulation(trainer):
            return
        if self.saved_step == trainer.global_step or self._asked(trainer):
            self._save(trainer)  # the validation is done and logged: a resume goes on with the next step
            compat.set_received_sigterm(trainer, True)  # Lightning stops at the end of this step

    def on_exception(self, trainer, pl_module, exception):
        """A row the training stream cannot read, hours in (data=hf_stream): raised where the next batch is
        fetched, between the hooks of two micro-batches, so the model is that of the last one's end; at a step
        boundary it is saved (the steps since the last checkpoint were lost). One process only: under DDP each
        rank meets the row at its own batch, and a save waits for all of them."""
        # (only where this fit trained: a row met before a resume's first step rewrote its good last.ckpt, without
        # its stream point or its validation; found by review)
        if (isinstance(exception, DataError) and trainer.world_size == 1 and trainer.state.fn == TrainerFn.FITTING
                and trainer.training and trainer.global_step > self.start_step and not compat.mid_accumulation(trainer)):
            self._save(trainer)
            self.data_error_step = trainer.global_step

    def on_train_end(self, trainer, pl_module):
        if self.saved_step is None and self._asked(trainer):  # a SIGTERM after the last step's hooks
            self._save(trainer)
        if self.saved_step is not None:  # the run is complete, but its evaluation is left to the resume
            raise SIGTERMException


def precision_dtype(precision: str) -> torch.dtype:
    """The matmul dtype a Lightning precision setting ('32-true', 'bf16-mixed', '16-mixed', ...) trains in."""
    return getattr(torch, hardware.precision_dtype_name(precision))


_PEAKS: dict[tuple, tuple[float, int]] = {}


def measured_peak_flops(dtype: torch.dtype = torch.float32, repeats: int = 4, max_n: int = 2048,
                        target_s: float = 0.1) -> tuple[float, int]:
    """(FLOP/s, n): the best of `repeats` timings of one n x n matmul in `dtype` on this CPU's torch threads.

    n grows by sqrt(2) from 256 until one matmul takes target_s (or n reaches max_n), so that the matrix is big
    enough to run at full speed yet the whole measurement stays near a second even where `dtype` is emulated
    (bf16 without AVX512-BF16 is ~100x slower than fp32). Cached per (dtype, threads) within a process."""
    key = (dtype, torch.get_num_threads(), repeats, max_n, target_s)
    if key in _PEAKS:
        return _PEAKS[key]
    n, gen = 256, torch.Generator().manual_seed(0)  # its own generator: the run's RNG stream must not depend
    while True:  # on how many sizes were tried (that would change dropout masks from run to run)
        a, b = (torch.randn(n, n, generator=gen).to(dtype) for _ in range(2))
        t0 = time.perf_counter()
        torch.mm(a, b)  # also the warm-up of this size
        if time.perf_counter() - t0 >= target_s or n >= max_n:
            break
        n = min(max_n, int(n * math.sqrt(2)) // 64 * 64)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    _PEAKS[key] = (2 * n**3 / best, n)
    return _PEAKS[key]


_RECORDED: dict[tuple[str, str], tuple[float, int]] = {}  # (record file, key) -> what this process recorded there


def recorded_peak_flops(path: Path | None, key: str, measured: float) -> tuple[float, int]:
    """(the best peak recorded under `key` so far, this measurement included; how many runs measured it).

    A start-up measurement taken while other processes share the cores reads low (one run's MFU once read 117%);
    the best of many runs' measurements is the CPU's own speed, so keeping it in a small JSON record (key ->
    {"flops", "runs"}) makes the peak, and MFU with it, stable from run to run. A missing or unreadable record
    starts afresh; one that cannot be written is skipped (the run's own measurement then stands alone)."""
    if path is None:
        return measured, 1
    # runs starting together (a parallel sweep) would otherwise lose each other's updates; a minute at most
    with file_lock(lock_beside(path), timeout_s=60):
        try:
            record = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            record = {}
        record = record if isinstance(record, dict) else {}
        entry = record.get(key)
        try:
            kept, runs = float(entry["flops"]), int(entry["runs"])
            if not (math.isfinite(kept) and kept > 0 and runs >= 1):  # NaN was kept forever (max(nan, x) is nan),
                raise ValueError  # and every later run had no MFU, with no note (found by review)
            best, runs = max(kept, measured), runs + 1
        except (TypeError, KeyError, ValueError):
            best, runs = measured, 1
        record[key] = {"flops": best, "runs": runs}
        with contextlib.suppress(OSError):
            atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return best, runs


class BoundedThroughput(FabricThroughput):
    """Lightning's Throughput, but an MFU above 100% (the peak was wrong, not the run) is reported as NaN, and the
    counts of samples and tokens (`train/samples`, `train/lengths`) are the job's, every process's share (they were
    rank 0's alone: a 2-process run logged half the samples a 1-process run of the same steps did)."""

    def compute(self):
        metrics = super().compute()
        for k in ("samples", "lengths"):
            if k in metrics:
                metrics[k] *= self.world_size
        for k in [k for k in metrics if k.endswith("mfu")]:
            if metrics[k] > 1.0:
                metrics[k] = float("nan")
        return metrics


class Throughput(ThroughputMonitor):
    """Lightning's ThroughputMonitor (tokens/s, FLOP/s, MFU) with FLOPs from the model. On CPU, where no datasheet
    peak exists, MFU is relative to a measured matmul peak in the dtype the run trains in: the best measurement
    of every run on this CPU so far, kept in `peak_record` (recorded_peak_flops; printed once)."""

    peak_note: str | None = None
    _paused_from: float | None = None  # where the training clock stopped for a validation (None: running)

    def __init__(self, *args, peak_record: Path | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        compat.check_throughput_compute()  # _compute below overrides a private method
        self.peak_record = peak_record

    def setup(self, trainer, pl_module, stage):
        super().setup(trainer, pl_module, stage)
        device = trainer.strategy.root_device
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
        if device.type == "cuda" and hardware.is_mig(name):
            # a part of the GPU: Lightning's table gave the whole GPU's peak (an MFU up to 7x low: found by review)
            self.available_flops = None
        elif device.type == "cuda" and precision_dtype(trainer.precision) in (torch.bfloat16, torch.float16):
            # the datasheet's dense peak where momattn knows the device (Lightning's table has no "NVIDIA H200",
            # and its H200 names carry the sparse figure); Lightning's otherwise
            self.available_flops = hardware.gpu_bf16_peak(name) or self.available_flops
        if device.type == "cpu" and self.available_flops is None:
            if self.peak_note is None:  # measured once, at fit's setup: the final validate() reuses it
                dtype = precision_dtype(trainer.precision)
                now, n = measured_peak_flops(dtype)
                name, threads = str(dtype).removeprefix("torch."), torch.get_num_threads()
                key = hardware.cpu_peak_key(name, threads, torch.__version__)
                memo = (str(self.peak_record), key)  # one process's measurement (cached) is one run's, recorded
                if memo not in _RECORDED:  # once: each trial of a search counted it again, "the best of N runs"
                    _RECORDED[memo] = recorded_peak_flops(self.peak_record, key, now)
                self._cpu_peak, runs = _RECORDED[memo]
                self.peak_note = (f"{name} matmul peak of {self._cpu_peak / 1e9:.1f} GFLOP/s: the best start-up "
                                  f"measurement of {runs} run(s) on this CPU and {threads} threads (each the best "
                                  f"of 4 {n}x{n} matmuls; this process measured {now / 1e9:.1f})")
                if trainer.is_global_zero:  # each process measures its own; said once (DDP said it per rank)
                    print(f"[momattn] CPU MFU is relative to a {self.peak_note}", file=sys.stderr)
            self.available_flops = self._cpu_peak
        live = compat.stage_throughputs(self)
        for s in list(live):
            live[s] = BoundedThroughput(available_flops=self.available_flops, world_size=trainer.world_size,
                                         **self.kwargs)

    def _compute(self, trainer, iter_num=None):
        # on the axis train/loss and val/* use (the loggers' optimizer-step counter), not Lightning's own batch
        # counters: those restart on a resume, count validation batches, and count micro-batches under accumulation
        super()._compute(trainer, None)

    # a resume continues the run's counts (train/samples, train/lengths = tokens seen, train/batches, train/time)
    # instead of restarting them at 0 mid-curve, and tokens_per_sec_mean covers the whole run
    def state_dict(self) -> dict:
        s = RunningStage.TRAINING
        if s not in self._t0s or not self._batches.get(s):  # not rank 0, or not trained yet
            return {}
        # per batch, not totals: a checkpoint may be written before this step's batch was counted (a SIGTERM);
        # and per optimizer step of the whole job, which a resume on another number of processes continues
        per_step = getattr(self, "_processes", 1) * getattr(self, "_accumulate", 1) / self._batches[s]
        return {"samples_per_batch": self._samples[s] / self._batches[s],
                "lengths_per_batch": self._lengths[s] / self._batches[s],
                # (during or after a validation the clock is stopped: a checkpoint saved there counted it: flows review)
                "time": (self._paused_from or time.perf_counter()) - self._t0s[s],
                "samples_per_step": self._samples[s] * per_step, "lengths_per_step": self._lengths[s] * per_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self._restored = dict(state_dict) or None

    @rank_zero_only
    def on_train_start(self, trainer, *args) -> None:
        super().on_train_start(trainer, *args)
        restored, self._restored = getattr(self, "_restored", None), None
        self._processes, self._accumulate = trainer.world_size, trainer.accumulate_grad_batches
        batches = trainer.global_step * trainer.accumulate_grad_batches  # the micro-batches trained so far
        # a checkpoint written before its first batch was counted (a SIGTERM in step 0) holds no per-batch
        # counts: the first batch here gives them (every batch is the same size), or the counts ran one batch short
        self._uncounted = 0 if restored else batches
        if restored and "samples_per_batch" in restored:
            s = RunningStage.TRAINING
            self._batches[s] += batches
            if "samples_per_step" in restored:  # this process's share of the job's counts (compute() scales them)
                self._samples[s] += round(trainer.global_step * restored["samples_per_step"] / trainer.world_size)
                self._lengths[s] += round(trainer.global_step * restored["lengths_per_step"] / trainer.world_size)
            else:  # a checkpoint of an earlier release: per batch of this process
                self._samples[s] += round(batches * restored["samples_per_batch"])
                self._lengths[s] += round(batches * restored["lengths_per_batch"])
            self._t0s[s] -= float(restored.get("time", 0.0))  # train/time: the training time before the resume too

    @rank_zero_only
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, *args) -> None:
        n, self._uncounted = getattr(self, "_uncounted", 0), 0
        if n:
            s = RunningStage.TRAINING
            self._batches[s] += n
            self._samples[s] += n * self.batch_size_fn(batch)
            if self.length_fn is not None:
                self._lengths[s] += n * self.length_fn(batch)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, *args)
        if 0 < trainer.max_steps <= trainer.global_step and not compat.mid_accumulation(trainer) \
                and not trainer._logger_connector.should_update_logs:  # the run's last step, off the logging
            # interval: its rates, summary.json's tokens_per_sec, were in no metrics.csv row (found by review)
            self._log_window(trainer, RunningStage.TRAINING, "train")

    def _log_window(self, trainer, stage: RunningStage, prefix: str) -> None:
        """Log the stage's window now, under `prefix`/ (Lightning's _compute logs only at a logging step, named by the
        stage); fewer batches than a window log the counts alone, or nothing."""
        t = compat.stage_throughputs(self)[stage]
        with contextlib.suppress(Exception):
            trainer._logger_connector.log_metrics({f"{prefix}{t.separator}{k}": v for k, v in t.compute().items()})

    # The training clock stops at the last training batch before a validation and starts again at the next training
    # batch: Lightning's monitor moved it on by the validation alone, so the checkpoint written after it (the
    # ModelCheckpoint's hook runs last) counted as training time (found by review: 300 tokens/s logged where the
    # progress line, which excludes it, read 1.0K, with a 1 s save)
    @rank_zero_only
    def on_validation_start(self, trainer, *args) -> None:
        live, n = compat.stage_throughputs(self), sum(trainer.num_val_batches or [0])
        if not trainer.sanity_checking and RunningStage.VALIDATING in live and math.isfinite(n) and n >= 2 \
                and n < self.kwargs.get("window_size", 100):  # a window of this validation's batches at most: one
            # of the training steps' micro-batches never filled with data.val_batches=10 (under gradient
            # accumulation, or log_every_n_steps > 11), and no val/device/* rate was logged (found by review)
            live[RunningStage.VALIDATING] = BoundedThroughput(available_flops=self.available_flops,
                                                               world_size=trainer.world_size,
                                                               **{**self.kwargs, "window_size": int(n)})
        super().on_validation_start(trainer, *args)
        s = RunningStage.TRAINING
        if not trainer.sanity_checking and s in self._t0s:
            times = getattr(compat.stage_throughputs(self).get(s), "_time", None)  # each batch's end, from t0
            self._paused_from = self._t0s[s] + times[-1] if times else time.perf_counter()

    @rank_zero_only
    def on_train_batch_start(self, trainer, *args) -> None:
        paused, self._paused_from = self._paused_from, None
        if paused is not None:
            self._t0s[RunningStage.TRAINING] += time.perf_counter() - paused
        super().on_train_batch_start(trainer, *args)

    # validation throughput is logged once per validation, at its end (each logging-interval batch logged a row at
    # the same step, the first without rates)
    @rank_zero_only
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, *args, **kwargs) -> None:
        if trainer.sanity_checking:
            return
        self._update(trainer, pl_module, batch, trainer._evaluation_loop.batch_progress.total.ready)

    @rank_zero_only
    def on_validation_end(self, trainer, *args) -> None:
        if not trainer.sanity_checking and RunningStage.VALIDATING in self._t0s:
            # under val/ with val/loss (Lightning names the stage validate/: a filter on val/* missed them)
            self._log_window(trainer, RunningStage.VALIDATING, "val")
        s = RunningStage.TRAINING
        t0 = self._t0s.get(s)
        super().on_validation_end(trainer, *args)
        if t0 is not None and self._paused_from is not None:  # moved on at the next batch instead
            self._t0s[s] = t0


def throughput_summary(monitor: ThroughputMonitor) -> dict:
    """The last training window: tokens/s, FLOP/s and MFU (rank 0's device), and the peak MFU is relative to;
    with several processes also `tokens_per_sec_all_devices`, the job's;
    and `tokens_per_sec_mean`, every training token of the job (all processes) over the whole training time
    (validation excluded, as Lightning's monitor times it), which one slow or fast window does not move.

    MFU is None (with `mfu_note`) when it cannot be trusted: no peak known, or above 100%."""
    m = compat.throughput_metrics(monitor, RunningStage.TRAINING)
    peak = getattr(monitor, "available_flops", None)
    out = {"tokens_per_sec": m.get("device/items_per_sec"), "flops_per_sec": m.get("device/flops_per_sec"),
           "mfu": m.get("device/mfu"), "peak_flops_per_sec": peak}
    if m.get("lengths") and m.get("time"):
        out["tokens_per_sec_mean"] = m["lengths"] / m["time"]
    world = getattr(compat.stage_throughputs(monitor).get(RunningStage.TRAINING), "world_size", 1)
    if world > 1 and m.get("items_per_sec"):  # the job's: rank 0's device times the processes (Lightning's own)
        out["devices"], out["tokens_per_sec_all_devices"] = world, m["items_per_sec"]
    flops = out["flops_per_sec"]
    if not (peak and math.isfinite(peak)) and out["tokens_per_sec"]:
        out["mfu"] = None
        out["mfu_note"] = ("no MFU: no datasheet peak is known for this device at this precision "
                           "(momattn.hardware.GPU_BF16_PEAK holds bf16/fp16 peaks)")
    elif peak and flops is not None and flops > peak:
        out["mfu"] = None
        out["mfu_note"] = (f"measured {flops / 1e9:.1f} GFLOP/s exceeds the assumed peak of {peak / 1e9:.1f} "
                           "GFLOP/s: the peak is wrong, so no MFU is reported")
    elif out["mfu"] is not None and not math.isfinite(out["mfu"]):
        out["mfu"] = None
    return out
