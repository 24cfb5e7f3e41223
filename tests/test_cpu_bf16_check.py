"""benchmarks/cpu_bf16_check.py: skips (and says so) where bf16 is not native, runs end to end at toy size with
--force, and judges bf16 against fp32 by the seed spread."""

import json
import sys

import pytest
from conftest import ROOT, run_cli

sys.path.insert(0, str(ROOT / "benchmarks"))
import cpu_bf16_check  # noqa: E402

from momattn.hardware import cpu_has_native_bf16  # noqa: E402


@pytest.mark.skipif(cpu_has_native_bf16(), reason="this CPU has native bf16: the check would measure")
def test_without_native_bf16_it_skips_and_says_so(tmp_path):
    out = tmp_path / "cpu_bf16.json"
    assert cpu_bf16_check.main(["--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["native_bf16"] is False and "no native bf16" in rep["skipped"]
    assert "Skipped: this CPU has no native bf16" in out.with_suffix(".md").read_text()


def test_a_misspelt_part_or_a_skip_never_replaces_measured_results(tmp_path, monkeypatch, capsys):
    # --parts stpe measured nothing and wrote that over benchmarks/results/cpu_bf16.json; so did a run on a CPU
    # without native bf16 (its skip note replaced the stored measurements)
    out = tmp_path / "cpu_bf16.json"
    stored = json.dumps({"step": {"tokens_per_s": {"fp32": 1.0}}, "date": "then"})
    out.write_text(stored)
    with pytest.raises(SystemExit):
        cpu_bf16_check.main(["--parts", "stpe", "--out", str(out)])
    assert "--parts='stpe': choose step, runs or step,runs" in capsys.readouterr().err
    for bad in ("-1", "x", str(2**32)):  # a negative seed failed every run, its reason only in the JSON
        with pytest.raises(SystemExit):
            cpu_bf16_check.main(["--seeds", "1", bad, "--out", str(out)])
        assert f"--seeds: '{bad}' is not a seed train.py takes" in capsys.readouterr().err
    monkeypatch.setattr(cpu_bf16_check, "cpu_has_native_bf16", lambda: False)
    assert cpu_bf16_check.main(["--out", str(out)]) == 0
    assert out.read_text() == stored and "holds measured results and is left as it is" in capsys.readouterr().err


@pytest.mark.slow
def test_smoke_times_the_step_and_runs_the_main_job_at_both_precisions(tmp_path):
    out = tmp_path / "cpu_bf16.json"
    r = run_cli("benchmarks/cpu_bf16_check.py", ["--smoke", "--force", "--seeds", "1", "--parallel", "2", "--threads",
                "1", "--override", "data.tasks=[trec]", "--workdir", str(tmp_path / "runs"), "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(out.read_text())
    assert set(rep["step"]["tokens_per_s"]) == {"nanogpt_fp32", "fp32", "bf16"} and rep["step"]["bf16_over_fp32"] > 0
    runs = {row["precision"]: row for row in rep["runs"]}
    assert set(runs) == {"32-true", "bf16-mixed"}, rep["runs"]
    for prec, row in runs.items():
        assert row["rc"] == 0 and row["precision"] == prec and row["val/loss"] > 0, row
    md = out.with_suffix(".md").read_text()
    assert "| bf16-mixed | 1 |" in md and f"`precision=auto` on this CPU: {rep['auto_precision']} (" in md
    # AMX, or an AMD CPU's avx512_bf16, makes it bf16 (it said AMX alone: false on an AMD EPYC, Zen 4)
    from momattn.hardware import cpu_bf16_pays

    assert rep["auto_precision"] == ("bf16-mixed" if cpu_bf16_pays() else "32-true")
    assert "an AMD CPU with avx512_bf16" in md or rep["vendor"] != "AuthenticAMD" or not rep["native_bf16"]
    assert ("bf16_matmul_speedup" in rep) == rep["native_bf16"] and rep.get("bf16_matmul_speedup", 1) > 0
    assert rep["step"]["rounds"] == 2  # --smoke's default
    # --parts step --merge re-times the step and keeps the runs measured before; --rounds is kept under --smoke
    # (it was replaced by 2 silently)
    r = run_cli("benchmarks/cpu_bf16_check.py", ["--smoke", "--force", "--parts", "step", "--merge", "--threads", "1",
                                                  "--rounds", "3", "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    again = json.loads(out.read_text())
    assert again["runs"] == rep["runs"] and again["verdict"] == rep["verdict"] and again["step"]["rounds"] == 3
    assert set(again["part_dates"]) == {"step", "runs"} and set(again["step"]["paired_over_nanogpt_fp32"]) == {
        "nanogpt_fp32", "fp32", "bf16"}


def _row(prec, seed, loss):
    return {"precision": prec, "seed": seed, "rc": 0, "val/loss": loss, "val/ppl": 2.0, "tokens_per_sec": 1000.0,
            "fit_seconds": 1.0}


def test_verdict_compares_the_bf16_difference_with_the_seed_spread():
    close = cpu_bf16_check.verdict([_row("32-true", 1, 4.00), _row("32-true", 2, 4.10),
                                    _row("bf16-mixed", 1, 4.05), _row("bf16-mixed", 2, 4.08)])
    assert close["bf16_minus_fp32"] == [0.05, -0.02] and close["fp32_seed_spread"] == 0.1
    assert close["within_seed_noise"] is True and close["32-true"]["val_loss_mean"] == 4.05
    far = cpu_bf16_check.verdict([_row("32-true", 1, 4.00), _row("32-true", 2, 4.01),
                                  _row("bf16-mixed", 1, 4.30), _row("bf16-mixed", 2, 4.02)])
    assert far["within_seed_noise"] is False
    failed = cpu_bf16_check.verdict([_row("32-true", 1, 4.0), {"precision": "bf16-mixed", "seed": 1, "rc": 1}])
    assert failed["bf16_minus_fp32"] == [] and "within_seed_noise" not in failed


def test_a_merged_report_keeps_the_machine_each_part_ran_on(tmp_path, monkeypatch):
    """--merge kept the earlier main-job runs but credited them to this host (found by review)."""
    out = tmp_path / "cpu_bf16.json"
    runs = [_row("32-true", 1, 4.0), _row("bf16-mixed", 1, 4.0)]
    out.write_text(json.dumps({"machine": "the AMX host", "date": "then", "native_bf16": True, "runs": runs,
                               "runs_threads": 2, "runs_parallel": 1, "verdict": cpu_bf16_check.verdict(runs)}))
    monkeypatch.setattr(cpu_bf16_check, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(cpu_bf16_check, "describe", lambda: "this host")
    monkeypatch.setattr(cpu_bf16_check, "step_timing", lambda *a: {"threads": 1, "rounds": 1, "steps_per_sample": 1,
                        "tokens_per_s": {"fp32": 1, "bf16": 2}, "spread": {"fp32": [1, 1], "bf16": [2, 2]}})
    monkeypatch.setattr(cpu_bf16_check, "matmul_speedup", lambda *a: 2.0)
    assert cpu_bf16_check.main(["--parts", "step", "--merge", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["part_machines"] == {"runs": "the AMX host", "step": "this host"}
    assert "\nMachine: runs on the AMX host; step on this host; runs then; step " in out.with_suffix(".md").read_text()
