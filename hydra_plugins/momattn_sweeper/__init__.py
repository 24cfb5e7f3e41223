"""momattn's Optuna sweeper (conf/hparams_search/optuna.yaml names it): hydra-optuna-sweeper's own, except that a
search in which no trial completed ends with one line, not Optuna's "No trials are completed yet" traceback.

Hydra instantiates sweepers only from the hydra_plugins namespace and imports every module there at start-up, so
this module imports nothing optional until a sweep uses it (without the sweep extra it is never instantiated).
"""

from __future__ import annotations

import contextlib
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
        self.sweeper_cfg = config.hydra.sweeper
        self.base.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def _continue_stored_study(self) -> None:
        """A study kept in a database (hydra.sweeper.storage) goes on across searches, but each search seeded its
        sampler alike (sampler.seed): a second search repeated the first one's startup suggestions, trial for
        trial. Where the stored study holds trials, the sampler is seeded seed + their number (reproducible from
        the study's state)."""
        cfg = self.sweeper_cfg
        seed = cfg.get("sampler", {}).get("seed") if cfg.get("sampler") else None
        if not cfg.get("storage") or isinstance(seed, bool) or not isinstance(seed, int):
            return
        if cfg.get("study_name") is None:  # a new study each search (Optuna names it), which holds no trials yet;
            return                         # loading none by name took the storage's only study for this one's
        import optuna
        from hydra.utils import instantiate

        try:
            held = len(optuna.load_study(study_name=cfg.study_name, storage=cfg.storage).trials)
        except Exception:  # no such study yet (KeyError), or a storage the base sweeper reports on
            return
        if held:
            self.base.sweeper.sampler = instantiate(cfg.sampler, seed=seed + held)
            print(f"[momattn] the stored study '{cfg.study_name}' holds {held} trial(s): this search's sampler is "
                  f"seeded {seed} + {held} = {seed + held} (hydra.sweeper.sampler.seed + the trials so far), so that "
                  "it does not repeat their suggestions", file=sys.stderr, flush=True)

    def sweep(self, arguments: list[str]) -> None:
        n_trials = self.base.sweeper.n_trials  # 0 or -1 ran nothing, then said that none of "0 trials" completed
        if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
            print(f"error: hydra.sweeper.n_trials={n_trials!r}: a search runs at least one trial; set "
                  "hydra.sweeper.n_trials=N with N >= 1", file=sys.stderr)
            raise SystemExit(2)
        self._continue_stored_study()
        from momattn.errors import UserError

        try:
            with self._recording_trials():
                return self.base.sweep(arguments)
        except UserError as e:  # raised before any trial (momattn.search's space): one line, as train.py's
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except ValueError as e:
            if _raised_in(e, "optuna/distributions") or "GridSampler only supports" in str(e):
                # interval(1e-2,1e-4), or an interval for the grid sampler: a traceback, before any trial
                grid = " (the grid sampler takes choice(...) and range(...) only)" if "Grid" in str(e) else ""
                if _raised_in(e, "check_distribution_compatibility", frame=True) and self.sweeper_cfg.get("storage"):
                    self._fail_asked_trials()
                    print(f"error: the search space: {e} The stored study '{self.sweeper_cfg.get('study_name')}' "
                          "searched a parameter of this space with another distribution (interval or choice, log "
                          "or not, other choices): search its space again, or start a new study "
                          "(hydra.sweeper.study_name=<another name>)", file=sys.stderr)
                    raise SystemExit(2) from None
                print(f"error: the search space: {e} (check hydra.sweeper.params and any interval(...), "
                      f"range(...) or choice(...) on the command line){grid}", file=sys.stderr)
                raise SystemExit(2) from None
            if "No trials are completed" not in str(e):
                raise
            print(f"error: none of the search's {self.base.sweeper.n_trials} trials completed: each one's error is "
                  f"above and its log in its folder under {os.path.abspath(self.sweep_dir)}; fix the cause and run the search again",
                  file=sys.stderr)
            raise SystemExit(1) from None


    @contextlib.contextmanager
    def _recording_trials(self):
        """The ids of the trials this process asks its study for (Optuna's Trial is made for each), so that the
        ones a refused space left running are told apart from another search's on the same stored study."""
        from optuna.trial import Trial

        init, self.asked = Trial.__init__, []

        def recorded(trial, study, trial_id):
            init(trial, study, trial_id)
            self.asked.append(trial_id)

        Trial.__init__ = recorded
        try:
            yield
        finally:
            Trial.__init__ = init

    def _fail_asked_trials(self) -> None:
        """The trials this search had asked the stored study for before its space was refused: marked failed (they
        stayed RUNNING in the database for good, and the next search counted them)."""
        import optuna

        cfg = self.sweeper_cfg
        try:
            study = optuna.load_study(study_name=cfg.study_name, storage=cfg.storage)
            ours = set(getattr(self, "asked", []))
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if t._trial_id in ours:
                    study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        except Exception:  # the storage, unreadable now: its trial stays as it is
            pass


def _raised_in(e: BaseException, where: str, frame: bool = False) -> bool:
    """Whether e was raised inside a module whose path holds `where` (e.g. 'optuna/distributions'); frame=True:
    inside a function of that name, anywhere on the way (e.g. 'check_distribution_compatibility')."""
    tb = e.__traceback__
    while tb is not None and (frame or tb.tb_next is not None):
        if frame and tb.tb_frame.f_code.co_name == where:
            return True
        if tb.tb_next is None:
            break
        tb = tb.tb_next
    return not frame and tb is not None and where in tb.tb_frame.f_code.co_filename.replace("\\", "/")
