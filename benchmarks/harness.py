"""The timing harness every benchmark here uses: interleaved repeats, medians with their spread, peak memory,
machine info, and results written as JSON plus a printed markdown table.

    timer = Timer(repeats=7, warmup=2, min_sample_s=0.2, patience_s=150)
    stats = timer.time({"vanilla": fn_a, "momentum": fn_b}, device)   # name -> median_s, iqr_pct, ...

Each round times every function once, in an order rotated each round, so slow drift of a shared machine hits
all of them alike. A sample during which other processes kept more than `max_other_cores` CPU cores busy
(/proc/stat) is retaken after they calm down, while the timer's patience lasts; what was retaken or kept
anyway is counted in the stats.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from momattn import hardware  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SCRATCH = Path(tempfile.gettempdir()) / "momattn-bench"  # a trial run's results: never the committed ones

# as train.py, evaluate.py and the other entry points do (momattn.cli): every variant a benchmark times in this
# process runs with glibc keeping freed memory, so no step pays page faults for re-allocated tensors
hardware.keep_freed_memory()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _busy_cpu_s() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat; steal included), or None."""
    try:
        with open("/proc/stat") as f:
            ticks = [
                int(x) for x in f.readline().split()[1:9]
            ]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _sample(fn: Callable[[], object], number: int, device: torch.device) -> tuple[float, float, float | None]:
    """Wall and own-CPU seconds per call over `number` back-to-back calls (garbage collector off), and the
    CPU cores other processes kept busy meanwhile (None where /proc/stat is unreadable)."""
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        sync(device)
        busy0, own0, t0 = _busy_cpu_s(), time.process_time(), time.perf_counter()
        for _ in range(number):
            fn()
        sync(device)
        wall = time.perf_counter() - t0
        busy1, own1 = _busy_cpu_s(), time.process_time()
    finally:
        if gc_was_on:
            gc.enable()
    others = None if busy0 is None or busy1 is None else max(0.0, (busy1 - busy0) - (own1 - own0)) / wall
    return wall / number, (own1 - own0) / number, others


QUARTILES = "inclusive"  # statistics.quantiles method of every spread (exclusive read 2 samples wider than their range)


def summarize(samples: list[float]) -> dict:
    """Median, extremes and spread (interquartile range over the median, in %) of timing samples."""
    q = statistics.quantiles(samples, n=4, method=QUARTILES) if len(samples) >= 2 else [samples[0]] * 3
    med = statistics.median(samples)
    return {
        "median_s": med,
        "min_s": min(samples),
        "max_s": max(samples),
        "iqr_pct": 100 * (q[2] - q[0]) / med,
    }


