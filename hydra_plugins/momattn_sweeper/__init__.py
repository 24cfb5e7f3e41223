"""momattn's Optuna sweeper (conf/hparams_search/optuna.yaml names it): hydra-optuna-sweeper's own, except that a
search in which no trial completed ends with one line, not Optuna's "No trials are completed yet" traceback.

Hydra instantiates sweepers only from the hydra_plugins namespace and imports every module there at start-up, so
this module imports nothing optional until a sweep uses it (without the sweep extra it is never instantiated).
"""

from __future__ import annotations

import os
import sys

from hydra.plugins.sweeper import Sweeper


class OptunaSweeper(Sweeper):
    def __init__(self, **kwargs):
        from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as Base

        self.base = Base(**kwargs)
        self.sweep_dir = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.sweep_dir = config.hydra.sweep.dir
        self.base.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        try:
            return self.base.sweep(arguments)
        except ValueError as e:
            if "No trials are completed" not in str(e):
                raise
            print(f"error: none of the search's {self.base.sweeper.n_trials} trials completed: each one's error is "
                  f"above and its log in its folder under {os.path.abspath(self.sweep_dir)}; fix the cause and run the search again",
                  file=sys.stderr)
            raise SystemExit(1) from None
