"""The benchmark scripts' command lines: bad input is one line before any measuring, results are written whole
(atomically, the JSON last), and Ctrl-C or momattn's own errors end without a traceback."""

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
import harness  # noqa: E402


def _refused(capsys, main, argv, monkeypatch=None, script=None) -> str:
    """main's argparse error line (exit 2) for argv; scripts that read sys.argv get it there."""
    if script is not None:
        monkeypatch.setattr(sys, "argv", [script, *argv])
    with pytest.raises(SystemExit) as e:
        main(argv) if script is None else main()
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_an_out_that_is_a_folder_is_refused_before_the_measurement(tmp_path, capsys, monkeypatch):
    import bench_kernel_step
    import bench_long_document
    import bench_startup

    line = _refused(capsys, bench_startup.main, ["--out", str(tmp_path)])
    assert f"--out {tmp_path}: {tmp_path} is a folder" in line
    (tmp_path / "r.md").mkdir()  # the .md written beside it
    assert "r.md is a folder" in _refused(capsys, bench_startup.main, ["--out", str(tmp_path / "r.json")])
    for mod in (bench_long_document, bench_kernel_step):
        assert "is a folder" in _refused(capsys, mod.main, ["--out", str(tmp_path)], monkeypatch, mod.__file__)
    monkeypatch.chdir(tmp_path)
    assert "--out .: . is a folder" in _refused(capsys, bench_startup.main, ["--out", "."])  # (a ValueError: no name)
    # the .md's own name: the JSON was written over it ("wrote r.md and r.md": flows review)
    assert "--out r.md: give the JSON file's name (e.g. r.json); the .md is written beside it" in _refused(
        capsys, bench_startup.main, ["--out", "r.md"])


def test_an_out_folder_that_is_a_file_is_refused(tmp_path, capsys):
    import bench_framework
    import ginc_bayes

    f = tmp_path / "file"
    f.write_text("")
    assert f"--out {f}: it is a file" in _refused(capsys, bench_framework.main, ["--out", str(f)])
    assert f"--out {f}: it is a file" in _refused(capsys, ginc_bayes.main, ["--out", str(f), "--prompts", "1"])
    assert "must exceed" in _refused(capsys, bench_framework.main, ["--steps", "5"])


@pytest.mark.parametrize("argv, says", [
    (["--rev", "nosuchrev"], "--rev nosuchrev: not a commit"),
    (["--threads", "-1"], "--threads=-1 must be >= 1"),
])
def test_compare_revisions_bad_input(argv, says, capsys, monkeypatch):
    import compare_revisions

    assert says in _refused(capsys, compare_revisions.main, argv, monkeypatch, "compare_revisions.py")


def test_compare_revisions_builds_an_older_revisions_model_from_the_fields_it_has(capsys):
    # today's GPTConfig.__dict__ given whole to an older class: a TypeError traceback (--rev HEAD~950: review)
    import dataclasses
    import types

    import compare_revisions

    from momattn.errors import UserError
    from momattn.model import GPTConfig

    @dataclasses.dataclass
    class OldAttention:
        kind: str = "vanilla"

    @dataclasses.dataclass
    class OldConfig:
        n_layer: int = 1
        attention: OldAttention = dataclasses.field(default_factory=OldAttention)

    old = types.SimpleNamespace(GPTConfig=OldConfig, AttentionConfig=OldAttention)
    cfg = GPTConfig(n_layer=3)
    assert compare_revisions.config_for(old, cfg, {"kind": "vanilla"}, "v1") == OldConfig(3, OldAttention("vanilla"))
    assert "--rev v1's GPTConfig has no bias, block_size, " in capsys.readouterr().out
    with pytest.raises(UserError, match=r"^--rev v1: its model cannot be built with these settings \(.*eta.*\); "
                                        r"choose a later revision"):
        compare_revisions.config_for(old, cfg, {"kind": "momentum", "eta": 0.5}, "v1")


