"""In-context learning tasks, declared as data: a name, a template with {field} placeholders, the answers,
and where the rows come from. Chance level is 1 / number of answers.

Three sources (and GINC, tasks of their own kind: momattn.eval.ginc):
- StaICC (offline, the default): sst2, sst5, mr, subj, agnews, trec, on the rows that
  momattn.data.staicc.split_rows reserved for ICL (test = icl_test, demonstration pool = icl_demo), which
  momattn's own LM text (data=staicc) leaves out; another corpus is not checked against them (a note says so).
- the Hugging Face hub (the paper's Table 7 set): hub_sst5, hub_imdb, hub_mr, hub_cb, hub_arc_easy, hub_piqa.
  Offline they raise a DataError that says how to pass the same rows as a local JSONL file.
- local JSONL files: {name, path, template, answers, demo_path?, label_field?, demo_fraction?}, one example
  per line with the template's fields and a label (an index into answers or the answer string). A file for
  a registered task name may omit template and answers (e.g. {name: hub_cb, path: cb_validation.jsonl,
  demo_path: cb_train.jsonl} with the hub's columns).
- task files: the same keys in a small YAML file, with the data path relative to the file, found by name in
  the folders of icl.task_dirs (or given as a path ending in .yaml), like lm-evaluation-harness's task YAMLs:

      # my_tasks/review.yaml  ->  python evaluate.py ckpt_path=... icl.task_dirs=[my_tasks] icl.tasks=[review]
      name: review                      # optional: the file's stem
      path: review.jsonl                # one example a line, relative to this file
      template: "Review: {text}\nSentiment:"
      answers: [Negative, Positive]
      label_field: label                # optional (default label): an index into answers or the answer
      demo_path: review_demos.jsonl     # optional; else a seeded split of path (demo_fraction, default 0.5)
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from momattn.errors import ConfigError, DataError, did_you_mean, not_a_file
from momattn.eval.ginc import GincTask, ginc_task
from momattn.utils import stable_seed

# a {field}: any name without braces or whitespace ({review-text} was left in the prompt as text: found by review);
# braces holding a space are text ("Is it {Negative or Positive}?")
PLACEHOLDER = re.compile(r"\{([^{}\s]+)\}")


@dataclass(frozen=True)
class IclExample:
    id: int  # row index in its source (StaICC row, hub row, or JSONL line number)
    fields: Mapping[str, str]  # what the template's placeholders are filled with
    answers: tuple[str, ...]  # candidate answers (the task's, or this example's own for ARC-E / PIQA)
    label: int  # index of the right answer


@dataclass
class IclData:
    demo_pool: list[IclExample]  # demonstrations are drawn from here, in a seeded order
    test: list[IclExample]


@dataclass(frozen=True)
class IclTask:
    name: str
    template: str  # "{field}" placeholders; "\n" separates the input line from the answer line
    answers: tuple[str, ...] | None  # None: every example brings its own (ARC-E choices, PIQA solutions)
    source: str  # where the rows come from, for the report
    loader: Callable[[int], IclData] = field(repr=False, compare=False)  # split seed -> rows
    # the text a demonstration must not share with a test example; None: momattn.eval.icl.normalize_text (case,
    # punctuation and escapes folded, as the hub's and StaICC's rows need). A file in a template of its own keeps
    # case and punctuation ("Q: 12+5 =" and "Q: 12-5 =" are two texts): fold_whitespace
    same_text: Callable[[str], str] | None = field(default=None, repr=False, compare=False)

    @property
    def fields(self) -> list[str]:
        return PLACEHOLDER.findall(self.template)

    def fill(self, ex: IclExample) -> str:
        return PLACEHOLDER.sub(lambda m: ex.fields[m.group(1)], self.template)

    def load(self, split_seed: int) -> IclData:
        data = self.loader(split_seed)
        if not data.test:
            raise DataError(f"ICL task '{self.name}' has no test examples ({self.source})")
        return data


def fold_whitespace(text: str) -> str:
    return " ".join(text.split())


def fill_fields(template: str, row: Mapping, where: str) -> dict[str, str]:
    """The row's values for the template's placeholders, as strings; DataError naming a missing field."""
    names = PLACEHOLDER.findall(template)
    missing = [f for f in names if f not in row]
    if missing:
        raise DataError(f"{where}: the template names field '{{{missing[0]}}}' but the row has only "
                        f"{sorted(row)}.{did_you_mean(missing[0], row)} Fix the template or the data")
    empty = [f for f in names if row[f] is None]
    if empty:  # str(None) would put the word "None" into the prompt
        raise DataError(f"{where}: field '{empty[0]}' is null; fill or drop that row")
    odd = [f for f in names if not isinstance(row[f], str) and (
           not isinstance(row[f], numbers.Real) or isinstance(row[f], bool) or not math.isfinite(row[f]))]
    if odd:  # a list, a mapping, true or NaN went into the prompt as "['a', 'b']", "True" or "nan"
        raise DataError(f"{where}: field '{odd[0]}' holds {row[odd[0]]!r}, not text or a number; fix or drop "
                        "that row")
    blank = [f for f in names if isinstance(row[f], str) and not row[f].strip()]
    if blank:  # the prompt "Review: \nSentiment:" was scored as an example (found by review)
        raise DataError(f"{where}: field '{blank[0]}' is empty ({row[blank[0]]!r}); fill or drop that row")
    return {f: str(row[f]) for f in names}


def check_answer_texts(answers: Sequence[str], where: str, case: bool = True) -> None:
    """ConfigError for an empty answer, or two that are the same or differ only in whitespace (" Yes" beside "Yes",
    a YAML quote kept a space) or case ("Positive" beside "positive", a typo that made the task one of telling
    capitals apart: found by review): the model would be asked to tell them apart by those. Checked as a task is
    read (it was checked once the rows were, and a row's label was blamed for it: found by review) and at scoring.
    case=False: a row's own answers (a hub task's), which may differ only in case, as two real solutions can."""
    words = []
    for i, a in enumerate(answers):
        if not str(a).strip():
            raise ConfigError(f"{where}: answer {i} is empty ({a!r}); every answer needs visible text")
        words.append(fold_whitespace(str(a)).casefold() if case else fold_whitespace(str(a)))
        if (j := words.index(words[-1])) < i:
            how = "are the same answer twice" if answers[j] == answers[i] else "differ only in whitespace" + (
                " or case" if case else "") + ", so the model would be asked to tell them apart by " + (
                "those" if case else "spaces") + " (and the predictions would show one answer twice)"
            raise ConfigError(f"{where}: answers {answers[j]!r} and {answers[i]!r} {how}; make them differ in "
                              "their words")


def label_index(label, answers: Sequence[str], where: str) -> int:
    """An int index into answers, or an answer string -> its index; DataError otherwise."""
    if isinstance(label, bool) or not isinstance(label, int | str):
        raise DataError(f"{where}: label {label!r} is neither an index nor one of the answers "
                        f"{list(answers)}")
    if isinstance(label, str) and label.strip() in (stripped := [a.strip() for a in answers]):
        return stripped.index(label.strip())  # a row's " yes" is the answer "yes" (answers differ in words)
    if isinstance(label, str) and re.fullmatch(r"-?\d+", label.strip()):
        label = int(label)
    numeric = all(re.fullmatch(r"-?\d+", a.strip()) for a in answers) and \
        [a.strip() for a in answers] != [str(i) for i in range(len(answers))]
    if isinstance(label, int) and numeric:  # answers [1..5], label 3: index 3 ('4'), or the answer '3'?
        meant = f": it would mean answer {answers[label]!r}" if 0 <= label < len(answers) else ""
        raise DataError(f"{where}: label {label} is a number and so are the answers {list(answers)}, which is "
                        f"ambiguous (an integer label is an index{meant}); give the answer itself as a string "
                        f"label (\"{label}\") in the data")
    if isinstance(label, int) and 0 <= label < len(answers):
        return label
    raise DataError(f"{where}: label {label!r} is outside the answer set {list(answers)} "
                    f"(use an index 0..{len(answers) - 1} or one of the answer strings)")


# -----------------------------------------------------------------------------
# StaICC (offline)

STAICC_TASKS = {  # name: (template, answers) -- Dai et al. 2023, Table 8 (TREC ours, same style)
    "sst2": ("Sentence: {text}\nLabel:", ("Negative", "Positive")),
    "sst5": ("Sentence: {text}\nLabel:", ("terrible", "bad", "neutral", "good", "great")),
    "mr": ("Review: {text}\nSentiment:", ("Negative", "Positive")),
    "subj": ("Input: {text}\nType:", ("objective", "subjective")),
    "agnews": ("Classify the news articles into the categories of World, Sports, Business, and Technology.\n"
               "News: {text}\nType:", ("World", "Sports", "Business", "Technology")),
    "trec": ("Question: {text}\nAnswer type:",
             ("abbreviation", "entity", "description", "person", "location", "number")),
}


def _staicc_loader(name: str, answers: tuple[str, ...]) -> Callable[[int], IclData]:
    def load(split_seed: int) -> IclData:
        from momattn.data.staicc import read_staicc, split_rows

        rows, split = read_staicc(name), split_rows(name, split_seed)

        def ex(i) -> IclExample:
            text, label = rows[int(i)]
            label = label_index(label, answers, f"StaICC {name} row {i}")
            return IclExample(int(i), {"text": text}, answers, label)

        return IclData(demo_pool=[ex(i) for i in split.icl_demo], test=[ex(i) for i in split.icl_test])

    return load


# -----------------------------------------------------------------------------
# Hugging Face hub (the paper's Table 7 set)

# a hub row -> (fields, answers, label), or None to skip it
Converter = Callable[[Mapping], tuple[dict, tuple[str, ...], int] | None]


@dataclass(frozen=True)
class HubSource:
    path: str
    config: str | None
    test_split: str
    demo_split: str
    convert: Converter
    revision: str | None = None

    def describe(self) -> str:
        name = f"{self.path}" + (f"/{self.config}" if self.config else "")
        return f"hub:{name} (test={self.test_split}, demonstrations={self.demo_split})"


def _hub_label(row: Mapping, n: int) -> int | None:
    """A hub row's label: None where it is unlabelled (null, or -1: a hidden test split); DataError for a
    label outside 0..n-1 or not an integer, KeyError for a row without the column (a row that silently vanished
    would shrink the test set unseen)."""
    label = row["label"]
    if label is None or label == -1:
        return None
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < n:
        raise DataError(f"label {label!r} is not an integer in 0..{n - 1} (nor -1, unlabelled)")
    return label


def _labelled(field_names: Sequence[str], answers: tuple[str, ...]) -> Converter:
    def convert(row):
        label = _hub_label(row, len(answers))
        if label is None:
            return None  # unlabelled (e.g. a hidden test split)
        return {f: _text(row, f) for f in field_names}, answers, label

    return convert


def _text(row: Mapping, column: str) -> str:
    """A text column's value (KeyError where the row has no such column; a null is not the word 'None')."""
    value = row[column]
    if value is None:
        raise DataError(f"column '{column}' is null")
    return str(value)


