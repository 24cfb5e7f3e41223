"""benchmarks/bench_kernel_step.py: both modes run, each in its own process, and MOMATTN_SCAN_OPENMP=0 gives the
kernel its own threads (a tiny model; no timing is checked)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from momattn import cpu_scan

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_kernel_step.py"


@pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")), reason="no C++ compiler")
def test_both_modes_time_the_kernel_inside_the_step(tmp_path):
    out = tmp_path / "k.json"
    subprocess.run([sys.executable, str(BENCH), "--T", "32", "--batch", "2", "--rounds", "1", "--steps", "1", "--out", str(out)],
                   check=True, capture_output=True, timeout=600)
    res = json.loads(out.read_text())
    assert set(res["modes"]) == {"openmp", "own"}
    assert res["modes"]["own"]["openmp"] is False
    assert res["modes"]["openmp"]["openmp"] == bool(cpu_scan._openmp([shutil.which("c++") or "c++"]))
    for mode in res["modes"].values():
        r = mode["results"]
        assert r["vanilla"]["forward_us"] is None and r["vanilla"]["step_ms"] > 0
        assert all(r[k]["forward_us"] > 0 and r[k]["backward_us"] > 0 for k in ("momentum", "multirate_ema"))
    assert "kernel threads" in out.with_suffix(".md").read_text()
