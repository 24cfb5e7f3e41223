"""A warm start for the tests' command-line runs (conftest.run_cli): one process per pytest worker imports torch,
Lightning, Hydra and momattn once, then forks a child for each `python <script> <args>` (or `python -m <module>
<args>`) the tests run.

Each child is a new process, with the test's working folder, environment, arguments and its own stdin / stdout /
stderr (the test's pipes, passed over the socket), and runs the script as `python script.py` would (`__main__`,
sys.argv, sys.path[0], exit code, atexit, a traceback and 1 on an uncaught exception). It differs from a fresh
interpreter in what the imports did once, under this process's environment (conftest runs a fresh one where a
test's environment changes what an import reads), in its hash seed (shared by this process's children: conftest
alternates two warm interpreters, so two runs in a row never share one), and at exit (no module teardown: the
garbage collector runs once instead). Nothing here runs a torch op before forking (its thread pools
are not fork-safe once used). On a 2-core CPU without AVX-512, `import lightning` alone takes 12 s: most of the
test suite's time before this.

    python tests/zygote.py <socket fd>  # by conftest: a SOCK_SEQPACKET socket; a JSON request with fds 0/1/2 attached
                                        # gets "<id> pid <pid>", then "<id> rc <exit code>"
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRELOAD = ["torch", "lightning.pytorch", "hydra", "omegaconf", "momattn.cli", "momattn.training", "momattn.eval.runner",
           "momattn.generate", "momattn.analysis.runner", "momattn.export"]


def run_child(req: dict, imported_env: dict) -> None:
    """In the forked child: become `python <argv[0]> <argv[1:]>` in req's folder and environment; never returns."""
    import gc
    import random
    import runpy
    import signal
    import tempfile
    import threading
    import traceback

    code, interrupted = 1, False
    here = run_child.__code__.co_filename  # read now: python -m runs the module in this file's globals
    try:
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update({**imported_env, **req["env"]})  # what the imports set (Lightning's NVML check), unless set
        tempfile.tempdir = None  # TMPDIR read again
        random.seed()  # fresh seeds, as a new interpreter has (torch's default seed is fixed anyway)
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()
        argv = list(req["argv"])
        sys.orig_argv = [sys.executable, *argv]
        module = argv[1] if argv[0] == "-m" else None
        if module:  # python -m: the folder it runs in first on sys.path; runpy sets argv[0] to the module's file
            sys.path[0] = os.getcwd()
            sys.argv = ["-m", *argv[2:]]
            for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
                del sys.modules[name]  # preloaded: run it anew, as python -m would (runpy warns otherwise)
            script = None
        else:
            script = str(Path(argv[0]).resolve())
            if not os.path.isfile(script):
                print(f"{sys.executable}: can't open file {argv[0]!r}: [Errno 2] No such file or directory",
                      file=sys.stderr)
                os._exit(2)
            sys.argv = argv
            sys.path[0] = str(Path(script).parent)
        try:
            if module:  # what python -m calls: its messages (no such module), its frames in tracebacks; it runs the
                runpy._run_module_as_main(module, alter_argv=True)  # module in this file's globals (__main__)
            else:
                runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as e:  # as the interpreter reads SystemExit's code
            if e.code is None:
                code = 0
            elif isinstance(e.code, int):
                code = e.code
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException as e:  # noqa: BLE001 - an uncaught error: its traceback, exit 1, as `python` does
            tb = e.__traceback__  # from the script's first frame on (python -m: from runpy's, as python shows)
            while tb is not None and tb.tb_frame.f_code.co_filename != (script or here):
                tb = tb.tb_next
            if script is None and tb is not None:
                tb = tb.tb_next
            sys.excepthook(type(e), e.with_traceback(tb), tb)
            code, interrupted = 1, type(e) is KeyboardInterrupt
            del tb  # its frames hold the script's globals: free them for the collection below
        threading._shutdown()  # what interpreter exit does: wait for the threads that are not daemons, then atexit
        import atexit

        atexit._run_exitfuncs()
        gc.collect()  # finalizers of what the script left in cycles (an unclosed file's buffer), as teardown runs them
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        if interrupted:  # python ends an uncaught KeyboardInterrupt by SIGINT (130 where that does not end it)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
            code = 130
        os._exit(code & 0xFF)


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    sys.path[0] = str(ROOT)  # as for `python ROOT/train.py`
    before = dict(os.environ)
    for name in PRELOAD:
        importlib.import_module(name)
    imported_env = {k: v for k, v in os.environ.items() if before.get(k) != v}
    sock.send(b"ready")
    while True:
        msg, fds, _, _ = socket.recv_fds(sock, 1 << 20, 3)
        if not msg:
            return
        req = json.loads(msg)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            sock.close()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            run_child(req, imported_env)
        for fd in fds:
            os.close(fd)
        sock.send(f"{req['id']} pid {pid}".encode())
        _, status = os.waitpid(pid, 0)
        sock.send(f"{req['id']} rc {os.waitstatus_to_exitcode(status)}".encode())


if __name__ == "__main__":
    main()