def _arc(row):
    choices = row["choices"]
    texts, labels = list(choices["text"]), [str(x) for x in choices["label"]]
    question, key = _text(row, "question"), _text(row, "answerKey")
    if len(texts) != 4 or key not in labels:
        return None  # the paper keeps only items with exactly four choices
    return {"question": question}, tuple(map(str, texts)), labels.index(key)


def _piqa(row):
    label = _hub_label(row, 2)
    if label is None:
        return None
    return {"goal": _text(row, "goal")}, (_text(row, "sol1"), _text(row, "sol2")), label


SENTIMENT2 = ("Negative", "Positive")
SST5, CB = STAICC_TASKS["sst5"][1], ("True", "False", "Neither")
HUB_TASKS = {  # name: (template, answers or None, source)
    "hub_sst5": ("Sentence: {text}\nLabel:", SST5,
                 HubSource("SetFit/sst5", None, "validation", "train", _labelled(["text"], SST5))),
    "hub_imdb": ("Review: {text} Is the review positive or negative?", SENTIMENT2,
                 HubSource("stanfordnlp/imdb", None, "test", "train", _labelled(["text"], SENTIMENT2))),
    "hub_mr": ("Review: {text}\nSentiment:", SENTIMENT2,
               HubSource("cornell-movie-review-data/rotten_tomatoes", None, "validation", "train",
                         _labelled(["text"], SENTIMENT2))),
    "hub_cb": ("{premise}\nQuestion: {hypothesis} True, False, or Neither?\nAnswer:", CB,
               HubSource("aps/super_glue", "cb", "validation", "train",
                         _labelled(["premise", "hypothesis"], CB))),
    "hub_arc_easy": ("{question}", None, HubSource("allenai/ai2_arc", "ARC-Easy", "test", "train", _arc)),
    # piqa's hub repo is script-based; recent `datasets` read its parquet export instead
    "hub_piqa": ("{goal}", None, HubSource("ybisk/piqa", "default", "validation", "train", _piqa,
                                           revision="refs/convert/parquet")),
}


