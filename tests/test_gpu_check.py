"""benchmarks/gpu_check.py: runs on a CPU-only machine (GPU parts skipped and said so), and its report renders."""

import json
import os
import sys
import time

import pytest
import torch
from conftest import ROOT, run_cli

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path; the GPU path is the device run itself")
def test_without_a_gpu_it_skips_and_says_so(tmp_path):
    out = tmp_path / "gpu.json"
    r = run_cli("benchmarks/gpu_check.py", ["--out", str(out)], tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert "no CUDA device" in report["skipped"] and "Skipped: no CUDA device" in out.with_suffix(".md").read_text()
    stored = ROOT / "benchmarks" / "results" / "gpu.json"
    before = stored.read_bytes() if stored.exists() else None
    r = run_cli("benchmarks/gpu_check.py", [], tmp_path, timeout=120)  # no --out: the stored results must survive
    assert r.returncode == 0 and "the stored device results are untouched" in r.stdout, r.stderr
    assert (stored.read_bytes() if stored.exists() else None) == before
    # --out naming a device run's results (device_run.sh gpu on a CPU host passed the stored path): left as it is
    measured = tmp_path / "measured.json"
    measured.write_text(json.dumps({"machine": "an H200", "rows": []}))
    r = run_cli("benchmarks/gpu_check.py", ["--out", str(measured)], tmp_path, timeout=120)
    assert r.returncode == 0 and "holds a device run's results and is left as it is" in r.stderr, r.stderr
    assert json.loads(measured.read_text()) == {"machine": "an H200", "rows": []}
    # a --smoke report there (toy sizes on this CPU; by default in the scratch folder) is no device run's: replaced
    measured.write_text(json.dumps({"machine": "this CPU", "smoke": True, "throughput": [{"tokens_per_s": 1}]}))
    r = run_cli("benchmarks/gpu_check.py", ["--out", str(measured)], tmp_path, timeout=120)
    assert r.returncode == 0 and "no CUDA device" in json.loads(measured.read_text())["skipped"], r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path; the GPU path is the device run itself")
def test_the_shell_wrappers_refuse_what_they_cannot_run_before_writing(tmp_path):
    """device_run.sh gpu on a CPU host replaced the stored device log with gpu_check's one skip line; gpu_check.sh
    in a clone without .venv ended in a ModuleNotFoundError traceback (found by review)."""
    import subprocess

    out = tmp_path / "out"
    for part in ("gpu", "profile", "autotune"):
        r = subprocess.run(["bash", "benchmarks/device_run.sh", part, str(out)], cwd=ROOT, capture_output=True,
                           text=True, timeout=120, env={**os.environ, "PYTHON": sys.executable})
        assert r.returncode == 2 and f"device_run.sh {part} needs a CUDA GPU and this machine has none" in r.stderr
        assert not out.exists(), part
    r = subprocess.run(["bash", "benchmarks/device_run.sh", "gpux", str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 2 and "unknown part 'gpux'" in r.stderr and not out.exists()  # device.txt was written
    (tmp_path / "python3").write_text("#!/bin/sh\nexec /usr/bin/env -i python3 -S -c 'import sys; sys.exit(1)'\n")
    (tmp_path / "python3").chmod(0o755)  # a Python that cannot import torch
    r = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHON": str(tmp_path / "python3")})
    assert r.returncode == 2 and "cannot import torch: set up .venv first" in r.stderr and "Traceback" not in r.stderr


def test_smoke_runs_every_part_on_cpu(tmp_path):
    """--smoke: the scan timing and every non-compiled training variant on a toy model, so none of it can rot."""
    out = tmp_path / "gpu.json"
    env = {"TRITON_INTERPRET": "1"}  # the Triton scan, where installed, in its CPU interpreter
    r = run_cli("benchmarks/gpu_check.py", ["--smoke", "--profile", "1", "--out", str(out)], tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    names = [row["attention"] for row in report["throughput"]]
    assert names[:2] == ["vanilla", "momentum (torch scan)"] and "multirate_ema" in names
    assert all("tokens_per_s" in row for row in report["throughput"]), report["throughput"]
    assert all("ms" in row or "config" in row for row in report["scan"]), report["scan"]  # no errors
    kernel = bool(gpu_check.ops._triton_scan())
    assert ("momentum (triton-unfused scan)" in names) == kernel  # the fused path's A/B, in one run
    assert any("whole sequences" in row["op"] for row in report["scan"]) == kernel
    assert [row["op"].rsplit(", ", 1)[-1] for row in report["scan"] if "attention output" in row["op"]] == \
        (["added in the kernel", "added after (float32 out)"] if kernel else [])
    md = out.with_suffix(".md").read_text()
    assert "| momentum (torch scan) | False | 2 |" in md and "a toy model (--smoke" in md and "gpt2_124m" not in md
    assert "bf16 autocast, the loss inside the model, AdamW;" in md  # fused only on CUDA (it said fused here)
    # each step timed on its own: the median and its quartiles (one mean over 10 steps judged 0.945x against 0.95x)
    row = report["throughput"][0]
    assert row["steps_timed"] == 2 and row["ms_iqr"][0] <= row["ms_per_step"] <= row["ms_iqr"][1]
    assert f"| vanilla | False | 2 | {row['ms_per_step']} ({row['ms_iqr'][0]}-{row['ms_iqr'][1]}) |" in md
    assert "median of 2 steps timed one by one" in md
    assert all(r["ms_iqr"][0] <= r["ms"] <= r["ms_iqr"][1] for r in report["scan"] if "ms" in r)
    prof = report["throughput"][0]["profile"]  # --profile: where each variant's step goes
    assert 0 < prof["kernel_ms"] <= 1.5 * prof["wall_ms"] and prof["top"] and all(k["calls"] > 0 for k in prof["top"])
    assert "Profile of vanilla, compile False, batch 2:" in md and "| `aten::" in md


def test_the_report_compares_each_attention_with_vanilla_and_names_errors():
    rows = [{"attention": "vanilla", "compile": False, "batch": 16, "ms_per_step": 100.0, "tokens_per_s": 160000,
             "mfu": 0.5, "warmup_s": 3.0, "peak_mem_gib": 20.0},
            {"attention": "momentum", "compile": False, "batch": 16, "ms_per_step": 104.0, "tokens_per_s": 152000,
             "mfu": None, "warmup_s": 2.5, "peak_mem_gib": 21.0},
            {"attention": "multirate_ema", "compile": True, "error": "RuntimeError('boom')"}]
    md = gpu_check.markdown({"machine": "m", "date": "d", "commands": {"cuda tests": {"rc": 0, "seconds": 1, "cmd": "pytest"}},
                             "throughput": rows})
    assert "| momentum | False | 16 | 104.0 | 152,000 | n/a | 0.950x | 2.5 | 21.0 |" in md
    assert "| vanilla | False | 16 | 100.0 | 160,000 | 50.0% | 1.000x | 3.0 | 20.0 |" in md
    assert "error: RuntimeError('boom')" in md
    assert "an eager float32 cross-entropy outside the model" in md  # a report from before the loss moved inside
    assert gpu_check.datasheet_peak("NVIDIA H200") == 989e12 and gpu_check.datasheet_peak("Tesla T4") is None


def test_labels_name_the_compile_mode_and_batch():
    assert gpu_check.label("vanilla", None, False, "reduce-overhead", 2) == "vanilla+compile:reduce-overhead" + "x2"
    assert gpu_check.label("momentum", "triton", False, True, 1) == "momentum/triton+compile"
    assert gpu_check.label("momentum", None, True, False, 1) == "momentum/learnable"
    labels = [gpu_check.label(*v) for v in gpu_check.VARIANTS]
    assert len(labels) == len(set(labels)), "every variant must be selectable by its own label"


def test_a_compile_mode_is_compared_with_default_compile_and_max_autotune_is_opt_in():
    rows = [{"attention": "vanilla", "compile": True, "batch": 16, "ms_per_step": 40.0, "tokens_per_s": 400000,
             "mfu": 0.34, "warmup_s": 2.0, "peak_mem_gib": 17.0},
            {"attention": "vanilla", "compile": "reduce-overhead", "batch": 16, "ms_per_step": 36.4,
             "tokens_per_s": 440000, "mfu": 0.37, "warmup_s": 9.0, "peak_mem_gib": 17.0}]
    md = gpu_check.markdown({"machine": "m", "date": "d", "throughput": rows})
    assert "| vanilla | reduce-overhead | 16 | 36.4 | 440,000 | 37.0% | 1.100x |" in md
    assert any(isinstance(v[3], str) and v[3].startswith("max-autotune") for v in gpu_check.VARIANTS)


@pytest.mark.parametrize("flag, why", [("--budget", "budget"), ("--deadline", "deadline")])
def test_no_training_variant_starts_past_the_budget_or_the_deadline(tmp_path, flag, why):
    out = tmp_path / "gpu.json"
    r = run_cli("benchmarks/gpu_check.py", ["--smoke", "--parts", "train", flag, "0", "--out", str(out)], tmp_path,
                timeout=120)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["throughput"]
    assert rows and all(why in row.get("skipped", "") for row in rows), rows
    assert f"skipped: past the 0 s {why}" in out.with_suffix(".md").read_text()
    # each skipped row keeps its batch: gpu.md showed two identical skipped vanilla rows (x2 and x4)
    assert all(row["batch"] == 2 for row in rows) and f"| vanilla | False | 2 | | skipped: past the 0 s {why}" in \
        out.with_suffix(".md").read_text()


def test_a_variant_named_that_cannot_run_here_is_a_skipped_row_not_left_out(tmp_path):
    # --variants vanilla+compile under --smoke (or --no-compile), a Triton scan with no Triton: an empty table, exit
    # 0, no word, on a device lent for minutes (found by review); the empty table's header read "mean"
    out = tmp_path / "gpu.json"
    r = run_cli("benchmarks/gpu_check.py", ["--smoke", "--parts", "train", "--variants",
                                            "vanilla+compile", "--out", str(out)], tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr  # (Triton is usable in the tests: its interpreter)
    rows = [(row["attention"], row.get("skipped")) for row in json.loads(out.read_text())["throughput"]]
    assert rows == [("vanilla", "torch.compile is off under --smoke")]
    md = out.with_suffix(".md").read_text()
    assert "skipped: torch.compile is off under --smoke" in md and "mean over" not in md


def test_a_variant_cut_off_mid_run_is_named_in_the_report():
    rows = [{"attention": "vanilla", "compile": "max-autotune-no-cudagraphs", "started_s": 12.5}]
    md = gpu_check.markdown({"machine": "m", "date": "d", "throughput": rows})
    assert "| vanilla | max-autotune-no-cudagraphs | | | started 12.5 s in, did not finish |" in md


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads the child's state from /proc")
def test_a_timed_out_command_takes_its_children_with_it(tmp_path):
    """pytest -n 4's workers must not outlive the timed-out test run (they would load the GPU during the timings)."""
    pid_file = tmp_path / "child.pid"
    parent = ("import subprocess, sys, time\n"
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
              f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
              "time.sleep(120)\n")
    r = gpu_check.run([sys.executable, "-c", parent], timeout=3)
    assert r["rc"] is None and "timed out" in r["tail"]
    status = f"/proc/{int(pid_file.read_text())}/status"
    for _ in range(50):  # the kill is asynchronous: gone, or a zombie waiting for its new parent to reap it
        try:
            with open(status) as f:
                if "\nState:\tZ" in f.read():
                    return
        except FileNotFoundError:
            return
        time.sleep(0.1)
    pytest.fail(f"the child of the timed-out command is still running ({status})")


def test_momentum_at_a_larger_batch_is_compared_with_vanilla_at_that_batch():
    rows = [{"attention": "vanilla", "compile": True, "batch": 16, "ms_per_step": 34.0, "tokens_per_s": 480000,
             "mfu": 0.42, "warmup_s": 2.0, "peak_mem_gib": 8.0},
            {"attention": "vanilla", "compile": True, "batch": 32, "ms_per_step": 63.0, "tokens_per_s": 520000,
             "mfu": 0.45, "warmup_s": 2.0, "peak_mem_gib": 15.0},
            {"attention": "momentum (torch scan)", "compile": True, "batch": 32, "ms_per_step": 68.0,
             "tokens_per_s": 494000, "mfu": 0.43, "warmup_s": 2.0, "peak_mem_gib": 16.0},
            {"attention": "momentum (torch scan)", "compile": True, "batch": 64, "ms_per_step": 130.0,
             "tokens_per_s": 504000, "mfu": 0.44, "warmup_s": 2.0, "peak_mem_gib": 30.0}]
    md = gpu_check.markdown({"machine": "m", "date": "d", "throughput": rows})
    assert "| vanilla | True | 32 | 63.0 | 520,000 | 45.0% | 1.083x |" in md  # vanilla: what the batch gains
    assert "| momentum (torch scan) | True | 32 | 68.0 | 494,000 | 43.0% | 0.950x |" in md  # vanilla at batch 32
    assert "| momentum (torch scan) | True | 64 | 130.0 | 504,000 | 44.0% | 1.050x |" in md  # none at 64: batch 16's


@pytest.mark.parametrize("flag, value", [("--variants", "momentum/triton+compile,vanila"), ("--parts", "train,scans")])
def test_a_misspelled_variant_or_part_is_refused_before_anything_runs(tmp_path, flag, value):
    r = run_cli("benchmarks/gpu_check.py", ["--smoke", flag, value, "--out", str(tmp_path / "g.json")], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"{flag}: unknown {value.split(',')[1]}; the " in r.stderr and not (tmp_path / "g.json").exists()


def test_an_mfu_above_the_datasheet_peak_is_refused_not_reported():
    """Issue 11: MFU never above 100%; a row whose timing read above the peak says so (found by review)."""
    row = {"attention": "vanilla", "compile": False, "batch": 16, "ms_per_step": 1.0, "ms_iqr": [0.9, 1.1],
           "tokens_per_s": 10**9, "mfu": None, "mfu_refused": "153.0% of the datasheet peak: a timing error"}
    md = gpu_check.markdown({"machine": "m", "date": "d", "throughput": [row]})
    assert "| refused (153.0% of the datasheet peak: a timing error) |" in md and "fused AdamW" in md
