"""ICL task loading: local JSONL files, hub schemas in local files, StaICC reserved rows, and errors."""

import json
import os

import pytest
from test_eval_common import CharTokenizer

from momattn.data.staicc import SPLIT_SEED, split_rows
from momattn.errors import ConfigError, DataError
from momattn.eval.config import EvalConfig, IclConfig
from momattn.eval.icl import answer_token_ids
from momattn.eval.tasks import TASKS, file_task, resolve_tasks


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_local_jsonl_task_with_demo_file(tmp_path):
    rows = [{"text": "good", "label": 1}, {"text": "bad", "label": "Negative"}]
    test = write_jsonl(tmp_path / "t.jsonl", rows)
    demo = write_jsonl(tmp_path / "d.jsonl", [{"text": "fine", "label": "Positive", "extra": 3}])
    task = file_task({"name": "mine", "path": test, "template": "Review: {text}\\nSentiment:",
                      "answers": ["Negative", "Positive"], "demo_path": demo})
    data = task.load(0)
    assert task.template == "Review: {text}\nSentiment:"  # a typed \n is a line break
    assert [e.label for e in data.test] == [1, 0]
    assert [e.id for e in data.test] == [1, 2]  # ids are line numbers
    assert task.fill(data.demo_pool[0]) == "Review: fine\nSentiment:" and data.demo_pool[0].label == 1


def test_local_jsonl_without_demo_file_is_split_seeded_and_disjoint(tmp_path):
    rows = [{"q": f"x{i}", "y": i % 2} for i in range(40)]
    path = write_jsonl(tmp_path / "all.jsonl", rows)
    entry = {"name": "m", "path": path, "template": "{q} ?", "answers": ["a", "b"], "label_field": "y",
             "demo_fraction": 0.25}
    a, b = file_task(entry).load(7), file_task(entry).load(7)
    assert len(a.demo_pool) == 10 and len(a.test) == 30
    assert {e.id for e in a.demo_pool}.isdisjoint({e.id for e in a.test})
    assert [e.id for e in a.demo_pool] == [e.id for e in b.demo_pool]  # deterministic


def test_template_naming_a_missing_field_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": 0}, {"txt": "b", "label": 0}])
    task = file_task({"name": "m", "path": path, "template": "{text}:", "answers": ["x", "y"],
                      "demo_path": path})
    with pytest.raises(DataError, match=r"line 2.*field '\{text\}'.*Did you mean 'txt'"):
        task.load(0)


@pytest.mark.parametrize("label", [2, -1, "Maybe", True, 1.5])
def test_labels_outside_the_answer_set_are_an_error(tmp_path, label):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": label}])
    task = file_task({"name": "m", "path": path, "template": "{text}:", "answers": ["x", "y"],
                      "demo_path": path})
    with pytest.raises(DataError, match="label"):
        task.load(0)


