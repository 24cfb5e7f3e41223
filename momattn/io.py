"""Atomic, durable file writes: the one place that knows how.

Every write goes to a temporary file in the target's folder, is flushed and fsynced, renamed over the target
(atomic on POSIX), and then the folder itself is fsynced so that a power cut cannot lose the rename. A reader,
or a crash at any moment, sees either the old complete file or the new complete file, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import secrets
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from momattn.errors import raised_from


def cache_root() -> Path:
    """momattn's cache folder: MOMATTN_CACHE (a ~ expanded; empty = unset), else ~/.cache/momattn."""
    return Path(os.environ.get("MOMATTN_CACHE") or Path.home() / ".cache" / "momattn").expanduser()


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder so that a rename inside it survives a power cut (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# the temporary file atomic_write creates next to its target: .<name>.<random hex>.tmp<pid>@<host> (an older
# momattn's has no @<host>); remove_stale_temps and momattn.faults read the PID and the host from it
TEMP_NAME = re.compile(r"\..+\.tmp(\d+)(?:@([A-Za-z0-9-]+))?")
NAME_MAX = 255  # bytes in one file or folder name (ext4, xfs, btrfs, APFS, NTFS's 255 characters)


def probe_write(folder: str | os.PathLike) -> None:
    """Make and remove a file in `folder`: an OSError where it cannot be written (os.access says yes to root,
    even in /proc or on a read-only mount)."""
    import tempfile

    with tempfile.NamedTemporaryFile(dir=folder, prefix=".momattn-write-test-"):
        pass


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call write(f) on a temporary binary file next to `path`, fsync it, rename it to `path`, fsync the folder."""
    path = Path(path)
    # a random part: two writers with one PID (threads; twin containers on a shared filesystem) never share a file;
    # the PID and the host come last, for remove_stale_temps
    tail = f".{secrets.token_hex(4)}.tmp{os.getpid()}@{_host()}"
    # the target's name is cut to leave room for the rest: a valid name of over ~170 bytes made the temporary file's
    # too long to create, and the save failed (a checkpoint whose formatted name had 251 bytes, at its first save)
    room = NAME_MAX - 1 - len(tail)
    tmp = path.with_name(f".{path.name.encode()[:room].decode(errors='ignore')}{tail}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except Exception as e:
        # torch.save's zip writer turns its file's OSError (a disk filling mid-write) into a RuntimeError ("unexpected
        # pos ..."): the OSError behind it is what failed, and what the callers' full-disk handling looks for
        failed = raised_from(e, OSError)
        if failed is None:
            raise
        failed.write_target = str(path)  # cli.unwritable: a write of this file failed (not a read), named by its target
        if failed is e:
            raise
        raise failed from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


@contextlib.contextmanager
def file_lock(lock_path: str | os.PathLike, timeout_s: float | None = None, waiting: str | None = None,
              say_every_s: float = 60.0) -> Iterator[bool]:
    """Hold an exclusive advisory lock on the file `lock_path` (created if missing; flock, so a holder that dies
    releases it) and yield True; with timeout_s, yield False once it has waited that long. Also False, and the
    caller goes on unlocked, where the lock file cannot be opened or the platform has no flock (Windows).
    waiting: what the holder makes (e.g. 'the token cache'): a wait is said on stderr, naming the holder, which
    the lock file records, and said again every say_every_s (a run waited on another's cache build in silence)."""
    try:
        import fcntl
    except ImportError:  # Windows
        fcntl = None
    fd = None
    if fcntl is not None:
        lock_path = Path(lock_path)
        with contextlib.suppress(OSError):
            lock_path.parent.mkdir(parents=True, exist_ok=True)
        for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):  # read-only: a lock file another user created
            try:
                fd = _open_lock(lock_path, flags)
                break
            except OSError:
                continue
    held = False
    if fd is not None:
        start = time.monotonic()
        deadline, said = None if timeout_s is None else start + timeout_s, None
        while not held:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if deadline is None and waiting is None else fcntl.LOCK_NB))
                held = True
            except BlockingIOError:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                if waiting is not None and (said is None or now - said >= say_every_s):
                    holder = ""
                    with contextlib.suppress(OSError):
                        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
                    print(f"[momattn] waiting for {waiting}, which {holder or 'another process'} is making "
                          f"({lock_path})" + (f"; {now - start:.0f} s so far" if said is not None else ""),
                          file=sys.stderr, flush=True)
                    said = now
                time.sleep(0.002 if deadline is not None else 0.05)
            except OSError:  # a filesystem without locks
                break
        if held and waiting is not None:
            _say_holder(fd)  # who holds it, for the next waiter's line
    try:
        yield held
    finally:
        if fd is not None:
            os.close(fd)  # closing releases the lock


