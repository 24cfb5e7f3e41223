"""benchmarks/bench_startup.py: times each case in a fresh interpreter, checks its exit code, writes JSON + table."""

import json
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_startup  # noqa: E402


def test_it_times_every_case_and_names_one_that_exits_wrongly(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_startup, "CASES", {"nothing": (["-c", "pass"], 0),
                                                 "train.py --help": (["{root}/train.py", "--help"], 0)})
    out = tmp_path / "s.json"
    bench_startup.main(["--rounds", "2", "--out", str(out)])
    res = json.loads(out.read_text())
    assert set(res["rows"]) == {"nothing", "train.py --help"} and res["rounds"] == 2
    assert all(len(r["samples_s"]) == 2 and 0 < r["min_s"] <= r["median_s"] <= r["max_s"] for r in res["rows"].values())
    assert "| train.py --help |" in out.with_suffix(".md").read_text()
    monkeypatch.setattr(bench_startup, "CASES", {"fails": (["-c", "import sys; sys.exit(3)"], 0)})
    with pytest.raises(SystemExit, match="fails: exit code 3, expected 0"):
        bench_startup.main(["--rounds", "1", "--out", str(out)])
    with pytest.raises(SystemExit):
        bench_startup.main(["--rounds", "0"])
