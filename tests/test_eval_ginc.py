"""GINC in-context accuracy: task names, the greedy and candidate rules, k that does not fit, the world taken
from the checkpoint's run config, and the report."""

import json

import pytest
import torch
from test_eval_common import FakeLM, tiny_gpt

from momattn.data.ginc import GincCorpus
from momattn.errors import ConfigError, DataError
from momattn.eval.config import IclConfig
from momattn.eval.ginc import GincEvaluator, GincTask, describe_data, ginc_task, ginc_world
from momattn.eval.runner import evaluate_model, flat_metrics, write_reports
from momattn.eval.tasks import resolve_tasks
from momattn.utils import stable_seed

V = 10  # symbols; end-of-text is token V
WORLD = {"_target_": "momattn.data.ginc.GincCorpus", "n_symbols": V, "n_train_docs": 4, "doc_length": 300,
         "n_val_docs": 2, "val_doc_length": 300, "seed": 7}


@pytest.fixture(scope="module")
def world() -> GincCorpus:
    return ginc_world(WORLD)


def test_task_names():
    assert ginc_task("ginc") == GincTask("ginc", 5, False)
    assert ginc_task("ginc_l8") == GincTask("ginc_l8", 8, False)
    assert ginc_task("ginc_ood") == GincTask("ginc_ood", 5, True)
    assert ginc_task("ginc_ood_l3") == GincTask("ginc_ood_l3", 3, True)
    assert ginc_task("gincx") is None and ginc_task("sst2") is None
    with pytest.raises(ConfigError, match="must be >= 2"):
        ginc_task("ginc_l1")
    assert [t.name for t in resolve_tasks(["ginc", "ginc_l10", "trec"])] == ["ginc", "ginc_l10", "trec"]
    with pytest.raises(ConfigError, match="Did you mean 'ginc_ood'"):
        resolve_tasks(["ginc_oood"])


def test_one_ginc_task_under_two_names_is_refused():
    # ginc and ginc_l5 scored the same prompts twice: two identical rows that read as independent results
    for names, first, second in ((["ginc", "ginc_l3", "ginc_l5"], "ginc", "ginc_l5"),
                                 (["ginc_l03", "ginc_l3"], "ginc_l03", "ginc_l3"),
                                 (["ginc_ood", "ginc_ood_l5"], "ginc_ood", "ginc_ood_l5")):
        with pytest.raises(ConfigError, match=f"icl.tasks: '{first}' and '{second}' are the same GINC task "
                                              r"\(example length \d+, .*list one of them"):
            resolve_tasks(names)
    assert [t.name for t in resolve_tasks(["ginc", "ginc_ood", "ginc_l3", "ginc_ood_l3"])] == \
        ["ginc", "ginc_ood", "ginc_l3", "ginc_ood_l3"]  # in- and out-of-distribution are two tasks
    with pytest.raises(ConfigError, match="lists task 'ginc' twice; list it once$"):  # not "local files"
        resolve_tasks(["ginc", "ginc"])
    with pytest.raises(ConfigError, match="lists task 'trec' twice; list it once$"):
        resolve_tasks(["trec", "trec"])


def constant_lm(probs: dict[int, float], block_size: int = 64) -> FakeLM:
    """The same next-token distribution after every token: the given probabilities, the rest spread."""
    row = torch.full((V + 1,), (1.0 - sum(probs.values())) / (V + 1 - len(probs)), dtype=torch.float64)
    for t, p in probs.items():
        row[t] = p
    return FakeLM(row.log().expand(V + 1, V + 1).clone(), block_size)


def test_a_model_with_nan_outputs_has_no_accuracy_not_the_delimiters_share(world, capsys):
    cfg = IclConfig(tasks=["ginc"], shots=[2], seeds=[1], max_examples=8)
    nan_lm = FakeLM(torch.full((V + 1, V + 1), float("nan")), 64)  # argmax over nan: symbol 0, the delimiter
    run = GincEvaluator(nan_lm, world.tokenizer(), cfg, world).evaluate_tasks([ginc_task("ginc")])["ginc"]
    seed1 = run.shots["2"].per_seed[0]
    assert seed1.acc != seed1.acc and seed1.acc_cand != seed1.acc_cand  # nan
    err = capsys.readouterr().err
    assert "non-finite log-probabilities for 8 of 8 prompts" in err
    assert "[momattn] icl ginc: k in [2], 1 seed(s) (0m0" in err  # a log file's progress line, as tqdm shows none


