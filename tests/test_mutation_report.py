"""benchmarks/mutation_report.py: kill rates per module from mutmut's results listing."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import mutation_report  # noqa: E402


def test_kill_rate_per_module_and_survivors():
    text = "\n".join(["    momattn.ops.x__carry__mutmut_1: killed", "    momattn.ops.x__carry__mutmut_2: survived",
                      "    momattn.ops.x_momentum_ema__mutmut_3: killed", "    momattn.lit.x_lr_lambda__mutmut_1: timeout",
                      "    momattn.lit.x_lr_lambda__mutmut_2: killed", "some warning line"])
    per_module, survivors = mutation_report.parse(text)
    assert per_module["momattn.ops"] == {"killed": 2, "survived": 1}
    assert per_module["momattn.lit"] == {"killed": 1, "timeout": 1}
    assert survivors == {"momattn.ops": ["momattn.ops.x__carry__mutmut_2"]}


def test_not_checked_mutants_and_unsampled_ones_do_not_count():
    text = "\n".join(["    momattn.ops.x_a__mutmut_1: killed", "    momattn.ops.x_a__mutmut_2: not checked",
                      "    momattn.ops.x_a__mutmut_3: survived", "    momattn.ops.x_a__mutmut_4: killed"])
    per_module, _ = mutation_report.parse(text, only={"momattn.ops.x_a__mutmut_1", "momattn.ops.x_a__mutmut_2",
                                                      "momattn.ops.x_a__mutmut_3"})
    r = mutation_report.row("momattn.ops", per_module["momattn.ops"])
    assert (r["killed"], r["survived"], r["not_checked"], r["other"]) == (1, 1, 1, 0)
    assert r["kill_rate"] == 0.5


def test_wilson_interval_matches_the_textbook_values():
    lo, hi = mutation_report.wilson(90, 100)
    assert round(lo, 4) == 0.8256 and round(hi, 4) == 0.9448  # Wilson 95% for 90/100
    lo, hi = mutation_report.wilson(10, 10)
    assert hi == __import__("pytest").approx(1.0) and round(lo, 4) == 0.7225


def test_the_sample_is_seeded_and_takes_the_same_fraction_of_every_module():
    import mutation_sample

    names = {"a.py": [(f"m.a.x_f__mutmut_{i}", None) for i in range(100)],
             "b.py": [(f"m.b.x_g__mutmut_{i}", 1) for i in range(10)]}
    s = mutation_sample.sample(names, 0.2, seed=3)
    assert s == mutation_sample.sample(names, 0.2, seed=3) != mutation_sample.sample(names, 0.2, seed=4)
    assert sum(n.startswith("m.a.") for n in s) == 20 and sum(n.startswith("m.b.") for n in s) == 2
    assert len(set(s)) == 22


def test_named_equivalent_survivors_carry_their_reason_and_a_second_rate_leaves_them_out(tmp_path, monkeypatch):
    monkeypatch.setattr(mutation_report, "RESULTS", tmp_path / "results")
    raw = tmp_path / "raw.txt"
    raw.write_text("\n".join([f"    momattn.ops.x_a__mutmut_{i}: killed" for i in range(1, 9)] +
                             ["    momattn.ops.x_a__mutmut_9: survived", "    momattn.ops.x_a__mutmut_10: survived"]))
    eq = tmp_path / "eq.txt"
    eq.write_text("# comment\nmomattn.ops.x_a__mutmut_9  device: built on the CPU\n"
                  "momattn.ops.x_a__mutmut_3  equivalent: but it was killed\n")
    mutation_report.main(str(raw), equivalent=eq)
    doc = __import__("json").loads((tmp_path / "results" / "mutation.json").read_text())
    t = doc["total"]
    assert (t["killed"], t["survived"], t["equivalent"]) == (8, 2, 1)
    assert t["kill_rate"] == 0.8 and t["kill_rate_non_equivalent"] == 8 / 9
    assert doc["equivalent"] == {"momattn.ops.x_a__mutmut_9": "device: built on the CPU"}
    assert doc["named_but_killed"] == ["momattn.ops.x_a__mutmut_3"]  # a stale entry is reported
    md = (tmp_path / "results" / "mutation.md").read_text()
    assert "- momattn.ops.x_a__mutmut_9: device: built on the CPU" in md
    assert "- momattn.ops.x_a__mutmut_10 (not explained)" in md


def test_benchmark_counts_are_checked_by_argparse():
    # --rounds 0 ended in a TypeError of a None median (bench_kernel_step.py; found by review)
    import argparse

    from momattn.utils import positive_int

    assert positive_int("3") == 3
    for bad in ("0", "-2", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_int(bad)
