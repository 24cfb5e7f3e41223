"""Shared fixtures: everything offline, one cache per test run (shared by the xdist workers), configs composed from the real conf/ tree."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import locale
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.update({"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
                   "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLE_GIT": "true"})
# under pytest-xdist (`pytest -n 2`) the workers share the cores: each one, and every process it starts, gets its
# share of threads instead of all of them (oversubscribed BLAS threads would slow every test down)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(max(1, _cores // _WORKERS))
# Without CUDA the Triton momentum kernel's tests (test_triton_scan.py) run in Triton's CPU interpreter, which
# must be chosen before anything imports triton (its standard library, tl.zeros and the like, is decorated then;
# under xdist another test may import it first). Nothing else here runs Triton on a CPU.
if importlib.util.find_spec("triton") is not None:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
# A test run started in the background (`cmd &` without job control, nohup) inherits SIGINT ignored, and so does
# every process it starts: the tests of what a Ctrl-C does need it as a terminal has it (Python's handler, which an
# exec turns back into the default)
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN and threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, signal.default_int_handler)
# tiny, fast runs on the TREC rows only (BPE training and tokenisation take about a second)
SMOKE = ["debug=smoke", "data.tasks=[trec]", "trainer.accelerator=cpu"]


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the tests marked slow (CI does: .ci/run)")


def _runs_slow(config) -> bool:
    """The tests marked slow (multi-process runs, the benchmarks' smoke runs, the leak checks over the whole LM text)
    run with --slow, under any -m expression (`-m slow`: those alone), when picked with -k, or when named by id; not
    by default, which keeps `pytest` under 10 minutes on 2 cores."""
    return config.getoption("--slow") or bool(config.getoption("markexpr")) or bool(config.getoption("keyword"))


def pytest_report_header(config):
    if not _runs_slow(config):
        return "tests marked slow are left out: `pytest --slow` runs every test, `pytest -m slow` those alone"


def _node_id(config, arg: str) -> str:
    """A test id as typed (from any folder, or an absolute path) as pytest names it: relative to the root folder."""
    path, rest = arg.split("::", 1)
    full = (Path(config.invocation_params.dir) / path).resolve()
    try:
        return f"{full.relative_to(config.rootpath).as_posix()}::{rest}"
    except ValueError:
        return arg


def _leave_out_slow(config, items) -> None:
    if _runs_slow(config):
        return
    named = [_node_id(config, a) for a in config.args if "::" in a]  # a test named by its id runs, slow or not
    keep, left = [], []
    for item in items:
        slow = item.get_closest_marker("slow") and not any(item.nodeid.startswith(a) for a in named)
        (left if slow else keep).append(item)
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = keep


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """--dist loadgroup: a test marked xdist_group is named "<node id>@<group>" so that the scheduler sends the
    whole group to one worker. pytest-xdist does it by setting item._nodeid, which pytest 9 no longer reads (the
    id is item._id): the groups were spread over the workers, each building what the group shares. Done here
    where xdist's renaming did not take. The tests marked slow are left out first, unless asked for (_runs_slow)."""
    _leave_out_slow(config, items)
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        groups = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                         for m in item.iter_markers("xdist_group")})
        if groups and "@" not in item.nodeid.rsplit("]", 1)[-1] and hasattr(item, "_id"):
            item._id = type(item._id).parse(f"{item.nodeid}@{'_'.join(groups)}")


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory):
    """One cache for the run. Under pytest-xdist the workers share it, as processes that train together share
    one (momattn builds each entry under a file lock or writes it atomically): the CPU kernel, tokenizers and
    token files are built once per run instead of once per worker."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        d = tmp_path_factory.getbasetemp().parent / "momattn_cache"  # the run's folder, above the workers' own
        d.mkdir(exist_ok=True)
    else:
        d = tmp_path_factory.mktemp("momattn_cache")
    os.environ["MOMATTN_CACHE"] = str(d)
    return d


def compose_train(tmp_path: Path, overrides: list[str]):
    """The real training config, as Hydra would compose it, writing into tmp_path."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
        cfg.hydra.runtime.cwd = str(tmp_path)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    GlobalHydra.instance().clear()
    return cfg