def test_missing_file_bad_json_and_missing_label_are_errors(tmp_path):
    entry = {"name": "m", "template": "{text}:", "answers": ["x", "y"]}
    # a misspelt key of an inline mapping (task files refused theirs): the default was used without a word
    with pytest.raises(ConfigError, match=r"^icl.tasks entry 'm': unknown key 'demo_fracton'. Did you mean "
                                          r"'demo_fraction'\?"):
        file_task({**entry, "path": "t.jsonl", "demo_fracton": 0.9})
    with pytest.raises(DataError, match="does not exist"):
        file_task({**entry, "path": str(tmp_path / "nope.jsonl")}).load(0)
    with pytest.raises(DataError, match=f"'{tmp_path}' is a folder; give the path of a JSONL file"):  # not "does not exist"
        file_task({**entry, "path": str(tmp_path)}).load(0)
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 0}\n{oops\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        file_task({**entry, "path": str(tmp_path / "bad.jsonl")}).load(0)
    path = write_jsonl(tmp_path / "nolabel.jsonl", [{"text": "a"}])
    with pytest.raises(DataError, match="no 'label' field"):
        file_task({**entry, "path": path, "demo_path": path}).load(0)


def test_task_entries_need_template_and_answers(tmp_path):
    with pytest.raises(ConfigError, match="needs a 'template'"):
        file_task({"name": "m", "path": "x.jsonl", "answers": ["a", "b"]})
    with pytest.raises(ConfigError, match="at least two"):
        file_task({"name": "m", "path": "x.jsonl", "template": "{t}", "answers": "ab"})


def test_empty_or_identically_tokenized_answers_are_errors():
    tok = CharTokenizer()
    # one answer's tokens a prefix of another's: fine
    assert answer_token_ids(["No", "Nope"], tok, "t") == [tok.encode(" No"), tok.encode(" Nope")]
    with pytest.raises(ConfigError, match="answer 1 is empty"):
        answer_token_ids(["yes", "  "], tok, "t")
    with pytest.raises(ConfigError, match="tokenize identically"):  # (a row's own answers may differ in case alone)
        answer_token_ids(["yes", "YES"], type("Lower", (CharTokenizer,), {"encode": lambda s, t: CharTokenizer.encode(
            s, t.lower())})(), "t", case=False)
    with pytest.raises(ConfigError, match="'yes' and 'YES' differ only in whitespace or case"):  # a task's set
        answer_token_ids(["yes", "YES"], tok, "t")
    assert len(answer_token_ids(["yes", "YES"], tok, "t", case=False)) == 2
    for same in (["yes", "yes "], ["yes", " yes"], ["no way", "no  way\n"]):  # were scored as two answers
        with pytest.raises(ConfigError, match="differ only in whitespace"):
            answer_token_ids(same, tok, "t")
    with pytest.raises(ConfigError, match="'yes' and 'yes' are the same answer twice"):
        answer_token_ids(["yes", "yes"], tok, "t")


    class DropsDigits(CharTokenizer):
        def encode(self, text):
            return [t for t in super().encode(text) if not chr(t).isdigit() and chr(t) != " "]

    with pytest.raises(ConfigError, match=r"answer 1 \('42'\) encodes to no tokens"):
        answer_token_ids(["yes", "42"], DropsDigits(), "t")


def test_hub_task_offline_says_how_to_use_a_local_file(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'SetFit/sst5' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    env = dict(os.environ)
    with pytest.raises(DataError, match=r"needs the Hugging Face hub.*pass icl.tasks=\[\{name: hub_sst5, path: test.jsonl"):
        TASKS["hub_sst5"].load(0)
    assert dict(os.environ) == env  # nothing set globally
    # analyze.py's one task is `task`: its advice named evaluate.py's icl.tasks, not a key there (found by review)
    [task] = resolve_tasks(["hub_sst5"], key="task")
    with pytest.raises(DataError, match=r"pass task=\{name: hub_sst5, path: test.jsonl, demo_path: train.jsonl\}, or"):
        task.load(0)


def test_hub_schemas_from_local_files(tmp_path):
    arc = [
        {"question": "Which is a gas?", "answerKey": "B",
         "choices": {"text": ["ice", "steam", "rock", "wood"], "label": list("ABCD")}},
        {"question": "Three?", "answerKey": "A",  # skipped: three choices
         "choices": {"text": ["a", "b", "c"], "label": list("ABC")}},
        {"question": "Num?", "answerKey": "4",
         "choices": {"text": ["1", "2", "3", "4"], "label": list("1234")}},
    ]
    path = write_jsonl(tmp_path / "arc.jsonl", arc)
    task = file_task({"name": "hub_arc_easy", "path": path, "demo_path": path})
    data = task.load(0)
    assert task.answers is None and [e.label for e in data.test] == [1, 3]
    assert data.test[0].answers == ("ice", "steam", "rock", "wood")
    assert task.fill(data.test[0]) == "Which is a gas?"
    row = {"goal": "open a jar", "sol1": "twist", "sol2": "bite", "label": 0}
    piqa = write_jsonl(tmp_path / "piqa.jsonl", [row])
    ex = file_task({"name": "hub_piqa", "path": piqa, "demo_path": piqa}).load(0).test[0]
    assert ex.answers == ("twist", "bite") and ex.label == 0
    cb = write_jsonl(tmp_path / "cb.jsonl", [{"premise": "P.", "hypothesis": "H.", "label": 2, "idx": 0},
                                             {"premise": "P.", "hypothesis": "H.", "label": -1, "idx": 1}])
    cb_task = file_task({"name": "hub_cb", "path": cb, "demo_path": cb})
    data = cb_task.load(0)
    assert len(data.test) == 1 and data.test[0].answers[data.test[0].label] == "Neither"
    assert cb_task.fill(data.test[0]) == "P.\nQuestion: H. True, False, or Neither?\nAnswer:"
    for name, bad in (("hub_cb", {"premise": "P.", "hypothesis": "H.", "label": 7, "idx": 2}),
                      ("hub_piqa", {**row, "label": "1"})):  # silently dropped rows before: named now
        path = write_jsonl(tmp_path / f"bad_{name}.jsonl", [bad])
        with pytest.raises(DataError, match=r"row 1: label (7|'1') is not an integer in 0\.\.\d \(nor -1, unlabelled\)"):
            file_task({"name": name, "path": path, "demo_path": path}).load(0)


def test_task_files_that_yaml_or_json_would_misread_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="holds true/false: YAML reads unquoted yes, no, on and off as booleans"):
        file_task({"name": "m", "path": "x.jsonl", "template": "{text}:", "answers": [True, False]})
    for answers in ([None, "yes"], ["no", ["yes"]]):  # were the words "None" and "['yes']" in every prompt
        with pytest.raises(ConfigError, match=r"answers\[[01]\]=(None|\['yes'\]) must be a text"):
            file_task({"name": "m", "path": "x.jsonl", "template": "{text}:", "answers": answers})
    assert file_task({"name": "m", "path": "x.jsonl", "template": "{text}:", "answers": [1, 2.5]}).answers == ("1", "2.5")
    path = write_jsonl(tmp_path / "null.jsonl", [{"text": None, "label": 0}])
    with pytest.raises(DataError, match="field 'text' is null"):  # not the word "None" in the prompt
        file_task({"name": "m", "path": path, "template": "{text}:", "answers": ["x", "y"], "demo_path": path}).load(0)
    path = write_jsonl(tmp_path / "stars.jsonl", [{"text": "ok", "label": 3}])
    stars = {"name": "m", "path": path, "template": "{text}:", "answers": ["1", "2", "3", "4", "5"], "demo_path": path}
    with pytest.raises(DataError, match="label 3 is a number and so are the answers.*would mean answer '4'"):
        file_task(stars).load(0)
    path = write_jsonl(tmp_path / "stars_text.jsonl", [{"text": "ok", "label": "3"}])
    assert file_task({**stars, "path": path, "demo_path": path}).load(0).test[0].label == 2  # the answer '3'


@pytest.mark.parametrize("seed", [SPLIT_SEED, 7])
def test_staicc_tasks_use_only_rows_reserved_for_icl(seed):
    for name in ("sst2", "trec"):
        data, split = TASKS[name].load(seed), split_rows(name, seed)
        test_ids, demo_ids = {e.id for e in data.test}, {e.id for e in data.demo_pool}
        assert test_ids == set(split.icl_test.tolist()) and demo_ids == set(split.icl_demo.tolist())
        lm = set(split.lm_train.tolist()) | set(split.lm_val.tolist())
        assert test_ids.isdisjoint(lm) and demo_ids.isdisjoint(lm) and test_ids.isdisjoint(demo_ids)
        assert [e.id for e in data.demo_pool] == split.icl_demo.tolist()  # kept in split_rows' permuted order
    ex = TASKS["agnews"].load(seed).test[0]
    assert ex.answers == ("World", "Sports", "Business", "Technology")
    assert "News: " in TASKS["agnews"].fill(ex)


def test_task_names_and_sets_resolve_with_did_you_mean():
    assert [t.name for t in resolve_tasks(["table7"])] == ["hub_sst5", "hub_imdb", "hub_mr", "hub_cb",
                                                           "hub_arc_easy", "hub_piqa"]
    assert len(resolve_tasks(["staicc"])) == 6
    with pytest.raises(ConfigError, match="Did you mean 'agnews'"):
        resolve_tasks(["agnew"])
    with pytest.raises(ConfigError, match="twice"):
        resolve_tasks(["sst2", "staicc"])


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match=r"unknown key 'icl.shot'.*Did you mean 'shots'"):
        EvalConfig.from_mapping({"icl": {"shot": [0]}})
    with pytest.raises(ConfigError, match=r"unknown key 'eval.ppl.max_window'.*Did you mean 'max_windows'"):
        EvalConfig.from_mapping({"ppl": {"max_window": 3}}, "eval")
    with pytest.raises(ConfigError, match="icl.shots contains -1"):
        IclConfig(shots=[0, -1])
    with pytest.raises(ConfigError, match="icl.score"):
        IclConfig(score="median")
    # numpy's generators refuse negative seeds (a traceback after the perplexity had run); a repeated seed scored
    # the same demonstrations twice and counted them as two draws in the std over seeds
    with pytest.raises(ConfigError, match=r"icl.seeds=\[1, -1\] must be a non-empty list of ints >= 0"):
        IclConfig(seeds=[1, -1])
    with pytest.raises(ConfigError, match=r"icl.test_seed=-1 must be an int >= 0"):
        IclConfig(test_seed=-1)
    with pytest.raises(ConfigError, match=r"icl.seeds=\[1, 1\] lists a seed twice"):
        IclConfig(seeds=[1, 1])
    with pytest.raises(ConfigError, match=r"unknown key 'templte'.*Did you mean 'template'"):
        IclConfig(tasks=[{"name": "m", "path": "p", "templte": "{x}"}])
    cfg = EvalConfig.from_mapping({"icl": {"shots": ["max", 4, 0]}, "ppl": {"lengths": [64, 32]}})
    assert cfg.icl.shots == [0, 4, "max"] and cfg.ppl.lengths == [32, 64] and cfg.icl.largest_k == "max"


