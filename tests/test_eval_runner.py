"""evaluate_model / run_evaluate / reports on real (tiny, hand-built) checkpoints; evaluate.py end to end."""

import json
import math
import os
from pathlib import Path

import pytest
import torch
from conftest import run_cli, strict_json

from momattn.checkpoint import checkpoint_meta, load_checkpoint
from momattn.data import corpus
from momattn.data.staicc import read_staicc
from momattn.errors import CheckpointError, ConfigError, DataError
from momattn.eval.results import ModelResult
from momattn.eval.runner import (
    checkpoint_labels,
    evaluate_model,
    flat_metrics,
    run_evaluate,
    slug,
    write_reports,
)
from momattn.io import atomic_torch_save
from momattn.model import GPT, AttentionConfig, GPTConfig
from momattn.tokenizer import train_bpe

REPO = Path(__file__).resolve().parent.parent
DATA = {"source": "staicc", "tasks": ["trec"], "split_seed": 1234}
FAST = {
    "ppl": {"max_windows": 4},
    "icl": {"tasks": ["sst2", "trec"], "shots": [0, 2, "max"], "seeds": [1, 2], "max_examples": 8,
            "max_shots": 3},
}


@pytest.fixture(scope="module")
def tokenizer():
    texts = [t for t, _ in read_staicc("trec")[:1500]] + [t for t, _ in read_staicc("sst2")[:1500]]
    return train_bpe(lambda: texts, 320)


def make_checkpoint(path: Path, kind: str, tokenizer, seed: int = 0, step: int | None = None, **attn) -> Path:
    torch.manual_seed(seed)
    cfg = GPTConfig(block_size=64, vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=32,
                    attention=AttentionConfig(kind=kind, **attn))
    model = GPT(cfg)
    ckpt = {"state_dict": {"model." + k: v for k, v in model.state_dict().items()},
            "momattn": checkpoint_meta(cfg, tokenizer, {"data": dict(DATA), "seed": 1}),
            **({"global_step": step} if step is not None else {})}
    atomic_torch_save(ckpt, path)
    return path


