"""W&B runs outside Lightning (evaluate.py's and analyze.py's), with train.py's rules: offline by default,
WANDB_MODE wins over the config (disabled: no run), and online falls back to offline when W&B cannot be reached.
Imports neither Lightning nor wandb until a run starts (or its names are checked, at start-up)."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from momattn.errors import ConfigError, did_you_mean, first_line
from momattn.quoting import shell_quote

# W&B's own checks of a run's names (wandb.Settings), by the logger key that sets each
_WANDB_SETTINGS = {"project": "project", "entity": "entity", "name": "run_name", "group": "run_group",
                   "tags": "run_tags", "id": "run_id"}


def import_wandb():
    """wandb, or a one-line ConfigError where it is not installed (a ModuleNotFoundError traceback, before any
    work, with an empty train.log: found by review)."""
    try:
        import wandb
    except ImportError as e:
        raise ConfigError(f"logger=wandb needs the wandb package, which cannot be imported ({first_line(e)}): "
                          "pip install wandb (momattn's own dependency: install momattn again), or log with "
                          "logger=csv or logger=none") from None
    return wandb


def check_wandb_names(cfg: Mapping, where: str = "logger.wandb", tags: Any = None) -> None:
    """A W&B project, name, group, tags or run id that W&B would refuse (project=a/b, a tag over 64 characters,
    tags=5), refused now with the key: W&B raised it from deep inside its settings when the run started, after the
    work. tags: the entry point's top-level tags, where they are passed apart from `cfg`."""
    if wandb_mode() == "disabled":  # no run starts: nothing W&B would read
        return
    values = {k: cfg.get(k) for k in _WANDB_SETTINGS} | ({"tags": tags} if tags is not None else {})
    key_of = {k: f"{where}.{k}" for k in _WANDB_SETTINGS} | ({"tags": "tags"} if tags is not None else {})
    t = values["tags"]
    if t is not None and (isinstance(t, str) or not isinstance(t, list | tuple)
                          or not all(isinstance(x, str) for x in t)):  # tags=abc became the tags a, b, c
        raise ConfigError(f"{key_of['tags']}={t!r} must be a list of texts, e.g. tags=[baseline,eta0.9]")
    wandb = import_wandb()

    for key, setting in _WANDB_SETTINGS.items():
        value = values[key]
        if value is None:
            continue
        try:
            wandb.Settings(**{setting: tuple(value) if key == "tags" else value})
        except Exception as e:  # wandb's UsageError, or pydantic's ValidationError (its message's last line)
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            why = next((ln for ln in lines if ln.startswith("Value error, ")), lines[0] if lines else type(e).__name__)
            try:  # pydantic's own reason ("Input should be a valid string"), not its header line
                why = e.errors()[0]["msg"]
            except Exception:
                pass
            why = re.sub(r"^Value error, | \[type=.*$", "", why)
            hint = " (by default the run's top-level tags=)" if key_of[key] != "tags" and key == "tags" else ""
            raise ConfigError(f"{key_of[key]}={value!r}{hint}: W&B refuses it: {why}") from None


# momattn.loggers.wandb_logger's own arguments, conf/logger/wandb.yaml's keys (that module imports Lightning: read
# here without it; tests/test_console.py checks the two agree)
LOGGER_ARGS = ("_target_", "save_dir", "project", "offline", "name", "group", "tags", "id", "init_timeout")


def check_init_timeout(cfg: Mapping, where: str) -> None:
    """init_timeout: seconds to wait for W&B online, a number > 0 (-5 was accepted)."""
    t = cfg.get("init_timeout")
    if t is not None and (isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t < float("inf")):
        raise ConfigError(f"{where}.init_timeout={t!r} must be a number of seconds > 0")


