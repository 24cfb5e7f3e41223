"""evaluate.py sweep_dir=...: runs found and grouped, evaluated or reused, paired differences and verdicts."""

import json
import math
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import strict_json
from test_eval_runner import DATA, tokenizer  # noqa: F401  (the module-scoped BPE fixture)

from momattn.checkpoint import checkpoint_meta
from momattn.errors import ConfigError
from momattn.eval.runner import run_evaluate
from momattn.eval.sweep import SettingSummary, _curves, sweep_plots, t_interval, verdict
from momattn.io import atomic_torch_save
from momattn.model import GPT, AttentionConfig, GPTConfig

EVAL = {"ppl": {"lengths": [32], "max_windows": 2, "train": False},
        "icl": {"tasks": ["trec"], "shots": [0], "seeds": [1], "max_examples": 4}}


def job(root, num: int, kind: str, seed: int, tok, lr: float = 2e-3, extra: dict | None = None,
        step: int | None = None, block_size: int = 32):
    """A job folder of a multirun as train.py leaves it: .hydra/config.yaml and checkpoints/last.ckpt (at
    global_step `step`, where given)."""
    d = root / str(num)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text(f"seed: {seed}\ntrainer:\n  max_steps: 400\n")
    torch.manual_seed(seed * 10 + len(kind))
    cfg = GPTConfig(block_size=block_size, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16,
                    attention=AttentionConfig(kind=kind))
    run_config = {"data": DATA, "seed": seed, "attention": {"kind": kind}, "optim": {"lr": lr},
                  "paths": {"output_dir": str(d)}, **(extra or {})}
    ckpt = {"state_dict": {"model." + k: v for k, v in GPT(cfg).state_dict().items()},
            "momattn": checkpoint_meta(cfg, tok, run_config), **({"global_step": step} if step is not None else {})}
    atomic_torch_save(ckpt, d / "checkpoints" / "last.ckpt")
    return d