def run_cli(script: str, args: list[str], cwd: Path, env: dict | None = None, timeout: int = 300,
            fresh: bool = False):
    """Run train.py / evaluate.py (a path from the repository root; "-m" with args [module, ...]: python -m) as a
    user would; returns the CompletedProcess. env: extra variables, None removes one. The process is forked from a warm interpreter (tests/zygote.py) unless `fresh`, MOMATTN_TEST_FRESH=1,
    or the environment changes what an import reads (_READ_AT_IMPORT): then it is a new `python`."""
    full_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    if full_env.get("MUTANT_UNDER_TEST") == "stats":  # mutmut's coverage pass: its recorder works in-process only
        full_env["MUTANT_UNDER_TEST"] = ""
    argv = [script, *args] if script == "-m" else [str(ROOT / script), *args]
    warm = None if fresh or "MUTANT_UNDER_TEST" in full_env else _zygote(full_env, set(env or {}))
    if warm is None:
        return subprocess.run([sys.executable, *argv], cwd=cwd, env=full_env, capture_output=True, text=True,
                              timeout=timeout)
    try:
        return warm.run(argv, cwd, full_env, timeout)
    finally:
        warm.lock.release()


# variables an import reads (torch's threads and logs, the scan backend, Triton's interpreter, Lightning's rank, the
# import path, Python's stdio): a run that sets one to another value than the warm interpreter saw gets a fresh one
_READ_AT_IMPORT = ("PYTHONPATH", "PYTHONHASHSEED", "PYTHONWARNINGS", "PYTHONSAFEPATH", "PYTHONUNBUFFERED",
                   "PYTHONIOENCODING", "PYTHONUTF8", "LANG", "LC_ALL", "LC_CTYPE", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                   "MOMATTN_SCAN_BACKEND", "TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES", "RANK", "LOCAL_RANK",
                   "SLURM_PROCID", "JSM_NAMESPACE_RANK", "TORCH_LOGS")
_READ_AT_IMPORT_PREFIXES = ("PYTHON", "TORCH", "PYTORCH_", "OMP_", "GOMP_", "KMP_", "HF_")
# the rank variables are read at import as int(value), unset meaning 0 (Lightning's and torchmetrics'
# rank_zero_only.rank): "0" imports as their absence does, so a node-0 / LOCAL_RANK=0 run can go warm
_RANK_AT_IMPORT = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
_WARM: dict = {"zygotes": [None, None], "runs": 0, "failed": None}  # this worker's two warm interpreters


def _import_time_differs(env: dict, warm_env: dict, asked: set) -> bool:
    """Whether a variable an import reads differs: the listed ones, and those of the prefixes that the run itself
    sets (`asked`; libraries set some in the worker's own environment, e.g. a cache folder, that no import reads)."""
    keys = {k for k in {*env, *warm_env} if k in _READ_AT_IMPORT or (k in asked and k.startswith(_READ_AT_IMPORT_PREFIXES))}

    def seen(e: dict, k: str):
        return None if k in _RANK_AT_IMPORT and e.get(k) == "0" else e.get(k)

    return any(seen(env, k) != seen(warm_env, k) for k in keys)


def _zygote(env: dict, asked: set):
    """A warm interpreter for this run, or None (then a fresh python). Two alternate, each with its own hash seed:
    two runs in a row (a run and its resume) never share one, as two fresh interpreters would not."""
    if os.environ.get("MOMATTN_TEST_FRESH") == "1" or _WARM["failed"] or sys.platform != "linux":
        return None  # (fork and fd passing over a SOCK_SEQPACKET socket: written and tested on Linux only)
    slot = _WARM["runs"] % 2
    _WARM["runs"] += 1
    warm = _WARM["zygotes"][slot]
    if _import_time_differs(env, warm.env if warm is not None else dict(os.environ), asked):
        return None
    if warm is None or warm.proc.poll() is not None:
        try:
            warm = _WARM["zygotes"][slot] = Zygote()
        except (OSError, RuntimeError, ValueError) as e:
            print(f"[conftest] no warm interpreter ({e!r}): command-line runs start a fresh python", file=sys.stderr)
            _WARM["failed"] = repr(e)
            return None
    if _import_time_differs(env, warm.env, asked):
        return None
    return warm if warm.lock.acquire(blocking=False) else None  # one run at a time (another thread's: fresh)