def test_evaluate_model_and_reports(tmp_path, tokenizer, cache_dir):
    model, tok = load_checkpoint(make_checkpoint(tmp_path / "m.ckpt", "momentum", tokenizer))
    eval_cfg = {**FAST, "ppl": {"max_windows": 4, "data": {"tasks": ["mr"]}}}
    res = evaluate_model(model, tok, {"data": DATA}, eval_cfg, tmp_path, "momentum")
    assert res.ppl.data == {**DATA, "tasks": ["mr"]}  # ppl.data is merged over the run's data
    mr_val = corpus.load_tokens({**DATA, "tasks": ["mr"]}, tok, "val")  # the real corpus loader's tokens
    assert res.ppl.valid["16"].split_tokens == len(mr_val) and res.ppl.train["64"].split_tokens > len(mr_val)
    assert list(res.ppl.valid) == ["16", "32", "64"] and list(res.ppl.train) == ["64"]
    assert all(math.isfinite(v.ppl) and v.ppl > 1 for v in res.ppl.valid.values())
    sst2 = res.icl.tasks["sst2"]
    assert sst2.chance == 0.5 and sst2.n == 8 and list(sst2.shots) == ["0", "2", "max"]
    assert res.icl.split_seed == 1234 and res.attention == "momentum"
    assert (tmp_path / "icl_predictions_momentum.jsonl").exists()
    metrics = flat_metrics(res)
    assert {"eval/ppl@16", "eval/bpb@64", "eval/train_ppl@64", "icl/trec/acc@k0", "icl/trec/k_used@k2",
            "icl/avg/acc@k0", "icl/sst2/k_used@kmax"} <= set(metrics)
    for task in ("sst2", "trec"):  # a k's accuracies are logged where it fits
        assert (f"icl/{task}/acc@k2" in metrics) is res.icl.tasks[task].shots["2"].fits
    # a 64-token context holds fewer than max_shots=3 demonstrations: k=max does not fit, no headline average
    # and no headline accuracy (the per-k numbers stay, with their k_used)
    assert not sst2.shots["max"].fits and sst2.shots["max"].k_used_mean < 3
    assert res.icl.avg["max"].excluded == ["sst2", "trec"] and "icl/avg/acc" not in metrics
    assert metrics["icl/avg/n_tasks@k0"] == 2 and metrics["icl/avg/n_tasks@kmax"] == 0  # which k's Avg left tasks out
    assert "icl/sst2/acc" not in metrics and "icl/trec/acc" not in metrics
    # nor per k: a k that does not fit logged a near zero-shot score under its k (found by review)
    assert not {"icl/sst2/acc@kmax", "icl/sst2/acc_sum@kmax", "icl/sst2/acc_cand@kmax"} & set(metrics)
    again = ModelResult.from_json({**res.to_json(), "label": "again"})
    # results.json last, after the tables, the plots and train.py's logging (before_json): it marks the evaluation
    # done, and a stop after it had been written first left a run "evaluated" without them (found by review)
    seen = []
    write_reports([res, again], tmp_path, before_json=lambda: seen.append(
        {p.name for p in tmp_path.iterdir() if p.suffix in (".json", ".md", ".png")}))
    assert seen == [{"results.md", "ppl.png", "icl.png"}] and (tmp_path / "results.json").exists()
    md = (tmp_path / "results.md").read_text()
    assert "| model | Train64 | Valid16 | Valid32 | Valid64 |" in md and "| model | sst2 | trec | Avg |" in md
    assert "k = max" in md and "| again |" in md and "k_used=" in md
    maj = [100 * res.icl.tasks[t].majority for t in ("sst2", "trec")]
    assert f"| always the commonest label | {maj[0]:.1f} | {maj[1]:.1f} |" in md  # the baseline beside chance
    assert "test sets differ" not in md and "Different tokenizers" not in md
    assert f"| momentum | momentum | – | 64 | {res.model['n_params'] / 1e6:.2f}M | {tok.name}, {tok.vocab_size:,} tokens |" in md
    # another split seed reserves other test rows: one n and the first model's baseline stood for both, unsaid
    other = again.to_json()
    other["label"], other["icl"]["split_seed"] = "other", 99
    other["icl"]["tasks"]["trec"]["majority"] = 0.75
    other["tokenizer"] = {"name": "bpe", "vocab_size": 1024}  # per-token perplexities of two vocabularies
    write_reports([res, ModelResult.from_json(other)], tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert f"**Different tokenizers** (momentum: {tok.name}, {tok.vocab_size:,} tokens; other: bpe, 1,024 tokens)" in md
    # bits per byte compare across tokenizers only where every window was scored: with ppl.max_windows set, each
    # model's windows spread over its own tokens, other parts of the text (said flatly before; found by review)
    for sampled in (False, True):
        both = [res.to_json(), json.loads(json.dumps(other))]
        for j in both:
            for split in ("train", "valid"):
                for w in j["ppl"][split].values():
                    w["n_windows_available"] = w["n_windows"] + (5 if sampled else 0)
        write_reports([ModelResult.from_json(j) for j in both], tmp_path)
        md = (tmp_path / "results.md").read_text()
        assert ("bits per byte do, over the same text." in md) is not sampled
        assert ("these scored a subset of windows spread over each model's own tokens, so different parts of it: "
                "rerun with ppl.max_windows=null to compare them." in md) is sampled
        # the bits-per-byte header read as a fact where windows were sampled (found by review)
        assert ("Bits per byte (comparable across tokenizers over the same text where every window is scored "
                "(ppl.max_windows=null); these scored a sample of windows):" in md) is sampled
        assert ("Bits per byte (comparable across tokenizers over the same text: every window scored):" in md) \
            is not sampled
    assert "**The models' test sets differ** (data.split_seed 1234 (momentum), 99 (other))" in md
    assert f"| always the commonest label (momentum) | {maj[0]:.1f} | {maj[1]:.1f} |" in md
    assert f"| always the commonest label (other) | {maj[0]:.1f} | 75.0 |" in md
    assert f"always the commonest label {maj[1]:.1f}% (momentum), 75.0% (other)" in md
    write_reports([res, again], tmp_path)
    assert f"does not fit (k_used={sst2.shots['max'].k_used_mean:.2f})" in md and "no task fits" in md
    doc = strict_json((tmp_path / "results.json").read_text())
    assert "first token" in doc["protocol"]["ppl"] and len(doc["checkpoints"]) == 2
    assert doc["checkpoints"][0] == res.to_json()
    shot = doc["checkpoints"][0]["icl"]["tasks"]["trec"]["shots"]["0"]
    assert {"acc", "k_used_mean", "chance", "fits", "acc_sum_lp", "per_seed"} <= set(shot)
    unfit = doc["checkpoints"][0]["icl"]["tasks"]["trec"]["shots"]["2"]  # placed, not scored: no accuracy at all
    assert unfit["acc"] is None and "acc_sum_lp" not in unfit and not unfit["fits"] and "note" in unfit
    assert ModelResult.from_json(doc["checkpoints"][0]).icl.tasks["trec"].shots["2"].per_seed[0].acc is None
    assert flat_metrics(doc["checkpoints"][0]) == metrics  # the JSON form reads back to the same numbers
    assert (tmp_path / "ppl.png").stat().st_size > 0 and (tmp_path / "icl.png").stat().st_size > 0
    # two BPEs of one name and size trained on other texts: told apart by their fingerprints (they were not)
    assert len(res.tokenizer["fingerprint"]) == 16 and res.tokenizer["fingerprint"] == tok.fingerprint
    twin = {**again.to_json(), "label": "twin", "tokenizer": {**res.tokenizer, "fingerprint": "0123456789abcdef"}}
    write_reports([res, ModelResult.from_json(twin)], tmp_path)
    twins = (tmp_path / "results.md").read_text()
    assert (f"**Different tokenizers** (momentum: {tok.name}, {tok.vocab_size:,} tokens, fingerprint "
            f"{tok.fingerprint}; twin: {tok.name}, {tok.vocab_size:,} tokens, fingerprint 0123456789abcdef)") in twins
    old = {**again.to_json(), "tokenizer": {"name": tok.name, "vocab_size": tok.vocab_size}}  # before session 59
    write_reports([res, ModelResult.from_json(old)], tmp_path)
    assert "Different tokenizers" not in (tmp_path / "results.md").read_text()


def test_non_finite_numbers_are_written_as_null_and_read_back_as_nan(tmp_path):
    from momattn.eval import results as er
    from momattn.eval.sweep import metrics_of
    from momattn.io import json_text

    nan, inf = float("nan"), float("inf")
    assert json_text({"a": [nan, (inf, -inf, 1.5)], "b": {"c": 2}}) == '{"a": [null, [null, null, 1.5]], "b": {"c": 2}}'
    import numpy as np  # numpy scalars and arrays: their Python values, a nan among them null (not the string "nan")
    assert json_text({"x": np.float32("nan"), "n": np.int64(3), "t": np.bool_(True), "v": np.array([1.5, np.inf])},
                     default=str) == '{"x": null, "n": 3, "t": true, "v": [1.5, null]}'
    window = er.WindowNumbers(ppl=inf, bpb=nan, nll_per_token=800.0, n_windows=1, n_tokens=16, n_bytes=0, length=16,
                           split="valid", n_windows_available=1, split_tokens=16)
    diverged = er.SeedRun(seed=1, acc=nan, k_used_mean=2.0, k_used_min=2, k_used_max=2, n=8, acc_sum_lp=nan)
    task = er.TaskResult(name="sst2", kind="choice", source="staicc", chance=0.5, n=8, shots={
        "2": er.ShotResult.from_runs(2, [diverged], 0.5, fits=True),
        "max": er.ShotResult(k="max", fits=False, chance=0.5, k_used_mean=0.0)})  # nothing scored: acc None
    res = ModelResult(label="m", attention="vanilla", model={}, tokenizer={}, eval_config={},
                      ppl=er.PerplexityResult(protocol="p", lengths=[16], max_windows=1, valid={"16": window}),
                      timing_s={"ppl": nan})
    res.icl = er.IclResult(
        protocol="p", score="sum", headline_k="2", separator="\n", shots=["2", "max"], seeds=[1], test_seed=0,
        max_examples=8, max_shots=2, split_seed=1, tasks={"sst2": task},
        avg={"2": er.IclAverage(acc=nan, chance=0.5, n_tasks=1), "max": er.IclAverage(acc=None, chance=None, n_tasks=0)})
    write_reports([res], tmp_path)
    doc = strict_json((tmp_path / "results.json").read_text())  # Python's json wrote bare NaN / Infinity before
    entry = doc["checkpoints"][0]
    assert entry["ppl"]["valid"]["16"]["ppl"] is None and entry["icl"]["tasks"]["sst2"]["shots"]["2"]["acc"] is None
    back = ModelResult.from_json(entry)
    assert math.isnan(back.ppl.valid["16"].ppl) and math.isnan(back.ppl.valid["16"].bpb) and math.isnan(back.timing_s["ppl"])
    shot = back.icl.tasks["sst2"].shots["2"]
    assert math.isnan(shot.acc) and math.isnan(shot.per_seed[0].acc) and math.isnan(shot.per_seed[0].acc_sum_lp)
    assert shot.acc_cand is None and shot.per_seed[0].acc_cand is None  # not applicable: still None, not nan
    assert back.icl.tasks["sst2"].shots["max"].acc is None  # "nothing scored" stays None
    assert math.isnan(back.icl.avg["2"].acc) and back.icl.avg["max"].acc is None  # nan average vs "no task fits"
    # a sweep that reuses this results.json still sees the diverged numbers (and names them), not nothing
    assert set(metrics_of(back)) == set(metrics_of(res)) == {"ppl@16", "sst2/acc@k2", "avg/acc@k2"}


def test_run_evaluate_side_by_side_with_disambiguated_labels(tmp_path, tokenizer, capsys, monkeypatch):
    a = make_checkpoint(tmp_path / "a" / "last.ckpt", "momentum", tokenizer, seed=1)
    b = make_checkpoint(tmp_path / "b" / "last.ckpt", "momentum", tokenizer, seed=2)
    v = make_checkpoint(tmp_path / "v.ckpt", "vanilla", tokenizer)
    monkeypatch.chdir(tmp_path)  # v named relative to here
    cfg = {**FAST, "ckpt_paths": [str(a), str(b)], "ckpt_path": "v.ckpt", "device": "cpu",
           "icl": {**FAST["icl"], "tasks": ["trec"], "shots": [0]}, "ppl": {"max_windows": 2, "train": False}}
    results = run_evaluate(cfg, out_dir=tmp_path / "run")
    assert [r.label for r in results] == ["vanilla", "momentum [a/last]", "momentum [b/last]"]
    assert results[1].checkpoint == str(a)
    # results.json names the relative one as a path that finds it from anywhere (it kept "v.ckpt")
    assert Path(results[0].checkpoint).is_absolute() and Path(results[0].checkpoint).samefile(v)
    assert "momentum [b/last]" in (tmp_path / "run" / "results.md").read_text()
    err = capsys.readouterr().err  # train.py's console style, not a Hydra log record's
    assert "[momattn] evaluating v.ckpt (vanilla) on cpu\n" in err and f"[momattn] evaluating {b} (momentum [b/last])" in err
    # again into that folder, one checkpoint, perplexity off: the earlier run's ppl.png and the other checkpoints'
    # predictions stood beside reports that no longer held them
    assert (tmp_path / "run" / "ppl.png").is_file() and len(list((tmp_path / "run").glob("icl_predictions_*"))) == 3
    run_evaluate({**cfg, "ckpt_paths": None, "ppl": {"enabled": False}}, out_dir=tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.suffix in (".png", ".jsonl")) == \
        ["icl.png", "icl_predictions_vanilla.jsonl"]
    # and said before any work: the two momentum rows dropped without a word (left-over item)
    err = capsys.readouterr().err
    said = (f"[momattn] {tmp_path / 'run' / 'results.json'} holds an earlier evaluation of 2 checkpoints this one "
            "does not score (momentum [a/last], momentum [b/last]): this evaluation's reports replace its rows")
    assert said in err and err.index(said) < err.index("[momattn] evaluating v.ckpt")
    run_evaluate({**cfg, "ckpt_paths": None, "ppl": {"enabled": False}}, out_dir=tmp_path / "run")
    assert "holds an earlier evaluation" not in capsys.readouterr().err  # the same checkpoint again: nothing to say
    run_evaluate({**cfg, "ppl": {"enabled": False}}, out_dir=tmp_path / "run")  # a and b again
    capsys.readouterr()
    run_evaluate({**cfg, "ckpt_paths": [str(a)], "ppl": {"enabled": False}}, out_dir=tmp_path / "run")
    err = capsys.readouterr().err  # a, scored again under another label ('momentum'), was named as dropped too
    assert "holds an earlier evaluation of 1 checkpoint this one does not score (momentum [b/last])" in err


def test_rows_name_the_variant_and_the_weights_scored_even_when_a_file_is_replaced_midway(tmp_path, tokenizer,
                                                                                          monkeypatch, capsys):
    # eta 0.3 and 0.5 both read "momentum" (told apart by path only); a checkpoint replaced while another was scored
    # (a run still training) was labelled with the step first read and scored with the weights read later (found by
    # review)
    import momattn.eval.runner as runner
    from momattn.checkpoint import weights_digest

    a = make_checkpoint(tmp_path / "a" / "last.ckpt", "momentum", tokenizer, seed=1, step=400, eta=0.3)
    b = make_checkpoint(tmp_path / "b" / "last.ckpt", "momentum", tokenizer, seed=2, step=400, eta=0.5)
    real = runner.evaluate_model

    def scoring(model, *args, **kw):
        if args[4] == "momentum(eta=0.3)":  # (the label) while a is scored, b's run saves step 800
            make_checkpoint(b, "momentum", tokenizer, seed=3, step=800, eta=0.5)
        return real(model, *args, **kw)

    monkeypatch.setattr(runner, "evaluate_model", scoring)
    cfg = {**FAST, "ckpt_paths": [str(a), str(b)], "device": "cpu",
           "icl": {**FAST["icl"], "tasks": ["trec"], "shots": [0], "seeds": [1]}, "ppl": {"enabled": False}}
    results = run_evaluate(cfg, out_dir=tmp_path / "run")
    assert [r.label for r in results] == ["momentum(eta=0.3)", "momentum(eta=0.5)"]
    assert [r.step for r in results] == [400, 800]
    assert results[1].weights == weights_digest(load_checkpoint(b)[0])
    assert f"warning: {b} changed since it was first read (step 400, now 800" in capsys.readouterr().err


def test_an_evaluation_stopped_part_way_says_so_and_goes_on_where_it_stopped(tmp_path, tokenizer, monkeypatch):
    # a stop after 2 of 3 checkpoints left reports that read as complete, over an earlier complete evaluation of
    # the folder, and the same command scored all 3 again (found by review)
    import momattn.eval.runner as runner

    paths = [make_checkpoint(tmp_path / f"{n}" / "last.ckpt", "vanilla", tokenizer, seed=n, step=4) for n in range(3)]
    real, scored, stop_at = runner.evaluate_model, [], [2]

    def scoring(model, *args, **kw):
        if len(scored) in stop_at:
            raise KeyboardInterrupt
        scored.append(args[4])
        return real(model, *args, **kw)

    monkeypatch.setattr(runner, "evaluate_model", scoring)
    cfg = {**FAST, "ckpt_paths": [str(p) for p in paths], "device": "cpu",
           "icl": {**FAST["icl"], "tasks": ["trec"], "shots": [0], "seeds": [1]}, "ppl": {"enabled": False}}
    with pytest.raises(KeyboardInterrupt):
        run_evaluate(cfg, out_dir=tmp_path / "run")
    labels = ["vanilla [0/last]", "vanilla [1/last]", "vanilla [2/last]"]
    assert scored == labels[:2]
    assert (tmp_path / "run" / "results.md").read_text().startswith(
        "**Partial:** 2 of 3 checkpoints evaluated so far; not yet: vanilla [2/last] (a stop leaves this")
    assert json.loads((tmp_path / "run" / "results.json").read_text())["pending"] == labels[2:]
    make_checkpoint(paths[1], "vanilla", tokenizer, seed=7, step=4)  # trained again in place: scored again
    scored.clear(), stop_at.clear()
    results = run_evaluate(cfg, out_dir=tmp_path / "run")
    assert scored == labels[1:] and [r.label for r in results] == labels
    doc = json.loads((tmp_path / "run" / "results.json").read_text())
    assert "pending" not in doc and len(doc["checkpoints"]) == 3
    assert not (tmp_path / "run" / "results.md").read_text().startswith("**Partial:**")
    # again with other settings, stopped after the first: the other two's predictions were the earlier settings',
    # left beside the new partial results until a run reached its end (found by review)
    scored.clear(), stop_at.append(1)
    with pytest.raises(KeyboardInterrupt):
        run_evaluate({**cfg, "icl": {**cfg["icl"], "seeds": [2]}}, out_dir=tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").glob("icl_predictions_*")) == ["icl_predictions_vanilla_0_last.jsonl"]


def test_every_checkpoint_is_checked_before_any_is_scored(tmp_path, tokenizer, monkeypatch):
    import momattn.eval.runner as runner

    ok = make_checkpoint(tmp_path / "ok.ckpt", "vanilla", tokenizer)
    raw = torch.load(ok, weights_only=True)  # the same model claiming a 2-token context: no trec answer fits
    raw["momattn"]["model_config"]["block_size"] = 2
    raw["state_dict"]["model.wpe.weight"] = raw["state_dict"]["model.wpe.weight"][:2]
    torch.save(raw, tmp_path / "short.ckpt")
    scored = []
    monkeypatch.setattr(runner, "evaluate_model", lambda *a, **k: scored.append(a) or pytest.fail("scored"))
    cfg = {"ckpt_paths": [str(ok), str(tmp_path / "short.ckpt")], "device": "cpu",
           "icl": {"tasks": ["trec"], "shots": [0], "max_examples": 4}, "ppl": {"enabled": False}}
    with pytest.raises(DataError, match=r"^checkpoint '.*short.ckpt' \(vanilla \[short\]\): ICL task 'trec': an "
                                        r"answer .* longer than the model's context of 2 tokens"):
        run_evaluate(cfg, out_dir=tmp_path / "run")
    assert not scored  # the first was not scored before the second failed


def test_the_check_before_training_reads_the_corpus_only_when_asked(tmp_path, tokenizer):
    from momattn.eval.runner import check_evaluation

    model, tok = load_checkpoint(make_checkpoint(tmp_path / "m.ckpt", "vanilla", tokenizer))
    run = {"data": {"_target_": "momattn.data.sources.TextFiles", "paths": [str(tmp_path / "gone.txt")]}}
    cfg = {"icl": {"tasks": ["trec"], "shots": [0]}}
    check_evaluation(model, tok, run, cfg, read_corpus=False)  # train.py's own corpus: it has just read it
    with pytest.raises(DataError, match="gone.txt"):
        check_evaluation(model, tok, run, cfg)


def test_a_checkpoints_recorded_cache_folder_is_not_written_into(tmp_path, tokenizer, monkeypatch):
    """evaluate.py wrote the tokens of the corpus a checkpoint names into the cache folder it recorded: one from
    elsewhere chose where the tokens of any local file went (found by review). MOMATTN_CACHE's instead, or
    cache_dir=; train.py's end-of-run evaluation keeps its own run's."""
    from momattn.eval.runner import check_evaluation

    model, tok = load_checkpoint(make_checkpoint(tmp_path / "m.ckpt", "vanilla", tokenizer))
    (tmp_path / "doc.txt").write_text("".join(f"document {i} of many words, said {7 * i} times\n\n" for i in range(400)))
    run = {"data": {"_target_": "momattn.data.sources.TextFiles", "paths": [str(tmp_path / "doc.txt")],
                    "cache_dir": str(tmp_path / "chosen")}}
    monkeypatch.setenv("MOMATTN_CACHE", str(tmp_path / "mine"))
    check_evaluation(model, tok, run, {"icl": {"enabled": False}})
    assert not (tmp_path / "chosen").exists() and any((tmp_path / "mine" / "tokens").glob("*.bin"))
    check_evaluation(model, tok, run, {"icl": {"enabled": False}}, training=True)  # train.py's own run
    assert any((tmp_path / "chosen" / "tokens").glob("*.bin"))


def test_corpus_errors_name_the_keys_as_the_evaluation_sets_them(tmp_path, tokenizer):
    """The loaders name train.py's keys (data.paths); the evaluation sets them as ppl.data.X (eval.ppl.data.X in
    train.py), and a culprit the training run's data section gave is said to be so."""
    from momattn.config import _eval
    from momattn.eval.runner import check_evaluation

    model, tok = load_checkpoint(make_checkpoint(tmp_path / "m.ckpt", "vanilla", tokenizer))
    gone = str(tmp_path / "gone.txt")
    cfg = {"icl": {"enabled": False}, "ppl": {"data": {"source": "text_files", "paths": [gone]}}}
    with pytest.raises(DataError, match=r"^ppl\.data\.paths: '.*gone.txt' does not exist[^.]*$"):
        check_evaluation(model, tok, {"data": DATA}, cfg)
    with pytest.raises(DataError, match=r"^ppl\.data\.source=text_files needs ppl\.data\.paths="):
        check_evaluation(model, tok, {"data": DATA}, {**cfg, "ppl": {"data": {"source": "text_files"}}})
    run = {"data": {"source": "text_files", "paths": [gone]}}  # the training run's file has moved
    with pytest.raises(DataError, match=r"^ppl\.data\.paths: .* is not set by ppl.data but taken from the training "
                                        r"run's data section; set it for the evaluation with ppl.data=\{paths: "):
        check_evaluation(model, tok, run, {"icl": {"enabled": False}})
    # evaluate.py's own cache_dir= on a file: the culprit is that key, not "taken from the training run's data"
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DataError, match=r"^cache_dir=.*a\.txt: the token cache folder .* cannot be made") as info:
        check_evaluation(model, tok, {"data": DATA}, {"icl": {"enabled": False}}, cache_dir=str(tmp_path / "a.txt"))
    assert "training run" not in str(info.value) and str(info.value).endswith("; set cache_dir= to a writable folder")
    # train.py holds these sections under eval: its errors named ppl.max_windows, which it has no key for
    with pytest.raises(ConfigError, match=r"^eval\.ppl\.max_windows=0 must be an int >= 1, or null for every window$"):
        _eval({"ppl": {"max_windows": 0}}, run_eval=True)
    with pytest.raises(ConfigError, match=r"^eval\.icl\.enabled='no' must be true or false$"):
        _eval({"icl": {"enabled": "no"}}, run_eval=True)


def test_perplexity_needs_a_corpus(tmp_path, tokenizer):
    from momattn.errors import DataError

    model, tok = load_checkpoint(make_checkpoint(tmp_path / "m.ckpt", "vanilla", tokenizer))
    with pytest.raises(DataError, match="no data source"):
        evaluate_model(model, tok, {}, {"icl": {"enabled": False}}, tmp_path, "v")
    with pytest.raises(ConfigError, match="context is 64"):
        evaluate_model(model, tok, {"data": DATA}, {"ppl": {"lengths": [128]}}, tmp_path, "v")


def test_a_batch_below_the_context_is_noted(tmp_path, tokenizer, capsys):
    model, tok = load_checkpoint(make_checkpoint(tmp_path / "m.ckpt", "vanilla", tokenizer))
    cfg = {"ppl": {"max_windows": 1, "lengths": [64], "train": False}, "icl": {"enabled": False}}
    for batch_tokens, noted in ((63, True), (64, False)):
        evaluate_model(model, tok, {"data": DATA}, {**cfg, "batch_tokens": batch_tokens}, tmp_path, "v")
        err = capsys.readouterr().err
        assert (f"batch_tokens={batch_tokens} is below the model's context of 64 tokens" in err) is noted, err


def test_labels():
    paths, kinds = ["x/a/last.ckpt", "y/a/last.ckpt", "v.ckpt"], ["momentum", "momentum", "vanilla"]
    assert checkpoint_labels(paths, kinds) == ["momentum [x/a/last]", "momentum [y/a/last]", "vanilla"]
    assert checkpoint_labels(["a.ckpt"] * 2, ["vanilla"] * 2) == ["vanilla [a #1]", "vanilla [a #2]"]
    # tails that differ only where a file name cannot (their predictions files would be one file)
    labels = checkpoint_labels(["runs/a b/last.ckpt", "runs/a_b/last.ckpt"], ["vanilla"] * 2)
    assert labels == ["vanilla [runs/a b/last #1]", "vanilla [runs/a_b/last #2]"]
    assert len({slug(label) for label in labels}) == 2


def test_run_evaluate_errors(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint given"):
        run_evaluate({}, out_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"name .*a.ckpt more than once"):  # scored twice under two labels
        run_evaluate({"ckpt_path": str(tmp_path / "a.ckpt"), "ckpt_paths": [f"{tmp_path}/./a.ckpt"]}, out_dir=tmp_path)
    (tmp_path / "a.ckpt").write_bytes(b"x")
    os.link(tmp_path / "a.ckpt", tmp_path / "b.ckpt")  # a hard link: the same checkpoint under another name
    with pytest.raises(ConfigError, match=r"name .*a.ckpt, .*b.ckpt more than once"):
        run_evaluate({"ckpt_paths": [str(tmp_path / "a.ckpt"), str(tmp_path / "b.ckpt")]}, out_dir=tmp_path)
    (tmp_path / "a.ckpt").unlink()
    (tmp_path / "b.ckpt").unlink()
    with pytest.raises(CheckpointError, match="does not exist"):
        run_evaluate({"ckpt_path": str(tmp_path / "missing.ckpt")}, out_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"unknown key 'ckpt'.*Did you mean 'ckpt_path'"):
        run_evaluate({"ckpt": "x"}, out_dir=tmp_path)
    for name in ("a", "b"):  # a pattern was read as one file name: "does not exist", beside the files it matches
        (tmp_path / name / "checkpoints").mkdir(parents=True)
        (tmp_path / name / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"'.*/\*/checkpoints/last.ckpt' is a pattern \(it matches 2 file\(s\)\), and "
                                          "evaluate.py does not expand patterns; list the checkpoints"):
        run_evaluate({"ckpt_paths": [f"{tmp_path}/*/checkpoints/last.ckpt"]}, out_dir=tmp_path)


def test_settings_a_command_line_gets_wrong_are_named_or_read_as_meant(tmp_path):
    from momattn.eval.config import EvalConfig, EvaluateConfig
    from momattn.hardware import resolve_device

    for key, value in [("ppl.enabled", "off"), ("ppl.train", 2), ("icl.enabled", "maybe")]:
        section, name = key.split(".")
        with pytest.raises(ConfigError, match=f"{key}={value!r} must be true or false"):
            EvalConfig.from_mapping({section: {name: value}})
    # null is named as typed, not as Python's 'None' (a folder named 'None'); '' scanned the working folder
    for section, said in [({"score": None}, r"^icl.score=null is unknown"),
                          ({"task_dirs": [None]}, r"^icl.task_dirs holds null; give folders"),
                          ({"task_dirs": [""]}, r"^icl.task_dirs holds ''; give folders")]:
        with pytest.raises(ConfigError, match=said):
            EvalConfig.from_mapping({"icl": section})
    # `icl.separator="\n\n"` arrives as backslash-n text: a line break, as in task templates
    assert EvalConfig.from_mapping({"icl": {"separator": "\\n\\n"}}).icl.separator == "\n\n"
    assert EvaluateConfig(ckpt_paths="runs/x/last.ckpt").checkpoint_paths() == ["runs/x/last.ckpt"]
    # found by fuzzing: a TypeError from pathlib, or W&B's UsageError, after the whole evaluation
    assert EvaluateConfig(ckpt_path=123).ckpt_path == "123"  # Hydra reads ckpt_path=123 as a number: the file 123
    assert EvaluateConfig(ckpt_paths=[123, "a.ckpt"]).ckpt_paths == ["123", "a.ckpt"]
    for kw, culprit in [({"cache_dir": 1.5}, "cache_dir=1.5 must be a path"), ({"sweep_dir": ["a"]}, "sweep_dir=.* must be"),
                        # 'int' object is not iterable, from deep inside, after start-up
                        ({"ckpt_paths": 5}, r"^ckpt_paths=5 must be a list of checkpoint paths"),
                        ({"ckpt_paths": ["a.ckpt", 1.5]}, r"^ckpt_paths=\['a.ckpt', 1.5\] must be a list"),
                        ({"logger": {"wandb": {"project": "a/b"}}}, "logger.wandb.project='a/b': W&B refuses it"),
                        ({"logger": {"wandb": {}}, "tags": 5}, "tags=5 must be a list of texts"),
                        ({"logger": {"wandb": {}}, "tags": ["y" * 70]}, r"^tags=\['y+'\]: W&B refuses it: Tag"),
                        # logger.wandb's own keys: a late traceback (a 70-character tag), or taken and ignored
                        ({"logger": {"wandb": {"tags": ["x" * 70]}}}, r"^logger.wandb.tags=.* W&B refuses it: Tag"),
                        ({"logger": {"wandb": {"tags": "abcd"}}}, r"^logger.wandb.tags='abcd' must be a list of texts"),
                        ({"logger": {"wandb": {"foo": 1}}}, r"^logger.wandb.foo is not a setting of evaluate.py's W&B "
                                                            r"runs. It takes save_dir, project, entity, offline, group"),
                        ({"logger": {"wandb": {"id": "abc"}}}, r"^logger.wandb.id='abc': evaluate.py starts a W&B run"),
                        ({"logger": {"wandb": {"init_timeout": -5}}}, r"^logger.wandb.init_timeout=-5 must be a number"),
                        # ppl=null meant every default, perplexity on: the opposite of what it reads as
                        ({"ppl": None}, r"^ppl=null: ppl is a section; to turn it off write ppl.enabled=false"),
                        # loader keys under ppl.data were accepted and ignored, num_proc=abc too
                        ({"ppl": {"data": {"batch_size": 4}}}, r"^ppl.data.batch_size has no effect on perplexity"),
                        ({"ppl": {"data": {"num_proc": "abc"}}}, r"^ppl.data.num_proc: Value 'abc'"),
                        # both off wrote an empty report without a word
                        ({"ppl": {"enabled": False}, "icl": {"enabled": False}}, r"leave nothing to evaluate")]:
        with pytest.raises(ConfigError, match=culprit):
            EvaluateConfig.from_mapping({"ckpt_path": "x.ckpt", **kw})
    with pytest.MonkeyPatch.context() as mp:  # WANDB_MODE=disabled: no run starts, so no name is W&B's to refuse
        mp.setenv("WANDB_MODE", "disabled")
        EvaluateConfig.from_mapping({"ckpt_path": "x.ckpt", "logger": {"wandb": {"project": "a/b"}}})
    for device, culprit in [("gpu", "device='gpu' is not a device"), ("tpu", "is not a device"),
                            ("meta", "device=meta is not supported")]:
        with pytest.raises(ConfigError, match=culprit):
            resolve_device(device)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda:0")
    assert resolve_device("cpu") == "cpu"
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    for folder in (run, run / "checkpoints"):  # the hint names a file that is there
        with pytest.raises(CheckpointError, match=f"is a folder; pass a .ckpt file inside it \\(e.g. {run}/checkpoints/last.ckpt\\)"):
            run_evaluate({"ckpt_path": str(folder)}, out_dir=tmp_path)
    # a sweep's folder: its runs' checkpoints are a level down, and sweep_dir reads them all (it said "none is
    # there; a run keeps them in <sweep>/checkpoints/", a folder a sweep does not have: found by review)
    with pytest.raises(CheckpointError, match=f"it holds a sweep's runs, e.g. {run}/checkpoints/last.ckpt; for every "
                                              f"run of the sweep, pass sweep_dir={tmp_path} to evaluate.py or "
                                              "analyze.py instead"):
        run_evaluate({"ckpt_path": str(tmp_path)}, out_dir=tmp_path / "out")


def test_the_report_shows_the_other_scoring_rule_beside_the_headline(tmp_path, tokenizer):
    model, tok = load_checkpoint(make_checkpoint(tmp_path / "m.ckpt", "vanilla", tokenizer))
    for score, other in (("mean", "sum"), ("sum", "mean")):
        cfg = {**FAST, "icl": {**FAST["icl"], "tasks": ["trec"], "shots": [0], "score": score},
               "ppl": {"enabled": False}}
        res = evaluate_model(model, tok, {"data": DATA}, cfg, tmp_path, "v")
        shot = res.icl.tasks["trec"].shots["0"]
        assert shot.acc == (shot.acc_mean_lp if score == "mean" else shot.acc_sum_lp)
        write_reports([res], tmp_path / score)
        value = shot.acc_sum_lp if other == "sum" else shot.acc_mean_lp
        assert f"({other}: {100 * value:.1f}; k_used=" in (tmp_path / score / "results.md").read_text()


def test_evaluate_yaml_composes_into_valid_sections():
    from hydra import compose, initialize_config_dir

    from momattn.eval.config import EvalConfig

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=["logger=wandb", "icl.shots=[0,4]"])
    sections = EvalConfig.from_mapping({k: cfg[k] for k in ("ppl", "icl", "batch_tokens")})
    assert sections.icl.shots == [0, 4] and sections.icl.tasks[0] == "sst2" and sections.ppl.lengths is None
    assert cfg.ckpt_path is None and "wandb" in cfg.logger


def _evaluate(args, cwd):
    return run_cli("evaluate.py", args, cwd, env={"WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"})


@pytest.mark.slow
def test_evaluate_py_end_to_end(tmp_path, tokenizer):
    a = make_checkpoint(tmp_path / "vanilla.ckpt", "vanilla", tokenizer)
    b = make_checkpoint(tmp_path / "momentum.ckpt", "multirate_ema", tokenizer)
    local = tmp_path / "mine.jsonl"
    rows = [{"text": t, "label": int(y > 2)} for t, y in read_staicc("sst5")[:30]]
    local.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    proc = _evaluate([f"ckpt_paths=[{a},{b}]", f"hydra.run.dir={run}", f"cache_dir={tmp_path / 'cache'}",
                      "ppl.max_windows=3", "icl.shots=[0,2,max]", "icl.seeds=[1,2]", "icl.max_examples=6",
                      "icl.max_shots=3", "logger=wandb",
                      f"icl.tasks=[sst2,{{name: mine, path: '{local}', "
                      "template: 'Review: {text}\\nSentiment:', answers: [Negative, Positive]}]"],
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((run / "results.json").read_text())
    labels = [c["label"] for c in doc["checkpoints"]]
    assert labels == ["vanilla", "multirate_ema"]
    for c in doc["checkpoints"]:
        assert all(math.isfinite(v["ppl"]) and math.isfinite(v["bpb"]) for v in c["ppl"]["valid"].values())
        assert c["ppl"]["valid"]["16"]["n_windows"] == 3 and c["ppl"]["data"]["source"] == "staicc"
        assert set(c["icl"]["tasks"]) == {"sst2", "mine"}
        assert c["icl"]["tasks"]["mine"]["template"] == "Review: {text}\nSentiment:"
        assert all(0 <= s["acc"] <= 1 if s["fits"] else s["acc"] is None  # a k that does not fit: not scored
                   for t in c["icl"]["tasks"].values() for s in t["shots"].values())
    for name in ("results.md", "ppl.png", "icl.png", "icl_predictions_vanilla.jsonl"):
        assert (run / name).exists(), name
    assert list((run / "wandb").glob("offline-run-*"))
    assert "[momattn] W&B run of vanilla: " in proc.stderr and "wandb sync " in proc.stderr  # where it went
    assert "Table 6 layout" in proc.stdout
    # every file it wrote, the predictions and its log too (it named the reports alone: docs review)
    assert f"reports written to {run}/ (results.json, results.md, ppl.png, icl.png, icl_predictions_multirate_ema" \
           ".jsonl, icl_predictions_vanilla.jsonl, evaluate.log)" in proc.stdout, proc.stdout[-500:]
    line = f"[momattn] evaluating {a} (vanilla) on cpu\n"  # as train.py's lines, without Hydra's log prefix
    assert line in proc.stderr and "][INFO] - " not in proc.stdout + proc.stderr
    assert line in (run / "evaluate.log").read_text()


@pytest.mark.slow
def test_evaluate_py_user_errors_are_one_line(tmp_path):
    run_dir = f"hydra.run.dir={tmp_path / 'run'}"
    proc = _evaluate([f"ckpt_path={tmp_path / 'nope.ckpt'}", run_dir], cwd=tmp_path)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    proc = _evaluate(["ckpt_path=x", "icl.shot=[0]", run_dir], cwd=tmp_path)
    assert proc.returncode == 2 and "did you mean 'shots'" in proc.stderr.lower()


def test_a_corpus_changed_since_training_is_said_to_be_so(tmp_path, capsys):
    # documents added to the run's file moved others across the re-made split: 15 of the 25 'validation'
    # documents had been trained on, and evaluate.py scored them as Valid without a word
    from momattn.data.sources import make_source
    from momattn.eval.runner import check_same_corpus

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"document {i}" for i in range(40)))
    data = {"_target_": "momattn.data.sources.TextFiles", "paths": [str(corpus)]}
    trained_on = make_source(data).fingerprint()
    check_same_corpus(data, trained_on, "run")
    assert "warning" not in capsys.readouterr().err
    # the same files under text_files' rules of before session 55: the same documents where no line is blank by
    # today's rule alone (a page break \f)
    old = make_source(data)._fingerprint(5)
    check_same_corpus(data, old, "run")
    assert "warning" not in capsys.readouterr().err
    corpus.write_text(corpus.read_text() + "\n\f\n")  # a page break at the end: the same documents either way
    check_same_corpus(data, make_source(data)._fingerprint(5), "run")
    assert "warning" not in capsys.readouterr().err  # (the raw splits differed: flows review)
    corpus.write_text(corpus.read_text() + "last")
    check_same_corpus(data, make_source(data)._fingerprint(5), "run")
    assert "warning: run: the run's LM corpus is not the one" in capsys.readouterr().err
    corpus.write_text(corpus.read_text() + "\n\nmore text")
    check_same_corpus(data, trained_on, "run")
    assert "warning: run: the run's LM corpus is not the one its checkpoint trained on" in capsys.readouterr().err
    # the default corpus under an earlier leak filter: the same rows, split alike, fewer documents dropped; the
    # text made now holds none it trained on (every checkpoint of before session 55 was warned of as changed)
    from momattn.data import staicc
    from momattn.data.sources import StaiccCorpus

    staicc_data = {"_target_": "momattn.data.sources.StaiccCorpus", "tasks": ["trec"]}
    from momattn.data.staicc import staicc_identity

    for version, thresholds in ((staicc.LEAK_FILTER_VERSION - 1, False), (1, False), (staicc.LEAK_FILTER_VERSION, True)):
        old = StaiccCorpus(tasks=["trec"])._fingerprint(version, thresholds, staicc_identity())
        check_same_corpus(staicc_data, old, "run")
        assert "warning" not in capsys.readouterr().err
    check_same_corpus(staicc_data, StaiccCorpus(tasks=["trec"], split_seed=7).fingerprint(), "run")  # other rows
    assert "warning: run: the run's LM corpus is not the one its checkpoint trained on" in capsys.readouterr().err


