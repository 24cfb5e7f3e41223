"""Loggers: W&B offline by default (no account, key or network needed), online on request with a local fallback."""

from __future__ import annotations

import csv
import inspect
import io
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only

from momattn import lightning_compat as compat
from momattn.errors import first_line
from momattn.io import atomic_write_text
from momattn.quoting import shell_quote
from momattn.schema import instantiate, locate
from momattn.wandb_runs import import_wandb, require_api_key, wandb_mode, wandb_offline


def _without_anonymous(logger: WandbLogger) -> WandbLogger:
    compat.drop_wandb_anonymous(logger)
    return logger


def _namespaced(metrics: Mapping[str, float]) -> dict[str, float]:
    """The metrics less Lightning's `epoch` (always 0: a run is one epoch), the one name without a namespace."""
    return {k: v for k, v in metrics.items() if k != "epoch"}


class _StepWandbLogger(WandbLogger):
    """Lightning's WandbLogger with W&B's own step (_step) set to the trainer's global step, online and offline.
    An offline run cannot resume its W&B run (W&B resumes online only), so a resumed run's second segment restarted
    _step at 0 and its rows repeated the first segment's steps (W&B's default x-axis, history API and sync key on
    _step); online, each logging call was a _step of its own (2-4 partial rows per global step, and a resume after
    a kill logged its repeated steps past the old end, where W&B keeps them). Rows at one global step merge into
    one. Lightning's `epoch` (always 0: a run is one epoch) is left out, the one key without a namespace."""

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not (metrics := _namespaced(metrics)):
            return None
        if step is None:
            return super().log_metrics(metrics, step)
        prefix = f"{self._prefix}{self.LOGGER_JOIN_CHAR}" if self._prefix else ""
        self.experiment.log({**{prefix + k: v for k, v in metrics.items()}, "trainer/global_step": step},
                            step=int(step))


# WANDB_MODE as the job found it: the fallback below sets it offline, and Lightning's offline logger to dryrun, for
# the rest of the process; a sweep's later jobs stayed offline, told that the environment had asked so (review)
_MODE_BEFORE: dict[str, str | None] = {}


def wandb_logger(save_dir: str, project: str = "momattn", offline: bool = True, name: str | None = None,
                 group: str | None = None, tags: list[str] | None = None, id: str | None = None,
                 init_timeout: float = 30.0, **kwargs) -> WandbLogger:
    """A WandbLogger writing under `save_dir`/wandb. Offline unless offline=false or WANDB_MODE=online.

    Online mode is started eagerly: if W&B cannot be reached (no network, no API key, server down), training
    goes on with an offline run in the same folder and a message says how to sync it later."""
    wandb = import_wandb()

    _MODE_BEFORE.setdefault("WANDB_MODE", os.environ.get("WANDB_MODE"))  # finish() puts it back for the next job
    offline = wandb_offline(offline) is not False  # (WANDB_MODE=disabled is make_loggers' to skip)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if wandb.run is not None:  # a run an earlier job of this process left open (it failed before training):
        wandb.finish(exit_code=1)  # never log this job into it
    common = dict(save_dir=save_dir, project=project, name=name, group=group, tags=list(tags or []), id=id,
                  resume="allow" if id else None, **kwargs)
    if offline:
        return _without_anonymous(_StepWandbLogger(offline=True, **common))
    require_api_key()
    try:
        logger = _without_anonymous(_StepWandbLogger(offline=False, settings=wandb.Settings(init_timeout=init_timeout),
                                                     **common))
        logger.experiment  # noqa: B018 - starts the run now, so that a failure is caught here
        return logger
    except Exception as e:  # wandb raises CommError, UsageError (no key), TimeoutError, ...
        first = first_line(e)
        if wandb.run is not None:
            wandb.finish(exit_code=1)
        wandb.teardown()  # the W&B service process keeps the online settings; start a fresh one
        os.environ["WANDB_MODE"] = "offline"  # the environment would otherwise override offline=True
        _MODE_BEFORE["fell_back"] = "1"  # finish() starts W&B afresh: its settings now hold offline too
        fallback = _without_anonymous(_StepWandbLogger(offline=True, settings=wandb.Settings(mode="offline"), **common))
        run_dir = Path(fallback.experiment.dir).parent
        print(f"[momattn] W&B is unreachable ({type(e).__name__}: {first}); logging offline to {run_dir}. "
              f"Sync it when online with: wandb sync {shell_quote(str(run_dir))}", file=sys.stderr, flush=True)
        return fallback