class Zygote:
    """The client of tests/zygote.py: one warm interpreter that forks a child per command-line run."""

    def __init__(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.env, self.lock, self.requests = dict(os.environ), threading.Lock(), 0
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "zygote.py"), str(theirs.fileno())],
                                     pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=self.env)
        theirs.close()
        self.sock = ours
        ours.settimeout(600)
        try:
            ready = ours.recv(64)
        except BaseException:
            self.proc.kill()
            raise
        if ready != b"ready":
            self.proc.kill()
            raise RuntimeError(f"tests/zygote.py did not start (exit code {self.proc.wait()})")

    def close(self) -> None:
        """Stop this warm interpreter (a run was interrupted: its replies can no longer be trusted)."""
        with contextlib.suppress(OSError):
            self.sock.close()
        self.proc.kill()
        self.proc.wait()

    def run(self, argv: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
        self.pid = None
        try:
            return self._run(argv, cwd, env, timeout)
        except subprocess.TimeoutExpired:
            raise
        except BaseException:
            # interrupted (pytest-timeout, Ctrl-C) or the warm interpreter died: kill the child and this interpreter,
            # so that the next run starts another one instead of reading this run's replies
            if self.pid is not None:
                with contextlib.suppress(OSError):
                    os.kill(self.pid, signal.SIGKILL)
            self.close()
            raise

    def _run(self, argv: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        nul = os.open(os.devnull, os.O_RDONLY)
        self.requests += 1
        req = self.requests
        try:
            socket.send_fds(self.sock, [json.dumps({"id": req, "argv": argv, "cwd": str(cwd), "env": env}).encode()],
                            [nul, out_w, err_w])
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            for fd in (nul, out_w, err_w):
                os.close(fd)
        read = {out_r: [], err_r: []}

        def drain(fd):
            with open(fd, "rb") as f:
                read[fd].append(f.read())

        threads = [threading.Thread(target=drain, args=(fd,), daemon=True) for fd in read]
        for t in threads:
            t.start()

        def reply(what: str, wait: float) -> int:
            self.sock.settimeout(wait)
            msg = self.sock.recv(64).decode().split()
            if len(msg) != 3 or msg[:2] != [str(req), what]:
                raise RuntimeError(f"the warm interpreter (tests/zygote.py) answered {msg} to run {req}: it died or "
                                   f"lost track; its output is above")
            return int(msg[2])

        pid = self.pid = reply("pid", 60)
        try:
            rc, expired = reply("rc", timeout), False
        except TimeoutError:
            with contextlib.suppress(OSError):  # it may have ended meanwhile
                os.kill(pid, signal.SIGKILL)
            rc, expired = reply("rc", 60), True
        self.pid = None  # reaped: its number may be another process's from now on
        for t in threads:
            t.join(None if not expired else 10)

        def text(fd):  # as subprocess.run(text=True) decodes: the locale's encoding, universal newlines
            data = b"".join(read[fd]).decode(locale.getpreferredencoding(False))
            return data.replace("\r\n", "\n").replace("\r", "\n")

        if expired:
            raise subprocess.TimeoutExpired([sys.executable, *argv], timeout, output=text(out_r), stderr=text(err_r))
        done = subprocess.CompletedProcess([sys.executable, *argv], rc, text(out_r), text(err_r))
        done.warm = True  # for tests/test_zygote.py
        return done


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as jq, JavaScript's JSON.parse and serde_json do."""
    def refuse(token):
        raise ValueError(f"bare {token} in JSON (not standard JSON; write null)")
    return json.loads(text, parse_constant=refuse)


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of a run's CSVLogger file (logger=csv)."""
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def train_losses(run_dir: Path) -> dict[int, float]:
    """{step: train/loss} of a run logged with logger=csv."""
    return {int(r["step"]): float(r["train/loss"]) for r in read_metrics(run_dir) if r.get("train/loss")}


def tiny_gpt(kind: str = "vanilla", vocab: int = 37, block_size: int = 64, pos_emb: str = "learned", seed: int = 0,
             **attention):
    """A 2-layer, 16-wide GPT in eval mode, the same for the same arguments (seeded)."""
    import torch

    from momattn.model import GPT, AttentionConfig, GPTConfig

    torch.manual_seed(seed)
    cfg = GPTConfig(block_size=block_size, vocab_size=vocab, n_layer=2, n_head=2, n_embd=16, pos_emb=pos_emb,
                    attention=AttentionConfig(kind=kind, **attention))
    return GPT(cfg).eval()