def _hub_rows(task: str, src: HubSource, split: str, key: str = "icl.tasks") -> list[dict]:
    template = HUB_TASKS[task][0]
    try:
        import datasets

        ds = datasets.load_dataset(src.path, src.config, split=split, revision=src.revision)
        return [dict(r) for r in ds]
    except Exception as e:  # offline: ConnectionError, OSError, DatasetNotFoundError, ...: "not available"
        raise DataError(
            f"ICL task '{task}' needs the Hugging Face hub (load_dataset('{src.path}'"
            f"{', ' + repr(src.config) if src.config else ''}, split='{split}') failed: "
            f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}). Offline, save its "
            f"'{src.test_split}' and '{src.demo_split}' splits as JSONL (one row a line, the hub's columns) "
            f"and pass {_one_file_task(key, f'{{name: {task}, path: test.jsonl, demo_path: train.jsonl}}')}, or "
            f"any file with your own fields: {{name: mytask, path: file.jsonl, template: {json.dumps(template)}, "
            "answers: [...]}"
        ) from e


def _convert_rows(task: str, convert: Converter, rows: Sequence[tuple[int, Mapping]],
                  where: str) -> list[IclExample]:
    out = []
    for i, row in rows:
        try:
            got = convert(row)
        except DataError as e:
            raise DataError(f"{where} row {i}: {e}") from None
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{where} row {i}: does not have the columns of task '{task}' "
                            f"({type(e).__name__}: {e}); it has {sorted(row)}") from e
        if got is not None:
            out.append(IclExample(i, *got))
    return out