def test_a_tie_for_the_top_token_is_counted_and_said(world, capsys):
    cfg = IclConfig(tasks=["ginc"], shots=[2], seeds=[1], max_examples=8)
    flat = FakeLM(torch.zeros(V + 1, V + 1), 64)  # every token alike: the argmax takes id 0, the delimiter
    run = GincEvaluator(flat, world.tokenizer(), cfg, world).evaluate_tasks([ginc_task("ginc")])["ginc"]
    assert run.shots["2"].per_seed[0].n_ties == 8
    assert "8 of 8 test prompts had two or more answers with the same top score; the first (the lowest token id" in (
        capsys.readouterr().err)
    run = GincEvaluator(constant_lm({3: 0.6}), world.tokenizer(), cfg, world).evaluate_tasks([ginc_task("ginc")])
    assert run["ginc"].shots["2"].per_seed[0].n_ties == 0


def test_greedy_and_candidate_rules_against_the_bayes_label(world):
    # always "/" (symbol 0): both rules score exactly the share of "/" labels
    cfg = IclConfig(tasks=["ginc"], shots=[0, 2], seeds=[1, 2], max_examples=40)
    ev = GincEvaluator(constant_lm({0: 0.6}), world.tokenizer(), cfg, world)
    res = ev.evaluate_tasks([ginc_task("ginc")])["ginc"]
    prompts = world.prompts(5, 2, 40, seed=stable_seed("ginc-prompts", 1))
    share = sum(p.label == 0 for p in prompts) / 40
    seed1 = res.shots["2"].per_seed[0]
    assert seed1.acc == seed1.acc_cand == seed1.delimiter_baseline == pytest.approx(share)
    assert res.chance == pytest.approx(1 / V) and res.n == 40 and res.kind == "ginc"
    assert res.shots["0"].seeds == [1, 2]  # every seed at every k (test inputs are paired across k)
    assert len(ev.predictions) == 2 * 2 * 40 and all(p["pred"] == p["pred_cand"] == 0 for p in ev.predictions)
    # end-of-text first, "/" second: greedy (whole vocabulary) never right, the candidate rule as before
    ev = GincEvaluator(constant_lm({V: 0.5, 0: 0.3}), world.tokenizer(), cfg, world)
    res2 = ev.evaluate_tasks([ginc_task("ginc")])["ginc"]
    assert res2.shots["2"].acc == 0.0 and res2.shots["2"].acc_cand == res.shots["2"].acc_cand


def test_the_prompt_scored_is_end_of_text_then_every_symbol_of_the_prompt(world):
    """The constant models above answer alike whatever the prompt: a prompt that lost its last symbol (the one the
    label is conditioned on) scored the same. A model that repeats the token it reads answers each prompt's last
    symbol, so its accuracy is the share of labels equal to it."""
    cfg = IclConfig(tasks=["ginc"], shots=[2], seeds=[1], max_examples=40)
    repeat = torch.full((V + 1, V + 1), 0.01, dtype=torch.float64)
    repeat.fill_diagonal_(1.0 - 0.01 * V)
    ev = GincEvaluator(FakeLM(repeat.log(), 64), world.tokenizer(), cfg, world)
    task = ginc_task("ginc")
    prompts = ev.prompts(task, 2, 1)
    assert ev.encode(task, prompts).tolist() == [[V] + list(p.symbols) for p in prompts]  # end-of-text is token V
    res = ev.evaluate_tasks([task])["ginc"]
    same = sum(p.label == p.symbols[-1] for p in prompts) / len(prompts)
    assert res.shots["2"].per_seed[0].acc == pytest.approx(same)
    assert [p["pred"] for p in ev.predictions] == [p.symbols[-1] for p in prompts]