def damage_a_tensor(path: Path) -> None:
    """One byte flipped inside the largest tensor's data (the zip's CRC-32 no longer matches)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + 1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_t_interval_and_verdicts():
    mean, lo, hi = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and hi - mean == pytest.approx(4.3026527 * 1.0 / math.sqrt(3), rel=1e-7)
    # an interval's end near 0: with the quantiles at 3 decimals (12.706) this read +0.0001, "worse", where
    # scipy's end is -0.0001 and the verdict inconclusive (found by review)
    assert t_interval([11.7061, 13.7061])[1] < 0
    assert math.isnan(t_interval([0.5])[1])
    assert verdict("trec/acc@k0", 0.01, 0.05) == "better" and verdict("ppl@256", 0.01, 0.05) == "worse"
    assert verdict("apple/acc@k4", 0.01, 0.05) == "better"  # an accuracy, whatever letters its task's name holds
    assert verdict("ppl@256", -3.0, -1.0) == "better" and verdict("avg/acc@kmax", -0.1, 0.2).startswith("inconclusive")
    nan = float("nan")
    assert verdict("ppl@256", nan, nan) == "cannot tell (one seed: no interval)"  # one pair: no evidence either way
    # two seeds that differ by exactly the same amount (accuracy steps of 0.2 points make it happen): the
    # zero-width interval [+3.4, +3.4] is no evidence, and is not reported as one
    assert all(math.isnan(b) for b in t_interval([0.034, 0.034])[1:])
    assert verdict("ginc/acc@k32", nan, nan, 2) == "cannot tell (the same difference in all 2 seeds: no spread, no interval)"


def test_a_verdict_of_another_sweep_in_the_output_folder_is_said_to_be_replaced(tmp_path, capsys):
    # sweep B's verdict replaced sweep A's in one hydra.run.dir without a word (found by review)
    from momattn.eval.sweep import _say_replaced_verdict

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _say_replaced_verdict(tmp_path / "out", tmp_path / "a")  # nothing there yet
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sweep.json").write_text(json.dumps({"sweep_dir": str(tmp_path / "a")}))
    _say_replaced_verdict(tmp_path / "out", tmp_path / "a")  # the same sweep again
    assert capsys.readouterr().err == ""
    _say_replaced_verdict(tmp_path / "out", tmp_path / "b")
    assert capsys.readouterr().err == (f"[momattn] note: {tmp_path / 'out'} holds the verdict of sweep_dir="
                                       f"{tmp_path / 'a'}; this one's, of sweep_dir={tmp_path / 'b'}, replaces its "
                                       "sweep.md and sweep.json, and the earlier sweep's job results under jobs/ "
                                       "that this one does not write stay there (to keep the two apart, give each its "
                                       "own hydra.run.dir)\n")
    # one typed relative from another folder is the same sweep (its resolved path is recorded: diff review)
    (tmp_path / "out" / "sweep.json").write_text(json.dumps({"sweep_dir": "a", "sweep_path": str(tmp_path / "a")}))
    _say_replaced_verdict(tmp_path / "out", tmp_path / "a")
    _say_replaced_verdict(tmp_path / "out", tmp_path / "b")
    assert capsys.readouterr().err.count("note:") == 1


def test_sweep_verdict(tmp_path, tokenizer):  # noqa: F811
    sweep = tmp_path / "multirun"
    n = 0
    for kind in ("vanilla", "momentum"):
        for seed in (1, 2, 3):
            job(sweep, n, kind, seed, tokenizer)
            n += 1
    job(sweep, n, "vanilla", 1, tokenizer, lr=1e-3)  # another setting: its own group
    (sweep / "99" / ".hydra").mkdir(parents=True)  # a job that died before its first checkpoint
    (sweep / "99" / ".hydra" / "config.yaml").write_text("seed: 4\ntrainer:\n  max_steps: 400\n")
    damage_a_tensor(job(sweep, 7, "vanilla", 1, tokenizer, lr=5e-3) / "checkpoints" / "last.ckpt")
    out = tmp_path / "verdict"
    run_evaluate({**EVAL, "sweep_dir": str(sweep), "device": "cpu"}, out_dir=out)
    doc = strict_json((out / "sweep.json").read_text())
    assert len(doc["runs"]) == 7 and doc["failed"][0] == "99 (no checkpoints/last.ckpt)"
    from momattn.eval.sweep import find_runs

    (sweep / "99" / "checkpoints").mkdir()  # kept by a best file alone (save_last=false): it is named (diff review)
    (sweep / "99" / "checkpoints" / "best-step6.ckpt").write_bytes(b"x")
    assert f"99 (no checkpoints/last.ckpt; it holds best-step6.ckpt (save_last=false?): evaluate.py ckpt_path=" \
           f"{sweep / '99' / 'checkpoints' / 'best-step6.ckpt'} scores it alone)" in find_runs(sweep)[1]
    (sweep / "99" / "checkpoints" / "best-step6.ckpt").unlink()
    # its metadata reads (find_runs) but its weights fail the CRC check at evaluation: named, not the sweep's end
    assert len(doc["failed"]) == 2 and doc["failed"][1].startswith("7 (unreadable checkpoint: checkpoint '")
    assert "is damaged" in doc["failed"][1]
    settings = sorted(doc["settings"], key=lambda s: -len(s["rows"]))
    main, other = settings
    assert set(main["rows"]) == {"vanilla", "momentum"} and main["differs"] == {"optim.lr": 0.002}
    assert main["rows"]["momentum"]["ppl@32"]["n"] == 3 and set(other["rows"]) == {"vanilla"}
    comp = {c["metric"]: c for c in main["comparisons"]}
    assert set(comp) == {"ppl@32", "trec/acc@k0", "avg/acc@k0"}
    runs = {(r["attention"], r["seed"]): r["metrics"] for r in doc["runs"] if r["setting"] == main["setting"]}
    diffs = [runs["momentum", s]["ppl@32"] - runs["vanilla", s]["ppl@32"] for s in (1, 2, 3)]
    assert comp["ppl@32"]["diff_mean"] == pytest.approx(sum(diffs) / 3) and comp["ppl@32"]["n_pairs"] == 3
    c = comp["ppl@32"]
    assert c["verdict"] == verdict("ppl@32", c["lo"], c["hi"])
    md = (out / "sweep.md").read_text()
    assert "Failed or partial jobs (left out): 99" in md and "### Table 6 (valid perplexity)" in md
    assert "| momentum | 3 |" in md and "momentum: " in md and "No vanilla run" not in md
    for r in doc["runs"]:  # each job scored here has its own tables, which the verdict's notes point to (review)
        scored = out / "jobs" / r["checkpoint"].split("/")[-3]
        assert (scored / "results.md").read_text().startswith("# momattn evaluation")
        assert (scored / "results.json").exists()
    for kind in ("icl", "ppl"):  # the plots: accuracy vs k and perplexity by length, one file per setting
        png = out / f"{kind}_{main['setting']}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"({png.name})" in md

    # again, with every job's eval/results.json made with the same settings: reused, same verdict
    for r in doc["runs"]:
        name = r["checkpoint"].split("/")[-3]
        (sweep / name / "eval").mkdir()
        (sweep / name / "eval" / "results.json").write_text((out / "jobs" / name / "results.json").read_text())
    run_evaluate({**EVAL, "sweep_dir": str(sweep), "device": "cpu"}, out_dir=tmp_path / "again")
    again = strict_json((tmp_path / "again" / "sweep.json").read_text())
    assert all(r["reused_results"] for r in again["runs"]) and again["settings"] == doc["settings"]
    assert "\nReused: the end-of-run evaluation (eval/results.json) of jobs 0, 1, 2, 3, 4, 5, 6: the same " \
           "settings, the weights of its last.ckpt and the same local files; no job was evaluated here." in \
           (tmp_path / "again" / "sweep.md").read_text()
    # job 0 trained again in place to the same step (other weights): its old numbers were reused, in silence
    ckpt = torch.load(sweep / "0" / "checkpoints" / "last.ckpt", weights_only=False)
    ckpt["state_dict"]["model.wte.weight"] += 0.01
    atomic_torch_save(ckpt, sweep / "0" / "checkpoints" / "last.ckpt")
    run_evaluate({**EVAL, "sweep_dir": str(sweep), "device": "cpu"}, out_dir=tmp_path / "third")
    third = strict_json((tmp_path / "third" / "sweep.json").read_text())
    assert [r["reused_results"] for r in third["runs"]] == [False, *[True] * 6]
    assert "Reused: the end-of-run evaluation (eval/results.json) of jobs 1, 2, 3, 4, 5, 6: the same settings, " \
           "the weights of its last.ckpt and the same local files; the other jobs were evaluated here." in \
           (tmp_path / "third" / "sweep.md").read_text()



def test_unfinished_repeated_and_unpaired_runs_are_named_not_scored(tmp_path, tokenizer, capsys,  # noqa: F811
                                                                   monkeypatch):
    """Found by fuzzing: a diverged or interrupted job's early last.ckpt was averaged in as a finished run (a
    verdict of unlike things); evaluate.py's own folder inside the sweep was a "failed job"; a second cache folder
    split one experiment into two settings; a repeat was dropped with a console warning only; vanilla and
    momentum without a shared seed gave no verdict and no word."""
    sweep, steps = tmp_path / "multirun", {"trainer": {"max_steps": 6}}
    for n, (kind, seed) in enumerate([("vanilla", 1), ("vanilla", 2), ("momentum", 1), ("momentum", 2)]):
        job(sweep, n, kind, seed, tokenizer, extra={**steps, "data": {**DATA, "cache_dir": f"/cache{n % 2}"}}, step=6)
    job(sweep, 4, "momentum", 3, tokenizer, extra=steps, step=3)  # diverged at step 4: its last good checkpoint
    job(sweep, 5, "momentum", 2, tokenizer, extra=steps, step=6)  # a copy of job 3's run
    (sweep / "verdict" / ".hydra").mkdir(parents=True)  # evaluate.py's own folder, written into the sweep
    (sweep / "verdict" / ".hydra" / "config.yaml").write_text("sweep_dir: multirun\nppl:\n  max_windows: 2\n")
    out = tmp_path / "out"
    run_evaluate({**EVAL, "sweep_dir": str(sweep), "device": "cpu"}, out_dir=out)
    doc, md = strict_json((out / "sweep.json").read_text()), (out / "sweep.md").read_text()
    assert doc["failed"] == ["4 (partial: trained 3 of trainer.max_steps=6 steps (diverged or interrupted; resume it "
                             "with ckpt_path=last, or evaluate it alone with evaluate.py ckpt_path=...; or still "
                             "training: evaluate the sweep once it ends))"]
    assert len(doc["settings"]) == 1  # data.cache_dir is where tokens are kept, not what is trained
    (setting,) = doc["settings"]
    assert setting["rows"]["momentum"]["ppl@32"]["n"] == 2 and setting["comparisons"][0]["n_pairs"] == 2
    assert len(setting["duplicates"]) == 1 and setting["duplicates"][0].startswith(f"{sweep / '5'} (momentum, seed 2")
    assert md.startswith("# momattn sweep verdict\n\n4 runs (1 more left out as repeats, below)")
    assert "Left out, a second run of the same attention and seed" in md
    err = capsys.readouterr().err  # train.py's console style, not Hydra log records
    assert "[momattn] evaluating 0 (vanilla, seed 1)\n" in err
    assert f"[momattn] warning: {sweep / '3'} and {sweep / '5'}: same attention (momentum) and seed (2)" in err
    # the repeat is named without being scored: it was evaluated in full, then dropped (found by review)
    assert "evaluating 5 " not in err and "left out, not scored" in err and not (out / "jobs" / "5").exists()
    assert err.index("left out, not scored") < err.index("evaluating 0 ")  # said before any scoring (flows review)
    assert [r.get("left_out") for r in doc["runs"]] == [None] * 4 + [f"a second run of {sweep / '3'}, not scored"]
    # settings apart: named by the leaf that differs, not by 80 characters of a whole section
    for d in (sweep / "4", sweep / "5"):
        shutil.rmtree(d)
    job(sweep, 6, "vanilla", 1, tokenizer, extra={"trainer": {"max_steps": 8}}, step=8)
    job(sweep, 7, "momentum", 2, tokenizer, extra={"trainer": {"max_steps": 8}}, step=8)
    logged = []
    monkeypatch.setattr("momattn.wandb_runs.log_verdict", lambda out, cfg, who, tables, *a, **kw: logged.append(
        (out, cfg, tables, kw)))
    run_evaluate({**EVAL, "sweep_dir": str(sweep), "device": "cpu", "logger": {"wandb": {"project": "p"}}},
                 out_dir=tmp_path / "two")
    ((out, cfg, tables, kw),) = logged  # logger=wandb: the verdict's tables, one run (its settings apart)
    assert out == tmp_path / "two" and kw["job_type"] == "sweep-verdict"
    assert cfg == {"project": "p", "group": f"{tmp_path.name}/{sweep.name}"}  # the sweep's jobs' group (review)
    assert {r["setting"] for r in tables["rows"]} == {s["setting"] for s in strict_json(
        (out / "sweep.json").read_text())["settings"]} and len({r["setting"] for r in tables["rows"]}) == 2
    md = (tmp_path / "two" / "sweep.md").read_text()
    assert ": trainer.max_steps=8\n" in md and ": trainer.max_steps=6\n" in md
    assert md.count("No seed is shared with vanilla") == 1  # vanilla seed 1 and momentum seed 2: no pair


def test_sweep_reuses_matching_results_and_rejects_bad_folders(tmp_path):
    from momattn.eval.config import EvalConfig
    from momattn.eval.report import write_reports
    from momattn.eval.results import ModelResult
    from momattn.eval.sweep import reusable

    with pytest.raises(ConfigError, match="is not a folder"):
        run_evaluate({"sweep_dir": str(tmp_path / "nope")}, out_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"holds no finished run \(a job's checkpoints/last.ckpt"):
        run_evaluate({"sweep_dir": str(tmp_path / "empty")}, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="not both"):
        run_evaluate({"sweep_dir": str(tmp_path), "ckpt_path": "x"}, out_dir=tmp_path)
    cfg = EvalConfig.from_mapping(EVAL)
    fake = ModelResult(label="vanilla", attention="vanilla", model={}, tokenizer={},
                       eval_config=json.loads(json.dumps(__import__("dataclasses").asdict(cfg))))
    write_reports([fake], tmp_path / "job" / "eval")
    assert reusable(tmp_path / "job", cfg) == fake
    other = EvalConfig.from_mapping({**EVAL, "batch_tokens": 1024})
    assert reusable(tmp_path / "job", other) is None
    # numbers of the weights at step 300, and last.ckpt at step 500 (trained on, stopped before its evaluation):
    # computed again; a results.json from before the step was recorded is taken as it is
    fake.step = 300
    write_reports([fake], tmp_path / "job" / "eval")
    assert reusable(tmp_path / "job", cfg, 300) == fake and reusable(tmp_path / "job", cfg, 500) is None
    fake.step = None
    write_reports([fake], tmp_path / "job" / "eval")
    assert reusable(tmp_path / "job", cfg, 500) == fake
    doc = json.loads((tmp_path / "job" / "eval" / "results.json").read_text())
    doc["protocol"]["icl"] = "an older scoring rule"  # same settings, scored another way by an older momattn
    (tmp_path / "job" / "eval" / "results.json").write_text(json.dumps(doc))
    assert reusable(tmp_path / "job", cfg) is None


@pytest.mark.parametrize("precision", ["32-true", "bf16-true"])
def test_a_runs_own_evaluation_is_reused_for_the_weights_it_saved(tmp_path, capsys, precision):
    """train.py's end-of-run evaluation records the weights it scored, and they are last.ckpt's (bf16 weights
    too, loaded back as float32): a sweep's verdict reuses it instead of evaluating again."""
    from conftest import SMOKE, compose_train

    from momattn.eval.config import EvalConfig
    from momattn.eval.sweep import run_sweep
    from momattn.training import run_train

    evals = ["eval.ppl.lengths=[16]", "eval.ppl.max_windows=2", "eval.ppl.train=false", "eval.icl.tasks=[trec]",
             "eval.icl.shots=[0]", "eval.icl.seeds=[1]", "eval.icl.max_examples=4"]
    run_train(compose_train(tmp_path / "sweep" / "0", [*SMOKE, "run_eval=true", "trainer.max_steps=2",
                                                       f"trainer.precision={precision}", *evals]))
    capsys.readouterr()
    run_sweep(tmp_path / "sweep", EvalConfig.from_mapping(EVAL), tmp_path / "out", "cpu", own_settings=True)
    assert "[momattn] 0: its own evaluation is reused (" in capsys.readouterr().err
    assert strict_json((tmp_path / "out" / "sweep.json").read_text())["runs"][0]["reused_results"]


