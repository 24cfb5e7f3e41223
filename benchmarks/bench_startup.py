"""How long a user waits for the entry points' quick answers: --help, a misspelled key, a bad value, each in a
fresh interpreter, against `import torch` and `import lightning.pytorch` alone. Medians over interleaved rounds.

    .venv/bin/python benchmarks/bench_startup.py [--rounds 5] [--root CHECKOUT] [--out PATH]

--root times another checkout's entry points (a worktree of an older commit: the before of a change) with this
interpreter. Writes benchmarks/results/startup.json and startup.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import check_out, default_out, die_with_parent, machine_info, run_main, table, write_results  # noqa: E402

from momattn.utils import positive_int  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CASES = {  # name: (arguments after the interpreter, expected exit code)
    "import torch": (["-c", "import torch"], 0),
    "import lightning.pytorch": (["-c", "import lightning.pytorch"], 0),
    "train.py --help": (["{root}/train.py", "--help"], 0),
    "evaluate.py --help": (["{root}/evaluate.py", "--help"], 0),
    "train.py model.n_layr=2 (typo)": (["{root}/train.py", "model.n_layr=2", "hydra.run.dir={tmp}/a"], 2),
    "train.py attention.eta=1.5 (bad value)": (["{root}/train.py", "attention=momentum", "attention.eta=1.5",
                                                "hydra.run.dir={tmp}/b"], 2),
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=positive_int, default=5)
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout whose entry points are timed")
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/startup.json for the "
                    "default settings, else a scratch file (said)")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    root = args.root.resolve()
    if not (root / "train.py").is_file():
        ap.error(f"--root {root}: no train.py there")
    if args.out is None:  # a trial run replaced the committed results (found by review)
        args.out = default_out(ap, args, "startup.json")
    check_out(ap, args.out)
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or None
    times: dict[str, list[float]] = {name: [] for name in CASES}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, (argv, want) in CASES.items():
                cmd = [sys.executable, *(a.format(root=root, tmp=tmp) for a in argv)]
                t0 = time.perf_counter()
                p = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, preexec_fn=die_with_parent)  # a script's folder is first on
                # sys.path: --root's momattn is the one imported
                times[name].append(time.perf_counter() - t0)
                if p.returncode != want:
                    sys.exit(f"error: {name}: exit code {p.returncode}, expected {want}:\n{p.stderr[-2000:]}")
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n.split(' (')[0]} {t[-1]:.2f}s"
                                                                 for n, t in times.items()), flush=True)
    rows = {n: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "samples_s": t}
            for n, t in times.items()}
    res = {"machine": machine_info("cpu"), "root": str(root), "commit": commit, "rounds": args.rounds, "rows": rows}
    md = "\n".join([f"Entry-point start-up, seconds, fresh interpreter each time ({args.rounds} interleaved rounds; "
                    f"checkout {commit or root}; {res['machine'].get('cpu', '')})", "",
                    table(["command", "median", "min", "max"],
                          [[n, f"{v['median_s']:.2f}", f"{v['min_s']:.2f}", f"{v['max_s']:.2f}"]
                           for n, v in rows.items()])])
    write_results(args.out, res, md)


if __name__ == "__main__":
    run_main(main)