def _one_file_task(key: str, mapping: str) -> str:
    """How a setting takes one local-file task: analyze.py's `task` takes it alone, evaluate.py's list in a list."""
    return f"{key}={mapping}" if key == "task" else f"{key}=[{mapping}]"


def _hub_loader(task: str, src: HubSource, key: str = "icl.tasks") -> Callable[[int], IclData]:
    def load(split_seed: int) -> IclData:
        data = {}
        for split in (src.test_split, src.demo_split):
            data[split] = _convert_rows(task, src.convert, list(enumerate(_hub_rows(task, src, split, key))),
                                        f"{src.path} {split}")
        return IclData(demo_pool=data[src.demo_split], test=data[src.test_split])

    return load


# -----------------------------------------------------------------------------
# local JSONL files


def read_jsonl(path: str | Path, where: str) -> list[tuple[int, dict]]:
    """(line number, row) for each non-empty line."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{where}: '{path}' {not_a_file(p)}; give the path of a JSONL file (one JSON object a line)")
    rows = []
    try:
        # -sig: a byte-order mark (Windows editors) is skipped; split on "\n" only: splitlines() also splits on
        # U+2028, U+0085, ..., which JSON strings may hold unescaped
        lines = p.read_text(encoding="utf-8-sig").split("\n")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: {path} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8 JSONL") \
            from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: {path} line {n} is not valid JSON ({e.msg}); "
                            "one JSON object per line") from e
        if not isinstance(row, dict):
            raise DataError(f"{where}: {path} line {n} is {type(row).__name__}, not a JSON object")
        rows.append((n, row))
    if not rows:
        raise DataError(f"{where}: {path} has no examples")
    return rows


def _relabelled(src: HubSource, entry: Mapping, who: str) -> Converter:
    """The hub converter of a hub task's rows saved locally, reading the label from entry's label_field."""
    field = entry.get("label_field")
    if field in (None, "label"):
        return src.convert
    if src.convert is _arc:
        raise ConfigError(f"{who}: label_field does not apply to {entry['name']}, whose rows name their answer in "
                          "'answerKey' (the hub's schema)")
    return lambda row: src.convert({**row, "label": row[str(field)]})


def _file_converter(template: str, answers: tuple[str, ...], label_field: str, path: str,
                    task: str) -> Converter:
    def convert(row, line=None):
        where = f"ICL task '{task}': {path}" + (f" line {line}" if line is not None else "")
        fields = fill_fields(template, row, where)
        if label_field not in row:
            raise DataError(f"{where}: no '{label_field}' field (the answer's index or string); "
                            f"the row has {sorted(row)}")
        return fields, answers, label_index(row[label_field], answers, where)

    return convert


def _file_loader(task: str, path: str, demo_path: str | None, demo_fraction: float,
                 convert: Callable[..., tuple | None], own_schema: bool) -> Callable[[int], IclData]:
    where = f"ICL task '{task}'"

    def rows_of(p):
        rows = read_jsonl(p, where)
        if own_schema:  # JSONL in the template's fields: errors name the line
            return [IclExample(n, *convert(r, n)) for n, r in rows]
        return _convert_rows(task, convert, rows, f"{where}: {p}")

    def load(split_seed: int) -> IclData:
        test = rows_of(path)
        if demo_path:
            return IclData(demo_pool=rows_of(demo_path), test=test)
        perm = np.random.default_rng(stable_seed(task, split_seed)).permutation(len(test))
        n_demo = int(round(demo_fraction * len(test)))
        if not 0 < n_demo < len(test):
            raise DataError(f"{where}: {path} has {len(test)} examples, too few to split into a "
                            f"demonstration pool and a test set (demo_fraction={demo_fraction}); "
                            "add rows or pass demo_path")
        return IclData(demo_pool=[test[i] for i in perm[:n_demo]],
                       test=[test[i] for i in np.sort(perm[n_demo:])])

    return load


def file_task(entry: Mapping, key: str = "icl.tasks") -> IclTask:
    """An IclTask from a config entry {name, path, template?, answers?, demo_path?, label_field?,
    demo_fraction?} (read_task_file gives one from a task file, with `task_file` naming it)."""
    missing = next((k for k in ("name", "path") if entry.get(k) in (None, "")), None)
    if missing:
        raise ConfigError(f"{key}: the local task {dict(entry)} has no '{missing}'; give at least "
                          "{name: mytask, path: file.jsonl, template: 'Review: {text}\\nSentiment:', "
                          "answers: [Negative, Positive]}")
    name, path = str(entry["name"]), str(entry["path"])
    who = f"task file {entry['task_file']}" if entry.get("task_file") else f"{key} entry '{name}'"
    if unknown := [k for k in entry if k not in (*TASK_FILE_KEYS, "task_file")]:  # demo_fracton=0.9 was ignored
        raise ConfigError(f"{who}: unknown key '{unknown[0]}'.{did_you_mean(str(unknown[0]), TASK_FILE_KEYS)} "
                          f"Keys: {', '.join(TASK_FILE_KEYS)}")
    demo_path = entry.get("demo_path")
    try:
        demo_fraction = float(entry.get("demo_fraction", 0.5))
    except (TypeError, ValueError):
        demo_fraction = float("nan")
    if not 0.0 < demo_fraction < 1.0:
        raise ConfigError(f"{who}: demo_fraction={entry.get('demo_fraction')!r} must be a number in (0, 1)")
    split = f"demonstrations: {demo_path}" if demo_path else f"seeded split, {demo_fraction:.0%} of rows as demonstrations"
    source = f"jsonl:{path} ({split})" + (f", task file {entry['task_file']}" if entry.get("task_file") else "")
    template, answers = entry.get("template"), entry.get("answers")
    if template is None and answers is None and name in HUB_TASKS:  # the hub's rows, saved locally
        template, answers, src = HUB_TASKS[name]
        return IclTask(name, template, answers, source + f", schema of {src.path}",
                       _file_loader(name, path, demo_path, demo_fraction, _relabelled(src, entry, who),
                                    own_schema=False))
    if template is None and answers is None and name in STAICC_TASKS:
        template, answers = STAICC_TASKS[name]
    if template is None or answers is None:
        missing = "template" if template is None else "answers"
        raise ConfigError(f"{who} (path {path}) needs a '{missing}': e.g. "
                          "{name: mytask, path: file.jsonl, template: 'Review: {text}\\nSentiment:', "
                          "answers: [Negative, Positive]}")
    if not isinstance(template, str) or not PLACEHOLDER.search(template):
        raise ConfigError(f"{who}: template {template!r} must be a string with at least "
                          "one {field} placeholder")
    if isinstance(answers, str) or not isinstance(answers, Sequence) or len(answers) < 2:
        raise ConfigError(f"{who}: answers={answers!r} must be a list of at least two "
                          "strings")
    if any(isinstance(a, bool) for a in answers):  # YAML reads an unquoted yes / no / on / off as a bool
        raise ConfigError(f"{who}: answers={list(answers)!r} holds true/false: YAML reads unquoted yes, no, on and "
                          "off as booleans; quote them, e.g. answers: ['yes', 'no']")
    for i, a in enumerate(answers):  # str(None) or str(['a']) would put 'None' or "['a']" into every prompt
        if not isinstance(a, str | int | float) or isinstance(a, float) and not math.isfinite(a):
            raise ConfigError(f"{who}: answers[{i}]={a!r} must be a text (YAML reads an empty entry or ~ as null: "
                              "write the answer, quoted if it looks like a number or a boolean)")
    template = template.replace("\\n", "\n")  # a "\n" typed on the command line means a line break
    if template != template.rstrip(" \t"):  # 'Sentiment: ' + ' ' + answer: scored after two spaces (review)
        raise ConfigError(f"{who}: template {template!r} ends in a space, and each answer is appended after a space "
                          f"of its own, so prompts would end {template.rstrip()[-12:] + '  ' + str(answers[0])!r}; "
                          "drop the trailing space")
    check_answer_texts([str(a) for a in answers], who)
    answers = tuple(str(a).strip() for a in answers)  # each is scored after one space: " yes" gave "  yes"
    label_field = str(entry.get("label_field", "label"))
    if label_field in PLACEHOLDER.findall(template):  # every prompt held its own answer (found by review)
        raise ConfigError(f"{who}: the template names {{{label_field}}}, the label field: every prompt would hold "
                          "its own answer. Name the input fields only")
    convert = _file_converter(template, answers, label_field, path, name)
    loader = _file_loader(name, path, demo_path, demo_fraction, convert, own_schema=True)
    staicc_rows = entry.get("template") is None  # StaICC's rows saved locally: their escapes and case still fold
    return IclTask(name, template, answers, source, loader, same_text=None if staicc_rows else fold_whitespace)


# -----------------------------------------------------------------------------
# task files (YAML), found by name in icl.task_dirs

TASK_FILE_KEYS = ("name", "description", "path", "template", "answers", "label_field", "demo_path",
                  "demo_fraction")
TASK_FILE_SUFFIXES = (".yaml", ".yml")


def read_task_file(path: str | Path, key: str = "icl.tasks") -> dict:
    """A task file -> an icl.tasks entry (file_task's keys, data paths made absolute, `task_file` set).
    ConfigError for an unreadable file, a missing or unknown key (did-you-mean) or a missing data file.
    key: the setting that named the file (analyze.py's `task` has no icl.task_dirs to find names in)."""
    import yaml

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"task file '{path}' does not exist; give a .yaml task file"
                          + (" or a name found in icl.task_dirs" if key.endswith("icl.tasks") else ""))
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)  # where: the first line alone said "while parsing a flow sequence"
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"task file {p} is not valid YAML: {what}{at}") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"task file {p} must be a mapping of keys ({', '.join(TASK_FILE_KEYS)}), "
                          f"not {type(doc).__name__}")
    unknown = [k for k in doc if k not in TASK_FILE_KEYS]
    if unknown:
        raise ConfigError(f"task file {p}: unknown key '{unknown[0]}'.{did_you_mean(unknown[0], TASK_FILE_KEYS)} "
                          f"Keys: {', '.join(TASK_FILE_KEYS)}")
    if not isinstance(doc.get("name") or p.stem, str):  # name: [a] became the task "['a']"
        raise ConfigError(f"task file {p}: name={doc['name']!r} must be a text, e.g. name: mytask")
    name = str(doc.get("name") or p.stem)
    own = name not in HUB_TASKS and name not in STAICC_TASKS  # a registered name may reuse its template
    required = ("path", "template", "answers") if own else ("path",)
    missing = [k for k in required if doc.get(k) in (None, "")]
    if missing:
        raise ConfigError(f"task file {p}: missing key '{missing[0]}' (needs {', '.join(required)}), e.g. "
                          "path: data.jsonl, template: \"Review: {text}\\nSentiment:\", answers: [Negative, Positive]")
    entry = {k: v for k, v in doc.items() if k != "description"}
    entry.update(name=name, task_file=str(p))
    for key in ("path", "demo_path"):
        if entry.get(key) is None:
            continue
        data = p.parent / Path(str(entry[key])).expanduser()  # an absolute path (or ~/...) stays as it is
        if not data.is_file():
            raise DataError(f"task file {p}: {key}: '{entry[key]}' {not_a_file(data)} (read relative to the task file: "
                            f"{data}); give a JSONL file, one example a line")
        entry[key] = str(data.resolve())
    file_task(entry)  # template, answers and demo_fraction checked now, naming the file
    return entry


