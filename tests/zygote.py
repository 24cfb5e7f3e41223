"""A warm start for the tests' command-line runs (conftest.run_cli): one process per pytest worker imports torch,
Lightning, Hydra and momattn once, then forks a child for each `python <script> <args>` (or `python -m <module>
<args>`) the tests run.

Each child is a new process, with the test's working folder, environment, arguments and its own stdin / stdout /
stderr (the test's pipes, passed over the socket), and runs the script as `python script.py` would (`__main__`,
sys.argv, sys.path[0], exit code, atexit, a traceback and 1 on an uncaught exception). It differs from a fresh
interpreter only in what the imports did once, under this process's environment: conftest runs a fresh one where
a test's environment changes what an import reads. Nothing here runs a torch op before forking (its thread pools
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


def run_child(req: dict) -> None:
    """In the forked child: become `python <argv[0]> <argv[1:]>` in req's folder and environment; never returns."""
    import runpy
    import threading
    import traceback

    code = 1
    try:
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        argv = list(req["argv"])
        module = argv[1] if argv[0] == "-m" else None
        if module:  # python -m: the folder it runs in first on sys.path, argv[0] the module's file
            import importlib.util

            sys.path[0] = os.getcwd()
            script = importlib.util.find_spec(module).origin
            sys.argv = [script, *argv[2:]]
        else:
            script = str(Path(argv[0]).resolve())
            sys.argv = argv
            sys.path[0] = str(Path(script).parent)
        try:
            if module:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
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
            tb = e.__traceback__  # from the script's first frame on: runpy's and this file's are not the user's
            while tb is not None and tb.tb_frame.f_code.co_filename != script:
                tb = tb.tb_next
            sys.excepthook(type(e), e.with_traceback(tb), tb)
            code = 1
        threading._shutdown()  # what interpreter exit does: wait for the threads that are not daemons, then atexit
        import atexit

        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code & 0xFF)


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    sys.path[0] = str(ROOT)  # as for `python ROOT/train.py`
    for name in PRELOAD:
        importlib.import_module(name)
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
            run_child(req)
        for fd in fds:
            os.close(fd)
        sock.send(f"{req['id']} pid {pid}".encode())
        _, status = os.waitpid(pid, 0)
        sock.send(f"{req['id']} rc {os.waitstatus_to_exitcode(status)}".encode())


if __name__ == "__main__":
    main()