def test_an_evaluation_is_reused_only_with_the_files_it_read_unchanged(tmp_path, monkeypatch):
    """A task file edited in place kept its name (the settings), and a sweep reused the scores of its old rows."""
    import time

    from momattn.eval.config import EvalConfig
    from momattn.eval.results import ModelResult
    from momattn.eval.sweep import SweepRun, eval_inputs, stale_reason

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": f"row {i}", "label": i % 2}) + "\n" for i in range(8)))
    (tasks / "toy.yaml").write_text(f"name: toy\npath: {rows}\ntemplate: '{{text}} ->'\nanswers: [a, b]\n")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text\n")
    cfg = EvalConfig.from_mapping({"icl": {"tasks": ["toy"], "task_dirs": [str(tasks)]},
                                   "ppl": {"data": {"paths": [str(corpus)]}}})
    made = eval_inputs(cfg)
    assert set(made) == {str(p.resolve()) for p in (tasks / "toy.yaml", rows, corpus)}
    result = ModelResult(label="v", attention="vanilla", model={}, tokenizer={}, eval_config={}, weights="w",
                         inputs=made)
    run = SweepRun(job=tmp_path, path=tmp_path / "missing.ckpt", attention="vanilla", seed=1, setting="s",
                   config={}, meta={}, step=None)
    time.sleep(0.02)
    for f in (rows, tasks / "toy.yaml", corpus):
        before = f.read_text()
        f.write_text(before.replace("row 1", "row 9").replace("some", "more"))
        assert stale_reason(run, result, cfg) == "a file it read (a task file, its rows or ppl.data) has changed since"
        f.write_text(before)
        result.inputs = eval_inputs(cfg)
    assert stale_reason(run, result, cfg) == "its checkpoint cannot be read"  # the weights are checked next
    rows.chmod(0o600)  # the same rows: still reusable (a chmod changed the stamp, found by review of the change)
    assert stale_reason(run, result, cfg) == "its checkpoint cannot be read"
    # only the keys that name files are read: a split named like a folder here, or the token cache, were stamped
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "notes.md").write_text("x")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "a.bin").write_text("x")
    other = EvalConfig.from_mapping({"icl": {"enabled": False}, "ppl": {"data": {
        "paths": [str(corpus)], "val_split": "test", "train_split": "train", "cache_dir": str(tmp_path / "cache")}}})
    assert set(eval_inputs(other)) == {str(corpus.resolve())}
    result.weights = None
    assert stale_reason(run, result, cfg).startswith("its eval/results.json does not record which weights")