def lock_folder(folder: str | os.PathLike) -> tuple[int | None, str | None]:
    """Try, without waiting, for an exclusive lock on `folder`/.momattn.lock (flock: a holder that dies releases it):
    (fd, None) where it is now held (closing fd releases it; the file then names this process), (None, holder) where
    another process holds it (holder: 'process PID on HOST'), (None, None) where no lock can be had (no flock:
    Windows, a filesystem without locks)."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None, None
    lock = Path(folder) / ".momattn.lock"
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = _open_lock(lock, os.O_RDWR | os.O_CREAT)
    except OSError:
        return None, None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = ""
        with contextlib.suppress(OSError):
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        os.close(fd)
        return None, holder or "another process"
    except OSError:  # a filesystem without locks
        os.close(fd)
        return None, None
    _say_holder(fd)
    return fd, None


def _open_lock(path: Path, flags: int) -> int:
    """A lock file opened without following a link, and only a plain file: a link planted in a shared cache made
    the holder's line truncate and overwrite the file it pointed at (found by review)."""
    fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644)
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or a device: not a lock file
        os.close(fd)
        raise OSError(errno.EINVAL, "not a plain file", str(path))
    return fd


def _say_holder(fd: int) -> None:
    """Write 'process PID on HOST' into a held lock file: only into one this user owns (another's is left as is)."""
    with contextlib.suppress(OSError):
        if hasattr(os, "getuid") and os.fstat(fd).st_uid != os.getuid():
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {_host()}".encode(), 0)