class _AtomicWriter(ExperimentWriter):
    """Lightning's CSV writer, except that metrics.csv, rewritten whole when a new column appears (the first
    throughput window, the first validation, the end-of-run evaluation), is replaced atomically: rewritten in place,
    a full disk or a kill at that moment left a header and no rows (found by review). A fresh run's writer also
    replaces an earlier attempt's file with a line of its own (Lightning's warning said "will be deleted")."""

    def save(self) -> None:
        keys = list(self.metrics_keys)
        try:
            super().save()
        except BaseException:  # the file keeps its header: the next save adds the new columns again (it appended
            self.metrics_keys = keys  # rows wider than the header), with the rows kept to log (Lightning's own)
            raise

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        if "file" not in _protocols(self._fs):  # a remote filesystem (s3://...): Lightning's own
            return super()._rewrite_with_new_header(fieldnames)
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))
        buf = io.StringIO(newline="")
        writer = csv.DictWriter(buf, fieldnames=fieldnames)  # Lightning's dialect: the rows it appends match
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(Path(self.metrics_file_path), buf.getvalue())

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):  # an attempt that saved no checkpoint, run again from step 0
            self._fs.rm_file(self.metrics_file_path)
            (Path(self.log_dir) / REPLACED).unlink(missing_ok=True)  # (a local file, as metrics.csv is here)
            print(f"[momattn] {self.metrics_file_path}: the rows of an earlier attempt without a checkpoint are "
                  "replaced by this run's", file=sys.stderr, flush=True)


def _protocols(fs) -> tuple[str, ...]:
    p = getattr(fs, "protocol", ())
    return (p,) if isinstance(p, str) else tuple(p)


REPLACED = "metrics.replaced.json"  # beside metrics.csv: the rows a resume from an earlier checkpoint dropped


def checkpoints_stamp(folder: Path | None) -> list:
    """What identifies the checkpoint a resume from `last` continues, as it is now (name, inode, size, mtime):
    last.ckpt, or every *.ckpt where the run keeps none (save_last=false). A save of it changes the stamp; a step
    file another callback saves does not (it counted as one, and the rows last.ckpt still needed were dropped:
    second diff review)."""
    if folder is None or not folder.is_dir():
        return []
    stamp = []
    last = folder / "last.ckpt"
    for p in [last] if os.path.lexists(last) else sorted(folder.glob("*.ckpt")):
        try:
            st = p.stat()
        except OSError:
            continue
        stamp.append([p.name, st.st_ino, st.st_size, st.st_mtime_ns])
    return stamp


def replaced_rows(side: Path, stamp: list) -> dict | None:
    """metrics.replaced.json's contents where its stamp is `stamp` (last.ckpt unchanged since it was written); else
    None, and the file, stale (a checkpoint saved since: last.ckpt is the resumed run's now) or damaged, removed."""
    try:
        kept = json.loads(side.read_text())
        if kept["stamp"] == stamp and isinstance(kept["rows"], list) and isinstance(kept["header"], list):
            return kept
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        pass
    side.unlink(missing_ok=True)
    return None