def test_staicc_tasks_on_a_checkpoint_of_another_text_say_that_text_was_not_checked_against_them():
    """Only momattn's own StaICC LM text is kept clear of the rows the StaICC tasks score: a text_files corpus
    holding them trained on the test rows without a word (found by review)."""
    from momattn.eval.runner import _unchecked_leak
    from momattn.eval.tasks import resolve_tasks

    tasks = resolve_tasks(["sst5", "ginc"])
    files = {"data": {"_target_": "momattn.data.sources.TextFiles", "paths": ["c.txt"]}}
    assert "sst5 score rows that momattn keeps out of its own LM text" in _unchecked_leak(files, tasks)
    assert "trained on momattn.data.sources.TextFiles, whose text is not checked" in _unchecked_leak(files, tasks)
    for own in ({"_target_": "momattn.data.sources.StaiccCorpus"}, {"source": "staicc"}, {}):
        assert _unchecked_leak({"data": own}, tasks) is None
    assert _unchecked_leak(files, resolve_tasks(["ginc"])) is None


def test_the_unchecked_rows_note_is_in_the_report_too(tmp_path, tokenizer):
    # it was said on the console only: results.json and results.md read as clean accuracies (found by review)
    from momattn.eval.report import markdown_report, results_document

    model, tok = load_checkpoint(make_checkpoint(tmp_path / "m.ckpt", "vanilla", tokenizer))
    files = {"data": {"_target_": "momattn.data.sources.TextFiles", "paths": [str(tmp_path / "c.txt")]}}
    fast = {**FAST, "ppl": {"enabled": False}, "icl": {**FAST["icl"], "tasks": ["trec"]}}
    res = evaluate_model(model, tok, files, fast, tmp_path, "v")
    [note] = res.notes
    assert note.startswith("trec score rows that momattn keeps out of its own LM text")
    assert f"Note (v): {note}" in markdown_report([res])
    assert results_document([res])["checkpoints"][0]["notes"] == [note]
    own = evaluate_model(model, tok, {"data": DATA}, fast, tmp_path, "v")
    assert own.notes == [] and "Note (" not in markdown_report([own])