def lock_beside(path: str | os.PathLike) -> Path:
    """The lock file of a read-modify-write of `path`: `.NAME.lock` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def remove_path(p: Path) -> None:
    """A checkpoint folder or file, if there; a link itself, never what it points at (save_last=link)."""
    import shutil

    if p.is_symlink():
        p.unlink()
    elif p.is_dir():
        shutil.rmtree(p)
    elif p.exists():
        p.unlink()


def swap_into(new: Path, path: Path) -> None:
    """Rename `new` (a file or a folder) to `path`, whichever of the two is there now: that one is renamed aside to
    .<name>.old first and removed last, so a crash in between leaves both (a file cannot be renamed over a folder,
    nor a folder over a file)."""
    old = path.with_name(f".{path.name}.old")
    remove_path(old)
    if path.exists():
        path.rename(old)  # a crash from here on leaves .old (the previous one) in place
    new.rename(path)
    remove_path(old)


def recover_swaps(folder: Path) -> list[tuple[Path, Path]]:
    """The checkpoints a swap_into cut short (a kill between its two renames) left aside, renamed back: X where
    .X.old is there and X is not takes the new one (.X.tmp, FSDP's folder, or .X.new), complete by then, else the
    old. Its newest checkpoint was hidden: `ckpt_path=last` offered only older best files (found by review).
    Every process of a job may call it (torchrun starts them at once): one at a time, under a lock beside the
    folder, so that none resolves ckpt_path=last before the checkpoint is back (diff review). Returns (restored,
    from) pairs: this process's."""
    folder, out = Path(folder), []
    if not any(folder.glob(".*.old")):
        return out
    with file_lock(lock_beside(folder)):
        for old in sorted(folder.glob(".*.old")):
            path = old.with_name(old.name[1:-len(".old")])
            if path.exists() or path.is_symlink():
                continue  # the swap was done (or another process restored it); the next swap removes .old
            new = next((n for n in (path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.new"))
                        if n.is_file() or (n / ".metadata").is_file()), old)  # a folder: torch's index written last
            try:
                new.rename(path)
            except OSError:  # no lock here (no flock: Windows, some shared filesystems), and another process
                if path.exists():  # restored it first (diff review)
                    continue
                raise
            out.append((path, new))
            if new != old:
                remove_path(old)
    return out


def restore_left_aside(checkpoints: Path, unless_held: bool = False) -> None:
    """recover_swaps, said: checkpoints a process killed between swap_into's renames left aside, renamed back.
    unless_held: only where no process holds the run folder (checkpoints' parent; a check before this run holds its
    own): a live run between its two renames would lose its save (diff review). A folder that cannot be written
    is said and left (a traceback, and the search for a run to resume stopped there)."""
    if not any(Path(checkpoints).glob(".*.old")):
        return
    fd = None
    if unless_held:
        fd, holder = lock_folder(Path(checkpoints).parent)
        if holder is not None:
            return
    try:
        for path, source in recover_swaps(checkpoints):
            print(f"[momattn] restored {path} from {source.name}, which a process killed while it replaced the "
                  "checkpoint left aside", file=sys.stderr)
    except OSError as e:
        print(f"[momattn] warning: {checkpoints} holds a checkpoint a killed process left aside, which cannot be "
              f"restored here ({e.strerror or e}): rename it back by hand", file=sys.stderr)
    finally:
        if fd is not None:
            os.close(fd)


def file_id(p: Path) -> tuple:
    """One file however it is named: a symlink and its target, or two hard links, are the same file."""
    st = p.stat()
    return (st.st_dev, st.st_ino)


def remove_stale(folder: Path, patterns: Iterable[str], keep: Iterable[str]) -> None:
    """Remove the files in `folder` matching `patterns` whose names are not in `keep`: an earlier report's there
    that this one did not write again (they stood beside it, contradicting it)."""
    keep = set(keep)
    for p in {p for pattern in patterns for p in Path(folder).glob(pattern)}:
        if p.name not in keep:
            p.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def save_figure(fig: Any, path: str | os.PathLike, dpi: int) -> Path:
    """A matplotlib figure as a PNG at `path`, written atomically (a crash never leaves half a picture)."""
    return atomic_write(path, lambda f: fig.savefig(f, dpi=dpi, format="png"))


def finite_json(obj: Any) -> Any:
    """obj with every non-finite float (nan, inf, -inf) replaced by None, in dicts, lists and tuples at any depth.

    JSON has no NaN or Infinity: Python's json writes them as bare tokens that strict readers (jq, JavaScript's
    JSON.parse, serde_json, Go's encoding/json) refuse, so a diverged run's nan perplexity made a whole results
    file unreadable there. null is what JavaScript writes for them; the markdown reports still say nan or inf.
    A numpy scalar or array becomes its Python value or list first (json cannot write them; with default=str a
    numpy nan became the string "nan")."""
    if type(obj).__module__ == "numpy" and hasattr(obj, "tolist"):  # np.float32, np.int64, np.bool_, ndarray
        obj = obj.tolist()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    return obj


def json_text(obj: Any, **kwargs: Any) -> str:
    """Standard JSON text of obj (json.dumps keyword arguments pass through), a non-finite number as null."""
    return json.dumps(finite_json(obj), allow_nan=False, **kwargs)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def remove_stale_temps(folder: str | os.PathLike, idle_s: float = 60.0, foreign_idle_s: float = 86400.0,
                       pattern: str = ".*.tmp*") -> list[Path]:
    """Delete the temporary files that atomic_write left in folder when its process was killed mid-write (SIGKILL,
    OOM, power cut): those written on this host (the name says which) whose writer (the PID in the name) is not
    running and which have not been written for idle_s seconds; and those of another host (a node sharing the
    filesystem, whose processes cannot be asked) not written for foreign_idle_s (a day). Returns what was removed.
    A large model's partial checkpoints would otherwise fill the disk over resumes."""
    removed, here = [], _host()
    for tmp in Path(folder).glob(pattern):  # pattern: only some files' temporaries (a folder others share)
        m = TEMP_NAME.fullmatch(tmp.name)  # no host: an older momattn's, this host's
        if not m:
            continue
        foreign = m.group(2) not in (None, here)
        try:
            mtime = tmp.stat().st_mtime
            if not foreign and _running(int(m.group(1)), since=mtime):
                continue
            if time.time() - mtime >= (foreign_idle_s if foreign else idle_s):
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # gone already, or not ours to remove
            continue
    return removed


def _host() -> str:
    """This machine's name as it goes into a file name: letters, digits and hyphens, at most 63 characters."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"


PID_TAKEN_AFTER_S = 3600.0  # a process started this long after a file was written is not its writer


def _running(pid: int, since: float | None = None) -> bool:
    """Whether process pid runs, and (since: a file's time) ran then: a process started an hour or more after the
    file was written took the PID of its writer, which ended (a restarted container's train.py gets the PID its
    killed one had, and kept its partial files). The margin is wide: a file's time may come from another clock (a
    network filesystem's server) or a coarse one: a live writer's file is kept for any clock off by under an hour."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        pass
    started = _start_time(pid)
    if pid == os.getpid() and since is not None and started is not None:  # this process: a file written before it
        return started <= since  # started is its killed predecessor's, whose PID a restarted container gave it
    return since is None or started is None or started <= since + PID_TAKEN_AFTER_S


def _start_time(pid: int) -> float | None:
    """When process pid started (seconds since the epoch), where /proc tells (Linux); else None."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None
