"""The tests' warm start (tests/zygote.py, conftest.run_cli): a forked run behaves as a fresh `python script.py`."""

from __future__ import annotations

import subprocess

import pytest
from conftest import _WARM, ROOT, run_cli

SCRIPT = '''
import atexit, os, sys, threading, time
print("argv", sys.argv[1:], "cwd", os.getcwd(), "path0", sys.path[0] == os.path.dirname(os.path.abspath(__file__)))
print("env", os.environ.get("ZYGOTE_PROBE"), "gone", "WANDB_SILENT" in os.environ, "main", __name__)
print("err\\rline", file=sys.stderr)
atexit.register(lambda: print("atexit ran"))
threading.Thread(target=lambda: (time.sleep(0.2), print("thread joined"))).start()
mode = sys.argv[1]
if mode == "raise":
    raise ValueError("boom")
if mode == "exit":
    sys.exit(3)
if mode == "message":
    sys.exit("a message")
'''


@pytest.mark.parametrize("mode", ["ok", "raise", "exit", "message"])
def test_a_warm_run_matches_a_fresh_one(tmp_path, mode):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    env = {"ZYGOTE_PROBE": "x y", "WANDB_SILENT": None}
    warm = run_cli(str(script), [mode, "two words"], tmp_path, env=env)
    assert _WARM and _WARM[0] is not None, "the warm interpreter did not start"
    fresh = run_cli(str(script), [mode, "two words"], tmp_path, env=env, fresh=True)
    assert (warm.returncode, warm.stdout, warm.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert warm.returncode == {"ok": 0, "raise": 1, "exit": 3, "message": 1}[mode]
    assert "thread joined" in warm.stdout and "atexit ran" in warm.stdout and "env x y gone False" in warm.stdout


def test_a_config_error_and_a_timeout_as_subprocess_gives_them(tmp_path):
    args = ["model.n_layr=2", f"hydra.run.dir={tmp_path / 'run'}"]
    warm, fresh = run_cli("train.py", args, tmp_path), run_cli("train.py", args, tmp_path, fresh=True)
    assert (warm.returncode, warm.stdout, warm.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert warm.returncode == 2 and "Did you mean 'n_layer'" in warm.stderr
    script = tmp_path / "sleep.py"
    script.write_text("import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    with pytest.raises(subprocess.TimeoutExpired):
        run_cli(str(script), [], tmp_path, timeout=3)
    assert run_cli(str(ROOT / "train.py"), args, tmp_path).returncode == 2  # the next run still gets its own reply
