"""Mixed precision on a CPU with native bf16 (issue 11, goal 1): the main job in bf16 against fp32.

    python benchmarks/cpu_bf16_check.py                 # on a CPU with avx512_bf16 or AMX (e.g. the device host)
    python benchmarks/cpu_bf16_check.py --parts step --merge  # re-time the step beside the stored runs (a minute)
    python benchmarks/cpu_bf16_check.py --smoke --force # toy size on any CPU (what the test runs; writes to a
                                                        # temporary folder unless --out is given)

Two parts, both on the CPU even where a GPU is present:
  step  the main job's training step (its model and batch: 4 x 256, context 512, batch 8, vocabulary 4096:
        forward, loss, backward, clip, AdamW), interleaved, at --threads torch threads, three ways: "nanoGPT
        fp32" (the step as nanoGPT's train.py takes it: the (B, T, V) logits, then F.cross_entropy, in fp32, with
        for-each AdamW, which nanoGPT fuses on CUDA only; the issue measured momattn's model at 0.98x nanoGPT's
        model.py in that step), and train.py's step (model(x, targets=y), the blocked loss of momattn/loss.py;
        fused AdamW as LitGPT builds it) in fp32 and under bf16 autocast. Median tokens/s of each, and the
        ratios to "nanoGPT fp32" (of the medians, and paired per round); the issue's target is bf16 >= 2x.
  runs  the main job itself, `train.py trainer=cpu trainer.precision=P seed=S run_eval=false logger=csv`, for
        P in 32-true / bf16-mixed and S in --seeds (400 steps, the default), --parallel runs at a time with
        --threads threads each: final validation loss, tokens/s and fit seconds from each run's summary.json;
        the bf16 - fp32 loss difference per seed beside the spread between seeds.

Writes benchmarks/results/cpu_bf16.json and .md (rewritten after each part; --smoke: a temporary folder). On a CPU without native bf16 it
says so and measures nothing (bf16 matmuls are emulated there, ~200x slower than fp32) unless --force.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from momattn.hardware import (  # noqa: E402
    cpu_has_amx,
    cpu_has_native_bf16,
    cpu_vendor,
    describe,
    keep_freed_memory,
    resolve_precision,
)
from momattn.io import atomic_write_text, probe_write  # noqa: E402
from momattn.model import GPT, GPTConfig  # noqa: E402
from momattn.optim import fused_adamw_ok  # noqa: E402
from momattn.utils import positive_int  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_attention  # noqa: E402
from harness import SCRATCH, check_out, die_with_parent, measured, run_main, write_json  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PRECISIONS = ("32-true", "bf16-mixed")


def matmul_speedup(threads: int, n: int = 2048, rounds: int = 5) -> float:
    """bf16 matmul speed over fp32's at `threads` threads: the median of `rounds` paired timings of one n x n matmul
    each way (the flag says bf16 is native, not that it is faster: without AMX it was not)."""
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    pairs = [(a, b), (a.bfloat16(), b.bfloat16())]
    for x, y in pairs:  # warm-up: oneDNN builds its kernel on the first call
        torch.mm(x, y)
    ratios = []
    for _ in range(rounds):
        t = []
        for x, y in pairs:
            t0 = time.perf_counter()
            torch.mm(x, y)
            t.append(time.perf_counter() - t0)
        ratios.append(t[0] / t[1])
    return statistics.median(ratios)


def step_timing(threads: int, rounds: int, steps: int, toy: bool) -> dict:
    """Median tokens/s of the main job's training step in fp32 and in bf16 autocast, interleaved."""
    torch.set_num_threads(threads)
    keep_freed_memory()  # as train.py does; nanoGPT's step, timed in this process, gets it too
    # the main job's model (conf/model/small.yaml, the BPE tokenizer's 4096 tokens) and batch (conf/data/staicc.yaml)
    kw = dict(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16) if toy else dict(block_size=512)
    batch = 2 if toy else 8
    torch.manual_seed(0)
    ours, nano = GPT(GPTConfig(**kw)), GPT(GPTConfig(**kw))
    nano.load_state_dict(ours.state_dict())
    # train.py's AdamW is fused where torch has the kernel (LitGPT.configure_optimizers); nanoGPT fuses on CUDA only
    opts = {id(ours): torch.optim.AdamW(ours.parameters(), lr=1e-4, fused=fused_adamw_ok(list(ours.parameters())) or None),
            id(nano): torch.optim.AdamW(nano.parameters(), lr=1e-4)}
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, ours.config.vocab_size, (batch, ours.config.block_size + 1), generator=g)

    def step(name: str) -> None:
        model = nano if name == "nanogpt_fp32" else ours
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
            if name == "nanogpt_fp32":  # logits first, then the loss over them
                loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
            else:
                loss = model(x[:, :-1], targets=x[:, 1:])  # the loss train.py takes (momattn/loss.py)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opts[id(model)].step()
        opts[id(model)].zero_grad(set_to_none=True)

    samples: dict[str, list[float]] = {"nanogpt_fp32": [], "fp32": [], "bf16": []}
    for name in samples:  # warm-up
        step(name)
    names = list(samples)
    for r in range(rounds):
        # the order turns each round (as harness.Timer's does): drift inside a round fell on one variant always
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            for _ in range(steps):
                step(name)
            samples[name].append(batch * ours.config.block_size * steps / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {"threads": threads, "rounds": rounds, "steps_per_sample": steps,
            "fused_adamw": bool(opts[id(ours)].defaults["fused"]),
            "bf16_attention_backward": bench_attention.attention_name(torch.device("cpu"), "bf16"),
            "tokens_per_s": {k: round(v) for k, v in med.items()},
            "spread": {k: [round(min(v)), round(max(v))] for k, v in samples.items()},
            "bf16_over_fp32": round(med["bf16"] / med["fp32"], 3),
            "over_nanogpt_fp32": {k: round(v / med["nanogpt_fp32"], 3) for k, v in med.items()},
            # each round times the three back to back: the median of the rounds' own ratios, which a host that
            # slows down or speeds up between rounds moves less than the ratio of two medians
            "paired_over_nanogpt_fp32": {k: round(statistics.median(a / b for a, b in zip(v, samples["nanogpt_fp32"])), 3)
                                         for k, v in samples.items()},
            "samples_tokens_per_s": {k: [round(x) for x in v] for k, v in samples.items()}}


def main_job_runs(seeds: list[int], threads: int, parallel: int, workdir: Path, extra: list[str],
                  timeout: float) -> list[dict]:
    """The main job at each precision and seed, `parallel` at a time; each run's summary (or its failure)."""
    jobs = [(p, s) for s in seeds for p in PRECISIONS]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "CUDA_VISIBLE_DEVICES": "", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    rows, running = [], []
    t_end = time.perf_counter() + timeout

    def start(prec: str, seed: int):
        d = workdir / f"{prec}_s{seed}"
        shutil.rmtree(d, ignore_errors=True)  # a fresh run each time (train.py refuses a folder holding a run)
        cmd = [sys.executable, "train.py", "trainer=cpu", f"trainer.precision={prec}", f"seed={seed}",
               "run_eval=false", "logger=csv", f"hydra.run.dir={d}", *extra]
        log = open(workdir / f"{prec}_s{seed}.log", "w")
        return prec, seed, d, cmd, log, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                          preexec_fn=die_with_parent)

    def finish(job, rc) -> dict:
        prec, seed, d, cmd, log, _ = job
        log.close()
        row = {"precision": prec, "seed": seed, "rc": rc, "cmd": " ".join(cmd[1:])}
        summary = d / "summary.json"
        if rc == 0 and summary.is_file():
            s = json.loads(summary.read_text())
            row.update({k: s.get(k) for k in ("val/loss", "val/ppl", "train/loss", "tokens_per_sec", "tokens_per_sec_mean",
                                                "fit_seconds", "steps", "precision")})
        else:
            row["tail"] = (workdir / f"{prec}_s{seed}.log").read_text()[-1500:]
        return row

    pending = list(jobs)
    while pending or running:
        while pending and len(running) < parallel and time.perf_counter() < t_end:
            running.append(start(*pending.pop(0)))
        if pending and not running:  # past the deadline before these could start
            rows += [{"precision": p, "seed": s, "rc": "not started (timeout)"} for p, s in pending]
            break
        time.sleep(1.0)
        for job in list(running):
            rc = job[-1].poll()
            if rc is None and time.perf_counter() > t_end:
                job[-1].kill()
                job[-1].wait()
                rc = "timeout"
            if rc is not None:
                running.remove(job)
                rows.append(finish(job, rc))
    return sorted(rows, key=lambda r: (r["seed"], PRECISIONS.index(r["precision"])))