def test_greedy_never_answers_a_padding_id(world):
    # the model's vocabulary is padded beyond the tokenizer's V + 1 ids; a padding id (no token: model.generate
    # never emits it) on top counted as a wrong greedy answer, not as the best real token, "/" here
    cfg = IclConfig(tasks=["ginc"], shots=[2], seeds=[1], max_examples=40)
    row = torch.full((V + 4,), 0.1 / (V + 2), dtype=torch.float64)
    row[0], row[V + 2] = 0.3, 0.6  # "/" second to padding id V + 2
    lm = FakeLM(row.log().expand(V + 1, V + 4).clone())
    ev = GincEvaluator(lm, world.tokenizer(), cfg, world)
    shot = ev.evaluate_tasks([ginc_task("ginc")])["ginc"].shots["2"]
    assert shot.acc == shot.acc_cand == shot.per_seed[0].delimiter_baseline > 0
    assert all(p["pred"] == 0 for p in ev.predictions)
    # logprob_label is over the tokenizer's ids too: the padding rows' 0.6 took part in it (found by review)
    real = row[: V + 1] / row[: V + 1].sum()
    assert all(abs(p["logprob_label"] - real[p["label"]].log().item()) < 1e-5 for p in ev.predictions)


def test_k_that_does_not_fit_is_reported_not_truncated(world):
    # context 64 with a leading <eot>: (5 + 1) k + 4 <= 63 -> k <= 9; l=3: 4 k + 2 <= 63 -> k <= 15
    cfg = IclConfig(tasks=["ginc"], shots=[0, 8, 16, "max"], seeds=[1], max_examples=10)
    ev = GincEvaluator(tiny_gpt(vocab=V + 1, block_size=64), world.tokenizer(), cfg, world, batch_tokens=256)
    out = ev.evaluate_tasks([ginc_task("ginc"), ginc_task("ginc_ood_l3")])
    l5, l3 = out["ginc"].shots, out["ginc_ood_l3"].shots
    assert not l5["16"].fits and l5["16"].acc is None and l5["16"].k_max_fit == 9 and "at most k=9" in l5["16"].note
    assert l5["max"].fits and l5["max"].k_used_mean == 9 and l5["8"].k_used_mean == 8
    assert l3["16"].fits is False and l3["max"].k_used_mean == 15 and out["ginc_ood_l3"].ood
    assert all(0 <= s.acc <= 1 for s in (l5["0"], l5["8"], l3["max"]))
    assert l5["16"].to_json()["acc"] is None  # in results.json as null, never missing
    # the predictions say which icl.shots value asked for them: k=max's rows were "k": 9 like a k=9 row's
    assert {(p["k"], p["k_used"]) for p in ev.predictions if p["task"] == "ginc"} == {(0, 0), (8, 8), ("max", 9)}
    cfg = IclConfig(tasks=["ginc"], shots=["max"], seeds=[1], max_examples=10, max_shots=4)
    ev = GincEvaluator(tiny_gpt(vocab=V + 1, block_size=64), world.tokenizer(), cfg, world)
    assert ev.evaluate_tasks([ginc_task("ginc")])["ginc"].shots["max"].k_used_mean == 4  # capped by max_shots


def test_a_length_that_does_not_fit_names_the_models_context_and_the_tokens_needed(world):
    # <eot> + 64 symbols of test input: 65 tokens for a 64-token model (it said "the context of 63 tokens", the
    # context less the <eot>); 64 tokens fit, at k=0 only
    cfg = IclConfig(tasks=["ginc_l65"], shots=[0], seeds=[1], max_examples=2)
    ev = GincEvaluator(tiny_gpt(vocab=V + 1, block_size=64), world.tokenizer(), cfg, world)
    with pytest.raises(ConfigError, match=r"^icl.tasks: 'ginc_l65': a GINC prompt of examples of length 65 needs 65 "
                                          r"tokens even with k=0 \(<eot> \+ the 64-symbol test input\) but the "
                                          r"model's context is 64 tokens \(model.block_size\)"):
        ev.k_max_fit(ginc_task("ginc_l65"))
    assert ev.k_max_fit(ginc_task("ginc_l64")) == 0