def test_plot_curves_follow_k_with_seed_bands(tmp_path):
    row = {"ginc/acc@k0": {"mean": 0.5, "std": 0.01, "n": 3}, "ginc/acc@k8": {"mean": 0.6, "std": 0.02, "n": 3},
           "ginc/acc@k2": {"mean": 0.55, "std": 0.0, "n": 2}, "ppl@64": {"mean": 5.0, "std": 0.1, "n": 3},
           "trec/acc@kmax": {"mean": 0.3, "std": 0.0, "n": 3}}
    assert _curves(row) == {"ginc": [(0, 0.5, 0.01, 3), (2, 0.55, 0.0, 2), (8, 0.6, 0.02, 3)]}
    s = SettingSummary("abc", {}, rows={"vanilla": row, "momentum": row})
    assert [p.name for p in sweep_plots([s], tmp_path)] == ["icl_abc.png", "ppl_abc.png"]
    # again into the same folder with perplexity off: the earlier ppl plot went on standing beside this verdict
    no_ppl = {k: v for k, v in row.items() if not k.startswith("ppl@")}
    sweep_plots([SettingSummary("abc", {}, rows={"vanilla": no_ppl})], tmp_path)
    assert (tmp_path / "ppl_abc.png").is_file()  # a folder without an earlier verdict: its files are not ours
    (tmp_path / "sweep.md").write_text("an earlier verdict\n")
    sweep_plots([SettingSummary("abc", {}, rows={"vanilla": no_ppl})], tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["icl_abc.png"]


def test_an_eta_sweep_gets_its_plot_of_perplexity_and_accuracy_against_eta(tmp_path):
    from momattn.eval.sweep import eta_panels

    def row(ppl, a0, a32):
        return {"ppl@64": {"mean": ppl + 1, "std": 0.1, "n": 2}, "ppl@256": {"mean": ppl, "std": 0.1, "n": 2},
                "ginc/acc@k0": {"mean": a0, "std": 0.01, "n": 2}, "ginc/acc@k32": {"mean": a32, "std": 0.01, "n": 2},
                "ginc/acc@k4": {"mean": a0, "std": 0.01, "n": 2}, "ginc_ood/acc@k0": {"mean": 0.1, "std": 0, "n": 2}}

    rows = {"vanilla": row(7, 0.5, 0.5), "momentum(eta=0.1)": row(6.8, 0.5, 0.52),
            "momentum(eta=0.5)": row(6.5, 0.55, 0.6), "momentum(learnable)": row(6.6, 0.5, 0.55)}
    params = {"vanilla": {"kind": "vanilla"}, "momentum(eta=0.1)": {"kind": "momentum", "eta": 0.1},
              "momentum(eta=0.5)": {"kind": "momentum", "eta": 0.5},
              "momentum(learnable)": {"kind": "momentum", "eta": 0.5, "learnable_eta": True}}
    s = SettingSummary("e", {}, rows=rows, params=params)
    assert eta_panels(s) == [("ppl@256", "valid perplexity, 256 tokens"), ("ginc/acc@k0", "ginc accuracy, k = 0"),
                             ("ginc/acc@k32", "ginc accuracy, k = 32")]
    assert [p.name for p in sweep_plots([s], tmp_path)] == ["icl_e.png", "ppl_e.png", "eta_e.png"]
    assert (tmp_path / "eta_e.png").stat().st_size > 1000
    # one fixed eta (and the learnable one) is not a sweep over eta: no plot
    one = SettingSummary("o", {}, rows=rows, params={**params, "momentum(eta=0.1)": {"kind": "momentum", "eta": 0.5}})
    assert "eta_o.png" not in [p.name for p in sweep_plots([one], tmp_path)]


def test_an_eta_sweep_keeps_each_eta_a_variant_of_its_own(tmp_path):
    from momattn.eval.sweep import SweepRun, _label_variants

    def run(att):
        r = SweepRun(tmp_path, tmp_path, att["kind"], 1, "s", {})
        r.attention_params = att
        return r

    runs = [run({"kind": "vanilla"}), run({"kind": "momentum", "eta": 0.3, "learnable_eta": False}),
            run({"kind": "momentum", "eta": 0.5, "learnable_eta": True}), run({"kind": "multirate_ema", "n_rates": 8})]
    _label_variants(runs)
    assert [r.attention for r in runs] == ["vanilla", "momentum(eta=0.3, learnable_eta=False)",
                                          "momentum(eta=0.5, learnable_eta=True)", "multirate_ema"]
    # a checkpoint from before include_current existed held its default: one variant, not 'include_current=None'
    runs = [run({"kind": "momentum", "eta": 0.5}), run({"kind": "momentum", "eta": 0.5, "include_current": False})]
    _label_variants(runs)
    assert [r.attention for r in runs] == ["momentum", "momentum"]


def test_settings_added_later_at_their_neutral_value_do_not_split_a_sweep():
    from momattn.eval.sweep import setting_config

    old = {"seed": 1, "trainer": {"max_steps": 10}, "optim": {"lr": 1e-3}}
    new = {"seed": 2, "trainer": {"max_steps": 10, "num_nodes": 1}, "optim": {"lr": 1e-3}, "global_batch": None}
    assert setting_config(old) == setting_config(new) and new["trainer"]["num_nodes"] == 1
    assert setting_config({**new, "trainer": {"max_steps": 10, "num_nodes": 2}}) != setting_config(old)



def test_a_run_resumed_with_other_settings_is_a_setting_of_its_own(tmp_path, tokenizer):  # noqa: F811
    """A job diverged at lr 2e-3 and resumed at 1e-3 stored lr 1e-3 alone, and was averaged and paired with runs
    trained at 1e-3 from step 0 (found by review). Resumes that changed the same thing at the same step group."""
    from momattn.eval.sweep import by_setting, find_runs, sweep_markdown

    sweep = tmp_path / "sweep"
    for num, (kind, seed) in enumerate([("vanilla", 1), ("momentum", 1), ("vanilla", 2), ("momentum", 2)]):
        d = job(sweep, num, kind, seed, tokenizer, lr=1e-3)
        if seed == 1:  # resumed at step 3 with optim.lr=0.001, and again with nothing of its identity changed
            ckpt = torch.load(d / "checkpoints" / "last.ckpt", weights_only=False)
            config = ckpt["momattn"]["config"]
            ckpt["momattn"]["history"] = [{"step": 3, "config": {**config, "optim": {"lr": 2e-3}}},
                                          {"step": 5, "config": {**config, "data": {**config["data"], "num_workers": 2}}}]
            atomic_torch_save(ckpt, d / "checkpoints" / "last.ckpt")
    runs, failed = find_runs(sweep)
    assert not failed and [r.resumed for r in runs] == [["at step 3 with optim.lr=0.001 (was 0.002)"]] * 2 + [[]] * 2
    groups = by_setting(runs)
    assert [[r.seed for r in rs] for _, _, rs in groups] == [[1, 1], [2, 2]]
    assert [differs for _, differs, _ in groups] == [{"resumed": "at step 3 with optim.lr=0.001 (was 0.002)"},
                                                     {"resumed": None}]
    md = sweep_markdown([SettingSummary(s, differs) for s, differs, _ in groups], [], len(runs))
    assert ": resumed at step 3 with optim.lr=0.001 (was 0.002)\n" in md and ": not resumed with other settings\n" in md
    assert [r.resumed for r in find_runs(sweep)[0] if r.seed == 2] == [[], []]  # none: one setting, as before
    assert by_setting([r for r in runs if r.seed == 2])[0][1] == {}

def test_metrics_are_ordered_by_length_and_by_k():
    from momattn.eval.sweep import metric_order

    names = ["ginc/acc@k16", "ppl@256", "ginc/acc@k2", "avg/acc@kmax", "ppl@64", "ginc/acc@k0"]
    assert sorted(names, key=metric_order) == ["ppl@64", "ppl@256", "avg/acc@kmax", "ginc/acc@k0", "ginc/acc@k2",
                                               "ginc/acc@k16"]


def test_in_context_rise_per_attention_with_its_interval_over_seeds():
    from momattn.eval.sweep import rises_of, sweep_markdown

    seeds = {1: {"ginc/acc@k0": 0.50, "ginc/acc@k4": 0.55, "ginc/acc@k32": 0.60, "ppl@64": 5.0,
                 "ginc_l8/acc@k0": 0.70, "ginc_l8/acc@k16": 0.69, "ginc_ood/acc@k0": 0.1, "trec/acc@kmax": 0.3},
             2: {"ginc/acc@k0": 0.52, "ginc/acc@k4": 0.56, "ginc/acc@k32": 0.64, "ppl@64": 5.1,
                 "ginc_l8/acc@k0": 0.71, "ginc_l8/acc@k16": 0.73, "ginc_ood/acc@k0": 0.1},
             3: {"ginc/acc@k0": 0.48, "ginc/acc@k4": 0.51,  # k = 32 missing here: the largest common k is 4
                 "ginc_l8/acc@k0": 0.69, "ginc_l8/acc@k16": 0.70, "ginc_ood/acc@k0": 0.1}}
    got = {r.task: r for r in rises_of("momentum", seeds)}
    assert set(got) == {"ginc", "ginc_l8"}  # ginc_ood: k = 0 only; trec: no k = 0
    g = got["ginc"]
    assert g.k == 4 and g.n_seeds == 3 and g.attention == "momentum"
    assert abs(g.mean - 0.04) < 1e-12
    assert g.lo > 0 and g.reading == "rises"  # 5, 4, 3 points: the t-interval excludes 0
    assert got["ginc_l8"].k == 16 and got["ginc_l8"].reading == "no clear change"  # -1, +2, +1
    falls = rises_of("vanilla", {1: {"ginc/acc@k0": 0.6, "ginc/acc@k8": 0.5},
                                 2: {"ginc/acc@k0": 0.6, "ginc/acc@k8": 0.52},
                                 3: {"ginc/acc@k0": 0.6, "ginc/acc@k8": 0.51}})
    assert falls[0].reading == "falls" and falls[0].hi < 0
    one = rises_of("vanilla", {1: {"ginc/acc@k0": 0.6, "ginc/acc@k8": 0.7}})
    assert one[0].reading.startswith("cannot tell")
    same = rises_of("vanilla", {1: {"ginc/acc@k0": 0.506, "ginc/acc@k32": 0.540},
                                2: {"ginc/acc@k0": 0.546, "ginc/acc@k32": 0.580}})
    assert same[0].reading == "cannot tell (the same difference in all 2 seeds: no spread, no interval)"
    md = sweep_markdown([SettingSummary("s", {}, rows={"momentum": {}}, rises=list(got.values()))], [], 3)
    assert "| momentum | ginc | 0 -> 4 | +4.0 ± 1.0 |" in md
    partial = rises_of("vanilla", {1: {"ginc/acc@k0": 0.5, "ginc/acc@k8": 0.6}, 2: {"ppl@64": 5.0},  # no ICL
                                   3: {"ginc/acc@k0": 0.5, "ginc/acc@k8": 0.7}})
    assert partial[0].n_seeds == 2 and partial[0].mean == pytest.approx(0.15)  # was dropped whole, silently
    md = sweep_markdown([SettingSummary("s", {}, rows={"vanilla": {}}, rises=one)], [], 1)
    assert "| vanilla | ginc | 0 -> 8 | +10.0 | n/a (one seed) | 1 |" in md  # no "± 0.0" of a single seed
    # seeds scored at k = 0, 32 and k = 0, 16 share no k > 0: the rise was left out without a word (found by review)
    gaps: list[str] = []
    assert rises_of("vanilla", {1: {"ginc/acc@k0": 0.5, "ginc/acc@k32": 0.6}, 2: {"ginc/acc@k0": 0.5,
                                "ginc/acc@k16": 0.7}, 3: {"ginc_ood/acc@k0": 0.1}}, gaps) == []
    assert gaps == ["vanilla on ginc (seed 1: k = 0, 32; seed 2: k = 0, 16)"]  # not ginc_ood: k = 0 alone
    md = sweep_markdown([SettingSummary("s", {}, rows={"vanilla": {}}, no_rise=gaps)], [], 2)
    assert "No in-context rise for these (its seeds share no k > 0" in md and gaps[0] in md


def test_a_sweep_without_evaluation_overrides_judges_each_run_by_its_own_end_of_run_settings(tmp_path):
    from momattn.eval.config import EvalConfig
    from momattn.eval.sweep import SweepRun, run_settings

    default = EvalConfig.from_mapping(EVAL)
    own = {"icl": {"tasks": ["ginc", "ginc_ood"], "shots": [0, 32], "seeds": [1], "max_examples": 500},
           "ppl": {"max_windows": 50}}
    ginc = run_settings(SweepRun(tmp_path, tmp_path, "vanilla", 1, "s", {"eval": own}), default)
    assert ginc.icl.tasks == ["ginc", "ginc_ood"] and ginc.icl.shots == [0, 32] and ginc.ppl.max_windows == 50
    assert ginc.batch_tokens == default.batch_tokens  # the run's section has none: evaluate.py's
    assert run_settings(SweepRun(tmp_path, tmp_path, "vanilla", 1, "s", {"seed": 1}), default) == default


def test_evaluation_overrides_are_read_from_the_command_line(monkeypatch):
    from types import SimpleNamespace

    from hydra.core.hydra_config import HydraConfig

    from momattn.eval.runner import eval_overridden

    def command_line(*task):
        monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: SimpleNamespace(overrides=SimpleNamespace(task=list(task)))))

    command_line("sweep_dir=multirun/x", "device=cpu")
    assert not eval_overridden()
    for o in ("icl.max_examples=5", "+ppl.lengths=[8]", "batch_tokens=1024", "~icl.task_dirs"):
        command_line("sweep_dir=multirun/x", o)
        assert eval_overridden(), o

    def no_hydra():
        raise ValueError("HydraConfig was not set")

    monkeypatch.setattr(HydraConfig, "get", staticmethod(no_hydra))
    assert eval_overridden()  # outside Hydra (a direct call) the caller's settings are explicit


def test_text_tasks_on_a_ginc_checkpoint_are_refused_by_name(tmp_path):
    from momattn.data.ginc import GincCorpus
    from momattn.eval.runner import evaluate_model

    tok = GincCorpus(n_train_docs=2, doc_length=64, n_val_docs=1, val_doc_length=64).tokenizer()
    model = GPT(GPTConfig(block_size=32, vocab_size=64, n_layer=1, n_head=2, n_embd=16))
    run_config = {"data": {"_target_": "momattn.data.ginc.GincCorpus"}}
    with pytest.raises(ConfigError, match=r"sst2, trec are text tasks.*icl.tasks=\[ginc"):
        evaluate_model(model, tok, run_config, {"icl": {"tasks": ["sst2", "trec", "ginc"]}, "ppl": {"enabled": False}},
                       tmp_path, "vanilla")
    # a separator GINC prompts would ignore ('/' ends each GINC example) is refused, not dropped silently
    with pytest.raises(ConfigError, match=r"^icl.separator='\\n\\n' does not apply to GINC tasks \(ginc, ginc_ood\)"):
        evaluate_model(model, tok, run_config, {"icl": {"tasks": ["ginc", "ginc_ood"], "separator": "\\n\\n"},
                                                "ppl": {"enabled": False}}, tmp_path, "vanilla")
    # one the GINC tokenizer cannot spell: the same message (it said only that the tokenizer cannot encode 'xx')
    with pytest.raises(ConfigError, match=r"^icl.separator='xx' does not apply to GINC tasks \(ginc\)"):
        evaluate_model(model, tok, run_config, {"icl": {"tasks": ["ginc"], "separator": "xx"},
                                                "ppl": {"enabled": False}}, tmp_path, "vanilla")
    # a prompt count GINC would make and hold at once (10**6 ran out of memory), before any scoring
    with pytest.raises(ConfigError, match=r"^icl.max_examples=1000000 is more prompts than GINC makes at once "
                                          r"\(ginc\): it must be <= 10,000"):
        evaluate_model(model, tok, run_config, {"icl": {"tasks": ["ginc"], "max_examples": 10**6},
                                                "ppl": {"enabled": False}}, tmp_path, "vanilla")
    from momattn.eval.ginc import check_prompt_count, ginc_task

    check_prompt_count([ginc_task("ginc")], 10_000)  # the bound itself, and null (2500), are taken
    check_prompt_count([ginc_task("ginc")], None)
    # so is a test_seed: GINC's test inputs are drawn with each prompt seed (icl.seeds), never shuffled
    with pytest.raises(ConfigError, match=r"^icl.test_seed=0 does not apply to GINC tasks \(ginc\): GINC's test "
                                          r"prompts follow icl.seeds .*leave icl.test_seed=1 for GINC"):
        evaluate_model(model, tok, run_config, {"icl": {"tasks": ["ginc"], "test_seed": 0},
                                                "ppl": {"enabled": False}}, tmp_path, "vanilla")


