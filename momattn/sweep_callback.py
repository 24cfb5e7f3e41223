"""A Hydra callback that ends every train.py multirun with the command that compares its jobs, or runs it.

    hydra.callbacks.compare.run=false   print `python evaluate.py sweep_dir=<sweep>` (every multirun)
    hydra.callbacks.compare.run=true    run it (experiment=reproduce): Table 6/7 miniatures over seeds,
                                        paired 95% intervals vs vanilla, a verdict per metric (momattn.eval.sweep)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hydra.experimental.callback import Callback

ROOT = Path(__file__).resolve().parent.parent


class CompareSweep(Callback):
    def __init__(self, run: bool = False):
        self.run = bool(run)

    def command(self, sweep_dir: str) -> list[str]:
        return [sys.executable, str(ROOT / "evaluate.py"), f"sweep_dir={sweep_dir}"]

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = str(Path(config.hydra.sweep.dir).resolve())
        from omegaconf import OmegaConf

        if "optuna" in str(OmegaConf.select(config, "hydra.sweeper._target_", default="")).lower():  # a search
            print(f"\n[momattn] search done: the best parameters and {OmegaConf.select(config, 'optimized_metric', default='its metric')} are "
                  f"in {sweep_dir}/optimization_results.yaml", file=sys.stderr, flush=True)
            return
        shown = f"python evaluate.py sweep_dir={sweep_dir}"
        if not self.run:
            print(f"\n[momattn] sweep done. Compare its jobs (mean +- std over seeds, paired intervals, verdicts):\n"
                  f"  {shown}", file=sys.stderr, flush=True)
            return
        print(f"\n[momattn] sweep done; comparing its jobs: {shown}", file=sys.stderr, flush=True)
        done = subprocess.run(self.command(sweep_dir), check=False)
        if done.returncode != 0:
            print(f"[momattn] the comparison failed (exit {done.returncode}); run it again with: {shown}",
                  file=sys.stderr, flush=True)