def check_wandb_keys(cfg: Mapping, where: str) -> None:
    """Every key of a wandb_logger entry is an argument of it, of Lightning's WandbLogger or of wandb.init (they take
    **kwargs, so +logger.wandb.foo=1 was a TypeError traceback from wandb.init once the data was built)."""
    import inspect

    check_init_timeout(cfg, where)
    own = [k for k in ("resume", "settings", "mode", "dir") if k in cfg]  # wandb_logger passes these itself
    if own:
        raise ConfigError(f"{where}.{own[0]} is set by momattn.loggers.wandb_logger itself (a resume continues its run; "
                          "offline: true/false and save_dir choose the mode and the folder); drop it")
    if wandb_mode() == "disabled":  # no run starts (a missing wandb package is no error then)
        return
    wandb = import_wandb()
    known = {*LOGGER_ARGS, *inspect.signature(wandb.init).parameters}
    unknown = [k for k in cfg if k not in known]
    if unknown:  # Lightning's own keys (log_model, prefix, ...): its import is slow, so only now
        from lightning.pytorch.loggers import WandbLogger

        known |= set(inspect.signature(WandbLogger.__init__).parameters) - {"self", "kwargs"}
        if unknown := [k for k in unknown if k not in known]:
            raise ConfigError(f"{where}.{unknown[0]} is not an argument of momattn.loggers.wandb_logger, Lightning's "
                              f"WandbLogger or wandb.init.{did_you_mean(str(unknown[0]), sorted(known))}")


def wandb_api_key_found() -> bool:
    """An API key for W&B online: WANDB_API_KEY, an identity-token file, or a netrc entry for the W&B host (what
    `wandb login` writes). Read locally; nothing is sent."""
    import netrc
    from urllib.parse import urlparse

    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        auth = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def require_api_key() -> None:
    """W&B online needs an API key: without one, a ConfigError that says how to get one or log offline."""
    if not wandb_api_key_found():
        raise ConfigError("W&B online was asked for (logger.wandb.offline=false or WANDB_MODE=online) but no W&B API "
                          "key was found: run `wandb login` or set WANDB_API_KEY, or log offline (the default) and "
                          "upload later with `wandb sync`")


def wandb_mode() -> str | None:
    """WANDB_MODE, in lower case (W&B reads it so; WANDB_MODE=Disabled still started a run here), or None."""
    mode = os.environ.get("WANDB_MODE")
    if mode is None:
        return None
    if (lower := mode.strip().lower()) not in WANDB_MODES:  # W&B refused it when the run started, after the data and
        # model were built; online, it read as "W&B is unreachable (ValidationError ...)" (found by review)
        raise ConfigError(f"WANDB_MODE={mode!r} (in the environment) is not a W&B mode: {', '.join(WANDB_MODES)}; "
                          "set one of them, or unset it (logger.wandb.offline then chooses)")
    if mode != lower:
        os.environ["WANDB_MODE"] = lower  # what W&B itself then reads
    return lower


WANDB_MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")  # wandb.Settings' mode


def check_train_wandb(cfg: Mapping, where: str) -> None:
    """train.py's W&B logger settings that failed only once the data and model were built (offline=no, online
    without an API key, log_model offline), or went wrong without a word (an empty project: Lightning's
    'lightning_logs'). One run id for every job of a sweep: momattn.sweep_jobs.check_jobs."""
    own = str(cfg.get("_target_", "")).endswith("loggers.wandb_logger")  # offline by default; Lightning's: online
    offline = wandb_offline(cfg.get("offline", own), f"{where}.offline")
    if offline is None:  # WANDB_MODE=disabled: no run
        return
    if offline is False:
        require_api_key()
    if offline and cfg.get("log_model"):
        raise ConfigError(f"{where}.log_model={cfg['log_model']!r} uploads checkpoints, which an offline run cannot "
                          f"do; drop it, or log online ({where}.offline=false)")
    project = cfg.get("project")
    if isinstance(project, str) and not project.strip():
        raise ConfigError(f"{where}.project is empty: W&B would log into Lightning's 'lightning_logs' (evaluate.py "
                          f"and analyze.py into 'momattn'); name a project, or leave the default, momattn")
    if "project" in cfg and project is None and not os.environ.get("WANDB_PROJECT"):  # project=null given: Lightning's
        # fallback, lightning_logs, unless WANDB_PROJECT names one
        raise ConfigError(f"{where}.project=null: W&B would log into Lightning's 'lightning_logs'; name a project "
                          "(or set WANDB_PROJECT), or leave the default, momattn")


_NOTED: set[str] = set()


def note_once(line: str) -> None:
    """A note said once per process (the W&B settings are read at start-up, by the logger, by every sweep job)."""
    if line not in _NOTED:
        _NOTED.add(line)
        print(line, file=sys.stderr)


