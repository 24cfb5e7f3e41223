"""The ICL protocol: accuracy with a model that prefers a known answer, shots, seeds, fitting the context."""

import numpy as np
import pytest
from test_eval_common import CharTokenizer, bigram_lm

from momattn.errors import DataError
from momattn.eval.config import IclConfig
from momattn.eval.icl import IclEvaluator
from momattn.eval.results import ShotResult
from momattn.eval.tasks import IclData, IclExample, IclTask

TOK = CharTokenizer()
SP, A, B = ord(" "), ord("a"), ord("b")


def letter_task(labels, n_pool=40, text_len=3, name="letters"):
    """Template "{text}:", answers "a" / "b"; demonstrations "000", "001", ...; test texts "xxx" (cycling
    through text_len(s) letters)."""
    answers = ("a", "b")
    lens = text_len if isinstance(text_len, list) else [text_len]

    def ex(i, label, n, text=None):
        return IclExample(i, {"text": text or "x" * n}, answers, label)

    data = IclData(demo_pool=[ex(1000 + i, i % 2, 3, f"{i:03d}") for i in range(n_pool)],
                   test=[ex(i, y, lens[i % len(lens)]) for i, y in enumerate(labels)])
    return IclTask(name, "{text}:", answers, "synthetic", lambda seed: data)


def b_lover(block_size=64):
    """After a space it says 'b' with probability .9: every answer comparison picks "b"."""
    return bigram_lm(128, {SP: {B: 0.9, A: 0.05}}, block_size)


def evaluator(model, **cfg):
    cfg = {"tasks": ["x"], "shots": [0], "seeds": [1], **cfg}
    return IclEvaluator(model, TOK, IclConfig(**cfg), split_seed=0)


def test_accuracy_counts_the_answer_the_model_prefers():
    labels = [1, 1, 0, 1, 0, 1, 1, 0, 1, 1]  # 7 of 10 are "b"
    out = evaluator(b_lover(), shots=[0, 4], seeds=[1, 2]).evaluate([letter_task(labels)])
    task = out.tasks["letters"]
    for k in ("0", "4"):
        assert task.shots[k].acc == pytest.approx(0.7)
        assert task.shots[k].acc_sum_lp == pytest.approx(0.7)
        # this model ignores the demonstrations: two seeds that agree have std 0; one seed (0-shot) has none
        assert task.shots[k].acc_std == (None if k == "0" else 0.0)
        assert task.shots[k].fits and task.shots[k].k_used_mean == int(k)
    assert task.chance == 0.5 and task.n == 10
    assert task.majority == pytest.approx(0.7)  # always answering "b" scores what this model scores: no ICL shown
    assert out.avg["4"].acc == pytest.approx(0.7) and out.headline_k == "4"


def test_zero_shot_uses_one_seed_and_other_k_every_seed():
    out = evaluator(b_lover(), shots=[0, 2], seeds=[1, 2, 3]).evaluate([letter_task([1, 0])])
    shots = out.tasks["letters"].shots
    assert shots["0"].seeds == [1] and shots["2"].seeds == [1, 2, 3]


def test_max_takes_as_many_demonstrations_as_fit():
    # demonstration "xxx: a<eot>" = 7 tokens; test "xxx:" + " a" = 6; the prompt starts with <eot>:
    # 1 + 7 j + 6 <= 64
    ev = evaluator(b_lover(block_size=64), shots=["max"])
    res = ev.evaluate([letter_task([1, 0, 1])]).tasks["letters"].shots["max"]
    assert res.k_used_mean == 8 and res.fits
    ev = evaluator(b_lover(block_size=64), shots=["max"], max_shots=5)
    assert ev.evaluate([letter_task([1])]).tasks["letters"].shots["max"].k_used_mean == 5


def test_max_is_set_by_the_longest_test_example():
    # tests of 3 and 20 letters: the longest needs 21 + 2 tokens, leaving room for (64 - 1 - 23) // 7 = 5
    ev = evaluator(b_lover(block_size=64), shots=["max"])
    ev.evaluate([letter_task([1, 0], text_len=[3, 20])])
    assert {p["k_used"] for p in ev.predictions} == {5}