def test_config_from_omegaconf_and_single_values():
    from omegaconf import OmegaConf

    node = OmegaConf.create({"ppl": {"max_windows": 50, "lengths": 128},
                             "icl": {"tasks": "table7", "shots": 4, "seeds": 1}})
    cfg = EvalConfig.from_mapping(node, "eval")  # train.yaml's `eval:` node, as train.py passes it
    assert cfg.ppl.max_windows == 50 and cfg.ppl.lengths == [128]
    assert cfg.icl.tasks == ["table7"] and cfg.icl.shots == [4] and cfg.icl.seeds == [1]


def test_k_larger_than_the_demonstration_pool_is_an_error(tmp_path):
    from test_eval_common import uniform_lm

    from momattn.eval.icl import IclEvaluator

    path = write_jsonl(tmp_path / "t.jsonl", [{"text": f"r{i}", "label": i % 2} for i in range(6)])
    task = file_task({"name": "m", "path": path, "template": "{text}:", "answers": ["a", "b"],
                      "demo_fraction": 0.5})
    ev = IclEvaluator(uniform_lm(128), CharTokenizer(), IclConfig(tasks=["sst2"], shots=[0, 4]), split_seed=0)
    with pytest.raises(DataError, match="icl.shots contains 4 but task 'm' has only 3 demonstration"):
        ev.evaluate_task(task)