def task_files(dirs: Sequence[str]) -> dict[str, Path]:
    """{task name: its file} over the task files in `dirs` (a ConfigError for a missing folder or a name
    defined twice)."""
    import yaml

    found: dict[str, list[Path]] = {}
    seen: set[Path] = set()
    for d in dirs:
        folder = Path(str(d)).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"icl.task_dirs: folder '{d}' " + ("is a file" if folder.exists() else "does not exist")
                              + "; give folders of task .yaml files")
        if folder.resolve() in seen:  # listed twice: its tasks are not defined twice
            continue
        seen.add(folder.resolve())
        for f in sorted(folder.iterdir()):
            if f.suffix not in TASK_FILE_SUFFIXES or not f.is_file():
                continue
            try:
                doc = yaml.safe_load(f.read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError):
                doc = None  # reported by read_task_file if the task is asked for
            name = str(doc.get("name") or f.stem) if isinstance(doc, dict) else f.stem
            found.setdefault(name, []).append(f)
    twice = {n: fs for n, fs in found.items() if len(fs) > 1}
    if twice:
        n, fs = next(iter(twice.items()))
        raise ConfigError(f"icl.task_dirs: task '{n}' is defined by several files ({', '.join(map(str, fs))}); "
                          "give each task a distinct name")
    return {n: fs[0] for n, fs in found.items()}