def test_a_refused_rerun_into_an_evaluations_folder_keeps_its_predictions(tmp_path, tokenizer, capsys):
    """A setting refused after the earlier predictions were removed (a missing ppl.data file) lost them for good: the
    same command then reused the scores and wrote none (flows review)."""
    v = make_checkpoint(tmp_path / "v.ckpt", "vanilla", tokenizer)
    cfg = {**FAST, "ckpt_path": str(v), "device": "cpu", "icl": {**FAST["icl"], "tasks": ["trec"], "shots": [0]},
           "ppl": {"max_windows": 2, "train": False}}
    run_evaluate(cfg, out_dir=tmp_path / "run")
    predictions = tmp_path / "run" / "icl_predictions_vanilla.jsonl"
    kept = predictions.read_text()
    bad = {**cfg, "ppl": {**cfg["ppl"], "data": {"source": "text_files", "paths": [str(tmp_path / "none.txt")]}}}
    with pytest.raises(DataError, match="none.txt"):
        run_evaluate(bad, out_dir=tmp_path / "run")
    assert predictions.read_text() == kept
    predictions.unlink()  # gone all the same (by hand): the scores are not reused without them
    capsys.readouterr()
    run_evaluate(cfg, out_dir=tmp_path / "run")
    assert predictions.read_text() == kept and "reused" not in capsys.readouterr().err


def test_variant_labels_name_only_the_settings_a_kind_reads():
    """An older checkpoint's include_current under multirate_ema (accepted and ignored then) split one variant in
    two: 'multirate_ema(include_current=True)' (second diff review)."""
    from momattn.eval.runner import variant_labels

    assert variant_labels([{"kind": "multirate_ema", "include_current": False},
                           {"kind": "multirate_ema", "include_current": True}]) == ["multirate_ema", "multirate_ema"]
    assert variant_labels([{"kind": "momentum", "eta": 0.3, "n_rates": 3},
                           {"kind": "momentum", "eta": 0.5, "n_rates": 8}]) == ["momentum(eta=0.3)", "momentum(eta=0.5)"]
    assert variant_labels([{"kind": "multirate_ema", "n_rates": 4}, {"kind": "multirate_ema", "n_rates": 8},
                           {"kind": "vanilla", "eta": 0.9}]) == ["multirate_ema(n_rates=4)", "multirate_ema(n_rates=8)",
                                                                 "vanilla"]