def _tps(row: dict) -> float | None:
    """A run's tokens/s over its whole training (the last window's where the summary predates the mean)."""
    return row.get("tokens_per_sec_mean") or row.get("tokens_per_sec")


def failure(rows: list[dict]) -> str:
    """'; <precision> seed <s> ended with: <its error line>' for the first failed run, or where to look."""
    failed = next((r for r in rows if r.get("tail")), None)
    lines = [ln for ln in (failed or {}).get("tail", "").splitlines() if ln.strip()]
    last = next((ln for ln in reversed(lines) if ln.startswith("error:")), None) or next(
        (ln for ln in reversed(lines) if "HYDRA_FULL_ERROR" not in ln), "")  # not the hint after every error
    return f"; {failed['precision']} seed {failed['seed']} ended with: {last.strip()}" if last else \
        " (see the runs above)"


def verdict(rows: list[dict]) -> dict:
    """Mean final validation loss per precision; bf16 - fp32 per seed; the fp32 spread between seeds."""
    ok = [r for r in rows if isinstance(r.get("val/loss"), float)]
    by = {p: {r["seed"]: r for r in ok if r["precision"] == p} for p in PRECISIONS}
    seeds = sorted(set(by["32-true"]) & set(by["bf16-mixed"]))
    out: dict = {"seeds_paired": seeds}
    for p in PRECISIONS:
        losses = [r["val/loss"] for r in by[p].values()]
        tps = [_tps(r) for r in by[p].values() if _tps(r)]
        out[p] = {"val_loss_mean": round(statistics.mean(losses), 4) if losses else None,
                  "val_loss_range": [round(min(losses), 4), round(max(losses), 4)] if losses else None,
                  "tokens_per_s_mean": round(statistics.mean(tps)) if tps else None}
    diffs = [by["bf16-mixed"][s]["val/loss"] - by["32-true"][s]["val/loss"] for s in seeds]
    out["bf16_minus_fp32"] = [round(d, 4) for d in diffs]
    fp32 = [by["32-true"][s]["val/loss"] for s in seeds]
    out["fp32_seed_spread"] = round(max(fp32) - min(fp32), 4) if len(fp32) > 1 else None
    if diffs and out["fp32_seed_spread"] is not None:
        out["within_seed_noise"] = all(abs(d) <= out["fp32_seed_spread"] for d in diffs)
    return out


