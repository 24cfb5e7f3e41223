"""momattn's Optuna sweeper (conf/hparams_search/optuna.yaml names it): hydra-optuna-sweeper's own, except that a
search in which no trial completed ends with one line, not Optuna's "No trials are completed yet" traceback.

Hydra instantiates sweepers only from the hydra_plugins namespace and imports every module there at start-up, so
this module imports nothing optional until a sweep uses it (without the sweep extra it is never instantiated).
"""

from __future__ import annotations

import contextlib
import json
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
        self.metric = config.get("optimized_metric")
        self.base.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def _open_storage(self) -> None:
        """The storage opened before any trial: a driver that is not installed, a file that is not a database, or
        a server that does not answer was a traceback of 45 to 127 lines from SQLAlchemy."""
        url = self.sweeper_cfg.get("storage")
        if not url:
            return
        import optuna

        from momattn.sweep_callback import _no_password

        try:
            optuna.storages.get_storage(url)
        except Exception as e:  # ImportError (no driver), sqlalchemy's OperationalError / DatabaseError, ...
            why = _no_password(" ".join(str(e).split()))[:300]  # masked before it is cut
            print(f"error: hydra.sweeper.storage={_no_password(url)} cannot be opened: {type(e).__name__}: {why}",
                  file=sys.stderr)
            raise SystemExit(2) from None

    def _stored_study(self):
        """The stored study this search goes on with (hydra.sweeper.storage and study_name), or None."""
        cfg = self.sweeper_cfg
        if not cfg.get("storage") or cfg.get("study_name") is None:
            return None
        import optuna

        try:
            return optuna.load_study(study_name=cfg.study_name, storage=cfg.storage)
        except Exception:  # no such study yet
            return None

    def _check_stored_study(self, study, arguments: list[str]) -> None:
        """A stored study's trials must measure what this search measures: a second search with another
        optimized_metric put val/ppl values beside val/loss ones, and its 'best value' was a val/loss. A search
        whose fixed settings differ from the stored trials' (trainer.max_steps=6 beside trials of 30 steps) is
        told which, since its best may be an earlier trial's."""
        import optuna

        cfg = self.sweeper_cfg
        stored = study.user_attrs.get(METRIC_ATTR)
        if stored is not None and self.metric is not None and str(stored) != str(self.metric):
            print(f"error: optimized_metric={self.metric}, and the stored study '{cfg.study_name}' optimised "
                  f"{stored}: their values cannot be compared, nor one best taken over them. Search {stored} again, "
                  f"or start a new study (hydra.sweeper.study_name=<another name>)", file=sys.stderr)
            raise SystemExit(2)
        fixed = _fixed_overrides([*self.base.sweeper._parse_sweeper_params_config(), *arguments])
        done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
        differ = sorted({k for t in done for k in set(t.user_attrs) | set(fixed) if not k.startswith("hydra.")
                         and k != FOLDER_ATTR and str(t.user_attrs.get(k)) != str(fixed.get(k))})
        if done and differ:
            shown = "; ".join(f"{k}: {sorted({str(t.user_attrs.get(k, '(not set)')) for t in done})} before, "
                              f"{fixed.get(k, '(not set)')} now" for k in differ[:5])
            print(f"[momattn] warning: the stored study '{cfg.study_name}' holds {len(done)} finished trial(s) trained "
                  f"with other fixed settings ({shown}): its best trial may be one of theirs, not comparable with "
                  "this search's; for a search of its own, give hydra.sweeper.study_name=<another name>",
                  file=sys.stderr, flush=True)

    def _continue_stored_study(self, study) -> None:
        """A study kept in a database (hydra.sweeper.storage) goes on across searches, but each search seeded its
        sampler alike (sampler.seed): a second search repeated the first one's startup suggestions, trial for
        trial. Where the stored study holds trials, the sampler is seeded seed + their number (reproducible from
        the study's state)."""
        cfg = self.sweeper_cfg
        seed = cfg.get("sampler", {}).get("seed") if cfg.get("sampler") else None
        if isinstance(seed, bool) or not isinstance(seed, int):
            return
        from hydra.utils import instantiate

        if held := len(study.trials):
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
        _mask_passwords()
        self._open_storage()
        # read once (it was opened once for each of these; study_name null: a new study each search, Optuna names
        # it, with no trials yet: loading none by name took the storage's only study for this one's)
        if (study := self._stored_study()) is not None:
            self._check_stored_study(study, arguments)
            self._continue_stored_study(study)
            self._stale_trials(study)
        from momattn.errors import UserError
        from momattn.sweep_jobs import SEARCH_KEYS_ENV

        # what tells the trials apart, for their W&B names (this sweeper writes no multirun.yaml, whose swept keys a
        # basic sweep's jobs read: a trial's name was the whole command line, cut at 128 characters)
        searched = [*self.base.sweeper._parse_sweeper_params_config(), *arguments]
        os.environ[SEARCH_KEYS_ENV] = json.dumps(sorted(_searched_keys(searched)))
        try:
            try:
                with self._recording_trials(), self._grid_left(), self._recording_folders():
                    self.base.sweep(arguments)
            except BaseException:  # a refused space, Ctrl-C, SIGTERM: the trials it asked for stayed RUNNING in a
                if self.sweeper_cfg.get("storage"):  # stored study for good, as Optuna's own optimize() does not
                    self._fail_asked_trials()
                raise
        except UserError as e:  # raised before any trial (momattn.search's space): one line, as train.py's
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except ValueError as e:
            if _raised_in(e, "optuna/distributions") or "GridSampler only supports" in str(e):
                # interval(1e-2,1e-4), or an interval for the grid sampler: a traceback, before any trial
                grid = " (the grid sampler takes choice(...) and range(...) only)" if "Grid" in str(e) else ""
                if _raised_in(e, "check_distribution_compatibility", frame=True) and self.sweeper_cfg.get("storage"):
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
            self._none_completed()
        finally:
            os.environ.pop(SEARCH_KEYS_ENV, None)
        self._count_trials()

    def _none_completed(self) -> None:
        print(f"error: none of the search's {self.base.sweeper.n_trials} trials completed: each one's error is "
              f"above and its log in its folder under {os.path.abspath(self.sweep_dir)}; fix the cause and run the "
              "search again", file=sys.stderr)
        raise SystemExit(1) from None

    def _count_trials(self) -> None:
        """This search's own trials (a stored study holds earlier searches' too, so Optuna's 'No trials are
        completed yet' never came, and a search whose every trial failed ended with 'search done', exit 0): none
        completed is an error; some failed are said before the end line."""
        from optuna.trial import TrialState

        if self.study is None:
            return
        ours = set(self.asked)
        states = [t.state for t in self.study.get_trials(deepcopy=False) if t._trial_id in ours]
        if states and TrialState.COMPLETE not in states:
            self._none_completed()
        failed = sum(s == TrialState.FAIL for s in states)
        if failed:
            print(f"\n[momattn] {failed} of the search's {len(states)} trials failed (their errors are above, each "
                  "trial's log in its folder); the best is taken over the study's completed trials",
                  file=sys.stderr, flush=True)


    def _stale_trials(self, study) -> None:
        """RUNNING trials of a stored study: another search's, running now, or those of one killed (SIGKILL, a lost
        node) before it could mark them; they stayed RUNNING for good, unsaid, and the grid sampler counts their
        points as taken (found by review). Named; with MOMATTN_FAIL_RUNNING_TRIALS=1 (no other search running on
        the study) marked failed, their grid points free again."""
        import optuna

        cfg = self.sweeper_cfg
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if not running:
            return
        numbers = ", ".join(str(t.number) for t in running[:10]) + (", ..." if len(running) > 10 else "")
        if os.environ.get("MOMATTN_FAIL_RUNNING_TRIALS") == "1":
            for t in running:
                _fail_trial(study, t)
            print(f"[momattn] marked {len(running)} RUNNING trial(s) of the stored study '{cfg.study_name}' failed "
                  f"(MOMATTN_FAIL_RUNNING_TRIALS=1): {numbers}", file=sys.stderr, flush=True)
            return
        print(f"[momattn] warning: the stored study '{cfg.study_name}' holds {len(running)} RUNNING trial(s) "
              f"({numbers}): another search running on it now, or one that was killed (SIGKILL, a lost node) before "
              "it could mark them. A grid search counts their points as taken. If no other search runs on it, "
              "run this command again with MOMATTN_FAIL_RUNNING_TRIALS=1 set to mark them failed",
              file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def _grid_left(self):
        """A grid search on a stored study searches the points its earlier searches left (the base sweeper asked
        for min(n_trials, grid size) trials: once the grid was taken, the sampler re-ran taken points at random,
        and a point whose trial a stop interrupted was never trained; found by review)."""
        import optuna

        create, inner = optuna.create_study, self.base.sweeper

        def created(*args, **kwargs):
            study = create(*args, **kwargs)
            if isinstance(study.sampler, optuna.samplers.GridSampler):
                study.sampler.after_trial = _stop_outside_optimize(study.sampler.after_trial)
            unvisited = getattr(study.sampler, "_get_unvisited_grid_ids", None)
            if isinstance(study.sampler, optuna.samplers.GridSampler) and unvisited is not None and study.trials:
                left, size = len(unvisited(study)), len(study.sampler._all_grids)
                if not left and not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
                    # every point taken by a failed trial: nothing to train, no best, each time (found by review)
                    print(f"error: every point of the stored study '{study.study_name}''s grid ({size}) is taken by "
                          "a trial that failed, and none completed: this grid search has nothing left to train. "
                          "Fix the cause (each trial's log is in its folder) and search a new study "
                          "(hydra.sweeper.study_name=<another name>)", file=sys.stderr, flush=True)
                    raise SystemExit(2)
                inner.n_trials = min(inner.n_trials, left)
                print(f"[momattn] the stored study '{study.study_name}' has taken {size - left} of its grid's {size} "
                      f"points: this search trains {inner.n_trials} of the {left} left"
                      + ("" if left else " (nothing to search: its best is that of the trials it holds)"),
                      file=sys.stderr, flush=True)
            return study

        optuna.create_study = created
        try:
            yield
        finally:
            optuna.create_study = create

    @contextlib.contextmanager
    def _recording_trials(self):
        """The ids of the trials this process asks its study for (Optuna's Trial is made for each), so that the
        ones a refused space left running are told apart from another search's on the same stored study."""
        from optuna.trial import Trial

        init, self.asked, self.study = Trial.__init__, [], None

        def recorded(trial, study, trial_id):
            init(trial, study, trial_id)
            self.asked.append(trial_id)
            if self.study is None:  # the study this search made or loaded: what it optimises is kept with it
                self.study = study
                if self.metric is not None and study.user_attrs.get(METRIC_ATTR) is None:
                    study.set_user_attr(METRIC_ATTR, str(self.metric))

        Trial.__init__ = recorded
        try:
            yield
        finally:
            Trial.__init__ = init

    @contextlib.contextmanager
    def _recording_folders(self):
        """Each trial's job folder, kept with it in the study (its user attribute momattn.folder): the best trial of
        a stored study, found by an earlier search, could not be traced to its folder or checkpoint (review)."""
        launcher = getattr(self.base.sweeper, "launcher", None)
        if launcher is None:
            yield
            return
        launch = launcher.launch
        trained: dict[tuple[str, ...], object] = {}  # the overrides of each trial this search completed: its return

        def launched(job_overrides, initial_job_idx):
            # a trial whose parameters an earlier one of this search trained (a choice-only or small space: Optuna
            # asks for a point again) takes that trial's result: it trained the same model again, to the same value,
            # without a word (found by review)
            keys = [tuple(o) for o in job_overrides]
            fresh = [i for i, k in enumerate(keys) if k not in trained and k not in keys[:i]]
            got = dict(zip((keys[i] for i in fresh), launch([job_overrides[i] for i in fresh],
                                                            initial_job_idx=initial_job_idx) if fresh else []))
            returns = []
            for i, k in enumerate(keys):
                ret = got[k] if k in got else trained[k]
                if i not in fresh:
                    from momattn.sweep_jobs import SEARCH_KEYS_ENV

                    searched = json.loads(os.environ.get(SEARCH_KEYS_ENV, "[]"))
                    params = " ".join(o for o in k if o.split("=", 1)[0].lstrip("+~") in searched) or " ".join(k)
                    result = ret._return_value if _completed(ret) else "a failure"  # (return_value raises it)
                    print(f"[momattn] a trial repeats the parameters of an earlier one of this search ({params}): it "
                          f"takes that trial's result, {result} (in {_job_folder(ret)}), and is not trained again",
                          file=sys.stderr, flush=True)
                returns.append(ret)
            for k in fresh:
                if _completed(got[keys[k]]):
                    trained[keys[k]] = got[keys[k]]
            # the trials of this batch: the last ones asked, in the launch's order (their tell comes after)
            for trial_id, ret in zip(self.asked[-len(returns):] if returns else [], returns):
                folder = _job_folder(ret)
                if folder and self.study is not None:
                    with contextlib.suppress(Exception):  # a record, never the search's failure
                        self.study._storage.set_trial_user_attr(trial_id, FOLDER_ATTR, os.path.abspath(folder))
            return returns

        launcher.launch = launched
        try:
            yield
        finally:
            launcher.launch = launch

    def _fail_asked_trials(self) -> None:
        """The trials this search had asked the stored study for before its space was refused: marked failed (they
        stayed RUNNING in the database for good, and the next search counted them)."""
        import optuna

        cfg = self.sweeper_cfg
        try:  # the study this search made or loaded (with study_name null, loading by no name fails beside another)
            study = getattr(self, "study", None) or optuna.load_study(study_name=cfg.study_name, storage=cfg.storage)
            ours = set(getattr(self, "asked", []))
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if t._trial_id in ours:
                    _fail_trial(study, t)
        except Exception:  # the storage, unreadable now: its trial stays as it is
            pass


def _completed(ret) -> bool:
    """Whether a launched job returned a value (not a failure, whose parameters a later trial tries again)."""
    from hydra.core.utils import JobStatus

    return getattr(ret, "status", None) == JobStatus.COMPLETED and getattr(ret, "_return_value", None) is not None


def _job_folder(ret) -> str | None:
    """The folder a launched job wrote into: its hydra.runtime.output_dir (a JobReturn's working_dir is the launch's
    working folder, the same for every job, unless hydra.job.chdir; found by the diff review)."""
    try:
        return str(ret.hydra_cfg.hydra.runtime.output_dir) or None
    except Exception:  # a launcher's return without Hydra's config
        return None


def _stop_outside_optimize(after_trial):
    """The grid sampler's after_trial, without its study.stop() once every point is taken: outside Optuna's own
    optimize() (the base sweeper asks and tells) stop raises a RuntimeError. The base sweeper passed it over for a
    completed trial only: a grid whose last point failed ended in a 45-line traceback, with no best trial and no
    optimization_results.yaml (found by review). The search ends anyway: it asks for at most the grid's points."""

    def after(*args, **kwargs):
        try:
            after_trial(*args, **kwargs)
        except RuntimeError as e:
            if "Study.stop" not in str(e):
                raise

    return after


def _fail_trial(study, trial) -> None:
    """A RUNNING trial that never finished, marked failed; where the grid sampler gave it a point, that point is left
    free (it counts a failed trial's point as taken: an interrupted point was never trained)."""
    import optuna

    if "grid_id" in trial.system_attrs:
        study._storage.set_trial_system_attr(trial._trial_id, "grid_id", -1)  # no point of the grid
    try:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    except RuntimeError as e:  # the grid sampler stops its study where none is left, outside optimize() an error,
        if "Study.stop" not in str(e):  # raised once the state is written (the base sweeper lets it pass too)
            raise


def _mask_passwords() -> None:
    """The base sweeper logs 'Storage: <url>' with a database's password in it: masked (user:***@host)."""
    import logging

    from momattn.sweep_callback import _no_password

    class Mask(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if isinstance(record.msg, str) and "://" in record.msg:
                record.msg = _no_password(record.msg)
            return True

    log = logging.getLogger("hydra_plugins.hydra_optuna_sweeper._impl")
    if not any(type(f).__name__ == "Mask" for f in log.filters):  # once per process
        log.addFilter(Mask())


METRIC_ATTR = "momattn.optimized_metric"  # the study's user attribute that names the metric its trials returned
FOLDER_ATTR = "momattn.folder"  # each trial's user attribute: the job folder it trained in


def _fixed_overrides(arguments: list[str]) -> dict[str, str]:
    """key -> value of the overrides that are not searched, as the base sweeper stores them on each trial (its user
    attributes)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = {}
    for o in OverridesParser.create().parse_overrides(arguments):
        if not o.is_sweep_override() and not o.is_hydra_override():
            out[o.get_key_element()] = o.get_value_element_as_str()
    return out


def _searched_keys(arguments: list[str]) -> set[str]:
    """The keys of the overrides that are searched (interval(...), choice(...), range(...))."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return {o.get_key_element() for o in OverridesParser.create().parse_overrides(arguments)
            if o.is_sweep_override() and not o.is_hydra_override()}


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