def test_a_ginc_task_needs_a_ginc_checkpoint(tmp_path):
    from test_eval_common import CharTokenizer

    # an older run's source: staicc, and a current one's _target_ (named by its option, not its class path)
    for staicc in ({"source": "staicc", "tasks": ["trec"]}, {"_target_": "momattn.data.sources.StaiccCorpus"}):
        with pytest.raises(ConfigError, match="task 'ginc_l3' needs a checkpoint trained with data=ginc; this one "
                                              r"was trained on data=staicc\. Drop the ginc tasks"):
            evaluate_model(tiny_gpt(), CharTokenizer(), {"data": staicc},
                           {"ppl": {"enabled": False}, "icl": {"tasks": ["ginc_l3"]}}, tmp_path, "v")
    for target, option in [("momattn.data.sources.StaiccCorpus", "staicc"), ("momattn.data.ginc.GincCorpus", "ginc"),
                           ("momattn.data.streaming.StreamingHubCorpus", "hf_stream"), ("my.Corpus", "my.Corpus")]:
        assert describe_data({"_target_": target, "tasks": ["trec"]}) == f"data={option}"  # the option, as typed
    with pytest.raises(ConfigError, match="no data section"):
        ginc_world(None)


def test_a_world_the_model_did_not_train_on_or_without_held_out_concepts_is_refused_before_scoring(tmp_path, world,
                                                                                                  monkeypatch):
    """Found by review: a checkpoint of another generator version was scored on the new world's prompts, exit 0;
    ginc_ood on a world pretrained on every concept advised data.n_train_concepts, a key evaluate.py refuses."""
    import momattn.data.ginc as ginc

    model, cfg = tiny_gpt(vocab=V + 1, block_size=64), {"ppl": {"enabled": False}, "icl": {"tasks": ["ginc"],
                                                                                          "max_examples": 2}}
    trained_on = world.fingerprint()
    evaluate_model(model, world.tokenizer(), {"data": WORLD}, cfg, tmp_path, "v", trained_on=trained_on)
    monkeypatch.setattr(ginc, "VERSION", ginc.VERSION + 1)  # the generator changed since the checkpoint trained
    with pytest.raises(DataError, match=r"'ginc': the GINC world this momattn builds from the checkpoint's data "
                                        r"section is not the one the model trained on \(the generator, version \d+"):
        evaluate_model(model, world.tokenizer(), {"data": WORLD}, cfg, tmp_path, "v", trained_on=trained_on)
    monkeypatch.undo()
    every = {**WORLD, "n_concepts": 2, "n_train_concepts": 2}
    with pytest.raises(ConfigError, match=r"^icl.tasks: 'ginc_ood' scores concepts held out of pretraining, but this "
                                          r"checkpoint's GINC world pretrained on all of its 2 concepts .*; drop the "
                                          r"ood tasks from icl.tasks$"):
        evaluate_model(model, world.tokenizer(), {"data": every}, {**cfg, "icl": {"tasks": ["ginc", "ginc_ood"]}},
                       tmp_path, "v")
    with pytest.raises(ConfigError, match=r"^task: 'ginc_ood' .*; choose task=ginc$"):
        ginc_world(every, "ginc_ood", key="task", ood_task="ginc_ood")
    from momattn.eval.runner import check_evaluation  # train.py's check before training: its own keys advised

    with pytest.raises(ConfigError, match=r"but this run's GINC world pretrains on all of its 2 concepts .*; lower "
                                          r"data.n_train_concepts or drop the ood tasks from icl.tasks$"):
        check_evaluation(model, world.tokenizer(), {"data": every}, {**cfg, "icl": {"tasks": ["ginc_ood"]}},
                         training=True)


