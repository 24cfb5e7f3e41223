"""momattn.run_folder: a run started in the same second as another (Hydra's outputs/<date>/<time>) moves to
<time>_2 before Hydra writes anything into the other's folder; a fixed folder held by another run is refused."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
from conftest import run_cli
from omegaconf import OmegaConf

from momattn import cli
from momattn.io import lock_folder
from momattn.run_folder import ClaimRunFolder


@pytest.fixture
def held():
    """Locks taken as another run would (their own file descriptors: flock keeps them apart from this process's
    claim); all released, with the claim, at the end."""
    fds = []

    def hold(folder):
        fd, holder = lock_folder(folder)
        assert fd is not None and holder is None
        fds.append(fd)

    yield hold
    for fd in fds:
        os.close(fd)
    cli.hold_run_folder(None)


TIMED = "/outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}"  # Hydra's default run folder


def hold_the_next_seconds(hold, root: Path, seconds: int = 90) -> list[Path]:
    """Hold root/<date>/<time> for each of the next `seconds` seconds, as runs started then would: a process started
    now names its folder by one of them."""
    start = datetime.datetime.now()
    names = [root / t.strftime("%Y-%m-%d") / t.strftime("%H-%M-%S")
             for t in (start + datetime.timedelta(seconds=s) for s in range(seconds))]
    for folder in names:
        hold(folder)
    return names


def config(run_dir: str, given: bool = False):
    """A run's config as the callback sees it; its folder resolved once (Hydra's `now` is cached per config)."""
    from hydra.core.utils import setup_globals

    setup_globals()  # Hydra's resolvers (`now`), as a Hydra run has them
    cfg = OmegaConf.create({"hydra": {"run": {"dir": run_dir}, "overrides": {
        "hydra": [f"hydra.run.dir={run_dir}"] if given else [], "task": []}}})
    return cfg, Path(str(OmegaConf.select(cfg, "hydra.run.dir")))


def test_a_timed_folder_another_run_holds_moves_this_run_to_the_next_free_one(tmp_path, held, capsys):
    cfg, base = config(f"{tmp_path}{TIMED}")
    held(base)
    Path(f"{base}_2").mkdir()  # a run of that second had it (and ended)
    ClaimRunFolder().on_run_start(cfg)
    assert cfg.hydra.run.dir == f"{base}_3"
    assert Path(f"{base}_3").resolve() in cli._RUN_LOCKS  # claimed: the next run of that second skips it
    assert f"{base} was taken by a run started in the same second; this run writes to {base}_3" in capsys.readouterr().err
    fd, holder = lock_folder(f"{base}_3")  # another process's view: held, and by this one
    assert fd is None and f"process {os.getpid()}" in holder
    cfg, t = config(f"{tmp_path}/t_${{now:%T}}")  # the seconds in another spelling (%T, %X, %c, %s): said
    t.mkdir()
    ClaimRunFolder().on_run_start(cfg)
    assert f"{t} was taken by a run started in the same second" in capsys.readouterr().err
    cfg, day = config(f"{tmp_path}/day_${{now:%Y-%m-%d}}")  # a pattern not of the second: not said to be (review)
    day.mkdir()
    ClaimRunFolder().on_run_start(cfg)
    assert f"{day} exists already (another run of this hydra.run.dir pattern); this run writes to {day}_2" in \
        capsys.readouterr().err


def test_a_timed_folder_a_run_of_that_second_left_is_not_reused(tmp_path, held):
    cfg, base = config(f"{tmp_path}{TIMED}", given=True)  # given with ${now:...}: claimed here, not before Hydra
    base.mkdir(parents=True)  # that run failed at once and let go of its lock: its saved config stays its own
    ClaimRunFolder().on_run_start(cfg)
    assert cfg.hydra.run.dir == f"{base}_2"


def test_a_free_folder_is_claimed_as_it_is(tmp_path, held):
    cfg, base = config(f"{tmp_path}{TIMED}")
    ClaimRunFolder().on_run_start(cfg)
    assert OmegaConf.to_container(cfg.hydra.run)["dir"] == f"{tmp_path}{TIMED}"  # untouched
    assert base.resolve() in cli._RUN_LOCKS


@pytest.mark.parametrize("run_dir", ["fixed", "${oc.env:NO_SUCH_VARIABLE,fixed}"])
def test_a_folder_not_named_by_the_time_another_run_holds_is_refused_before_hydra_writes(run_dir, tmp_path, held,
                                                                                       capsys):
    held(tmp_path / "fixed")
    with pytest.raises(SystemExit) as e:
        ClaimRunFolder().on_run_start(config(f"{tmp_path}/{run_dir}")[0])
    assert e.value.code == 2 and "is in use by another training run" in capsys.readouterr().err


def test_folders_claimed_elsewhere_are_left_alone(tmp_path, held, monkeypatch):
    held(tmp_path / "given")
    cfg, _ = config(str(tmp_path / "given"), given=True)
    ClaimRunFolder().on_run_start(cfg)  # momattn.cli claimed (or refused) it before Hydra started
    assert cfg.hydra.run.dir == str(tmp_path / "given") and not cli._RUN_LOCKS
    cfg, base = config(f"{tmp_path}{TIMED}")
    held(base)
    monkeypatch.setenv("LOCAL_RANK", "1")  # a rank after the first: its job's folder is the first process's
    ClaimRunFolder().on_run_start(cfg)
    assert OmegaConf.to_container(cfg.hydra.run)["dir"] == f"{tmp_path}{TIMED}" and not cli._RUN_LOCKS


def test_train_started_in_a_second_another_run_holds_writes_beside_it(tmp_path, held):
    """End to end: the folders of the next minute's seconds are held, as runs started then would hold them; the
    run (refused right after Hydra's start by a bad value, so that no training is spent) writes its saved config
    and log into <time>_2 and leaves the held folders untouched."""
    names = hold_the_next_seconds(held, tmp_path / "outputs")
    r = run_cli("train.py", ["debug=smoke", "model.dropout=1.5"], tmp_path)
    assert r.returncode == 2 and "model.dropout=1.5 must lie in [0, 1)" in r.stderr, r.stderr[-2000:]
    moved = [p for p in (tmp_path / "outputs").glob("*/*_2")]
    assert len(moved) == 1 and "was taken by a run started in the same second; this run writes to" in r.stderr, r.stderr[-2000:]
    assert (moved[0] / ".hydra" / "overrides.yaml").read_text().count("model.dropout=1.5") == 1
    assert all(sorted(p.name for p in f.iterdir()) == [".momattn.lock"] for f in names)  # nothing else written


def test_a_held_fixed_folder_names_the_entry_points_kind(tmp_path, held, capsys):
    held(tmp_path / "fixed")
    with pytest.raises(SystemExit):
        ClaimRunFolder(kind="evaluation").on_run_start(config(str(tmp_path / "fixed"))[0])
    assert "is in use by another evaluation (" in capsys.readouterr().err


def test_analyze_and_evaluate_refuse_each_others_folder(tmp_path, capsys):
    """Found by review: analyze.py given evaluate.py's folder deleted its results.json and results.md and wrote its
    own under those names, without a word (and the reverse)."""
    for kind, other in (("analysis", "evaluate"), ("evaluation", "analyze")):
        folder = tmp_path / f"my {other}"  # (the folder it suggests is quoted for a shell: flows review)
        folder.mkdir()
        (folder / f"{other}.log").write_text("")
        (folder / "results.json").write_text("{}")
        with pytest.raises(SystemExit):
            ClaimRunFolder(kind=kind).on_run_start(config(str(folder))[0])
        err = capsys.readouterr().err
        assert f"holds {other}'s reports ({other}.log, results.json, results.md), which this {kind} would " \
               f"replace" in err and f"e.g. \"hydra.run.dir='{folder / kind}'\"" in err
        ClaimRunFolder(kind=other.replace("evaluate", "evaluation").replace("analyze", "analysis")).on_run_start(
            config(str(folder))[0])  # its own tool again: its reports, written again


@pytest.mark.parametrize("script,folder", [("evaluate.py", "evaluate"), ("analyze.py", "analyze")])
def test_evaluate_and_analyze_started_in_a_second_another_holds_write_beside_it(script, folder, tmp_path, held):
    """Two evaluations started in one second wrote their reports into one folder, the second over the first's;
    each entry point's config claims its folder as train.py's does (refused here by a missing checkpoint, after
    Hydra's start)."""
    names = hold_the_next_seconds(held, tmp_path / "outputs" / folder)
    r = run_cli(script, [f"ckpt_path={tmp_path / 'missing.ckpt'}"], tmp_path)
    assert r.returncode == 2 and "missing.ckpt" in r.stderr, r.stderr[-2000:]
    moved = list((tmp_path / "outputs" / folder).glob("*/*_2"))
    assert len(moved) == 1 and "was taken by a run started in the same second" in r.stderr, r.stderr[-2000:]
    assert all(sorted(p.name for p in f.iterdir()) == [".momattn.lock"] for f in names)


def test_a_sweep_folder_another_sweep_writes_is_refused_and_a_free_one_held_for_the_sweep(tmp_path, held, capsys):
    from momattn import run_folder

    held(tmp_path / "busy")
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "busy")}}})
    with pytest.raises(SystemExit) as e:
        ClaimRunFolder().on_multirun_start(cfg)
    assert e.value.code == 2 and "is in use by another sweep" in capsys.readouterr().err
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "free")}}})
    callback = ClaimRunFolder()
    callback.on_multirun_start(cfg)
    callback.on_multirun_start(cfg)  # the same sweep again in this process (its lock is its own)
    fd, holder = lock_folder(tmp_path / "free")
    assert fd is None and f"process {os.getpid()}" in holder  # held for the sweep, by this process
    callback.on_multirun_end(cfg)
    fd, holder = lock_folder(tmp_path / "free")  # released when the sweep ends
    assert fd is not None and holder is None and not run_folder._SWEEP_LOCKS
    os.close(fd)