def test_own_settings_never_compare_runs_evaluated_differently_and_nothing_is_dropped_silently(tmp_path, tokenizer,  # noqa: F811
                                                                                               capsys):
    from momattn.eval.config import EvalConfig
    from momattn.eval.sweep import run_sweep

    sweep = tmp_path / "multirun"
    four = {"eval": {**EVAL, "icl": {**EVAL["icl"], "max_examples": 4, "shots": [0, 16]}}}  # k=16: 32 tokens hold less
    two = {"eval": {**EVAL, "icl": {**EVAL["icl"], "max_examples": 2}}}
    for n, (kind, seed, extra) in enumerate([("vanilla", 1, four), ("momentum", 1, four), ("vanilla", 2, two),
                                             ("momentum", 2, two), ("vanilla", 1, four)]):
        job(sweep, n, kind, seed, tokenizer, extra=extra)
    # a job whose own eval: section cannot be read (a key since renamed) is listed as failed; it ended the sweep
    job(sweep, 5, "vanilla", 3, tokenizer, extra={"eval": {"icl": {**EVAL["icl"], "shotz": [0]}}})
    summaries = run_sweep(sweep, EvalConfig.from_mapping(EVAL), tmp_path / "out", "cpu", own_settings=True)
    failed = json.loads((tmp_path / "out" / "sweep.json").read_text())["failed"]
    assert failed == [failed[0]] and failed[0].startswith("5 (its own end-of-run eval settings cannot be used: "
                                                          "unknown key 'eval.icl.shotz'")
    assert len(summaries) == 2 and all(len(s.differs) == 1 and "eval settings" in s.differs for s in summaries)
    assert all(row["ppl@32"]["n"] == 1 for s in summaries for row in s.rows.values())  # one seed each, never pooled
    assert "same attention (vanilla) and seed (1) in one setting; the second is left out" in capsys.readouterr().err
    md = (tmp_path / "out" / "sweep.md").read_text()
    assert "Left out of Table 7 (the headline k does not fit the runs' context" in md and "trec at k=16" in md


def test_a_diverged_seed_is_left_out_and_named_not_read_as_no_spread(monkeypatch):
    from momattn.eval import sweep

    ppl = {("vanilla", 1): 10.0, ("vanilla", 2): 11.0, ("vanilla", 3): 11.0,
           ("momentum", 1): float("nan"), ("momentum", 2): 9.0, ("momentum", 3): 9.5}
    runs = [sweep.SweepRun(Path(f"{a}{s}.ckpt"), Path(f"{a}{s}"), a, s, "same", {}, result=(a, s))
            for a, s in ppl]
    monkeypatch.setattr(sweep, "metrics_of", lambda result: {"ppl@64": ppl[result]})
    monkeypatch.setattr(sweep, "text_rise_metrics", lambda result: {})
    (s,) = sweep.summarise(runs)
    assert s.non_finite == ["momentum seed 1 (ppl@64)"]
    assert s.rows["momentum"]["ppl@64"]["n"] == 2 and s.rows["momentum"]["ppl@64"]["mean"] == pytest.approx(9.25)
    (c,) = s.comparisons
    assert c.n_pairs == 2 and c.diff_mean == pytest.approx(-1.75)  # seeds 2 and 3 only
    assert "no spread" not in c.verdict  # a nan difference had been read as "the same in all 3 seeds"
    # an overflowed perplexity beside finite accuracies: the whole run is left out, its accuracies too (they were
    # averaged and paired: found by review)
    acc = {k: 0.5 + 0.01 * i for i, k in enumerate(ppl)}
    monkeypatch.setattr(sweep, "metrics_of", lambda result: {"ppl@64": ppl[result], "ginc/acc@k4": acc[result]})
    (s,) = sweep.summarise(runs)
    assert s.non_finite == ["momentum seed 1 (ppl@64)"] and s.rows["momentum"]["ginc/acc@k4"]["n"] == 2
    assert {c.metric: c.n_pairs for c in s.comparisons} == {"ppl@64": 2, "ginc/acc@k4": 2}
    md = sweep.sweep_markdown([s], [], 6)
    assert "(diverged?), left out of every number below: momentum seed 1 (ppl@64)" in md
    assert sweep.t_interval([1.0, 2.0] * 16)[2] - 1.5 == pytest.approx(2.0395 * 0.508 / math.sqrt(32), rel=2e-3)


def test_a_diverged_seeds_text_accuracies_are_left_out_of_its_rise_not_read_as_no_spread(monkeypatch):
    """A diverged run's k = 0 and k = K accuracies (nan) reached the in-context rise, which then read 'the same
    difference in all 3 seeds: no spread', and were not named among the values left out."""
    from momattn.eval import sweep

    acc = {("vanilla", 1): (0.50, 0.60), ("vanilla", 2): (0.52, 0.65), ("vanilla", 3): (0.49, 0.58),
           ("momentum", 1): (0.50, 0.70), ("momentum", 2): (0.50, 0.68), ("momentum", 3): (float("nan"),) * 2}
    runs = [sweep.SweepRun(Path(f"{a}{s}.ckpt"), Path(f"{a}{s}"), a, s, "same", {}, result=(a, s)) for a, s in acc]
    monkeypatch.setattr(sweep, "metrics_of", lambda r: {"sst2/acc@k32": acc[r][1]})
    monkeypatch.setattr(sweep, "text_rise_metrics", lambda r: {"sst2/acc@k0": acc[r][0], "sst2/acc@k32": acc[r][1]})
    (s,) = sweep.summarise(runs)
    assert s.non_finite == ["momentum seed 3 (sst2/acc@k0, sst2/acc@k32)"]
    rise = next(r for r in s.rises if r.attention == "momentum")
    assert rise.n_seeds == 2 and rise.mean == pytest.approx(0.19) and rise.seeds == ["1", "2"]
    assert math.isfinite(rise.lo) and "no spread" not in rise.reading
    c = next(c for c in s.comparisons if c.metric == "sst2/rise@k32")
    assert c.n_pairs == 2 and c.diff_mean == pytest.approx(((0.20 - 0.10) + (0.18 - 0.13)) / 2) and c.seeds == ["1", "2"]
    assert "momentum seed 3 (sst2/acc@k0, sst2/acc@k32)" in sweep.sweep_markdown([s], [], 6)
    # a seed that diverged at k = 32 only: left out of the task's rise; the k every seed shares stays 32 (the bad k
    # dropped alone, the shared k fell to 0 and every attention's rise and rise comparison vanished)
    acc[("momentum", 3)] = (0.5, float("nan"))
    (s,) = sweep.summarise(runs)
    assert s.non_finite == ["momentum seed 3 (sst2/acc@k32)"]
    assert {(r.attention, r.k, r.n_seeds) for r in s.rises} == {("vanilla", 32, 3), ("momentum", 32, 2)}
    assert next(c for c in s.comparisons if c.metric == "sst2/rise@k32").seeds == ["1", "2"]
    # were a nan to reach an interval, it would not read as 'no spread'
    assert sweep.verdict("ppl@64", *sweep.t_interval([1.0, float("nan")])[1:], 2, [1.0, float("nan")]) == (
        "cannot tell (a non-finite value: no interval)")


def test_a_difference_over_fewer_seeds_than_the_tables_means_is_said(monkeypatch):
    """Arms trained on other seeds: each table mean is over its own seeds, the difference over the shared ones;
    a gap of -21 in the table sat beside a difference of -1.5 without a word."""
    from momattn.eval import sweep

    ppl = {("vanilla", 1): 130.0, ("vanilla", 2): 100.0, ("vanilla", 3): 102.0,
           ("momentum", 2): 98.0, ("momentum", 3): 101.0, ("momentum", 4): 70.0}
    runs = [sweep.SweepRun(Path(f"{a}{s}.ckpt"), Path(f"{a}{s}"), a, s, "same", {}, result=(a, s)) for a, s in ppl]
    monkeypatch.setattr(sweep, "metrics_of", lambda r: {"ppl@256": ppl[r]})
    monkeypatch.setattr(sweep, "text_rise_metrics", lambda r: {})
    (s,) = sweep.summarise(runs)
    (c,) = s.comparisons
    assert c.seeds == ["2", "3"] and c.diff_mean == pytest.approx(-1.5)
    md = sweep.sweep_markdown([s], [], 6)
    assert ("momentum: pairs of seeds 2, 3 (of momentum's 2, 3, 4 and vanilla's 1, 2, 3) for ppl@256") in md
    ppl[("momentum", 1)] = ppl.pop(("momentum", 4))  # the same seeds: nothing to say
    runs = [sweep.SweepRun(Path(f"{a}{s}.ckpt"), Path(f"{a}{s}"), a, s, "same", {}, result=(a, s)) for a, s in ppl]
    assert "Fewer pairs than seeds" not in sweep.sweep_markdown(sweep.summarise(runs), [], 6)