def test_evaluate_model_on_a_ginc_checkpoint_and_the_report(tmp_path, world):
    model = tiny_gpt(vocab=V + 1, block_size=64)
    eval_cfg = {"ppl": {"max_windows": 2}, "batch_tokens": 512,
                "icl": {"tasks": ["ginc", "ginc_ood"], "shots": [0, 2, 16, "max"], "seeds": [1, 2],
                        "max_examples": 12}}
    res = evaluate_model(model, world.tokenizer(), {"data": WORLD}, eval_cfg, tmp_path, "vanilla")
    assert res.ppl.valid["64"].ppl > 1  # perplexity on the GINC validation documents
    g = res.icl.tasks["ginc"]
    assert list(g.shots) == ["0", "2", "16", "max"] and g.shots["max"].k_used_mean == 9
    assert res.icl.avg["max"].acc is None and res.icl.avg["max"].n_tasks == 0  # GINC is not in Table 7's Avg
    metrics = flat_metrics(res)
    assert {"icl/ginc/acc", "icl/ginc/acc@k2", "icl/ginc/acc_cand@k2", "icl/ginc_ood/k_used@kmax"} <= set(metrics)
    assert "icl/ginc/acc@k16" not in metrics and "icl/avg/acc" not in metrics
    write_reports([res], tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "## GINC: accuracy vs number of examples k" in md and "Table 7 layout" not in md
    assert "| model | task | k=0 | k=2 | k=16 | k=max | always / | chance |" in md
    assert "does not fit (at most k=9)" in md and "| 10.0 |" in md  # chance = 1/V
    doc = json.loads((tmp_path / "results.json").read_text())
    shot = doc["checkpoints"][0]["icl"]["tasks"]["ginc"]["shots"]["2"]
    assert shot["acc"] == g.shots["2"].acc and shot["chance"] == 0.1 and shot["k_used_mean"] == 2
    assert "Bayes-optimal" in doc["protocol"]["ginc"]
    assert doc["headline"]["icl"] is None and "Bayes-optimal" in doc["headline"]["ginc"]  # no Table 7 Avg here
    preds = (tmp_path / "icl_predictions_vanilla.jsonl").read_text().splitlines()
    assert len(preds) == 2 * 3 * 2 * 12  # tasks x fitting k x seeds x prompts
    assert "Different GINC worlds" not in md
    # a model of another world beside it: scored on its own world's prompts and labels, in one table without a word
    # (found by review)
    other = GincCorpus(**{**{k: v for k, v in WORLD.items() if k != "_target_"}, "seed": WORLD.get("seed", 0) + 7})
    eval_cfg["icl"]["tasks"] = ["ginc"]
    res2 = evaluate_model(model, other.tokenizer(), {"data": {**WORLD, "seed": other.seed}}, eval_cfg,
                          tmp_path / "b", "momentum")
    write_reports([res, res2], tmp_path / "both")
    md = (tmp_path / "both" / "results.md").read_text()
    assert f"**Different GINC worlds** (vanilla: data.seed={world.seed}; momentum: data.seed={other.seed})" in md
    assert "compare GINC models trained on one world" in md and "ppl.data={source: text_files" not in md
    # one world, trained on more documents: the same prompts and validation text, no warning (diff review)
    res3 = evaluate_model(model, world.tokenizer(), {"data": {**WORLD, "n_train_docs": 8}}, eval_cfg,
                          tmp_path / "c", "more")
    write_reports([res, res3], tmp_path / "same")
    md = (tmp_path / "same" / "results.md").read_text()
    assert "Different GINC worlds" not in md and "Different corpora" not in md


def test_a_ginc_k_max_below_the_fewest_demonstrations_is_not_scored(tmp_path, world):
    """k=max placing fewer than 4 examples is known before any prompt is scored: it was scored, then reported
    nowhere (the report says "does not fit")."""
    model = tiny_gpt(vocab=V + 1, block_size=20)
    eval_cfg = {"ppl": {"max_windows": 1}, "batch_tokens": 512,
                "icl": {"tasks": ["ginc"], "shots": [1, "max"], "seeds": [1, 2], "max_examples": 6}}
    res = evaluate_model(model, world.tokenizer(), {"data": WORLD}, eval_cfg, tmp_path, "vanilla")
    shot = res.icl.tasks["ginc"].shots["max"]
    assert not shot.fits and shot.acc is None and shot.per_seed == [] and 0 < shot.k_max_fit < 4
    assert shot.k_used_mean == shot.k_max_fit and shot.note == (f"does not fit: k=max places only {shot.k_max_fit} "
                                                              "examples in the context")
    assert res.icl.tasks["ginc"].shots["1"].fits and res.icl.tasks["ginc"].shots["1"].acc is not None
    from momattn.eval.report import _acc  # it read "at most k=2" beside a scored k=2 (GINC review)

    assert _acc(shot) == f"does not fit (k=max places only {shot.k_max_fit})"
    preds = (tmp_path / "icl_predictions_vanilla.jsonl").read_text().splitlines()
    assert len(preds) == 2 * 6 and all(json.loads(p)["k"] == 1 for p in preds)