def test_int_k_drops_demonstrations_that_would_overflow_per_example():
    ev = evaluator(b_lover(block_size=64), shots=[16])
    task = letter_task([1, 0], text_len=[3, 20])
    res = ev.evaluate([task]).tasks["letters"].shots["16"]
    assert res.per_seed[0].k_used_min == 5 and res.per_seed[0].k_used_max == 8  # the long example keeps fewer
    assert res.k_used_mean == 6.5 and not res.fits and "k_used=6.5" in res.note  # marked, never shown as 16-shot
    # placed, not scored: a k that does not fit was scored in full, then reported nowhere (left-over item)
    assert res.acc is None and res.acc_std is None and ev.predictions == []
    assert res.per_seed[0].acc is None and ShotResult.from_json(res.to_json()).acc is None
    assert res.per_seed[0].n == 0  # test prompts scored: the ties line counted the unscored as its denominator
    data = task.load(0)
    enc, _ = ev.encode_test(task, ev.test_set(data.test))
    ev.evaluate_run(task, enc, data.demo_pool, 16, 1)  # scored on its own, as the analysis does
    assert sorted(p["k_used"] for p in ev.predictions) == [5, 8]


def test_prompts_longer_than_the_context_keep_their_last_tokens():
    ev = evaluator(b_lover(block_size=32), shots=[0])
    res = ev.evaluate([letter_task([1, 1], text_len=50)]).tasks["letters"]
    assert res.n_truncated == 2 and res.shots["0"].acc == 1.0  # and it never overflowed the context


def test_an_example_whose_own_answer_outgrows_the_context_is_skipped_not_the_task():
    # per-example answers (PIQA's solutions): one longer than the context failed the whole task
    ev = evaluator(b_lover(block_size=32), shots=[0])
    test = [IclExample(i, {"text": "xx"}, ("a", "b"), 1) for i in range(3)]
    test.append(IclExample(9, {"text": "xx"}, ("a", "b" * 40), 1))
    task = IclTask("own", "{text}:", None, "synthetic", lambda seed: IclData([], test))
    res = ev.evaluate([task]).tasks["own"]
    assert res.n_skipped == 1 and res.shots["0"].acc == 1.0
    fixed = IclTask("fixed", "{text}:", ("a", "b" * 40), "synthetic", lambda seed: IclData([], test[:3]))
    with pytest.raises(Exception, match=r"an answer of the task, 'bbbbbbbb.*' \(41 tokens\), is longer than the "
                                        r"model's context of 32 tokens holds"):
        ev.evaluate([fixed])  # every example's: nothing could be scored (it named the first example: review)


def test_seeds_draw_different_demonstrations_deterministically():
    task = letter_task([1])
    pool = [IclExample(i, {"text": f"x{i}"}, ("a", "b"), i % 2) for i in range(30)]
    ev = evaluator(b_lover())
    d1, d2 = ev.demonstrations(task, pool, 4, 1), ev.demonstrations(task, pool, 4, 2)
    assert d1 != d2 and d1 == ev.demonstrations(task, pool, 4, 1)
    assert all(d[-1] == TOK.eot_id for d in d1)  # the default separator ends each demonstration
    ev = evaluator(b_lover(), separator="\n\n")
    assert ev.demonstrations(task, pool, 1, 1)[0][-2:] == [10, 10]


def test_demonstrations_equal_to_a_test_example_are_recognised_in_any_spelling():
    from momattn.eval.icl import normalize_text

    # StaICC writes some bytes in cat -v notation: "exposM-i" is "exposé" (lower-cased first, it read "exposmi")
    assert normalize_text("An exposM-i , of sorts") == normalize_text("an Exposé of  sorts") == "anexposeofsorts"


def test_test_set_is_shuffled_with_a_fixed_seed_and_capped():
    task = letter_task([i % 2 for i in range(50)])
    ev1, ev2 = evaluator(b_lover(), max_examples=5), evaluator(b_lover(), max_examples=5)
    r1 = ev1.evaluate([task])
    ev2.evaluate([task])
    ids = [p["id"] for p in ev1.predictions]
    assert r1.tasks["letters"].n == 5 and ids == [p["id"] for p in ev2.predictions]
    assert ids != sorted(ids) and r1.tasks["letters"].n_test_available == 50