class _ContinuingWriter(_AtomicWriter):
    """Lightning's CSV writer, except that an existing metrics.csv is continued (a resume) instead of deleted: its
    rows from the resumed step on are dropped (a run killed after its checkpoint had logged them; the resume logs
    them again) when the resumed run writes its first rows.

    A resume from an earlier checkpoint than last.ckpt drops the rows of the later steps, which last.ckpt still
    continues until the resumed run saves a checkpoint of its own. Stopped before that, a resume from last.ckpt
    found them gone, a gap for good (found by review). So the dropped rows are kept in metrics.replaced.json with
    a stamp of the checkpoints: while no checkpoint has been saved since, a later resume puts them back."""

    def __init__(self, log_dir: str, start_step: int = 0, checkpoints: str | None = None):
        self.start_step = start_step  # before Lightning's __init__, which reads the existing file
        self.checkpoints = Path(checkpoints) if checkpoints else None
        self._cut: str | None = None  # the file without the rows from start_step on, written at the first save
        self._replaced: str | None = None  # metrics.replaced.json's new text ("" removes it), with the cut
        self._whole: str | None = None  # the file with rows put back or cut short rows left out, nothing cut
        super().__init__(log_dir=log_dir)

    def repair(self) -> None:
        """For a resume that logs nothing: rows put back from metrics.replaced.json (then removed) and rows cut short
        left out, written now; nothing is cut (the rows from the resumed step on are not logged again)."""
        if self._whole is not None:
            atomic_write_text(Path(self.metrics_file_path), self._whole)
            (Path(self.log_dir) / REPLACED).unlink(missing_ok=True)
            self._whole = self._cut = None

    def save(self) -> None:
        if self._cut is not None and self.metrics:
            side = Path(self.log_dir) / REPLACED
            if self._replaced:  # before the rows leave metrics.csv
                atomic_write_text(side, self._replaced)
            atomic_write_text(Path(self.metrics_file_path), self._cut)
            if not self._replaced:
                side.unlink(missing_ok=True)
            self._cut = None
        super().save()

    def _earlier_rows(self, stamp: list) -> dict | None:
        """metrics.replaced.json's rows where no checkpoint was saved since it was written; a stale one removed."""
        return replaced_rows(Path(self.log_dir) / REPLACED, stamp)

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            text = f.read()
        header, *rows = list(csv.reader(io.StringIO(text, newline=""))) or [[]]
        self.metrics_keys = sorted(header)
        if "step" not in header:
            return
        # a row cut short (a kill or a full disk while Lightning appended it): the resumed run's first row was glued
        # onto it, a row of garbage values, or one pandas cannot read (found by review)
        torn = [i for i, r in enumerate(rows) if len(r) != len(header)]
        if rows and not text.endswith("\n") and len(rows) - 1 not in torn:
            torn.append(len(rows) - 1)
        if torn:
            print(f"[momattn] {self.metrics_file_path}: {len(torn)} row{'s' if len(torn) > 1 else ''} cut short (a "
                  "kill or a full disk while it was written) left out", file=sys.stderr, flush=True)
            rows = [r for i, r in enumerate(rows) if i not in set(torn)]
        stamp = checkpoints_stamp(self.checkpoints)
        earlier = self._earlier_rows(stamp)
        records = [dict(zip(header, r)) for r in rows]

        def step(row: dict) -> float | None:
            try:
                return float(row.get("step"))
            except (TypeError, ValueError):
                return None  # a row without a step: kept

        if earlier is not None:  # the rows from its step on are the ones last.ckpt continues
            header = sorted({*header, *earlier["header"]})  # (sorted, as Lightning writes its header)
            records = [r for r in records if (s := step(r)) is None or s < earlier["from_step"]] + \
                      [dict(zip(earlier["header"], r)) for r in earlier["rows"]]
            self.metrics_keys = sorted(header)
        before = [(s := step(r)) is None or s < self.start_step for r in records]
        kept = [r for r, b in zip(records, before) if b]
        dropped = [r for r, b in zip(records, before) if not b]
        if dropped or earlier is not None or torn:
            def text(rows: list[dict]) -> str:
                buf = io.StringIO()
                writer = csv.DictWriter(buf, fieldnames=header, restval="")  # Lightning's dialect (\r\n), as the
                writer.writeheader()  # rows it appends (review)
                writer.writerows(rows)
                return buf.getvalue()

            self._cut = text(kept)
            # a resume that logs nothing (a finished run, reported and evaluated) repairs the file without the cut
            # (its rows from start_step on are not logged again): diff review
            self._whole = text(records) if earlier is not None or torn else None
            self._replaced = json.dumps({"from_step": self.start_step, "stamp": stamp, "header": header, "rows": [
                [r.get(k, "") for k in header] for r in dropped]}) if dropped else ""


class CSVLogger(_LightningCSVLogger):
    """metrics.csv in the run folder; a resumed run appends to the rows of the run it continues (Lightning's
    own CSVLogger deletes them), a fresh one starts it anew."""

    def __init__(self, *args, resumed: bool = False, start_step: int = 0, checkpoints: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.resumed, self.start_step, self.checkpoints = resumed, start_step, checkpoints
        if resumed and self._version is None and self._get_next_version() > 0:  # version=null: Lightning numbers a
            self._version = self._get_next_version() - 1  # new version_N; a resume continues the newest one

    _lightning = inspect.signature(_LightningCSVLogger.__init__)  # its keys and types, for the config check
    __init__.__signature__ = _lightning.replace(parameters=[
        *_lightning.parameters.values(),
        *(inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=t)
          for n, d, t in (("resumed", False, bool), ("start_step", 0, int), ("checkpoints", None, str | None)))])
    del _lightning

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if metrics := _namespaced(metrics):
            super().log_metrics(metrics, step)

    @rank_zero_only
    def repair(self) -> None:
        """A resume that will log nothing: metrics.csv's repairs (rows put back, rows cut short) written now."""
        if self.resumed and isinstance(writer := self.experiment, _ContinuingWriter):
            writer.repair()

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback) -> None:
        """A checkpoint of this run that replaced last.ckpt: it continues this run now, so the rows an earlier
        resume dropped (metrics.replaced.json) are no one's to put back (the file outlived the run: diff review).
        Kept where the save left last.ckpt as it was (another callback's step file: second diff review)."""
        super().after_save_checkpoint(checkpoint_callback)
        if self.resumed:
            replaced_rows(Path(self.log_dir) / REPLACED, checkpoints_stamp(
                Path(self.checkpoints) if self.checkpoints else None))

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = (_ContinuingWriter(self.log_dir, self.start_step, self.checkpoints) if self.resumed
                                else _AtomicWriter(log_dir=self.log_dir))
        return self._experiment