def wandb_offline(offline: Any, key: str = "logger.wandb.offline") -> bool | None:
    """Whether a W&B run logs offline: the config's `offline` (a bool), unless WANDB_MODE says otherwise; None when
    WANDB_MODE=disabled (no run at all)."""
    if not isinstance(offline, bool):  # `off` / `no` on the command line stay text, which is truthy
        raise ConfigError(f"{key}={offline!r} must be true or false")
    mode = wandb_mode()
    if mode == "disabled":
        return None
    if mode in ("online", "run", "shared"):
        return False
    if mode in ("offline", "dryrun"):
        if offline is False:  # asked for online in so many words: the environment's offline would pass unsaid
            note_once(f"[momattn] note: WANDB_MODE={mode} in the environment wins over {key}=false: W&B logs "
                      "offline (unset WANDB_MODE, or set it to online, to log online)")
        return True
    return offline


def start_run(out_dir: Path, wandb_cfg: Mapping, who: str, **init: Any):
    """wandb.init in out_dir under train.py's rules; None (said on stderr) when WANDB_MODE=disabled. An online run
    that cannot start (no key, no network) logs offline instead, and says how to sync it."""
    offline = wandb_offline(wandb_cfg.get("offline", True))
    if offline is None:
        print(f"[momattn] WANDB_MODE=disabled: no W&B run for {who}", file=sys.stderr)
        return None
    wandb = import_wandb()

    if wandb.run is not None:  # one an earlier call left open: never log into it
        wandb.finish(exit_code=1)
    init = dict(dir=str(out_dir), project=wandb_cfg.get("project") or "momattn", **init)
    if wandb_cfg.get("entity"):
        init["entity"] = wandb_cfg["entity"]
    if not offline:
        require_api_key()
        try:
            timeout = float(wandb_cfg.get("init_timeout") or 30.0)
            return wandb.init(mode="online", settings=wandb.Settings(init_timeout=timeout), **init)
        except Exception as e:  # CommError, UsageError, TimeoutError, ...
            if wandb.run is not None:
                wandb.finish(exit_code=1)
            wandb.teardown()  # the W&B service keeps the online settings; start a fresh one
            print(f"[momattn] W&B is unreachable ({type(e).__name__}: {first_line(e)}); logging {who} offline",
                  file=sys.stderr, flush=True)
    return wandb.init(mode="offline", **init)


def where(run) -> tuple[Path, bool]:
    """(the run's folder, whether it is an offline run to sync later)."""
    run_dir = Path(run.dir).parent
    return run_dir, "offline-run" in run_dir.name


def _cell(v: Any):
    """A wandb.Table cell: numbers, text and None as they are; lists and mappings as JSON text."""
    import json

    return v if v is None or isinstance(v, bool | int | float | str) else json.dumps(v, default=str)


def folder_group(folder: Path) -> str:
    """A W&B group named by a run folder and the folder it is in: its date where Hydra's default <date>/<time> names
    it by the time alone (train.py's sweeps, evaluate.py's and analyze.py's outputs/<entry>/<date>/<time>), and the
    study's name where a layout names the arm (sweeps/text_eta/vanilla and sweeps/ginc_eta/vanilla were one group,
    their runs' names alike; found by review)."""
    folder = Path(folder)
    return "/".join(p for p in (folder.parent.name, folder.name) if p)[-128:]


def log_verdict(out_dir: Path, wandb_cfg: Mapping, who: str, tables: Mapping[str, Sequence[Mapping]],
                images: Sequence[Path] = (), **init: Any) -> bool:
    """One W&B run holding a sweep's verdict, under train.py's rules (start_run): each table, a list of flat rows,
    as a wandb.Table under verdict/<name>, and each image under plots/<name>; False when no run starts."""
    run = start_run(out_dir, wandb_cfg, who, group=wandb_cfg.get("group") or folder_group(out_dir),
                    tags=list(wandb_cfg.get("tags") or []), **init)
    if run is None:
        return False
    import wandb

    try:
        for key, rows in tables.items():
            if rows:
                columns = list(dict.fromkeys(c for r in rows for c in r))  # every row's keys, first seen first
                run.log({f"verdict/{key}": wandb.Table(columns=columns, data=[[_cell(r.get(c)) for c in columns] for r in rows])})
        for path in images:
            run.log({f"plots/{path.stem}": wandb.Image(str(path))})
        run_dir, offline = where(run)
    finally:
        run.finish()
    print(f"[momattn] W&B run of {who}: {run_dir}" + (f" (offline; upload with: wandb sync {shell_quote(str(run_dir))})" if offline
                                                      else ""), file=sys.stderr)
    return True