def test_average_over_tasks():
    t1, t2 = letter_task([1, 1], name="all_b"), letter_task([0, 0], name="all_a")
    out = evaluator(b_lover()).evaluate([t1, t2])
    assert out.tasks["all_b"].shots["0"].acc == 1.0
    assert out.tasks["all_a"].shots["0"].acc == 0.0
    assert out.avg["0"].to_json() == {"acc": 0.5, "chance": 0.5, "n_tasks": 2, "excluded": []}


def test_a_task_that_cannot_place_enough_demonstrations_is_marked_and_left_out_of_the_average():
    # 20-letter tests: "max" fits (64 - 1 - 23) // 7 = 5 demonstrations; with room for 2 it does not fit
    short, long = letter_task([1, 0], name="short"), letter_task([1, 1], text_len=40, name="long")
    out = evaluator(b_lover(block_size=64), shots=[0, "max"]).evaluate([short, long])
    assert out.tasks["short"].shots["max"].fits and out.tasks["short"].shots["max"].k_used_mean == 8
    unfit = out.tasks["long"].shots["max"]
    assert not unfit.fits and unfit.k_used_mean == 2 and "k_used=2.0" in unfit.note
    assert out.avg["max"].n_tasks == 1 and out.avg["max"].excluded == ["long"]
    assert out.avg["max"].acc == out.tasks["short"].shots["max"].acc
    assert out.avg["0"].n_tasks == 2  # zero-shot always fits


def test_side_by_side_baseline_avg_cells_are_each_models_own_where_their_avg_holds_other_tasks():
    """One test set, two contexts: the long task fits the 128-token model at k=max only. Its commonest-label Avg
    averaged the first model's tasks for both (left-over item)."""
    from momattn.eval.report import markdown_report
    from momattn.eval.results import ModelResult

    tasks = [letter_task([1, 0], name="short"), letter_task([1, 1], text_len=40, name="long")]
    res = [ModelResult(label=label, attention="vanilla", model={}, tokenizer={}, eval_config={},
                       icl=evaluator(b_lover(block_size=size), shots=[0, "max"]).evaluate(tasks))
           for label, size in (("wide", 128), ("narrow", 64))]
    assert [r.icl.avg["max"].excluded for r in res] == [[], ["long"]]
    md = markdown_report(res)
    assert "| always the commonest label | 50.0 | 100.0 | 75.0 (wide), 50.0 (narrow) |" in md
    assert "| chance | 50.0 | 50.0 | 50.0 |" in md  # alike: one value
    assert markdown_report(res[:1]).count("| always the commonest label | 50.0 | 100.0 | 75.0 |") == 1


def test_icl_png_averages_across_k_only_the_tasks_that_fit_at_every_k(tmp_path, monkeypatch):
    """The per-k Avg of the table averages other task sets at other k: drawn as one line across k, a task left out
    at k=max read as a trend (left-over item). The avg panel draws the tasks that fit at every k, and says so."""
    import matplotlib.axes

    from momattn.eval.report import _fit_every_k, plot_icl
    from momattn.eval.results import ModelResult

    short, long = letter_task([1, 0], name="short"), letter_task([1, 1], text_len=40, name="long")
    out = evaluator(b_lover(block_size=64), shots=[0, "max"]).evaluate([short, long])
    assert _fit_every_k(out) == ["short"]
    drawn, titles = {}, {}
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", lambda ax, xs, ys, **kw: drawn.setdefault(id(ax), list(ys)))
    real_title = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title",
                        lambda ax, t, **kw: (titles.__setitem__(t, id(ax)), real_title(ax, t, **kw))[1])
    res = ModelResult(label="m", attention="vanilla", model={}, tokenizer={}, eval_config={}, icl=out)
    assert plot_icl([res], tmp_path / "icl.png")
    avg = titles["avg (without long: not every k fits)"]
    assert drawn[avg] == [100 * out.tasks["short"].shots[k].acc for k in ("0", "max")]
    assert drawn[avg] != [100 * out.avg[k].acc for k in ("0", "max")]  # what it drew: k=0 averaged both tasks
    # side by side: the tasks that fit at every k for every model (the wide model drew both under the same title)
    wide = ModelResult(label="w", attention="vanilla", model={}, tokenizer={}, eval_config={},
                       icl=evaluator(b_lover(block_size=128), shots=[0, "max"]).evaluate([short, long]))
    assert _fit_every_k(wide.icl) == ["short", "long"]
    lines = []
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", lambda ax, xs, ys, **kw: lines.append((id(ax), list(ys))))
    titles.clear()
    assert plot_icl([wide, res], tmp_path / "icl2.png")
    avg = titles["avg (without long: not every k fits)"]
    assert [ys for ax, ys in lines if ax == avg] == [[100 * wide.icl.tasks["short"].shots[k].acc for k in ("0", "max")],
                                                     [100 * out.tasks["short"].shots[k].acc for k in ("0", "max")]]


