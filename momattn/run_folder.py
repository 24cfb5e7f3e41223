"""A Hydra callback that claims train.py's run folder before Hydra writes into it (conf/train.yaml, hydra.callbacks).

Hydra names a run's folder by the second it starts (outputs/<date>/<time>), so two runs started in the same second
(a shell loop that backgrounds them) got one folder: the second rewrote the first's saved config (.hydra/) and
log before its lock refused it. Claimed here, at Hydra's run start, the second run finds the folder held and moves
to <time>_2 (then _3, ...), saying so; a folder fixed in a config file and held by another run is refused before
anything is written. A folder given on the command line (hydra.run.dir=..., a resume's) is claimed before Hydra
starts (momattn.cli); a multirun's job folders are numbered by its sweep and not claimed here.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf, open_dict, read_write

from momattn.cli import claim_run_folder, in_use, report


def _given(config) -> bool:
    """Whether hydra.run.dir came from the command line."""
    return any(str(o).startswith("hydra.run.dir=") for o in config.hydra.overrides.hydra)


class ClaimRunFolder(Callback):
    def on_run_start(self, config, **kwargs) -> None:
        if _given(config):
            return
        timed = "${" in str(OmegaConf.to_container(config.hydra.run, resolve=False).get("dir", ""))
        name = str(OmegaConf.select(config, "hydra.run.dir"))  # Hydra's `now` is cached: run_job reads the same
        holder = claim_run_folder(Path(name))
        if holder is None:
            return
        if not timed:  # a folder a config file fixes: as one given on the command line
            report(in_use(Path(name).resolve(), holder))
            sys.exit(2)
        n = 2
        while Path(f"{name}_{n}").exists() or claim_run_folder(Path(f"{name}_{n}")) is not None:
            n += 1  # a run of that second holds it, or held it: the next one
        with read_write(config.hydra.run), open_dict(config.hydra.run):
            config.hydra.run.dir = f"{name}_{n}"
        print(f"[momattn] {name} is in use by a run started in the same second ({holder}); this run writes to "
              f"{name}_{n}", file=sys.stderr, flush=True)
