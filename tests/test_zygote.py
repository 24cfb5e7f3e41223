"""The tests' warm start (tests/zygote.py, conftest.run_cli): a forked run behaves as a fresh `python script.py`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, run_cli

SCRIPT = '''
import atexit, os, sys, threading, time
print("argv", sys.argv[1:], "cwd", os.getcwd(), "path0", sys.path[0] == os.path.dirname(os.path.abspath(__file__)))
print("env", os.environ.get("ZYGOTE_PROBE"), "gone", "WANDB_SILENT" in os.environ, "main", __name__)
print("err\\rline", file=sys.stderr)
atexit.register(lambda: print("atexit ran"))
threading.Thread(target=lambda: (time.sleep(0.2), print("thread joined"))).start()
log = open("left_open.txt", "w")
log.write("flushed at exit")  # never closed: the interpreter's exit flushes it
def keep(): return log  # noqa: E305 - a function: the module's globals are in a cycle
mode = sys.argv[1]
if mode == "raise":
    raise ValueError("boom")
if mode == "exit":
    sys.exit(3)
if mode == "message":
    sys.exit("a message")
if mode == "interrupt":
    raise KeyboardInterrupt
'''


def warm_or_skip(result):
    """The run went warm; skipped only where warm runs are off (MOMATTN_TEST_FRESH=1, mutmut): anywhere else a
    cold run means the suite lost its warm start (an environment difference or a failed start), a failure."""
    if not getattr(result, "warm", False):
        if os.environ.get("MOMATTN_TEST_FRESH") == "1" or "MUTANT_UNDER_TEST" in os.environ or sys.platform != "linux":
            pytest.skip("warm runs are off in this run (MOMATTN_TEST_FRESH=1, mutmut, or not Linux)")
        from conftest import _WARM

        pytest.fail(f"the run was not warm: {_WARM}; environment {sorted(k for k in os.environ)}")
    return result


@pytest.mark.parametrize("mode", ["ok", "raise", "exit", "message", "interrupt"])
def test_a_warm_run_matches_a_fresh_one(tmp_path, mode):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    env = {"ZYGOTE_PROBE": "x y", "WANDB_SILENT": None}
    warm = warm_or_skip(run_cli(str(script), [mode, "two words"], tmp_path, env=env))
    left = (tmp_path / "left_open.txt").read_text()
    fresh = run_cli(str(script), [mode, "two words"], tmp_path, env=env, fresh=True)
    assert (warm.returncode, warm.stdout, warm.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert warm.returncode == {"ok": 0, "raise": 1, "exit": 3, "message": 1, "interrupt": -signal.SIGINT}[mode]
    assert "thread joined" in warm.stdout and "atexit ran" in warm.stdout and "env x y gone False" in warm.stdout
    assert left == (tmp_path / "left_open.txt").read_text() == "flushed at exit"


def test_modules_missing_files_and_hash_seeds_as_python_has_them(tmp_path):
    (tmp_path / "in.json").write_text('{"b": [1, 2], "a": null}')
    (tmp_path / "broken.py").write_text("def f():\n    raise ValueError('y')\nf()\n")
    for script, args in (("-m", ["json.tool", "--sort-keys", "in.json"]), ("-m", ["no_such_module_here"]),
                         ("-m", ["no.such"]), ("-m", ["broken"]), (str(tmp_path / "missing.py"), []),
                         ("-m", ["momattn.export", "ckpt_path=/nonexistent.ckpt", f"out={tmp_path / 'o'}"])):
        warm = warm_or_skip(run_cli(script, args, tmp_path))
        fresh = run_cli(script, args, tmp_path, fresh=True)
        assert (warm.returncode, warm.stdout, warm.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert '"a": null' in run_cli("-m", ["json.tool", "--sort-keys", "in.json"], tmp_path).stdout
    # two runs in a row get two hash seeds and two numpy seeds, as two fresh interpreters do
    (tmp_path / "seed.py").write_text("import numpy as np\nprint(hash('momattn'), np.random.randint(1 << 30))\n")
    a, b = (run_cli(str(tmp_path / "seed.py"), [], tmp_path) for _ in range(2))
    assert a.returncode == b.returncode == 0 and a.stdout.split()[0] != b.stdout.split()[0]
    assert a.stdout.split()[1] != b.stdout.split()[1]


@pytest.mark.slow
def test_a_config_error_a_timeout_and_an_interrupted_run(tmp_path):
    args = ["model.n_layr=2", f"hydra.run.dir={tmp_path / 'run'}"]
    warm, fresh = warm_or_skip(run_cli("train.py", args, tmp_path)), run_cli("train.py", args, tmp_path, fresh=True)
    assert (warm.returncode, warm.stdout, warm.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert warm.returncode == 2 and "Did you mean 'n_layer'" in warm.stderr
    script = tmp_path / "sleep.py"
    script.write_text("import os, time\nopen('pid', 'w').write(str(os.getpid()))\ntime.sleep(60)\n")
    with pytest.raises(subprocess.TimeoutExpired):
        run_cli(str(script), [], tmp_path, timeout=3)
    assert run_cli(str(ROOT / "train.py"), args, tmp_path).returncode == 2  # the next run gets its own reply

    class Interrupted(Exception):
        pass

    def interrupt(*_):
        raise Interrupted

    old = signal.signal(signal.SIGALRM, interrupt)  # as pytest-timeout or Ctrl-C would stop a run
    try:
        signal.setitimer(signal.ITIMER_REAL, 2)
        with pytest.raises(Interrupted):
            run_cli(str(script), [], tmp_path)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    sleeper = int((tmp_path / "pid").read_text())
    for _ in range(2):  # both warm interpreters: the one the interrupted run used is started again
        again = run_cli(str(ROOT / "train.py"), args, tmp_path, timeout=120)
        assert again.returncode == 2 and "Did you mean 'n_layer'" in again.stderr
    deadline = time.monotonic() + 10
    while _alive(sleeper) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(sleeper), "the interrupted run still runs"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False