def test_a_fresh_sweep_into_a_timed_folder_holding_a_sweep_is_refused(tmp_path, capsys):
    # sweep_${now:%H} twice within the hour: the second sweep's jobs trained into the first's folders, and one
    # verdict mixed the two (the flows review); a resume (ckpt_path=last) goes on
    from momattn import run_folder

    (tmp_path / "sw" / "0" / "checkpoints").mkdir(parents=True)
    (tmp_path / "sw" / "0" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    for task, refused in ((["seed=5,6"], True), (["seed=1", "ckpt_path=last"], False)):
        cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sw")}, "overrides": {"task": task}}})
        callback = ClaimRunFolder()
        if refused:
            with pytest.raises(SystemExit) as e:
                callback.on_multirun_start(cfg)
            err = capsys.readouterr().err
            assert e.value.code == 2 and "holds 1 job(s) of another sweep already" in err and "folder of its own" in err
        else:
            callback.on_multirun_start(cfg)
        callback.on_multirun_end(cfg)
    assert not run_folder._SWEEP_LOCKS


def test_a_multirun_into_a_sweep_folder_in_use_is_refused_before_any_job(tmp_path, held):
    names = hold_the_next_seconds(held, tmp_path / "multirun")
    r = run_cli("train.py", ["-m", "debug=smoke", "seed=1,2"], tmp_path)
    assert r.returncode == 2 and "is in use by another sweep" in r.stderr, r.stderr[-2000:]
    assert all(sorted(p.name for p in f.iterdir()) == [".momattn.lock"] for f in names)  # no job, no saved config


def test_evaluate_claims_a_folder_given_on_its_command_line_itself(tmp_path, held, capsys):
    """train.py's entry point claims a given folder before Hydra; evaluate.py's and analyze.py's do not, so their
    callback does: two evaluations into one given folder at once wrote over each other."""
    held(tmp_path / "given")
    cfg, _ = config(str(tmp_path / "given"), given=True)
    with pytest.raises(SystemExit):
        ClaimRunFolder(kind="evaluation").on_run_start(cfg)
    err = capsys.readouterr().err
    assert "is in use by another evaluation" in err and "HYDRA_FULL_ERROR" not in err  # no traceback to ask for


@pytest.mark.parametrize("held_by", ["checkpoints", "saved config"])
def test_an_evaluation_into_a_training_runs_folder_is_refused_before_hydra_rewrites_its_config(tmp_path, held_by, capsys):
    # Hydra rewrote the run's .hydra/overrides.yaml with evaluate.py's, and resuming the run then failed on
    # 'icl.enabled' is not a config key (found by review)
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    if held_by == "checkpoints":
        (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    else:
        (run / ".hydra" / "config.yaml").write_text("trainer:\n  max_steps: 3\n")
    (run / "eval").mkdir()  # train.py's end-of-run evaluation: a resume reads its results.json
    (run / "eval" / "results.json").write_text("{}")
    for folder, says in ((run, "holds a training run"), (run / "eval", "is the end-of-run evaluation of the "
                                                                       f"training run in {run}")):
        cfg, _ = config(str(folder), given=True)
        for kind in ("evaluation", "analysis"):
            with pytest.raises(SystemExit):
                ClaimRunFolder(kind=kind).on_run_start(cfg)
            err = capsys.readouterr().err
            own = run / ("analyze" if kind == "analysis" else "evaluate")  # the entry point's own name (it said evaluate)
            assert f"hydra.run.dir={folder} {says}" in err and f"hydra.run.dir={own}" in err, err
    # a folder of its own inside the run, a folder an evaluation wrote before, or one whose checkpoints/ holds no
    # checkpoint (a folder of models, say) is fine
    (tmp_path / "evaluated" / ".hydra").mkdir(parents=True)
    (tmp_path / "evaluated" / ".hydra" / "config.yaml").write_text("ckpt_path: a.ckpt\nppl: {}\n")
    (tmp_path / "evaluated" / "results.json").write_text("{}")
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    for folder in (run / "evaluate", tmp_path / "evaluated", tmp_path / "models"):
        cfg, _ = config(str(folder), given=True)
        ClaimRunFolder(kind="evaluation").on_run_start(cfg)
    cli.hold_run_folder(None)


def test_a_lock_file_that_is_a_link_is_not_followed(tmp_path):
    """A link planted as a lock file (a shared cache, a downloaded run folder) made the holder's line truncate and
    overwrite the file it pointed at (found by review)."""
    from momattn.io import file_lock

    victim = tmp_path / "victim"
    victim.write_text("IMPORTANT")
    (tmp_path / "tokens").mkdir()
    (tmp_path / "tokens" / "k.lock").symlink_to(victim)
    with file_lock(tmp_path / "tokens" / "k.lock", waiting="the token cache") as held:
        assert not held  # no lock rather than the link's target
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".momattn.lock").symlink_to(victim)
    assert lock_folder(tmp_path / "run") == (None, None)
    assert victim.read_text() == "IMPORTANT"
    fd, holder = lock_folder(tmp_path / "own")  # a plain lock file: held, and names this process
    assert holder is None and f"process {os.getpid()}" in (tmp_path / "own" / ".momattn.lock").read_text()
    os.close(fd)