def expand_task_files(entries: Sequence, dirs: Sequence[str]) -> list:
    """icl.tasks with every task-file name (found in `dirs`) or .yaml path replaced by its entry.
    Task files win over registered names, so a folder can hold e.g. hub_cb.yaml for the hub's rows saved."""
    index = task_files(dirs) if dirs else {}
    out = []
    for entry in entries:
        if isinstance(entry, str) and entry in TASK_SETS and entry not in index and any(
                n in index for n in TASK_SETS[entry]):  # a set whose members have task files: those files
            out.extend(read_task_file(index[n]) if n in index else n for n in TASK_SETS[entry])
        elif isinstance(entry, str) and entry in index:
            out.append(read_task_file(index[entry]))
        elif isinstance(entry, str) and entry.endswith(TASK_FILE_SUFFIXES):
            out.append(read_task_file(entry))
        elif (isinstance(entry, str) and dirs and entry not in TASKS and entry not in TASK_SETS
              and ginc_task(entry) is None):
            raise ConfigError(f"icl.tasks: unknown task '{entry}'.{did_you_mean(entry, [*index, *TASKS])} "
                              f"Task files in icl.task_dirs={list(dirs)}: {', '.join(sorted(index)) or 'none'}; "
                              f"registered: {', '.join(TASKS)}")
        else:
            out.append(entry)
    return out