def test_demonstration_pool_drops_copies_of_test_texts():
    answers = ("a", "b")
    test = [IclExample(i, {"text": f"t{i}"}, answers, 1) for i in range(4)]
    pool = [IclExample(100 + i, {"text": f"d{i}"}, answers, i % 2) for i in range(10)]
    pool.append(IclExample(200, {"text": "  T2 "}, answers, 0))  # a test text, differing in case and spaces
    task = IclTask("dups", "{text}:", answers, "synthetic", lambda seed: IclData(pool, test))
    prep = evaluator(b_lover()).prepare(task)
    assert len(prep.pool) == 10 and prep.result.n_demo_dropped == 1
    assert 200 not in {e.id for e in prep.pool}
    # a k the pool cannot hold says why it is short (it said "has only 10" with no word of the copies)
    with pytest.raises(DataError, match=r"has only 10 demonstration examples \(synthetic\), after 1 of its 11 were "
                                        r"dropped as copies of test texts"):
        evaluator(b_lover(), shots=[11]).prepare(task)
    import dataclasses  # a StaICC task's pool is fixed: it was told to set demo_fraction, which it refuses (review)
    with pytest.raises(DataError, match=r"lower icl.shots, or its pool is StaICC's, fixed: for more, give the task "
                                        r"as a local JSONL task file"):
        evaluator(b_lover(), shots=[11]).prepare(dataclasses.replace(task, source="staicc:x"))


def test_a_test_example_among_its_own_demonstrations_is_caught_at_run_time():
    from momattn.eval.icl import DemonstrationLeakError

    answers = ("a", "b")
    test = [IclExample(i, {"text": f"t{i}"}, answers, 1) for i in range(3)]
    pool = [IclExample(100 + i, {"text": f"d{i}"}, answers, i % 2) for i in range(10)]
    task = IclTask("planted", "{text}:", answers, "synthetic", lambda seed: IclData(pool, test))
    ev = evaluator(b_lover(), shots=[4], seeds=[7])
    prep = ev.prepare(task)
    order = np.random.default_rng(7).permutation(len(prep.pool))
    prep.pool[int(order[2])] = IclExample(555, {"text": "T1"}, answers, 1)  # test row 1, planted after the check
    with pytest.raises(DemonstrationLeakError, match=r"task 'planted': test row 1 .*demonstration 3 .*seed 7"):
        ev.evaluate([prep])
    # the test text sits in the pool but never in its own prompt (no room beside it): not a leak
    prep = ev.prepare(letter_task([1, 0], text_len=[3, 50]))
    order = np.random.default_rng(7).permutation(len(prep.pool))
    prep.pool[int(order[0])] = prep.test[1].example  # 50 letters + answer: first demonstration of seed 7
    ev.predictions.clear()
    ev.evaluate_run(prep.task, prep.test, prep.pool, 4, 7)  # k=4 does not fit: scored directly, as analyze.py does
    assert sorted(p["k_used"] for p in ev.predictions) == [0, 1]


def test_a_model_with_nan_outputs_has_no_accuracy_not_answer_zeros_share(capsys):
    import torch
    from test_eval_common import FakeLM

    labels = [0, 0, 0, 1]  # argmax over nan picks answer 0: 75% would look like a result
    out = evaluator(FakeLM(torch.full((128, 128), float("nan"))), shots=[0, 2], seeds=[1]).evaluate(
        [letter_task(labels)])
    shots = out.tasks["letters"].shots
    assert all(np.isnan(shots[k].acc) and np.isnan(shots[k].acc_sum_lp) for k in ("0", "2"))
    assert all(shots[k].per_seed[0].n_ties is None for k in ("0", "2"))  # no accuracy, no ties to lean on
    err = capsys.readouterr().err
    assert "non-finite log-probabilities for 4 of 4 test prompts" in err
    assert "[momattn] icl letters: 2 (k, seed) runs of 4 test examples (0m0" in err  # a log file's progress