def test_hub_rows_saved_locally_with_a_missing_column_or_a_null_are_named_not_dropped(tmp_path):
    # a missing label column was read as "unlabelled" and the row skipped; a null text became the word "None"
    cases = [("hub_cb", {"premise": "P.", "hypothesis": "H.", "labels": 0}, r"row 1: does not have the columns of "
              r"task 'hub_cb' \(KeyError: 'label'\); it has \['hypothesis', 'labels', 'premise'\]"),
             ("hub_cb", {"premise": None, "hypothesis": "H.", "label": 0}, r"row 1: column 'premise' is null"),
             ("hub_arc_easy", {"question": "Q?", "answer": "A", "options": ["a", "b", "c", "d"]},
              r"row 1: does not have the columns of task 'hub_arc_easy' \(KeyError: 'choices'\)"),
             ("hub_piqa", {"goal": "g", "sol1": None, "sol2": "b", "label": 0}, r"row 1: column 'sol1' is null")]
    for i, (name, row, message) in enumerate(cases):
        path = write_jsonl(tmp_path / f"{i}.jsonl", [row])
        with pytest.raises(DataError, match=message):
            file_task({"name": name, "path": path, "demo_path": path}).load(0)
    # label_field renames the label column of a hub task's saved rows (it was ignored: no test examples)
    path = write_jsonl(tmp_path / "gold.jsonl", [{"premise": "P.", "hypothesis": "H.", "gold": 1}])
    ex = file_task({"name": "hub_cb", "path": path, "demo_path": path, "label_field": "gold"}).load(0).test[0]
    assert ex.answers[ex.label] == "False"
    with pytest.raises(ConfigError, match="label_field does not apply to hub_arc_easy"):
        file_task({"name": "hub_arc_easy", "path": path, "label_field": "gold"})


