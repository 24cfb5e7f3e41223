"""A SIGTERM or Ctrl-C before a run's own guard exists: the command line's checks, Hydra composing, the imports.

Before momattn.entry_signals, a SIGTERM there ended the process without a word (-15), and a Ctrl-C printed a
traceback; inside an import of torch or numpy it printed torch's traceback, "cannot load module more than once",
crashed, or was swallowed and the run trained on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import run_cli

from momattn.entry_signals import Terminated, entry_signals, import_cut_short, pending, rank_zero, stop_code

# signals this process's own pid while `name` is being imported (from inside the import machinery, so the handler
# runs in the middle of the import that asked for it), once
HOOK = textwrap.dedent("""
    import os, signal, sys
    _at, _sig = os.environ.get("SIGNAL_AT_IMPORT"), os.environ.get("SIGNAL_NAME")
    class _Hook:
        def find_spec(self, name, path=None, target=None):
            if name == _at:
                sys.meta_path.remove(self)
                os.kill(os.getpid(), getattr(signal, _sig))
            return None
    if _at:
        sys.meta_path.insert(0, _Hook())
""")


@pytest.mark.parametrize("at, sig, code, said", [
    # the entry point's own first import (Hydra's, ~0.3 s): was a traceback from omegaconf's parser, or -15
    ("omegaconf", "SIGINT", 130, "interrupted (Ctrl-C) before the run started: nothing was done; run the same "
                                 "command again"),
    # the command line's checks, before Hydra: nothing is written yet
    ("momattn.sweep_jobs", "SIGTERM", 143, "interrupted (SIGTERM) before the run started: nothing was done; run the "
                                           "same command again"),
    # the job, importing numpy under torch (train.py's config check): it had been swallowed, and the run trained on
    ("numpy._core.multiarray", "SIGINT", 130, "interrupted (Ctrl-C): {ckpt} is kept. Resume with: python train.py "
                                              "ckpt_path=last hydra.run.dir={run}"),
    ("numpy._core.multiarray", "SIGTERM", 143, "interrupted (SIGTERM): {ckpt} is kept. Resume with: python train.py "
                                               "ckpt_path=last hydra.run.dir={run}"),
])
def test_a_signal_in_the_first_seconds_of_a_run_ends_it_in_one_line(at, sig, code, said, tmp_path):
    """A resume's saved config is put back too: the process ends inside the import, without unwinding."""
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(HOOK)
    run = tmp_path / "run"  # a run folder to resume: the signal comes before its checkpoint is read
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    saved = {"overrides.yaml": "- debug=smoke\n- logger=csv\n", "config.yaml": "seed: 1\n"}
    for name, text in saved.items():
        (run / ".hydra" / name).write_text(text)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"not read")
    r = run_cli("train.py", [f"hydra.run.dir={run}", "ckpt_path=last", "trainer.max_steps=12"], tmp_path,
                env={"PYTHONPATH": str(tmp_path / "hook"), "SIGNAL_AT_IMPORT": at, "SIGNAL_NAME": sig,
                     "HYDRA_FULL_ERROR": None}, fresh=True)
    assert r.returncode == code, r.stderr[-3000:]
    assert said.format(ckpt=run / "checkpoints" / "last.ckpt", run=run) in r.stderr and "Traceback" not in r.stderr, \
        r.stderr[-3000:]
    assert {name: (run / ".hydra" / name).read_text() for name in saved} == saved  # Hydra's rewrite put back


def test_a_sigterm_raises_in_the_main_thread_and_the_handlers_are_put_back():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    if before != (signal.SIG_DFL, signal.default_int_handler):
        pytest.skip("another handler is installed in this test process")
    with pytest.raises(Terminated) as e, entry_signals(lambda signame: signame):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10**6):  # the handler runs at the next bytecode
            pass
    assert stop_code(e.value) == ("SIGTERM", 143) and stop_code(KeyboardInterrupt()) == ("Ctrl-C", 130)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert not import_cut_short()