# -----------------------------------------------------------------------------
# the registry

TASKS: dict[str, IclTask] = {
    **{n: IclTask(n, t, a, f"staicc:{n} (rows reserved for ICL by momattn.data.staicc.split_rows)",
                  _staicc_loader(n, a)) for n, (t, a) in STAICC_TASKS.items()},
    **{n: IclTask(n, t, a, src.describe(), _hub_loader(n, src)) for n, (t, a, src) in HUB_TASKS.items()},
}
TASK_SETS = {"staicc": list(STAICC_TASKS), "table7": list(HUB_TASKS)}


GINC_NAMES = ("ginc", "ginc_l3", "ginc_l5", "ginc_l8", "ginc_l10", "ginc_ood")  # any ginc[_ood][_l<N>]


def resolve_tasks(entries: Sequence[str | Mapping], key: str = "icl.tasks") -> list[IclTask | GincTask]:
    """Config entries (names, set names, local-file mappings) -> tasks, in order, without duplicates; errors
    name the setting `key`."""
    tasks: list[IclTask | GincTask] = []
    for entry in entries:
        if isinstance(entry, Mapping):
            tasks.append(file_task(entry, key))
        elif entry in TASK_SETS:
            tasks.extend(TASKS[n] for n in TASK_SETS[entry])
        elif entry in HUB_TASKS and key != "icl.tasks":  # its offline advice names the setting it came from
            tasks.append(replace(TASKS[entry], loader=_hub_loader(entry, HUB_TASKS[entry][2], key)))
        elif entry in TASKS:
            tasks.append(TASKS[entry])
        elif ginc_task(entry, key) is not None:
            tasks.append(ginc_task(entry, key))
        else:
            hint = did_you_mean(entry, [*TASKS, *TASK_SETS, *GINC_NAMES])
            files = (_one_file_task(key, "<file>.yaml") if key == "task" else  # analyze.py's one; evaluate.py's list
                     f"{_one_file_task(key, '<file>.yaml')} (or its name, with {key.removesuffix('tasks')}task_dirs)")
            raise ConfigError(f"{key}: unknown task '{entry}'.{hint} "
                              f"Known: {', '.join(TASKS)}; GINC (checkpoints trained with data=ginc): "
                              f"{', '.join(GINC_NAMES)} (ginc[_ood]_l<N> for any length); sets: "
                              f"{', '.join(TASK_SETS)}; a task file {files}; or a local file "
                              "{name, path, template, answers}")
    names = [t.name for t in tasks]
    def looks_like_ppl(n: str) -> bool:  # ppl@review/acc@k2 was judged as a perplexity
        return re.match(r"(ppl|bpb)@", n.lower()) is not None

    if bad := next((n for n in names if n.lower() == "avg" or "/" in n or looks_like_ppl(n)), None):
        raise ConfigError(f"{key}: a task named '{bad}' " + ("would be logged as the average over the tasks "
                          "(icl/avg/...), which replaced it" if bad.lower() == "avg" else
                          "would break its metric names (icl/<task>/acc; ppl@N is a perplexity)")
                          + "; give it another name")
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ConfigError(f"{key} lists task '{dup}' twice; "
                          + ("list it once" if all(isinstance(t, GincTask) or t is TASKS.get(dup)
                                                    for t in tasks if t.name == dup)
                             else "give local files distinct names"))
    # ginc and ginc_l5 (or ginc_l05) are one task: the same prompts scored twice, two identical rows that read as
    # independent results
    ginc: dict[tuple[int, bool], str] = {}
    for t in tasks:
        if isinstance(t, GincTask) and ginc.setdefault((t.example_len, t.ood), t.name) != t.name:
            raise ConfigError(f"{key}: '{ginc[t.example_len, t.ood]}' and '{t.name}' are the same GINC task "
                              f"(example length {t.example_len}, {'held-out' if t.ood else 'pretraining'} "
                              "concepts, the same prompts); list one of them")
    return tasks