@dataclass
class Timer:
    """Interleaved timing with a budget of patience for a busy machine (seconds, spent as it goes)."""

    repeats: int = 7
    warmup: int = 2
    min_sample_s: float = 0.2  # a sample averages as many back-to-back calls as fill this
    patience_s: float = 0.0  # seconds this run may spend waiting out other processes; 0 keeps every sample
    max_other_cores: float = 0.25
    retries: int = 4

    def _wait_quiet(self, max_s: float) -> float:
        """Poll in 0.5 s windows until other processes keep at most max_other_cores busy; seconds waited."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < max_s:
            busy0, own0, w0 = _busy_cpu_s(), time.process_time(), time.perf_counter()
            time.sleep(0.5)
            busy1, own1 = _busy_cpu_s(), time.process_time()
            if busy0 is None or busy1 is None:
                break
            if ((busy1 - busy0) - (own1 - own0)) / (time.perf_counter() - w0) <= self.max_other_cores:
                break
        return time.perf_counter() - t0

    def _calls_per_sample(self, fn: Callable[[], object], device: torch.device) -> int:
        # warm up for `warmup` calls and at least min_sample_s; the later half's median sets calls per sample
        warm: list[float] = []
        while len(warm) < max(1, self.warmup) or (sum(warm) < self.min_sample_s and len(warm) < 1000):
            warm.append(_sample(fn, 1, device)[0])
        return max(1, math.ceil(self.min_sample_s / max(statistics.median(warm[len(warm) // 2 :]), 1e-9)))

    def time(self, fns: dict[str, Callable[[], object]], device: torch.device) -> dict[str, dict]:
        """Seconds per call of each fn: summarize() of its samples, plus CPU time and contention counts."""
        number = {name: self._calls_per_sample(fn, device) for name, fn in fns.items()}
        wall, cpu, others = ({name: [] for name in fns} for _ in range(3))
        retaken, names = dict.fromkeys(fns, 0), list(fns)
        gc.collect()
        for r in range(self.repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                for attempt in range(self.retries + 1):
                    t, c, busy = _sample(fns[name], number[name], device)
                    quiet = busy is None or busy <= self.max_other_cores
                    if quiet or attempt == self.retries or self.patience_s <= 0:
                        break
                    retaken[name] += 1
                    self.patience_s -= t * number[name] + self._wait_quiet(min(60.0, self.patience_s))
                wall[name].append(t)
                cpu[name].append(c)
                others[name].append(busy if busy is not None else float("nan"))
        return {
            name: {
                **summarize(wall[name]),
                "samples_s": wall[name],
                "cpu_median_s": statistics.median(cpu[name]),  # this process's CPU time: all threads
                "calls_per_sample": number[name],
                "other_cores_busy": others[name],
                "samples_retaken": retaken[name],
                "contended_samples_kept": sum(b > self.max_other_cores for b in others[name]),
            }
            for name in fns
        }


# -----------------------------------------------------------------------------
# peak memory of one call


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler's start/stop lines, which kineto writes straight to file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


MEMORY_METHOD = {
    "cuda": "torch.cuda.max_memory_allocated() minus memory_allocated() before the call "
    "(caching-allocator bytes of live tensors, after reset_peak_memory_stats)",
    "cpu": "torch.profiler(profile_memory=True): running sum of the CPU allocator's alloc/free events "
    "during one untimed call, maximum taken (every c10 CPU allocation, kernel scratch included; "
    "memory allocated before the call is not counted, nor are its frees)",
}


def peak_memory(run: Callable[[], object], device: torch.device) -> dict:
    """Peak bytes allocated at once during one call of `run`, above what was allocated before it, and the
    bytes still allocated when it returns (end_bytes)."""
    gc.collect()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run()
        sync(device)
        return {
            "peak_bytes": torch.cuda.max_memory_allocated(device) - base,
            "end_bytes": torch.cuda.memory_allocated(device) - base,
        }
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type().name == "CPU"
    ]
    end = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        end += e.nbytes()  # positive for an allocation, negative for a free
        peak = max(peak, end)
    return {"peak_bytes": peak, "end_bytes": end}


# -----------------------------------------------------------------------------
# machine info and output


def machine_info(device: torch.device | str, dtype_name: str = "fp32") -> dict:
    device = torch.device(device)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "describe": hardware.describe(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "dtype": dtype_name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if hasattr(os, "getloadavg"):
        info["loadavg_at_start"] = list(os.getloadavg())
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


_AUTOCAST = {"bf16-mixed": True, "bf16": True, "32-true": False, "32": False}  # the precisions train_step takes


def check_precision(precision: str) -> None:
    """Refuse (UserError: run_main's one line) a trainer.precision that train_step does not reproduce: train.py
    takes bf16-true, 16-true, 64-true too, and ginc_curve.py ended in a traceback on them (found by review)."""
    if str(precision) not in _AUTOCAST:
        from momattn.errors import UserError

        raise UserError(f"trainer.precision={precision}: this benchmark's training loop reproduces train.py's step "
                        "in 32-true and bf16-mixed only; give one of them")


def train_step(model, opt, sched, batches, accumulate: int = 1, clip: float = 0.0, precision: str = "32-true") -> float:
    """One optimizer step as train.py takes it, with no framework around it: `accumulate` micro-batches from the
    iterator `batches` (LitGPT's loss, model(x, targets=y), each scaled by 1/accumulate; under bf16 autocast for
    precision "bf16-mixed", around the forward and the loss as Lightning puts it), gradient clipping (none at 0),
    the optimizer, the schedule, zero_grad. Returns the step's loss (the micro-batches' mean) as a float, read as
    Lightning reads it for its progress bar."""
    device = next(model.parameters()).device.type
    check_precision(precision)
    autocast = _AUTOCAST[str(precision)]
    total = 0.0
    for _ in range(accumulate):
        x, y = next(batches)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            loss = model(x, targets=y) / accumulate
        loss.backward()
        total += loss.item()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return total


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table, every column right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def pct(x: float) -> str:
    return f"{x:+.1f}%"


def mib(b: int) -> str:
    return f"{b / 2**20:.1f}"


def measured(path: Path, parts: tuple[str, ...] = ()) -> bool:
    """Whether path holds a report with measurements (not a skip note; with `parts`, one of them measured): a
    benchmark that skips must not write its note over it."""
    try:
        old = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(old, dict) and not old.get("skipped") and (not parts or any(p in old for p in parts))


def die_with_parent() -> None:
    """preexec_fn of a benchmark's child process (a worker, a train.py run): on Linux the child gets SIGTERM when
    this process dies, so a benchmark stopped by SIGTERM or a time limit leaves no run going on, adopted by PID 1,
    burning the CPU under the next timing (found by review). Elsewhere it does nothing."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def default_out(ap, args, committed: str, skip: tuple[str, ...] = ("out",)) -> Path:
    """Where a run that gives no --out writes: the committed results (benchmarks/results/<committed>) when every
    setting is the default one that made them, else a scratch file in the temporary folder, said on stderr. A trial
    run with other settings (a small shape, one repeat) replaced the committed results and their table, measured on
    another machine (found by review)."""
    changed = [k for k, v in vars(args).items() if k not in skip and v != ap.get_default(k)]
    if not changed:
        return RESULTS / committed
    out = SCRATCH / committed
    print(f"[bench] settings other than the defaults ({', '.join('--' + k.replace('_', '-') for k in changed)}): "
          f"writing {out}, not the committed {RESULTS / committed} (give --out to choose)", file=sys.stderr)
    return out