def test_a_diverged_tasks_reloaded_result_keeps_its_k_used():
    # a nan accuracy is written as null; a k that does not fit reads it back as None, and the cell then said
    # "does not fit (at most k=None)", as for a GINC k beyond the context
    import json

    from momattn.eval.report import _acc
    from momattn.eval.results import ShotResult
    from momattn.io import json_text

    written = json_text(ShotResult(k="4", fits=False, chance=0.5, k_used_mean=1.0, acc=float("nan")).to_json())
    shot = ShotResult.from_json(json.loads(written))
    assert shot.acc is None and _acc(shot) == "does not fit (k_used=1.00)"
    # at k=1 with one prompt of 20 holding none: "does not fit (k_used=1.0)" read as placed (found by review)
    from momattn.eval.results import SeedRun

    runs = [SeedRun(seed=1, acc=0.5, k_used_mean=0.95, k_used_min=0, k_used_max=1)]
    assert _acc(ShotResult.from_runs(1, runs, 0.5, fits=False)) == "does not fit (k_used=0.95, fewest 0)"
    # rounded down: a max whose mean 3.9995 falls short of 4 read "4.00" (diff review)
    assert _acc(ShotResult(k="max", fits=False, chance=0.5, k_used_mean=3.9995)) == "does not fit (k_used=3.99)"
    beyond = ShotResult(k="16", fits=False, chance=0.1, k_used_mean=0.0, k_max_fit=9)
    assert _acc(beyond) == "does not fit (at most k=9)"


def test_the_report_names_each_models_truncated_prompts_where_they_differ():
    # another context (or tokenizer) truncates other test prompts: the line gave the first model's count for all
    from momattn.eval.report import markdown_report
    from momattn.eval.results import ModelResult

    task = letter_task([1, 0, 1, 0], text_len=[3, 40])  # two of the four test texts outgrow a 32-token context
    results = [ModelResult(label=label, attention="vanilla", model={}, tokenizer={}, eval_config={},
                           icl=evaluator(b_lover(block_size=n)).evaluate([task]))
               for label, n in (("wide", 64), ("narrow", 32))]
    assert [r.icl.tasks["letters"].n_truncated for r in results] == [0, 2]
    assert "n = 4 test examples (of 4), demonstration pool 40, chance 50.0%, always the commonest label 50.0%, " \
           "0 (wide), 2 (narrow) prompts truncated." in markdown_report(results)
    assert "prompts truncated" not in markdown_report(results[:1])


def test_a_max_that_the_pool_not_the_context_limits_says_so():
    # a 3-row pool, every row placed: the note blamed "the 64-token context", which had room for more
    out = evaluator(b_lover(), shots=["max"]).evaluate([letter_task([1, 0], n_pool=3)])
    shot = out.tasks["letters"].shots["max"]
    assert not shot.fits and shot.k_used_mean == 3
    assert shot.note.startswith("the demonstration pool holds only 3 examples, all placed: k_used=3.00, wanted at "
                                "least 4")
    long = evaluator(b_lover(), shots=["max"]).evaluate([letter_task([1, 1], text_len=40)]).tasks["letters"]
    assert long.shots["max"].note.startswith("does not fit the 64-token context")  # the context's limit stays so