def test_a_sweep_verdict_goes_to_one_wandb_run_as_tables(tmp_path, monkeypatch, capsys):
    """logger=wandb with sweep_dir: the verdict's rows, comparisons and rises as W&B tables in one offline run
    (evaluate.py had said the verdict is not logged; analyze.py logged only each job)."""
    from momattn.eval import sweep
    from momattn.wandb_runs import log_verdict

    ppl = {("vanilla", 1): 10.0, ("vanilla", 2): 11.0, ("momentum", 1): 9.0, ("momentum", 2): 9.5}
    runs = [sweep.SweepRun(Path(f"{a}{s}.ckpt"), Path(f"{a}{s}"), a, s, "same", {}, result=(a, s)) for a, s in ppl]
    monkeypatch.setattr(sweep, "metrics_of", lambda result: {"ppl@64": ppl[result]})
    monkeypatch.setattr(sweep, "text_rise_metrics", lambda result: {})
    summaries = sweep.summarise(runs)
    tables = sweep.verdict_tables(summaries, ("comparisons", "rises"))
    assert {(r["attention"], r["metric"], r["mean"]) for r in tables["rows"]} == {("vanilla", "ppl@64", 10.5),
                                                                                 ("momentum", "ppl@64", 9.25)}
    (c,) = tables["comparisons"]
    assert c["setting"] == "same" and c["diff_mean"] == pytest.approx(-1.25) and tables["rises"] == []
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert log_verdict(tmp_path, {}, "the sweep's verdict", tables, job_type="sweep-verdict", name="verdict-x")
    (table,) = tmp_path.glob("wandb/offline-run-*/files/media/table/verdict/rows_*.table.json")  # namespaced
    doc = json.loads(table.read_text())
    assert doc["columns"][:4] == ["setting", "attention", "metric", "mean"]
    seeds = doc["columns"].index("seeds")
    assert sorted(row[3] for row in doc["data"]) == [9.25, 10.5] and len(json.loads(doc["data"][0][seeds])) == 2  # JSON text
    assert "offline; upload with: wandb sync" in capsys.readouterr().err


def test_the_in_context_rise_is_compared_with_vanilla_s_paired_by_seed(monkeypatch):
    """The question a GINC sweep asks, does momentum learn more in context, had no row: the verdict paired each k's
    accuracy, not the rise. Now '<task>/rise@k<K>' (acc@kK - acc@k0 per seed, K the largest k every run scored)
    is paired with vanilla's like any metric."""
    from momattn.eval import sweep

    acc = {("vanilla", 1): (0.60, 0.70, 0.72), ("vanilla", 2): (0.62, 0.75, 0.71), ("vanilla", 3): (0.58, 0.69, 0.74),
           ("momentum", 1): (0.66, 0.70, None), ("momentum", 2): (0.67, 0.71, None), ("momentum", 3): (0.65, 0.68, None)}

    def metrics(key):  # momentum was scored up to k = 4 only: the rises are compared at k = 4
        a0, a4, a8 = acc[key]
        return {"ginc/acc@k0": a0, "ginc/acc@k4": a4, **({"ginc/acc@k8": a8} if a8 is not None else {}), "ppl@64": 5.0}

    runs = [sweep.SweepRun(Path(f"{a}{s}.ckpt"), Path(f"{a}{s}"), a, s, "same", {}, result=(a, s)) for a, s in acc]
    monkeypatch.setattr(sweep, "metrics_of", metrics)
    monkeypatch.setattr(sweep, "text_rise_metrics", lambda result: {})
    (s,) = sweep.summarise(runs)
    (c,) = [c for c in s.comparisons if c.metric == "ginc/rise@k4"]
    diffs = [(acc[("momentum", sd)][1] - acc[("momentum", sd)][0]) - (acc[("vanilla", sd)][1] - acc[("vanilla", sd)][0])
             for sd in (1, 2, 3)]
    mean, lo, hi = sweep.t_interval(diffs)
    assert c.attention == "momentum" and c.n_pairs == 3 and c.diff_mean == pytest.approx(mean) and mean < 0
    assert (c.lo, c.hi) == (pytest.approx(lo), pytest.approx(hi)) and c.verdict == "worse"  # hi < 0: a smaller rise
    assert not [c for c in s.comparisons if "rise@k8" in c.metric]  # k = 8 is not every run's
    md = sweep.sweep_markdown([s], [], 6)
    assert "`<task>/rise@k<K>`: the in-context rise" in md and "| ginc/rise@k4 | momentum: -" in md


def test_a_printed_interval_reaches_0_only_where_the_interval_does():
    """A bound of +0.0004 (accuracy) printed as 0.0 beside 'better' ([0.0, 2.4], as in ginc_eta's sweep.md) read as
    an interval that reaches 0; a bound is now printed with the places it takes not to read as 0."""
    from momattn.eval.sweep import Comparison, Rise, interval_end, sweep_markdown

    assert interval_end(0.04, 1) == "0.04" and interval_end(-0.003, 2) == "-0.003" and interval_end(0.0, 1) == "0.0"
    assert interval_end(2.44, 1, "+") == "+2.4" and interval_end(-0.0004, 1, "+") == "-0.0004"
    comps = [Comparison("ginc/acc@k2", "momentum", 0.012, 0.0004, 0.024, 6, verdict("ginc/acc@k2", 0.0004, 0.024)),
             Comparison("ginc/acc@k4", "momentum", 0.012, -0.0004, 0.024, 6, verdict("ginc/acc@k4", -0.0004, 0.024)),
             Comparison("ppl@64", "momentum", -0.5, -1.0, -0.003, 6, verdict("ppl@64", -1.0, -0.003))]
    rise = Rise("vanilla", "ginc", 32, 0.013, 0.0002, 0.026, 0.001, 2, "rises")
    md = sweep_markdown([SettingSummary("s", {}, rows={"vanilla": {}, "momentum": {}}, comparisons=comps,
                                        rises=[rise])], [], 12)
    assert "| ginc/acc@k2 | momentum: 1.2 | [0.04, 2.4] | 6 | better |" in md
    assert "| ginc/acc@k4 | momentum: 1.2 | [-0.04, 2.4] | 6 | inconclusive (interval holds 0) |" in md
    assert "| ppl@64 | momentum: -0.50 | [-1.00, -0.003] | 6 | better |" in md
    assert "| +1.3 ± 0.1 | [+0.02, +2.6] | 2 | rises |" in md


def test_an_attention_sharing_no_seed_with_vanilla_is_named_where_others_are_compared(monkeypatch):
    """vanilla and momentum on seeds 1-3, multirate_ema on seeds 4-5: multirate_ema had no verdict row and no word
    (the 'No seed is shared' line came only when no attention at all was compared)."""
    from momattn.eval import sweep

    ppl = {("vanilla", 1): 10.0, ("vanilla", 2): 11.0, ("vanilla", 3): 12.5, ("momentum", 3): 9.0,
           ("momentum", 1): 9.5, ("momentum", 2): 9.7, ("multirate_ema", 4): 8.0, ("multirate_ema", 5): 8.5}
    runs = [sweep.SweepRun(Path(f"{a}{s}.ckpt"), Path(f"{a}{s}"), a, s, "same", {}, result=(a, s)) for a, s in ppl]
    monkeypatch.setattr(sweep, "metrics_of", lambda result: {"ppl@64": ppl[result]})
    monkeypatch.setattr(sweep, "text_rise_metrics", lambda result: {})
    (s,) = sweep.summarise(runs)
    (c,) = s.comparisons
    assert c.attention == "momentum" and c.diff_mean == pytest.approx((9.5 - 10 + 9.7 - 11 + 9.0 - 12.5) / 3)
    md = sweep.sweep_markdown([s], [], 8)
    assert "vanilla's seeds: 1, 2, 3): multirate_ema (seeds 4, 5)" in md and "No seed is shared" not in md
    # seeds shared but nothing scored (the headline k did not fit): it said no seed was shared (found by review)
    monkeypatch.setattr(sweep, "metrics_of", lambda result: {})
    md = sweep.sweep_markdown(sweep.summarise([r for r in runs if r.seed in (1, 2)]), [], 4)
    assert "No metric was scored for vanilla, momentum in this setting" in md and "No seed is shared" not in md


def test_the_readme_names_every_case_the_verdict_cannot_tell():
    """README's Sweeps bullet gave 'cannot tell' for a single seed pair only; the verdict gives it as well for pairs
    that all differ by the same amount (no spread: t_interval returns no interval)."""
    nan = float("nan")
    assert verdict("ppl@64", *t_interval([0.5, 0.5, 0.5])[1:], 3).startswith("cannot tell")
    bullet = next(p for p in (Path(__file__).parents[1] / "README.md").read_text().split("\n- ")
                  if p.startswith("**Sweeps:**"))
    assert '"cannot tell" for a single seed pair, or pairs that all differ by the same amount' in bullet
    assert verdict("ppl@64", nan, nan, 1) == "cannot tell (one seed: no interval)"