def markdown(rep: dict) -> str:
    dates = rep.get("part_dates", {})
    when = "; ".join(f"{k} {v}" for k, v in dates.items()) if len(dates) > 1 else rep["date"]
    machines = rep.get("part_machines", {})
    machine = "; ".join(f"{k} on {v}" for k, v in machines.items()) if len(set(machines.values())) > 1 \
        else rep["machine"]
    lines = [f"Machine: {machine}; {when}" + (" (--smoke: toy model, 6-step runs)" if rep.get("smoke") else ""),
             ""]
    if rep.get("skipped"):
        return "\n".join(lines + [f"Skipped: {rep['skipped']}", ""])
    st = rep.get("step")
    if st:
        tps = st["tokens_per_s"]
        model = "a toy model (--smoke: 1 x 16, context 16, batch 2)" if rep.get("smoke") else \
            "the main job's model (4 x 256, context 512, batch 8)"
        lines += [f"Training step of {model}, {st['threads']} threads, "
                  f"medians of {st['rounds']} interleaved samples of {st['steps_per_sample']} steps (paired: the median of each "
                  "round's own ratio, the three timed back to back):", "",
                  "| step | tokens/s | range | vs nanoGPT fp32 |", "|---|---:|---:|---:|"]
        labels = {"nanogpt_fp32": "nanoGPT's step (logits, then F.cross_entropy), fp32",
                  "fp32": "train.py's step (blocked loss), fp32", "bf16": "train.py's step, bf16 autocast"}
        ratio, paired = st.get("over_nanogpt_fp32", {}), st.get("paired_over_nanogpt_fp32", {})
        for k, label in labels.items():
            if k in tps:
                pr = f" (paired {paired[k]:.2f}x)" if k in paired and k != "nanogpt_fp32" else ""
                lines.append(f"| {label} | {tps[k]:,} | {st['spread'][k][0]:,}-{st['spread'][k][1]:,} | "
                             f"{ratio.get(k, float('nan')):.2f}x{pr} |")
        if st.get("bf16_attention_backward"):  # recorded since session 44
            lines += ["", f"The bf16 step's attention backward: {st['bf16_attention_backward']}."]
        lines += ["", "Target (issue 11): bf16 at least 2x nanoGPT's fp32 step (the issue measured momattn's model at "
                  "0.98x nanoGPT's model.py in that step).", ""]
        if rep.get("auto_precision"):  # what train.py's precision=auto takes on this CPU, and why
            why = "AMX" if rep.get("amx") else "no native bf16" if not rep.get("native_bf16") else \
                "no AMX, an AMD CPU with avx512_bf16" if rep.get("vendor") == "AuthenticAMD" else "no AMX"
            if "bf16_matmul_speedup" in rep:
                why += (f"; a {rep.get('bf16_matmul_n', 2048)}^3 matmul in bf16 at {rep['bf16_matmul_speedup']:.2f}x "
                        f"fp32's speed, median of {rep.get('bf16_matmul_rounds', 5)} paired timings")
            lines += [f"`precision=auto` on this CPU: {rep['auto_precision']} ({why}).", ""]
    if rep.get("runs"):
        lines += [f"The main job, {rep['runs_threads']} threads per run, {rep['runs_parallel']} runs at a time "
                  "(`python train.py trainer=cpu trainer.precision=bf16-mixed seed=1 run_eval=false logger=csv`, and so for each "
                  "precision and seed):", "",
                  "| precision | seed | final val loss | val ppl | tokens/s, whole run | last logged window | fit s |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in rep["runs"]:
            if "val/loss" in r and r["val/loss"] is not None:
                lines.append(f"| {r['precision']} | {r['seed']} | {r['val/loss']:.4f} | {r['val/ppl']:.2f} | "
                             f"{_tps(r):,.0f} | {r['tokens_per_sec']:,.0f} | {r['fit_seconds']} |")
            else:
                lines.append(f"| {r['precision']} | {r['seed']} | failed (rc {r['rc']}) | | | | |")
        v = rep.get("verdict", {})
        if v.get("bf16_minus_fp32"):
            diffs = ", ".join(f"{d:+.4f}" for d in v["bf16_minus_fp32"])
            spread = v.get("fp32_seed_spread")  # (one seed: "None; within seed noise: None", found by review)
            lines += ["", f"bf16 - fp32 final validation loss per seed: {diffs}; " + (
                f"fp32's spread between seeds: {spread}; within seed noise: {v.get('within_seed_noise')}." if spread
                is not None else "one seed, so no spread between seeds to judge the difference by."), ""]
        bf16, fp32 = v.get("bf16-mixed", {}).get("tokens_per_s_mean"), v.get("32-true", {}).get("tokens_per_s_mean")
        link = (st or {}).get("paired_over_nanogpt_fp32", {}).get("fp32")
        if bf16 and fp32:
            line = (f"The main job's whole-run tokens/s, mean over the seeds: {bf16:,} in bf16-mixed against {fp32:,} in "
                    f"fp32 ({bf16 / fp32:.2f}x; the runs alternate, so a slow spell of the host falls on both)")
            if link:  # train.py's fp32 step against nanoGPT's, timed back to back: links the runs to nanoGPT
                line += (f"; with train.py's fp32 step at {link:.2f}x nanoGPT's (paired, above), the main job in bf16 "
                         f"runs at about {bf16 / fp32 * link:.2f}x nanoGPT's fp32 step (target 2x)")
            lines += [line + ".", ""]
    return "\n".join(lines)


def write(rep: dict, out: Path) -> str:
    out.parent.mkdir(parents=True, exist_ok=True)
    md = "# bf16 on a CPU with native bf16\n\n" + markdown(rep) + "\n"
    atomic_write_text(out.with_suffix(".md"), md)
    write_json(out, rep)  # atomic: the report a timed-out run left stays whole
    return md


def seed(text: str) -> int:
    """An argparse type: a seed train.py takes (a negative one failed every run, its reason only in the JSON)."""
    value = int(text) if text.lstrip("-").isdigit() else None
    if value is None or not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed train.py takes (an integer, 0 to 2**32 - 1)")
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--parts", default="step,runs", help="comma-separated: step,runs")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # (4 and 4 started 16 threads on a 2-core host: the timings measured oversubscription; found by review)
    ap.add_argument("--threads", type=positive_int, default=min(4, cores),
                    help=f"torch threads for the step timing and per run (default: min(4, cores) = {min(4, cores)})")
    ap.add_argument("--parallel", type=positive_int, default=max(1, cores // min(4, cores)),
                    help="main-job runs at a time (default: as many as the cores hold at --threads' default)")
    ap.add_argument("--seeds", type=seed, nargs="+", default=[1, 2], help="train.py seeds, 0 to 2**32 - 1")
    ap.add_argument("--rounds", type=positive_int, default=None, help="interleaved samples of the step timing "
                    "(default 7; --smoke: 2)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds for all the main-job runs together (runs "
                    "still going then are stopped and reported as such; four runs one at a time take 10-25 minutes on "
                    "a 2-core machine; benchmarks/device_run.sh passes 420 to fit a device lease)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the main-job runs train (default: a new "
                    "temporary folder, printed, and removed at the end where every run finished: a fixed one was "
                    "shared by concurrent checks, which removed each other's runs)")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="an extra train.py override for the main-job runs (repeatable)")
    ap.add_argument("--force", action="store_true", help="measure even where bf16 is not native (emulated: slow)")
    ap.add_argument("--smoke", action="store_true", help="toy model and debug=smoke runs (6 steps): exercises the "
                    "code anywhere")
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/cpu_bf16.json; with --smoke "
                    "a temporary folder (toy numbers never replace the stored ones)")
    ap.add_argument("--merge", action="store_true", help="keep the parts of an existing --out that this run does not "
                    "measure (e.g. --parts step --merge re-times the step beside earlier main-job runs)")
    a = ap.parse_args(argv)
    parts = {p.strip() for p in a.parts.split(",") if p.strip()}
    if not parts or parts - {"step", "runs"}:  # --parts stpe measured nothing and wrote that over the stored results
        ap.error(f"--parts={a.parts!r}: choose step, runs or step,runs")
    if len(set(a.seeds)) < len(a.seeds):  # two runs in one folder: each start() removed it under its twin
        ap.error(f"--seeds {' '.join(map(str, a.seeds))}: a seed is given twice")
    if not a.timeout > 0:
        ap.error(f"--timeout={a.timeout} must be > 0 seconds")
    if "runs" in parts and a.workdir is not None:  # checked before the step part's minutes, not after them
        try:
            a.workdir.mkdir(parents=True, exist_ok=True)
            probe_write(a.workdir)
        except OSError as e:
            ap.error(f"--workdir {a.workdir}: it cannot be made or written ({e.strerror or e}); choose another")
    if a.out is None:
        import tempfile

        # a trial (--parts step --rounds 1) replaced the stored main-job runs, and the README's table with them (found
        # by review): the committed file for a full run (the README's set threads, 7 or 11 rounds, 2 or 4 seeds) or
        # with --merge, which keeps what it holds; a part alone, an override, one seed or fewer rounds is a trial
        trial = [flag for flag, yes in (("--parts", parts != {"step", "runs"}), ("--override", bool(a.override)),
                                        ("--seeds", len(a.seeds) < 2), ("--rounds", (a.rounds or 7) < 7)) if yes]
        a.out = Path(tempfile.gettempdir()) / "momattn_cpu_bf16" / "cpu_bf16.json" if a.smoke else \
            SCRATCH / "cpu_bf16.json" if trial and not a.merge else RESULTS / "cpu_bf16.json"
        if trial and not a.merge and not a.smoke:
            print(f"[bench] a trial run ({', '.join(trial)}): writing {a.out}, not the committed "
                  f"{RESULTS / 'cpu_bf16.json'} (give --out, or --merge to update it)", file=sys.stderr)
    check_out(ap, a.out)  # before the measurement: it failed at the write after it
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    rep: dict = {"machine": describe(), "native_bf16": cpu_has_native_bf16(), "torch": torch.__version__,
                 "date": now, "smoke": a.smoke}
    if a.merge and a.out.is_file():
        try:
            old = json.loads(a.out.read_text())
            if not isinstance(old, dict) or "date" not in old:
                raise ValueError("not a cpu_bf16_check report")
        except (OSError, ValueError) as e:
            ap.error(f"--merge --out {a.out}: it cannot be read ({e}); move it away or run without --merge")
        if bool(old.get("smoke")) != a.smoke:  # a toy step beside the real runs read as one report (found by review)
            ap.error(f"--merge --out {a.out}: it holds a {'--smoke' if old.get('smoke') else 'full-size'} report, "
                     f"and this run is {'--smoke' if a.smoke else 'full-size'}; merge like with like, or give "
                     "another --out")
        rep.update({k: v for k, v in old.items() if k not in rep and k != "skipped"})
        rep["part_dates"] = dict(old.get("part_dates") or {k: old["date"] for k in ("step", "runs") if k in old})
        # and the machine each part ran on: runs merged from another host were credited to this one (found by review)
        rep["part_machines"] = dict(old.get("part_machines") or {k: old["machine"] for k in ("step", "runs") if k in old})
    if "runs" in parts:  # a misspelled --override failed every run, after the step timing's minutes (found by review)
        from momattn.cli import check_overrides

        check_overrides("train", ["trainer=cpu", *(["debug=smoke"] if a.smoke else []), *a.override])
    if not rep["native_bf16"] and not a.force:
        rep["skipped"] = ("this CPU has no native bf16 (no avx512_bf16 / amx_bf16 flag): bf16 would be emulated, so "
                          "there is nothing to measure; run it on a CPU that has it (e.g. the device machine's host)")
        if measured(a.out, ("step", "runs")):  # a skip note never replaces measured results (the stored ones were wiped so)
            print(f"[cpu_bf16_check] skipped: {rep['skipped']}. {a.out} holds measured results and is left as it "
                  "is; pass --out elsewhere to keep this note", file=sys.stderr)
            return 0
        print(write(rep, a.out))
        return 0
    if "step" in parts:
        rep["step"] = step_timing(a.threads, a.rounds or (2 if a.smoke else 7), 1 if a.smoke else 5, a.smoke)
        rep["amx"], rep["auto_precision"] = cpu_has_amx(), resolve_precision("auto", "cpu")
        rep["vendor"] = cpu_vendor()  # auto's bf16 on AMD with avx512_bf16 (momattn.hardware.cpu_bf16_pays)
        if rep["native_bf16"]:  # emulated bf16 would take seconds per matmul
            rep["bf16_matmul_n"] = 256 if a.smoke else 2048
            rep["bf16_matmul_rounds"] = 5
            rep["bf16_matmul_speedup"] = round(matmul_speedup(a.threads, rep["bf16_matmul_n"], rep["bf16_matmul_rounds"]), 3)
        rep.setdefault("part_dates", {})["step"] = now
        rep.setdefault("part_machines", {})["step"] = rep["machine"]
        write(rep, a.out)
    if "runs" in parts:
        if a.workdir is None:  # made now, not before the checks that may end the program (an empty folder left)
            import tempfile

            a.workdir = Path(tempfile.mkdtemp(prefix="momattn_cpu_bf16_runs_"))
            a.made_workdir = True  # removed at the end where every run finished (their logs kept otherwise)
            print(f"[cpu_bf16_check] the main-job runs train in {a.workdir}", flush=True)
        a.workdir.mkdir(parents=True, exist_ok=True)
        extra = (["debug=smoke"] if a.smoke else []) + a.override
        rep["runs_threads"], rep["runs_parallel"] = a.threads, a.parallel
        rep["runs"] = main_job_runs(a.seeds, a.threads, a.parallel, a.workdir, extra, a.timeout)
        rep.setdefault("part_dates", {})["runs"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")  # when they finished
        rep.setdefault("part_machines", {})["runs"] = rep["machine"]
        rep["verdict"] = verdict(rep["runs"])
    print(write(rep, a.out))
    if getattr(a, "made_workdir", False) and all(r.get("rc") == 0 for r in rep["runs"]):
        shutil.rmtree(a.workdir, ignore_errors=True)  # (each call left a folder of full runs in /tmp: diff review)
    if "runs" in parts and not rep["verdict"]["seeds_paired"]:
        print("error: no seed finished at both precisions" + failure(rep["runs"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_main(main)
