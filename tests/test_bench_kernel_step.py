"""benchmarks/bench_kernel_step.py: both modes run, each in its own process, and MOMATTN_SCAN_OPENMP=0 gives the
kernel its own threads (a tiny model; no timing is checked)."""

import json
import shutil

import pytest
from conftest import run_cli

from momattn import cpu_scan


@pytest.mark.slow
@pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")), reason="no C++ compiler")
def test_both_modes_time_the_kernel_inside_the_step(tmp_path):
    out = tmp_path / "k.json"
    r = run_cli("benchmarks/bench_kernel_step.py", ["--T", "32", "--batch", "2", "--rounds", "1", "--steps", "1",
                                                     "--threads", "1", "--out", str(out)], tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert set(res["modes"]) == {"openmp", "own"}
    assert res["modes"]["own"]["openmp"] is False
    assert res["modes"]["openmp"]["openmp"] == bool(cpu_scan._openmp([shutil.which("c++") or "c++"]))
    for mode in res["modes"].values():
        r = mode["results"]
        assert r["vanilla"]["forward_us"] is None and r["vanilla"]["step_ms"] > 0
        assert all(r[k]["forward_us"] > 0 and r[k]["backward_us"] > 0 for k in ("momentum", "multirate_ema"))
    assert "kernel threads" in out.with_suffix(".md").read_text()
    # the workers' thread count (the machine line gave this process's torch, 2 on 2 cores: review)
    assert res["machine"]["torch_threads"] == 1 and "; torch threads: 1; T = 32" in out.with_suffix(".md").read_text()


def test_a_step_too_long_for_its_default_batch_or_a_negative_setting_is_refused(tmp_path):
    # --T 8192 made batches of 4096 // 8192 = 0 rows and a table of them; --batch -2 a worker's traceback
    for args, said in ((["--T", "8192"], "--T=8192 is longer than the 4096 tokens a step holds by default"),
                       (["--batch", "-2"], "--batch=-2 must be >= 0 (0: the default)")):
        r = run_cli("benchmarks/bench_kernel_step.py", [*args, "--out", str(tmp_path / "k.json")], tmp_path)
        assert r.returncode == 2 and said in r.stderr and not (tmp_path / "k.json").exists(), r.stderr


def test_the_table_gives_each_variants_step_spread():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_kernel_step

    def variant(samples):
        return {"step_ms": 3.0, "forward_us": None, "backward_us": None, "samples": {"step_ms": samples}}

    res = {"machine": {"describe": "m"}, "settings": {"dtype": "fp32", "T": 8, "B": 1, "rounds": 5, "steps": 1},
           "modes": {"openmp": {"openmp": True, "results": {k: variant([1.0, 2.0, 3.0, 4.0, 5.0] if k == "vanilla"
                                                                        else [3.0]) for k in bench_kernel_step.KINDS}}}}
    table = bench_kernel_step.render(res)
    assert "| vanilla | openmp | - | - | 3.0 | 67% |" in table  # quartiles 2 and 4 over the median 3
    assert "| momentum | openmp | - | - | 3.0 | - |" in table  # one sample: no spread