def test_a_single_run_given_as_sweep_dir_is_named_by_its_folder_not_dot(tmp_path, monkeypatch):
    from momattn.eval.sweep import find_runs, job_name

    run = tmp_path / "run1"
    (run / ".hydra").mkdir(parents=True)  # a training run's folder, not a sweep's, and without a checkpoint
    (run / ".hydra" / "config.yaml").write_text("trainer: {max_steps: 10}\n")
    with pytest.raises(ConfigError, match=r"failed or partial jobs: run1 \(no checkpoints/last.ckpt\)$"):
        find_runs(run)  # named ". (no checkpoints/last.ckpt)"
    assert job_name(tmp_path / "sweep" / "3", tmp_path / "sweep") == "3"
    monkeypatch.chdir(run)  # sweep_dir=. typed inside the run folder: its name, not ""
    assert job_name(Path("."), Path(".")) == "run1"


def test_one_finished_run_given_as_sweep_dir_is_told_how_to_score_it_alone(tmp_path, tokenizer, capsys):  # noqa: F811
    """It got a one-run 'sweep verdict' without a word (day-one review)."""
    from momattn.eval.sweep import find_runs

    run = job(tmp_path, 1, "vanilla", 1, tokenizer, step=400)
    runs, _ = find_runs(run)
    assert len(runs) == 1 and (f"note: sweep_dir={run} is one run's folder, not a sweep's: its verdict holds that "
                               "run's numbers alone, with no seeds to spread over and no other attention to compare with. "
                               f"To score this run alone: evaluate.py ckpt_path={run / 'checkpoints' / 'last.ckpt'}"
                               ) in capsys.readouterr().err
    find_runs(tmp_path)  # a sweep of one job: its folder, not the job's
    assert "one run's folder" not in capsys.readouterr().err


def test_a_setting_one_job_cannot_take_is_refused_before_any_job_is_scored(tmp_path, tokenizer):  # noqa: F811
    # job 0 was scored in full, then job 1 (a shorter context) failed on ppl.lengths: nothing is scored now
    sweep, out = tmp_path / "multirun", tmp_path / "verdict"
    job(sweep, 0, "vanilla", 1, tokenizer)
    job(sweep, 1, "vanilla", 2, tokenizer, block_size=16)
    with pytest.raises(ConfigError, match=r"^sweep job 1 \(.*\): ppl.lengths contains \[32\] but the model's context "
                                          r"is 16 tokens.*; no job was scored$"):
        run_evaluate({**EVAL, "sweep_dir": str(sweep), "device": "cpu"}, out_dir=out)
    assert not (out / "jobs").exists()


def test_a_job_whose_model_config_cannot_be_built_is_named_and_the_others_scored(tmp_path, tokenizer):  # noqa: F811
    # the check before scoring stopped the whole sweep on it; it is a failed job, as an unreadable checkpoint is
    sweep, out = tmp_path / "multirun", tmp_path / "verdict"
    job(sweep, 0, "vanilla", 1, tokenizer)
    path = job(sweep, 1, "vanilla", 2, tokenizer) / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["momattn"]["model_config"]["a_field_from_the_future"] = 1
    atomic_torch_save(ckpt, path)
    run_evaluate({**EVAL, "sweep_dir": str(sweep), "device": "cpu"}, out_dir=out)
    doc = strict_json((out / "sweep.json").read_text())
    assert len(doc["runs"]) == 1 and doc["failed"][0].startswith("1 (unreadable checkpoint: checkpoint '")
    assert "has a model config this momattn cannot build" in doc["failed"][0]