def test_bad_values_of_the_other_scripts_are_one_line(tmp_path, capsys, monkeypatch):
    import bench_analysis
    import bench_attention
    import bench_icl_cache
    import ginc_bayes
    import ginc_ood_probe
    import gpu_check
    import kendall_probe

    assert "give --ckpt PATH" in _refused(capsys, bench_analysis.main, [], monkeypatch, "bench_analysis.py")
    # --ginc with another task or a checkpoint: the task and the checkpoint were ignored, the row said ginc
    assert "not --task sst2" in _refused(capsys, bench_analysis.main, ["--ginc", "--task", "sst2"], monkeypatch,
                                         "bench_analysis.py")
    assert "not both" in _refused(capsys, bench_analysis.main, ["--ginc", "--ckpt", "x.ckpt"], monkeypatch,
                                  "bench_analysis.py")
    bad = tmp_path / "rows.json"
    bad.write_text("{not json")
    assert "not a bench_analysis results file" in _refused(
        capsys, bench_analysis.main, ["--ginc", "--out", str(bad)], monkeypatch, "bench_analysis.py")
    assert "give cpu, cuda or cuda:N" in _refused(capsys, bench_icl_cache.main, ["--device", "tpu"], monkeypatch,
                                                  "bench_icl_cache.py")
    assert "--shots must be comma-separated integers" in _refused(capsys, ginc_bayes.main, ["--shots", "x"])
    assert "not a GINC task" in _refused(capsys, ginc_bayes.main, ["--tasks", "sst2"])
    assert "no such folder" in _refused(capsys, ginc_ood_probe.main, ["--sweep", str(tmp_path / "none")])
    assert "no such checkpoint file" in _refused(capsys, kendall_probe.main, ["--ckpt", str(tmp_path / "x.ckpt")],
                                                 monkeypatch, "kendall_probe.py")
    # its --name wrote outside the results folder, and a run folder named like a stored one replaced its result
    (tmp_path / "x.ckpt").write_bytes(b"")
    probe = ["--ckpt", str(tmp_path / "x.ckpt"), "--out", str(tmp_path / "kp")]
    assert "--name '../x': a file name, without folders" in _refused(
        capsys, kendall_probe.main, [*probe, "--name", "../x"], monkeypatch, "kendall_probe.py")
    (tmp_path / "kp").mkdir()
    (tmp_path / "kp" / "seed1.json").write_text("{}")
    assert "seed1.json exists (another checkpoint's result?); give --name or --out, or --force" in _refused(
        capsys, kendall_probe.main, [*probe, "--name", "seed1"], monkeypatch, "kendall_probe.py")
    assert "--threads=0 must be >= 1" in _refused(capsys, bench_attention.main, ["--threads", "0"])
    assert "--patience=-1.0 must be a finite number >= 0" in _refused(capsys, bench_attention.main, ["--patience", "-1"])
    assert "--profile=-3 must be >= 0" in _refused(capsys, gpu_check.main, ["--profile", "-3", "--smoke"],
                                                   monkeypatch, "gpu_check.py")


def test_cpu_bf16_check_refuses_a_seed_twice_and_no_time(tmp_path, capsys):
    import cpu_bf16_check

    out = ["--out", str(tmp_path / "r.json")]
    assert "a seed is given twice" in _refused(capsys, cpu_bf16_check.main, ["--seeds", "1", "1", *out])
    assert "--timeout=0.0 must be > 0" in _refused(capsys, cpu_bf16_check.main, ["--timeout", "0", *out])
    (tmp_path / "r.json").write_text("[1]")
    assert "--merge --out" in _refused(capsys, cpu_bf16_check.main, ["--merge", "--parts", "step", *out])
    # a --smoke step merged into a full-size report was labelled and chained with its runs (found by review)
    (tmp_path / "r.json").write_text('{"date": "x", "machine": "m", "smoke": false, "runs": {}}')
    assert "it holds a full-size report, and this run is --smoke; merge like with like" in _refused(
        capsys, cpu_bf16_check.main, ["--merge", "--smoke", "--parts", "step", *out])


def test_mutation_sample_reads_its_arguments_with_argparse(capsys, monkeypatch):
    import runpy

    for argv, says in ((["abc"], "invalid float value: 'abc'"), ([], "the following arguments are required"),
                       (["1.5"], "fraction 1.5 must be in (0, 1]")):
        monkeypatch.setattr(sys, "argv", ["mutation_sample.py", *argv])
        with pytest.raises(SystemExit) as e:
            runpy.run_path(str(BENCH / "mutation_sample.py"), run_name="__main__")
        assert e.value.code == 2 and says in capsys.readouterr().err


