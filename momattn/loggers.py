"""Loggers: W&B offline by default (no account, key or network needed), online on request with a local fallback."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger


def wandb_logger(save_dir: str, project: str = "momattn", offline: bool = True, name: str | None = None,
                 group: str | None = None, tags: list[str] | None = None, id: str | None = None,
                 init_timeout: float = 30.0, **kwargs) -> WandbLogger:
    """A WandbLogger writing under `save_dir`/wandb. Offline unless offline=false or WANDB_MODE=online.

    Online mode is started eagerly: if W&B cannot be reached (no network, no API key, server down), training
    goes on with an offline run in the same folder and a message says how to sync it later."""
    import wandb

    mode = os.environ.get("WANDB_MODE")
    if mode in ("online", "run"):
        offline = False
    elif mode in ("offline", "dryrun", "disabled"):
        offline = True
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    common = dict(save_dir=save_dir, project=project, name=name, group=group, tags=list(tags or []), id=id,
                  resume="allow" if id else None, **kwargs)
    if offline:
        return WandbLogger(offline=True, **common)
    try:
        logger = WandbLogger(offline=False, settings=wandb.Settings(init_timeout=init_timeout), **common)
        logger.experiment  # noqa: B018 - starts the run now, so that a failure is caught here
        return logger
    except Exception as e:  # wandb raises CommError, UsageError (no key), TimeoutError, ...
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if wandb.run is not None:
            wandb.finish(exit_code=1)
        wandb.teardown()  # the W&B service process keeps the online settings; start a fresh one
        os.environ["WANDB_MODE"] = "offline"  # the environment would otherwise override offline=True
        fallback = WandbLogger(offline=True, settings=wandb.Settings(mode="offline"), **common)
        run_dir = Path(fallback.experiment.dir).parent
        print(f"[momattn] W&B is unreachable ({type(e).__name__}: {first}); logging offline to {run_dir}. "
              f"Sync it when online with: wandb sync {run_dir}", file=sys.stderr, flush=True)
        return fallback