def check_out(ap, path: Path, suffixes: tuple[str, ...] = (".md",)) -> None:
    """Refuse (ap.error: one line, exit 2) an output file that is a folder, or whose folder cannot be made or
    written, before the measurement: it failed in write_results afterwards, the whole run's numbers lost."""
    from momattn.io import probe_write

    if Path(path).suffix in suffixes:  # x.md: the JSON was written over its own .md (flows review)
        ap.error(f"--out {path}: give the JSON file's name (e.g. {Path(path).with_suffix('.json')}); the "
                 f"{', '.join(suffixes)} is written beside it")
    beside = [Path(path).with_suffix(s) for s in suffixes] if Path(path).name else []  # ('.' has no name)
    for p in (Path(path), *beside):
        if p.is_dir():
            ap.error(f"--out {path}: {p} is a folder; give a file name, e.g. {Path(path) / 'results.json'}")
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        probe_write(Path(path).parent)
    except OSError as e:
        ap.error(f"--out {path}: its folder cannot be written ({e.strerror or e}); choose another")


def check_name(ap, name: str | None) -> None:
    """Refuse (ap.error) a --name that is not a plain file name: '../x' wrote outside --out (found by review)."""
    if name is not None and (name in ("", ".", "..") or any(sep in name for sep in ("/", "\\", os.sep))):
        ap.error(f"--name {name!r}: a file name, without folders (the files go into --out)")


def check_out_dir(ap, folder: Path) -> None:
    """check_out for the benchmarks whose --out is a folder: refuse a file there, or a folder that cannot be made
    or written."""
    from momattn.io import probe_write

    if Path(folder).exists() and not Path(folder).is_dir():
        ap.error(f"--out {folder}: it is a file; give a folder, e.g. {Path(folder).parent}")
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        probe_write(folder)
    except OSError as e:
        ap.error(f"--out {folder}: it cannot be made or written ({e.strerror or e}); choose another")


def write_json(path: Path, obj, indent: int = 1) -> None:
    """obj as standard JSON (a non-finite number as null) at path, written atomically: a kill mid-write leaves the
    old file, never half a new one."""
    from momattn.io import atomic_write_text, json_text

    atomic_write_text(path, json_text(obj, indent=indent) + "\n")


def with_machine(md: str, machine) -> str:
    """md with a last line naming the machine (machine_info's), where md does not name it already: a table read
    alone says where it was measured (three scripts' .md did not: found by review)."""
    if not isinstance(machine, dict) or not machine.get("describe") or machine["describe"] in md:
        return md
    return (md.rstrip("\n") + f"\n\nMachine: {machine['describe']}; {machine.get('torch_threads')} torch threads; "
            f"{machine.get('date')}.")


def contention_note(res) -> str:
    """A line for a table whose timings kept samples taken while other work used the cores (Timer's
    contended_samples_kept, found anywhere in the results): it was in the JSON alone, and a table read from a
    busy machine looked like any other (found by review). '' where none was kept."""
    kept = total = 0

    def walk(x) -> None:
        nonlocal kept, total
        if isinstance(x, dict):
            if "contended_samples_kept" in x:
                kept += int(x.get("contended_samples_kept") or 0)
                total += len(x.get("samples_s") or [])
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(res)
    if not kept:
        return ""
    return (f"Contended: {kept} of {total} timed samples were taken while other work kept more than a quarter of a "
            "core busy (kept, out of retries or patience); read these timings as from a busy machine.")


def write_results(path: Path, res: dict, md: str) -> None:
    """Print the markdown, then write path with suffix .md and path (JSON), each atomically, the JSON last: the
    report that tables are rendered from is never older than its .md beside it."""
    from momattn.io import atomic_write_text

    md = with_machine(md, res.get("machine") if isinstance(res, dict) else None)
    if isinstance(res, dict) and "contention" not in res and (note := contention_note(res)):  # (bench_attention
        md += "\n\n" + note  # says its own)
    print()
    print(md)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path.with_suffix(".md"), md + "\n")
    write_json(path, res)
    print(f"wrote {path} and {path.with_suffix('.md')}")


def run_main(main: Callable[[], int | None]) -> None:
    """Run a benchmark's main and exit with its code; Ctrl-C and momattn's own errors (a missing checkpoint, a bad
    sweep folder) end in one line, not a traceback. Results already written stay (each write is atomic)."""
    from momattn.errors import UserError

    try:
        code = main()
    except KeyboardInterrupt:
        print("\ninterrupted: no results file is left half-written (each write is atomic)", file=sys.stderr)
        sys.exit(130)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)  # some mains return their results