def test_mutation_report_refuses_a_file_without_results_and_writes_nothing(tmp_path):
    import mutation_report

    with pytest.raises(SystemExit, match="holds no mutmut result lines"):
        mutation_report.main(str(BENCH.parent / "README.md"), out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_render_readme_refuses_a_folder_without_results(tmp_path, capsys, monkeypatch):
    import render_readme

    monkeypatch.setattr(sys, "argv", ["render_readme.py", "--results", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        render_readme.main()
    assert e.value.code == 2 and "no results file there" in capsys.readouterr().err


def test_render_readme_checks_and_writes_the_readmes_generated_tables(tmp_path, capsys, monkeypatch):
    """The tables were printed to paste by hand, with no way to tell a stale README (left-over item)."""
    import render_readme

    readme = (BENCH.parent / "README.md").read_text()
    (tmp_path / "README.md").write_text(readme)

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["render_readme.py", "--readme", str(tmp_path / "README.md"), *args])
        try:
            render_readme.main()
        except SystemExit as e:
            return e.code, capsys.readouterr()
        return 0, capsys.readouterr()

    code, out = run("--check")
    assert code == 0 and "its generated tables are up to date" in out.out
    start, end = render_readme.generated_part(readme)
    cell = readme.index("| ", start)  # a table cell of the generated part, edited by hand
    stale = readme[:cell] + "| edited by hand " + readme[cell + 2:]
    (tmp_path / "README.md").write_text(stale)
    line = readme[:cell].count("\n") + 1
    code, out = run("--check")
    assert code == 1 and f"its generated tables differ from the results from line {line} on" in out.err
    assert (tmp_path / "README.md").read_text() == stale  # --check writes nothing
    code, out = run("--write")
    assert code == 0 and (tmp_path / "README.md").read_text() == readme  # the rest of it untouched
    ends = readme[:end] + "\n"  # the generated part last in the file: up to date, and written with one final newline
    (tmp_path / "README.md").write_text(ends.rstrip("\n") + "\n")
    code, out = run("--check")
    assert code == 0, out.err
    (tmp_path / "README.md").write_text(stale[:end].rstrip("\n") + "\n")
    code, out = run("--write")
    assert code == 0 and (tmp_path / "README.md").read_text() == readme[:end].rstrip("\n") + "\n"
    (tmp_path / "README.md").write_text("# no tables here\n")
    code, out = run("--check")
    assert code == 2 and "holds no 'Generated by" in out.err


@pytest.mark.parametrize("text,says", [('{"broken', "JSONDecodeError"), ("{}", "KeyError: 'machine'"),
                                        ("[1, 2]", "Error")])
def test_render_readme_names_a_results_file_it_cannot_render(tmp_path, capsys, monkeypatch, text, says):
    """A damaged or cut results file was a traceback from inside a renderer, naming neither file nor fault."""
    import render_readme

    (tmp_path / "attention.json").write_text(text)
    monkeypatch.setattr(sys, "argv", ["render_readme.py", "--results", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        render_readme.main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{tmp_path / 'attention.json'}: not a results file its benchmark can render (" \
        in err and says in err and "Traceback" not in err


def test_results_are_written_whole_with_the_json_last(tmp_path, monkeypatch):
    from momattn import io

    order = []
    real = io.atomic_write_text
    monkeypatch.setattr(io, "atomic_write_text", lambda p, t: order.append(Path(p).suffix) or real(p, t))
    harness.write_results(tmp_path / "r.json", {"x": float("nan"), "y": 1.5}, "| md |")
    assert order == [".md", ".json"]  # each through the atomic writer; a kill between them leaves the old JSON
    assert json.loads((tmp_path / "r.json").read_text()) == {"x": None, "y": 1.5}  # standard JSON: no NaN
    assert (tmp_path / "r.md").read_text() == "| md |\n"


def test_run_main_ends_ctrl_c_and_user_errors_in_one_line(capsys):
    from momattn.errors import CheckpointError

    def interrupted():
        raise KeyboardInterrupt

    def missing():
        raise CheckpointError("no checkpoint at /x.ckpt")

    for main, code, says in ((interrupted, 130, "interrupted"), (missing, 2, "error: no checkpoint at /x.ckpt"),
                             (lambda: {"rows": []}, 0, ""), (lambda: 3, 3, "")):
        with pytest.raises(SystemExit) as e:
            harness.run_main(main)
        err = capsys.readouterr().err
        assert e.value.code == code and says in err and "Traceback" not in err


def test_every_committed_result_is_standard_json():
    # the README says every JSON file momattn writes is standard JSON; eta_sweep_rotary/sweep.json, written before
    # that held, had bare NaN that jq refuses (found by review)
    from conftest import strict_json

    files = sorted((Path(__file__).parents[1] / "benchmarks" / "results").rglob("*.json"))
    assert len(files) > 20
    for f in files:
        strict_json(f.read_text())


def test_benchmark_review_bad_values_are_refused_before_any_measuring(tmp_path, capsys, monkeypatch):
    """Found by the benchmarks review: nan passed '< 0' checks (a ValueError traceback, or a 60 s wait per retake);
    a misspelled --override failed every main-job run after the step timing's minutes; a --name or an override
    holding a path wrote outside --out."""
    import bench_attention
    import compare_revisions
    import cpu_bf16_check
    import ginc_curve

    from momattn.errors import ConfigError

    assert "--patience=nan must be a finite number" in _refused(capsys, bench_attention.main, ["--patience", "nan"])
    for v in ("nan", "inf"):
        assert f"--min-sample-s={v} must be a finite number > 0" in _refused(
            capsys, compare_revisions.main, ["--min-sample-s", v], monkeypatch, "compare_revisions.py")
    with pytest.raises(ConfigError, match="'model.n_layr' is not a config key.*Did you mean 'n_layer'"):
        cpu_bf16_check.main(["--parts", "runs", "--smoke", "--seeds", "1", "--workdir", str(tmp_path / "w"),
                             "--out", str(tmp_path / "r.json"), "--override", "model.n_layr=2"])
    assert not (tmp_path / "r.json").exists()
    # without --workdir: a temporary folder of its own (a fixed /tmp one: two checks removed each other's runs),
    # made once the checks passed (each refused call left an empty one: diff review)
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("momattn_cpu_bf16_runs_*"))
    with pytest.raises(ConfigError):
        cpu_bf16_check.main(["--parts", "runs", "--smoke", "--seeds", "1", "--out", str(tmp_path / "r.json"),
                             "--override", "model.n_layr=2"])
    assert set(Path(tempfile.gettempdir()).glob("momattn_cpu_bf16_runs_*")) == before
    assert "--name '../x': a file name, without folders" in _refused(
        capsys, ginc_curve.main, ["--name", "../x", "--out", str(tmp_path)])
    # a precision train.py takes and the loop does not: a traceback, after the tokenizer and data (review)
    assert ginc_curve.main(["--out", str(tmp_path), "trainer.precision=bf16-true"]) == 2
    assert capsys.readouterr().err.strip() == ("ginc_curve.py: trainer.precision=bf16-true: this benchmark's training "
                                               "loop reproduces train.py's step in 32-true and bf16-mixed only; give "
                                               "one of them")
    name = ginc_curve.file_name(["tokenizer.path=../../x", "model.n_layer=2"])
    assert "/" not in name and not name.startswith(".") and name.startswith("tokenizer.path-.._.._x_model.n_layer-2_")
    assert ginc_curve.file_name(["a=b/c"]) != ginc_curve.file_name(["a=b_c"]) == "a-b_c"  # one file each
    assert ginc_curve.file_name([]) == "default"
    assert len(ginc_curve.file_name([f"seed={'1' * 400}"])) <= 120


def test_a_results_table_names_its_machine(tmp_path, capsys):
    machine = harness.machine_info("cpu")
    harness.write_results(tmp_path / "r.json", {"machine": machine}, "| a |\n|---|")
    md = (tmp_path / "r.md").read_text()
    assert md.startswith("| a |\n|---|\n\nMachine: ") and machine["describe"] in md
    said = f"{machine['describe']}: a table"  # one that says it already is left as it is
    assert harness.with_machine(said, machine) == said and harness.with_machine("t", None) == "t"


def test_cpu_bf16_check_names_a_failed_runs_error_not_hydras_hint():
    """Every train.py error ends with Hydra's hint line, which the failure line quoted (flows review)."""
    import cpu_bf16_check

    tail = "[momattn] ...\nerror: trainer.max_steps=0 must be an integer >= 1\n(set HYDRA_FULL_ERROR=1 for the full traceback)\n"
    rows = [{"precision": "32-true", "seed": 1, "val/loss": 1.0}, {"precision": "bf16-mixed", "seed": 1, "tail": tail}]
    assert cpu_bf16_check.failure(rows) == "; bf16-mixed seed 1 ended with: error: trainer.max_steps=0 must be an integer >= 1"
    assert cpu_bf16_check.failure([{"precision": "32-true", "seed": 2, "tail": "Killed\n"}]).endswith("ended with: Killed")
    assert cpu_bf16_check.failure([]) == " (see the runs above)"


def test_a_trial_run_with_other_settings_never_replaces_the_committed_results(tmp_path, capsys):
    """bench_cpu_attention.py --shapes 1x1x8x4 --repeats 1 replaced benchmarks/results/cpu_attention.json (measured
    on an AMX Xeon) in 4 seconds (found by review): only the defaults that made them write there."""
    import argparse
    import tempfile

    from harness import RESULTS, default_out

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    assert default_out(ap, ap.parse_args(["--threads", "2"]), "x.json", skip=("out", "threads")) == RESULTS / "x.json"
    assert capsys.readouterr().err == ""
    scratch = default_out(ap, ap.parse_args(["--repeats", "1"]), "x.json", skip=("out", "threads"))
    assert scratch == Path(tempfile.gettempdir()) / "momattn-bench" / "x.json"
    assert f"settings other than the defaults (--repeats): writing {scratch}, not the committed" in \
        capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_benchmarks_child_does_not_outlive_it(tmp_path):
    """bench_kernel_step's worker and cpu_bf16_check's train.py runs went on after their benchmark was stopped by
    SIGTERM or a time limit, adopted by PID 1 (found by review): they are started to die with it."""
    import os
    import signal
    import subprocess
    import time

    parent = tmp_path / "parent.py"
    parent.write_text(f"import subprocess, sys, time\nsys.path.insert(0, {str(BENCH)!r})\n"
                      "from harness import die_with_parent\n"
                      "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
                      "preexec_fn=die_with_parent)\nprint(c.pid, flush=True)\ntime.sleep(60)\n")
    p = subprocess.Popen([sys.executable, str(parent)], stdout=subprocess.PIPE, text=True)
    child = int(p.stdout.readline())
    p.send_signal(signal.SIGKILL)
    p.wait()
    for _ in range(100):  # the kernel signals the child as the parent dies
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{child}/stat") as f:  # gone but not yet reaped (a zombie) counts as gone
            if f.read().split(") ")[1].startswith("Z"):
                break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the child outlived its parent")


@pytest.mark.parametrize(("script", "trial", "kept", "committed"), [
    ("bench_icl_cache", ["--repeats", "1"], [], "icl_cache.json"),
    ("bench_startup", ["--rounds", "1"], ["--rounds", "5"], "startup.json"),
    ("bench_data", ["--docs", "10"], [], "data.json"),
    ("bench_long_document", ["--words", "1000"], [], "long_document.json"),
    ("bench_analysis", ["--ginc", "--max-examples", "4"], ["--ginc"], "bench_analysis.json"),
    ("bench_framework", ["--steps", "30"], ["--recipe", "ginc"], ""),
    ("cpu_bf16_check", ["--parts", "step", "--rounds", "1"], ["--threads", "2", "--rounds", "11", "--seeds", "1", "2"],
     "cpu_bf16.json"),
    ("cpu_bf16_check", ["--rounds", "1", "--seeds", "1"], ["--parts", "step", "--merge"], "cpu_bf16.json"),  # (diff
    # review: a trial of both parts still replaced it)
])
def test_each_benchmarks_trial_run_writes_a_scratch_file_not_the_committed_results(script, trial, kept, committed,
                                                                                   monkeypatch, capsys):
    """A trial run (cpu_bf16_check --parts step --rounds 1, bench_icl_cache with one repeat, bench_analysis with 4
    examples) replaced the committed results the README quotes, without a word (found by review); the documented
    commands still write them."""
    import importlib

    from harness import RESULTS, SCRATCH

    module = importlib.import_module(script)

    class Chosen(Exception):
        pass

    def chosen(ap, path, *a, **kw):  # where it would write, known before any measuring
        raise Chosen(Path(path))

    monkeypatch.setattr(module, "check_out_dir" if script == "bench_framework" else "check_out", chosen)
    for argv, where in ((trial, SCRATCH), (kept, RESULTS)):
        monkeypatch.setattr(sys, "argv", [script, *argv])
        with pytest.raises(Chosen) as e:
            module.main() if script in ("bench_icl_cache", "bench_data", "bench_long_document", "bench_analysis") \
                else module.main(argv)
        assert e.value.args[0] == where / committed, argv
    assert f"writing {SCRATCH / committed}, not the committed" in capsys.readouterr().err


def test_a_table_of_contended_timings_says_so(tmp_path, capsys):
    # contended samples kept (out of retries or patience) were in the JSON alone: the table read like any other
    # (found by review); bench_attention, which says it itself, is left alone
    from harness import write_results

    busy = {"machine": {}, "rows": [{"t": {"samples_s": [1.0, 1.1, 0.9], "contended_samples_kept": 2}},
                                    {"t": {"samples_s": [1.0], "contended_samples_kept": 0}}]}
    write_results(tmp_path / "busy.json", busy, "| a |")
    assert "Contended: 2 of 4 timed samples were taken while other work" in (tmp_path / "busy.md").read_text()
    quiet = {"machine": {}, "rows": [{"t": {"samples_s": [1.0], "contended_samples_kept": 0}}]}
    write_results(tmp_path / "quiet.json", quiet, "| a |")
    write_results(tmp_path / "own.json", {**busy, "contention": {}}, "| a |")
    assert "Contended" not in (tmp_path / "quiet.md").read_text() + (tmp_path / "own.md").read_text()