def test_a_local_task_without_a_path_or_with_a_bad_demo_fraction_is_one_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^task: the local task \{'name': 'x'\} has no 'path'"):
        resolve_tasks([{"name": "x"}], key="task")  # analyze.py's key; was KeyError: 'path'
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}] * 4)
    for bad in (None, "half"):  # was float()'s TypeError / ValueError
        with pytest.raises(ConfigError, match=rf"demo_fraction={bad!r} must be a number in \(0, 1\)"):
            file_task({"name": "m", "path": path, "template": "{text}:", "answers": ["x", "y"], "demo_fraction": bad})


def test_jsonl_with_a_byte_order_mark_is_read_and_one_that_is_not_utf8_is_named(tmp_path):
    entry = {"name": "m", "template": "{text}:", "answers": ["x", "y"]}
    rows = "".join(json.dumps({"text": t, "label": i % 2}) + "\n" for i, t in enumerate("abcd"))
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + rows.encode())
    data = file_task({**entry, "path": str(tmp_path / "bom.jsonl")}).load(0)
    assert len(data.test) + len(data.demo_pool) == 4
    sep = [{"text": "bad\u2028film\x85", "label": 0}, {"text": "good", "label": 1}]  # legal unescaped in JSON
    (tmp_path / "sep.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in sep * 2))
    data = file_task({**entry, "path": str(tmp_path / "sep.jsonl")}).load(0)  # splitlines() cut these rows
    assert sorted(e.fields["text"] for e in data.test + data.demo_pool) == ["bad\u2028film\x85"] * 2 + ["good"] * 2
    (tmp_path / "latin1.jsonl").write_bytes('{"text": "caf\xe9", "label": 0}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.jsonl is not UTF-8 text \(byte 13: invalid continuation byte\)"):
        file_task({**entry, "path": str(tmp_path / "latin1.jsonl")}).load(0)


def test_a_staicc_file_of_the_wrong_shape_says_reinstall(tmp_path, monkeypatch):
    import pickle

    from momattn.data import staicc

    (tmp_path / f"{staicc.STAICC_FILES['sst2']}.dataset").write_bytes(pickle.dumps([("text only",)]))
    monkeypatch.setattr(staicc, "staicc_dir", lambda: tmp_path)
    staicc.read_staicc.cache_clear()
    try:
        with pytest.raises(DataError, match=r"does not hold \(\(text, \.\.\.\), label\) rows .*force-reinstall StaICC"):
            staicc.read_staicc("sst2")
        # a byte flipped inside a row's text: a UnicodeDecodeError from the unpickler, not a read error (found by
        # review; of 300 random flips, 113 raised something other than OSError, UnpicklingError or EOFError)
        good = pickle.dumps([(("a fine text",), 1)])
        (tmp_path / f"{staicc.STAICC_FILES['sst2']}.dataset").write_bytes(good.replace(b"fine", b"f\xffne"))
        staicc.read_staicc.cache_clear()
        with pytest.raises(DataError, match=r"cannot read StaICC data file .*: UnicodeDecodeError: .*force-reinstall"):
            staicc.read_staicc("sst2")
    finally:
        staicc.read_staicc.cache_clear()


def test_a_field_that_is_not_text_or_a_number_is_named_not_printed_into_the_prompt():
    # a JSONL list, a bool or NaN went into prompts as "['a', 'b']", "True", "nan"
    import numpy as np

    from momattn.eval.tasks import fill_fields

    assert fill_fields("{t} ({n})", {"t": "ok", "n": np.int64(3)}, "w") == {"t": "ok", "n": "3"}
    for bad in (["a", "b"], True, float("nan"), {"a": 1}):
        with pytest.raises(DataError, match=r"^t.jsonl line 2: field 't' holds .*, not text or a number"):
            fill_fields("{t}", {"t": bad}, "t.jsonl line 2")


def test_a_task_named_as_a_metric_part_is_refused(tmp_path):
    # a task named avg was logged as icl/avg/acc, which the average over the tasks then replaced
    path = write_jsonl(tmp_path / "all.jsonl", [{"q": f"x{i}", "y": i % 2} for i in range(40)])
    for name, why in (("avg", "would be logged as the average over the tasks"), ("a/b", "would break its metric")):
        entry = {"name": name, "path": path, "template": "{q} ?", "answers": ["a", "b"], "label_field": "y"}
        with pytest.raises(ConfigError, match=f"icl.tasks: a task named '{name}' {why}"):
            resolve_tasks(["trec", entry])


def test_a_file_in_its_own_template_keeps_case_and_punctuation_and_answers_get_one_space(tmp_path):
    """Found by review: "Q: 12+5 =" dropped "Q: 12-5 =" from the pool (punctuation folded, as for the hub's rows),
    and an answer written " yes" was scored and shown as "  yes"."""
    from test_eval_common import uniform_lm

    from momattn.eval.icl import IclEvaluator

    test = write_jsonl(tmp_path / "t.jsonl", [{"q": "12+5", "label": " yes"}, {"q": "7*3", "label": "no "}])
    demo = write_jsonl(tmp_path / "d.jsonl", [{"q": "12-5", "label": "no"}, {"q": "7/3", "label": 0},
                                              {"q": " 12+5", "label": 0}])  # only whitespace differs: a copy
    task = file_task({"name": "m", "path": test, "demo_path": demo, "template": "Q: {q} =",
                      "answers": [" yes", "no"]})
    assert task.answers == ("yes", "no")
    ev = IclEvaluator(uniform_lm(128), CharTokenizer(), IclConfig(tasks=["sst2"], shots=[0]), split_seed=0)
    prep = ev.prepare(task)
    assert sorted(task.fill(e) for e in prep.pool) == ["Q: 12-5 =", "Q: 7/3 ="]
    assert prep.result.n_demo_dropped == 1
    assert [e.example.label for e in sorted(prep.test, key=lambda e: e.example.id)] == [0, 1]
    assert CharTokenizer().decode(ev.demo_ids(task, prep.pool[0])[:-len(ev.sep) or None]).count("  ") == 0
    assert [CharTokenizer().decode(a) for a in prep.test[0].answers] == [" yes", " no"]
    # StaICC's rows saved locally (no template given) still fold case, punctuation and escapes, as the built-in do
    staicc = file_task({"name": "sst2", "path": write_jsonl(tmp_path / "s.jsonl", [{"text": "a", "label": 0}])})
    assert staicc.same_text is None and task.same_text is not None