def test_jobs_a_stopped_sweep_never_started_are_named(tmp_path):
    # a sweep stopped at job 2 (a SIGTERM): job 3 left no folder, and its attention vanished from the tables unnamed
    from momattn.eval.sweep import _never_started, find_runs

    sweep = tmp_path / "multirun"
    (sweep / "0" / ".hydra").mkdir(parents=True)
    (sweep / "0" / ".hydra" / "config.yaml").write_text("trainer: {max_steps: 10}\n")
    (sweep / "multirun.yaml").write_text(
        "hydra:\n  sweep: {dir: x, subdir: '${hydra.job.num}'}\n"
        "  sweeper: {_target_: hydra._internal.core_plugins.basic_sweeper.BasicSweeper, params: {seed: '1,2'}}\n"
        "  overrides: {task: [debug=smoke, 'attention=vanilla,momentum']}\n")
    assert _never_started(sweep) == ["1 (never started: seed=1 attention=momentum)",
                                     "2 (never started: seed=2 attention=vanilla)",
                                     "3 (never started: seed=2 attention=momentum)"]
    with pytest.raises(ConfigError, match=r"failed or partial jobs: 0 \(no checkpoints/last.ckpt\); 1 \(never "):
        find_runs(sweep)
    # the sweep beside another under one parent (README: sweep_dir=<parent>): its own multirun.yaml was never read
    parent = tmp_path / "parent"
    parent.mkdir()
    sweep = sweep.rename(parent / "a")
    assert _never_started(parent)[0] == "a/1 (never started: seed=1 attention=momentum)"
    # a subdir of its own (${hydra.job.override_dirname}): the jobs no folder's saved command line holds (they were
    # left out unnamed: found by review)
    mr = (sweep / "multirun.yaml").read_text().replace("'${hydra.job.num}'", "'${hydra.job.override_dirname}'")
    (sweep / "multirun.yaml").write_text(mr)
    for name, overrides in (("0", ["debug=smoke", "attention=vanilla", "seed=1"]),
                            ("x/y", ["debug=smoke", "seed=2", "attention=momentum", "ckpt_path=last"])):
        (sweep / name / ".hydra").mkdir(parents=True, exist_ok=True)
        (sweep / name / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    assert _never_started(sweep) == ["1 (never started: seed=1 attention=momentum)",
                                     "2 (never started: seed=2 attention=vanilla)"]
    (sweep / "multirun.yaml").write_text("hydra: {sweeper: {_target_: optuna}}\n")  # a search: no fixed job list
    assert _never_started(sweep) == []


def test_sweeps_gathered_with_links_are_read_once_and_an_unreadable_job_is_named(tmp_path, tokenizer):  # noqa: F811
    """Path.rglob does not enter a link to a folder: sweeps gathered under one parent with ln -s were passed over
    without a word ('holds no finished run' where it held six), and a job whose .hydra/config.yaml cannot be read
    vanished from the report (both found by review)."""
    from momattn.eval.sweep import find_runs

    a, b = tmp_path / "a", tmp_path / "b"
    job(a, 0, "vanilla", 1, tokenizer)
    job(b, 0, "momentum", 1, tokenizer)
    job(b, 1, "momentum", 2, tokenizer)
    gathered = tmp_path / "gathered"
    gathered.mkdir()
    (gathered / "a").symlink_to(a)
    (gathered / "b").symlink_to(b)
    (gathered / "b_again").symlink_to(b)  # the same sweep twice: read once
    (b / "loop").symlink_to(gathered)  # a loop: entered once
    runs, failed = find_runs(gathered)
    assert sorted((r.attention, r.seed) for r in runs) == [("momentum", 1), ("momentum", 2), ("vanilla", 1)]
    assert sorted(str(r.job.relative_to(gathered)) for r in runs) == ["a/0", "b/0", "b/1"] and failed == []
    (b / "1" / "checkpoints" / "last.ckpt").unlink()
    (b / "1" / ".hydra" / "config.yaml").write_text("not yaml: [")
    runs, failed = find_runs(gathered)
    assert len(runs) == 2 and failed == ["b/1 (no checkpoints/last.ckpt, and its .hydra/config.yaml cannot be read)"]


def test_a_text_task_s_in_context_rise_is_given_and_compared_like_ginc_s():
    # metrics_of keeps a text task's headline k only (Table 7), so its acc@k0 was never there: sweep.md had no rise
    # for sst2 though the README promises one per attention and task (found by review)
    from types import SimpleNamespace as NS

    from momattn.eval import sweep

    def result(a0, a4):
        shots = {"0": NS(acc=a0, fits=True), "4": NS(acc=a4, fits=True), "max": NS(acc=a4 + 0.1, fits=True)}
        return NS(ppl=None, icl=NS(headline_k="4", avg={}, tasks={"sst2": NS(kind="choice", shots=shots)}))

    acc = {("vanilla", 1): (0.50, 0.60), ("vanilla", 2): (0.52, 0.58), ("vanilla", 3): (0.49, 0.61),
           ("momentum", 1): (0.51, 0.71), ("momentum", 2): (0.50, 0.69), ("momentum", 3): (0.52, 0.70)}
    runs = [sweep.SweepRun(Path(f"{a}{s}.ckpt"), Path(f"{a}{s}"), a, s, "same", {}, result=result(*acc[(a, s)]))
            for a, s in acc]
    (s,) = sweep.summarise(runs)
    assert sorted(s.rows["vanilla"]) == ["sst2/acc@k4"]  # Table 7 still compares the headline k only
    rises = {r.attention: r for r in s.rises}
    assert rises["vanilla"].k == 4 and rises["vanilla"].mean == pytest.approx((0.10 + 0.06 + 0.12) / 3)
    assert rises["momentum"].reading == "rises"
    (c,) = [c for c in s.comparisons if c.metric == "sst2/rise@k4"]  # k = max is no number of demonstrations
    diffs = [(acc[("momentum", sd)][1] - acc[("momentum", sd)][0]) - (acc[("vanilla", sd)][1] - acc[("vanilla", sd)][0])
             for sd in (1, 2, 3)]
    assert c.diff_mean == pytest.approx(sum(diffs) / 3) and c.verdict == "better"


def test_one_seed_has_no_std_and_a_task_named_like_a_perplexity_is_refused():
    from momattn.eval.sweep import is_ppl, rises_of, seed_row
    from momattn.eval.tasks import resolve_tasks

    assert seed_row({1: {"ppl@64": 5.0}}, "ppl@64")["std"] is None  # 0.0 read as "no spread", never measured
    assert rises_of("vanilla", {1: {"ginc/acc@k0": 0.5, "ginc/acc@k8": 0.6}})[0].std is None
    assert seed_row({1: {"ppl@64": 5.0}, 2: {"ppl@64": 6.0}}, "ppl@64")["std"] == pytest.approx(0.5 ** 0.5)
    assert is_ppl("ppl@64") and is_ppl("bpb@128") and not is_ppl("ppl@review/acc@k2")
    with pytest.raises(ConfigError, match=r"a task named 'ppl@review' would break its metric names"):
        resolve_tasks([{"name": "ppl@review", "path": "x.jsonl", "template": "{text}", "answers": ["a", "b"]}])
    with pytest.raises(ConfigError, match=r"a task named 'AVG' would be logged as the average"):
        resolve_tasks([{"name": "AVG", "path": "x.jsonl", "template": "{text}", "answers": ["a", "b"]}])
    (task,) = resolve_tasks([{"name": "review@v2", "path": "x.jsonl", "template": "{text}", "answers": ["a", "b"]}])
    assert task.name == "review@v2" and not is_ppl("review@v2/acc@k4")  # another '@' is a name like any other


def test_a_rounding_residue_is_not_printed_as_minus_zero():
    from momattn.eval.sweep import _num

    diffs = [0.375 - 0.4, 0.425 - 0.4]  # accuracies at 40 examples: their mean difference is -3e-17, not 0
    assert sum(diffs) / 2 < 0 and _num("ginc/acc@k4", sum(diffs) / 2) == "0.0"
    assert _num("ginc/acc@k4", -0.004) == "-0.4" and _num("ppl@64", -3e-13) == "0.00"
    from momattn.eval.sweep import Comparison, sweep_markdown

    # a difference that rounds to 0 beside "better" printed as -0.00 (found by review)
    c = Comparison("ppl@64", "momentum", -0.003, -0.005, -0.001, 3, "better")
    md = sweep_markdown([SettingSummary("s", {}, rows={"vanilla": {}, "momentum": {}}, comparisons=[c])], [], 6)
    assert "| ppl@64 | momentum: -0.003 | [-0.01, -0.001] | 3 | better |" in md


def test_a_ginc_k_that_does_not_fit_is_named_not_dropped_silently():
    # each GINC k is compared; one beyond the context vanished from sweep.md without a word (found by review)
    from types import SimpleNamespace as NS

    from momattn.eval.sweep import unfit_note

    def shot(fits, acc):
        return NS(fits=fits, acc=acc)

    ginc = NS(kind="ginc", shots={"0": shot(True, 0.1), "8": shot(True, 0.4), "64": shot(False, None),
                                  "16": shot(False, None)})
    text = NS(kind="text", shots={"max": shot(True, 0.5)})
    runs = [NS(result=NS(icl=NS(headline_k="max", tasks={"ginc": ginc, "sst2": text})))]
    assert unfit_note(runs) == ("\nLeft out of the tables (these k do not fit the context of at least one run; each "
                                "job's results.md, in jobs/<job>/ here or its run's eval/, says which k fit): ginc at k=16, 64\n")
    ginc.shots = {"0": shot(True, 0.1)}
    assert unfit_note(runs) == ""


def test_a_run_with_a_time_limit_is_partial_only_when_stopped_before_it():
    # with trainer.max_time every run counted as finished: a SIGTERM'd run at step 12 of 20 was averaged with the
    # finished ones (found by review); Lightning's Timer keeps the training time in the checkpoint
    from momattn.eval.sweep import _unfinished

    def ckpt(seconds):
        return {"callbacks": {"Timer": {"time_elapsed": {"train": seconds, "validate": 3.0}}}}

    for limit in ("00:00:10:00", {"minutes": 10}):
        config = {"trainer": {"max_steps": 20, "max_time": limit}}
        assert _unfinished(config, 12, ckpt(601.0)) is None  # its time was up: finished
        assert _unfinished(config, 12, ckpt(300.0)).startswith(f"partial: trained 12 steps in 300 s of "
                                                               f"trainer.max_time={limit}")
        assert _unfinished(config, 20, ckpt(300.0)) is None  # its steps were done
        assert _unfinished(config, 12, {}) is None  # no timer saved: cannot tell
    # a fraction of a second is rounded up, as train.py hands the limit to Lightning: its Timer stopped at 61 s
    assert _unfinished({"trainer": {"max_steps": 20, "max_time": {"minutes": 1, "seconds": 0.9}}}, 12, ckpt(61.0)) is None
    assert _unfinished({"trainer": {"max_steps": 20}}, 12).startswith("partial: trained 12 of trainer.max_steps=20")
    assert _unfinished({"trainer": {"max_steps": 20, "max_epochs": 1}}, 12) is None  # an epoch may end it


def test_runs_of_a_setting_at_different_steps_are_named_and_each_runs_step_recorded(tmp_path):
    # under trainer.max_epochs (or max_time) a run's step cannot tell finished from stopped: one stopped at step 50
    # was averaged with runs at 400 unsaid, and sweep.json recorded no step (found by review)
    from momattn.eval.sweep import SweepRun, step_note

    def run(num, attention, seed, step):
        return SweepRun(path=tmp_path / str(num) / "last.ckpt", job=tmp_path / str(num), attention=attention,
                        seed=seed, setting="s1", config={"trainer": {"max_epochs": 3}}, step=step)

    runs = [run(0, "vanilla", 1, 400), run(1, "momentum", 1, 400), run(2, "momentum", 3, 50)]
    assert step_note(runs, tmp_path) == ("\nSteps differ in setting s1: 2 (momentum, seed 3) at step 50, the others "
                                         "at step 400. An epoch or time limit ends runs at their own step, so these "
                                         "may be finished runs or stopped ones; their numbers are averaged with the "
                                         "others'.\n")
    assert step_note(runs[:2], tmp_path) == ""


def test_a_sweep_evaluation_cut_short_goes_on_where_it_stopped_in_its_folder(tmp_path, tokenizer, monkeypatch,  # noqa: F811
                                                                            capsys):
    # "run the same command again" scored every job again: the jobs scored into the folder are reused there, as
    # long as their weights and settings are those scored (found by review)
    import momattn.eval.runner as runner

    sweep, out = tmp_path / "multirun", tmp_path / "verdict"
    for n, (kind, seed) in enumerate([("vanilla", 1), ("momentum", 1), ("vanilla", 2), ("momentum", 2)]):
        job(sweep, n, kind, seed, tokenizer)
    real, scored, stop_at = runner.evaluate_model, [], [2]

    def scoring(model, tok, run_config, cfg, where, *args, **kw):
        if len(scored) in stop_at:
            raise KeyboardInterrupt  # a stop while the third job is scored
        scored.append(where.name)
        return real(model, tok, run_config, cfg, where, *args, **kw)

    monkeypatch.setattr(runner, "evaluate_model", scoring)
    with pytest.raises(KeyboardInterrupt):
        run_evaluate({**EVAL, "sweep_dir": str(sweep), "device": "cpu"}, out_dir=out)
    assert scored == ["0", "1"]
    job(sweep / "replaced", 0, "vanilla", 3, tokenizer)  # job 1 trained again in place: other weights, same step
    shutil.copy(sweep / "replaced" / "0" / "checkpoints" / "last.ckpt", sweep / "1" / "checkpoints" / "last.ckpt")
    shutil.rmtree(sweep / "replaced")
    scored.clear(), stop_at.clear()
    run_evaluate({**EVAL, "sweep_dir": str(sweep), "device": "cpu"}, out_dir=out)
    assert scored == ["1", "2", "3"]  # job 0 reused, job 1 (other weights) scored again
    assert f"[momattn] 0: scored into this folder before ({out / 'jobs' / '0' / 'results.json'}): reused" in \
        capsys.readouterr().err
    assert len(strict_json((out / "sweep.json").read_text())["runs"]) == 4



def test_the_t_quantiles_are_students_to_7_decimals():
    stats = pytest.importorskip("scipy.stats")
    from momattn.eval.sweep import T975, _t975

    assert max(abs(q - stats.t.ppf(0.975, df)) for df, q in enumerate(T975, 1)) < 1e-7
    assert max(abs(_t975(df) - stats.t.ppf(0.975, df)) for df in range(len(T975) + 1, 500)) < 1e-7


def test_an_unknown_task_is_refused_before_any_checkpoint_is_read_and_blamed_on_no_job(tmp_path, tokenizer):  # noqa: F811
    # it was said after a checkpoint's weights were read and checked, and a sweep's as "sweep job 0 (...): ..."
    sweep = tmp_path / "sweep"
    job(sweep, 0, "vanilla", 1, tokenizer)
    bad = {**EVAL, "icl": {**EVAL["icl"], "tasks": ["sst3"]}}
    for where in ({"sweep_dir": str(sweep)}, {"ckpt_path": str(tmp_path / "missing.ckpt")}):
        with pytest.raises(ConfigError, match=r"^icl.tasks: unknown task 'sst3'"):
            run_evaluate({**bad, **where, "device": "cpu"}, out_dir=tmp_path / "out")