def test_a_forked_worker_dies_of_its_sigterm_and_leaves_the_parent_running():
    code = textwrap.dedent("""
        import os, signal, sys, time
        from momattn.entry_signals import entry_signals
        with entry_signals(lambda signame: signame):
            pid = os.fork()
            if pid == 0:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            print("child", os.waitstatus_to_exitcode(status), "parent alive")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "child -15 parent alive" in r.stdout, r.stderr[-2000:]



@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's parent-death signal")
@pytest.mark.parametrize("met", [False, True])
def test_a_started_rank_ends_with_the_process_that_started_it_until_the_ranks_meet(met):
    # rank 0 killed while the ranks met left rank 1 waiting for twice dist_timeout_s, printing torch's C++ frames
    # into the console of a run that had ended (found by review); once they have met, rank 1 hears of it itself
    rank = textwrap.dedent(f"""
        import time
        from momattn.entry_signals import die_with_parent, early_signals
        early_signals()
        if {met}:
            die_with_parent(False)
        print("ready", flush=True)
        time.sleep(30)
    """)
    parent = textwrap.dedent(f"""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", {rank!r}], stdout=subprocess.PIPE, text=True,
                                 env={{**os.environ, "LOCAL_RANK": "1", "MOMATTN_RANKS_PARENT": str(os.getpid())}})
        child.stdout.readline()
        print(child.pid, flush=True)
        time.sleep(30)
    """)
    p = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    child = int(p.stdout.readline())
    p.kill()
    p.wait()

    def alive() -> bool:  # (a zombie nobody has reaped yet has ended)
        try:
            return Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    try:
        deadline = time.monotonic() + 5
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert alive() == met, "the started rank outlived the process that started it" if not met else \
            "the rank ended with its parent after the ranks met"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's parent-death signal")
def test_a_started_rank_whose_starter_ended_before_it_armed_ends_at_once():
    # rank 0 killed while rank 1 was still importing: rank 1, handed to init, armed a signal for init's end and
    # waited dist_timeout_s (flows review). Its starter's pid, which rank 0 sets, is not its parent's: it ends
    from momattn.entry_signals import PARENT_ENV

    code = "from momattn.entry_signals import early_signals; early_signals(); print('armed')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "LOCAL_RANK": "1", PARENT_ENV: "1"})
    assert r.returncode == 1 and "armed" not in r.stdout, (r.returncode, r.stdout, r.stderr[-2000:])
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "LOCAL_RANK": "1", PARENT_ENV: str(os.getpid())})
    assert r.returncode == 0 and "armed" in r.stdout, r.stderr[-2000:]

@pytest.mark.parametrize("after_a_job, sweep, said", [
    (False, None, "interrupted (SIGTERM) before the run started: nothing was done"),
    (True, None, "interrupted (SIGTERM) after the run's work ended: what it wrote is kept"),
    # the last job's sweep (between the jobs Hydra's own config is unset: the single run's line was said)
    (True, "multirun/x", "the jobs that ran are kept in multirun/x; run the same command with ckpt_path=last "
                         "hydra.sweep.dir=multirun/x to go on"),
])
def test_a_stop_outside_a_job_says_what_was_kept(after_a_job, sweep, said):
    import momattn.cli as cli

    job = cli.HydraJob([], sweep_dir=sweep, num=1) if after_a_job else None
    assert said in cli.stopped_outside_job("train", "SIGTERM", job)


def test_a_stop_that_python_dropped_is_raised_again(monkeypatch):
    """A handler's exception raised inside a weakref callback (a garbage collection right after a sweep's job) is
    dropped by Python (with an "Exception ignored in" traceback): the sweep went on to its next job and exited 0."""
    import weakref

    if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        pytest.skip("another handler is installed in this test process")
    told = []
    monkeypatch.setattr(sys, "unraisablehook", told.append)
    def callback(_):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, inside the callback

    class Thing:
        pass

    with pytest.raises(Terminated), entry_signals(lambda signame: signame):
        thing = Thing()
        ref = weakref.ref(thing, callback)
        del thing  # the callback runs, its Terminated is dropped: the block goes on
        assert ref() is None and told == []  # not said as an ignored exception: raised again instead
        pending()


def test_a_stop_that_code_caught_is_not_raised_again():
    """A Ctrl-C that a job catches and handles (found by review: it was kept, and ended the run, or the sweep
    before its next job, with 130 once the job had finished)."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("another handler is installed in this test process")
    with entry_signals(lambda signame: signame):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10**6):
                pass
        except KeyboardInterrupt:
            pass  # handled
        try:
            pending()  # nothing to raise
        except KeyboardInterrupt:
            pytest.fail("the handled Ctrl-C was raised again")


def test_only_a_jobs_first_process_says_the_stop(monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    assert rank_zero()
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert rank_zero()
    monkeypatch.setenv("LOCAL_RANK", "1")  # a rank Lightning started: rank 0 says the line for the job
    assert not rank_zero()