def make_loggers(section: Mapping | None, run_id: str | None = None, group: str | None = None,
                 name: str | None = None, resumed: bool = False, start_step: int = 0,
                 idle: bool = False, checkpoints: str | None = None) -> list[Logger]:
    """The loggers of the `logger` config group. A W&B logger continues run `run_id` (a resume) and takes
    `group` and `name` (a sweep's) unless its config sets them; momattn's CSVLogger continues its metrics.csv
    only when the run resumed. idle: the run will log nothing (a finished, reported and evaluated run resumed):
    no W&B run is resumed, which only added an empty segment (offline: a folder for `wandb sync`) per resume."""
    loggers = []
    for key, conf in (section or {}).items():
        if conf is None:
            continue
        extra = {}
        target = locate(conf.get("_target_", ""), f"logger.{key}._target_")
        if target in (wandb_logger, WandbLogger) and wandb_mode() == "disabled":
            print("[momattn] WANDB_MODE=disabled: no W&B run (unset it, or logger=csv, to keep the metrics)",
                  file=sys.stderr)
            continue
        if target in (wandb_logger, WandbLogger) and idle:
            print("[momattn] the run is finished and reported (and evaluated, where it evaluates): its W&B run is not resumed (nothing to log)",
                  file=sys.stderr)
            continue
        if target in (wandb_logger, WandbLogger):
            extra = {"id": conf.get("id") or run_id, "group": conf.get("group") or group,
                     "name": conf.get("name") or name}
        elif target is CSVLogger:
            extra = {"resumed": resumed, "start_step": start_step, "checkpoints": checkpoints}
        loggers.append(instantiate(conf, f"logger.{key}", **extra))
    return loggers


def describe(logger: Logger) -> str:
    """Where a logger wrote, for the end-of-run summary."""
    if isinstance(logger, WandbLogger):
        run_dir = Path(logger.experiment.dir).parent
        if "offline-run" not in run_dir.name:
            return f"W&B run: {run_dir}"
        return f"W&B run: {run_dir}  (offline; upload with: {offline_sync_command(run_dir)})"
    return f"{type(logger).__name__}: {getattr(logger, 'log_dir', None) or logger.save_dir or ''}"


def offline_runs(loggers: list[Logger]) -> list[str]:
    """describe() of each W&B logger whose run has started and is offline: what a stop names for `wandb sync` (the
    next segment's end lists them all, but a run never resumed was never told)."""
    said = [describe(lg) for lg in loggers if isinstance(lg, WandbLogger) and getattr(lg, "_experiment", None)]
    return [line for line in said if "(offline;" in line]


def offline_sync_command(run_dir: Path) -> str:
    """`wandb sync` for an offline run: a resumed run wrote each segment to a folder of its own
    (offline-run-<time>-<id>), so the command names every segment of that id, oldest first."""
    run_id = run_dir.name.rsplit("-", 1)[-1]
    parts = sorted(run_dir.parent.glob(f"offline-run-*-{run_id}"))
    if len(parts) <= 1:
        return f"wandb sync {shell_quote(str(run_dir))}"  # (a folder with a space: two arguments, unquoted)
    return f"wandb sync {' '.join(shell_quote(str(p)) for p in parts)}  ({len(parts)} segments: the run was resumed)"


def finish(loggers: list[Logger], failed: bool = False) -> None:
    """Close the W&B run (marked failed, exit code 1, when the job raised): one job's crash must not break the
    next job of a multirun."""
    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=1 if failed else 0)
    if _MODE_BEFORE.pop("fell_back", None):
        import wandb

        wandb.teardown()
    if "WANDB_MODE" in _MODE_BEFORE:
        if (mode := _MODE_BEFORE.pop("WANDB_MODE")) is None:
            os.environ.pop("WANDB_MODE", None)
        else:
            os.environ["WANDB_MODE"] = mode