def test_answers_tied_for_the_top_score_are_counted_and_said(capsys):
    """A model that cannot tell the answers apart: the argmax takes the first, so it scores answer 0's share of
    the labels (75% here), and nothing said so."""
    import torch
    from test_eval_common import FakeLM

    from momattn.eval.report import markdown_report
    from momattn.eval.results import ModelResult

    out = evaluator(FakeLM(torch.zeros(128, 128)), shots=[0, 2], seeds=[1]).evaluate([letter_task([0, 0, 0, 1])])
    shots = out.tasks["letters"].shots
    assert all(shots[k].acc == pytest.approx(0.75) and shots[k].per_seed[0].n_ties == 4 for k in ("0", "2"))
    assert "4 of 4 test prompts had two or more answers with the same top score" in capsys.readouterr().err
    md = markdown_report([ModelResult(label="m", attention="vanilla", model={}, tokenizer={}, eval_config={}, icl=out)])
    assert "**Ties:**" in md and "m letters: 8 of 8" in md
    # a model whose log-probabilities are all -inf has no accuracy: its equal scores are not ties to report
    out = evaluator(FakeLM(torch.full((128, 128), float("-inf"))), shots=[0]).evaluate([letter_task([0, 1])])
    assert out.tasks["letters"].shots["0"].per_seed[0].n_ties is None
    assert "Ties" not in markdown_report([ModelResult(label="m", attention="vanilla", model={}, tokenizer={},
                                                      eval_config={}, icl=out)])
    # a model that prefers one answer: no tie, no line
    out = evaluator(b_lover(), shots=[0]).evaluate([letter_task([0, 1])])
    assert out.tasks["letters"].shots["0"].per_seed[0].n_ties == 0
    assert "Ties" not in markdown_report([ModelResult(label="m", attention="vanilla", model={}, tokenizer={},
                                                      eval_config={}, icl=out)])


def test_the_report_names_the_bar_k_max_was_held_to():
    # with max_shots=2 a max of 2 fits, but the report said a task "fits" only with 4
    from momattn.eval.report import markdown_report
    from momattn.eval.results import ModelResult

    out = evaluator(b_lover(), shots=["max"], max_shots=2).evaluate([letter_task([1, 0])])
    assert out.tasks["letters"].shots["max"].fits and out.min_demos == 2
    md = markdown_report([ModelResult(label="m", attention="vanilla", model={}, tokenizer={}, eval_config={}, icl=out)])
    assert "(k=max: fewer than 2) is marked 'does not fit'" in md


def test_the_scored_prompt_holds_each_demonstration_with_its_own_labels_answer(monkeypatch):
    """The fake models here ignore the demonstrations, so a demonstration shown with another example's answer (or
    the wrong one) changed no accuracy: the prompt the scorer is given is checked against the pool itself."""
    import momattn.eval.icl as icl

    seen = []
    real = icl.PrefixScorer
    monkeypatch.setattr(icl, "PrefixScorer", lambda model, prefix, bt: seen.append(list(prefix)) or real(model, prefix, bt))
    task = letter_task([1, 0, 1], n_pool=12)
    pool = task.loader(0).demo_pool
    evaluator(b_lover(block_size=128), shots=[4], seeds=[1, 2]).evaluate([task])
    assert len(seen) == 2  # one prefix per seed: every test example fits all 4
    for seed, prefix in zip((1, 2), seen):
        drawn = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))[:4]]  # the protocol's draw
        want = "".join(f"{ex.fields['text']}: {'ab'[int(ex.fields['text']) % 2]}<|endoftext|>" for ex in drawn)
        assert TOK.decode(prefix) == "<|endoftext|>" + want  # a label's answer: "000" a, "001" b, ...
    assert seen[0] != seen[1]


def test_each_examples_prediction_is_the_headline_rules_beside_each_rules():
    """icl_predictions' `pred` was the mean rule's whatever icl.score was: under score=sum it disagreed with the
    headline accuracy (5% against 35% in the review's run)."""
    lm = bigram_lm(128, {SP: {B: 0.9, A: 0.05}, B: {B: 0.5}})
    answers = ("a", "bbbbbb")  # one token against six: the sum rule prefers "a", the mean rule "bbbbbb"
    data = IclData(demo_pool=[IclExample(1000 + i, {"text": f"{i:03d}"}, answers, i % 2) for i in range(10)],
                   test=[IclExample(i, {"text": "xxx"}, answers, i % 2) for i in range(4)])
    task = IclTask("rules", "{text}:", answers, "synthetic", lambda seed: data)
    for score, headline in (("mean", 1), ("sum", 0)):
        ev = evaluator(lm, score=score)
        shot = ev.evaluate([task]).tasks["rules"].shots["0"]
        assert [(p["pred"], p["pred_mean"], p["pred_sum"]) for p in ev.predictions] == [(headline, 1, 0)] * 4
        right = sum(p["pred"] == p["label"] for p in ev.predictions) / 4
        assert shot.acc == right == 0.5 and shot.acc_mean_lp == shot.acc_sum_lp == 0.5
