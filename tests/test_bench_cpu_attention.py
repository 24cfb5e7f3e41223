"""benchmarks/bench_cpu_attention.py: it times both at a tiny shape and reports their gradient errors (no timing is
checked); a shape that is not BxHxTxD, or a negative patience, is refused in one line."""

import json

import pytest
from conftest import run_cli

from momattn import cpu_scan


@pytest.mark.slow
@pytest.mark.skipif(cpu_scan.load() is None, reason="the CPU kernel cannot be built here")
def test_it_times_both_and_reports_their_errors(tmp_path):
    # --patience 0: the default waited out the other test processes for two minutes
    out = tmp_path / "a.json"
    r = run_cli("benchmarks/bench_cpu_attention.py", ["--shapes", "2x2x40x8", "--repeats", "1", "--threads", "1",
                                                       "--patience", "0", "--out", str(out)], tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["settings"] == {"repeats": 1, "patience_s": 0.0, "patience_left_s": 0.0}
    assert [(x["shape"], x["dtype"]) for x in res["results"]] == [([2, 2, 40, 8], "bf16"), ([2, 2, 40, 8], "fp32")]
    for row in res["results"]:
        assert set(row["stats"]) == {"sdpa", "cpu_attention"} and row["speedup"] > 0
        bound = 2e-6 if row["dtype"] == "fp32" else 3e-2
        assert 0 < row["grad_error_vs_float64"]["cpu_attention"] < bound
    assert "| 2x2x40x8 | bf16 |" in out.with_suffix(".md").read_text()


@pytest.mark.parametrize("args, said", [(["--shapes", "8x4x512"], "'8x4x512' is not a shape BxHxTxD"),
                                        (["--patience", "-1"], "--patience=-1.0 must be >= 0 seconds"),
                                        (["--patience", "nan"], "--patience=nan must be >= 0 seconds")])
def test_a_shape_that_is_not_one_or_a_negative_patience_is_refused(tmp_path, args, said):
    r = run_cli("benchmarks/bench_cpu_attention.py", [*args, "--out", str(tmp_path / "a.json")], tmp_path)
    assert r.returncode == 2 and said in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "a.json").exists()
