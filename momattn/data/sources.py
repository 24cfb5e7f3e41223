"""Text sources: the embedded StaICC corpus, your own txt/jsonl files, or any `datasets` hub corpus.

A source is a dataclass whose fields are its config schema; conf/data/<name>.yaml names it by `_target_`:

    _target_: momattn.data.sources.TextFiles     # the source
    paths: [corpus.txt]                          # its fields
    batch_size: 8                                # LoaderConfig's fields, the data section's reserved keys

A new source is one module with such a class (anything with fingerprint() and documents()) plus one YAML file.
"""

from __future__ import annotations

import contextlib
import contextvars
import glob
import hashlib
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol

from momattn.data.staicc import LEAK_FILTER_VERSION, SPLIT_SEED, STAICC_FILES, lm_texts, staicc_identity
from momattn.errors import ConfigError, DataError, did_you_mean, first_line, not_a_file, raised_from
from momattn.io import file_id
from momattn.schema import known_keys, locate, to_plain, typed
from momattn.utils import digest, seeded_split

Split = Literal["train", "val"]
# documents of a .txt file: separated by a line that is blank (any whitespace: a PDF's page break \f, a no-break
# space, which str.strip() calls blank too, joined two documents until session 55)
_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")
_OLD_BLANK_LINE = re.compile(r"\n[ \t]*\n")  # (text_files' fingerprint version 5's)


def _paragraphs(text: str, rule: re.Pattern = _BLANK_LINE) -> list[str]:
    """A plain-text file's documents (its line ends \n): the stripped, non-empty parts between blank lines."""
    return [d.strip() for d in rule.split(text) if d.strip()]


def _is_json(p: str | Path) -> bool:
    """Whether text_files reads `p` as JSON rows (one field of each), not as plain text."""
    return Path(p).suffix.lower() in (".jsonl", ".json")


def import_datasets():
    """datasets, its progress bars off where stderr is a log file (a SLURM log got every carriage-return state of
    "Generating train split" as it loaded a local file), and its builders' own error lines off: a file that does
    not parse is said once, in momattn's line naming it (the json builder logged it twice before, its own handler's
    and Hydra's: found by review)."""
    import logging

    import datasets

    from momattn.utils import stderr_tty

    if not stderr_tty():
        datasets.disable_progress_bars()
    logging.getLogger("datasets.packaged_modules").setLevel(logging.CRITICAL)
    return datasets


class DataSource(Protocol):
    """What training needs from a corpus. A source may also have `tokenizer() -> momattn.tokenizer.Tokenizer`,
    its own tokenizer, which `tokenizer=source` uses."""

    def fingerprint(self) -> str: ...  # changes whenever the documents could (it keys the token cache)

    def documents(self, split: Split) -> list[str]: ...


@dataclass
class LoaderConfig:
    """The data section's reserved keys: how token windows are batched, and where the token cache lives."""

    batch_size: int = 8  # sequences per micro-batch per device (8 x 512 tokens with the default model)
    val_batches: int = 10  # validation micro-batches per validation run, per process (DDP: x processes)
    num_workers: int = 0  # DataLoader worker processes
    cache_dir: str | None = None  # token and tokenizer cache; null: paths.cache_dir, $MOMATTN_CACHE, ~/.cache
    num_proc: int = 1  # processes that tokenize when the token cache is built (datasets.map num_proc)

    def __post_init__(self):
        for key, low in (("batch_size", 1), ("val_batches", 1), ("num_proc", 1), ("num_workers", 0)):
            if getattr(self, key) < low:  # (one sentence named all four, the one at fault among them)
                raise ConfigError(f"data.{key}={getattr(self, key)} must be an int >= {low}")


LOADER_KEYS = tuple(f.name for f in fields(LoaderConfig))


@dataclass
class StaiccCorpus:
    """LM-train / LM-val rows of the StaICC tasks; rows reserved for ICL evaluation are never included."""

    tasks: list[str] = field(default_factory=lambda: ["agnews", "mr", "subj", "sst5", "trec"])
    split_seed: int = SPLIT_SEED  # momattn.data.staicc.split_rows: which rows are LM, ICL test, ICL demos

    def __post_init__(self):
        self.tasks = [self.tasks] if isinstance(self.tasks, str) else list(self.tasks)
        bad = [t for t in self.tasks if t not in STAICC_FILES]
        if bad or not self.tasks:
            raise DataError(f"data.tasks={self.tasks}: unknown or empty; choose among {', '.join(STAICC_FILES)}")
        if len(set(self.tasks)) != len(self.tasks):  # every document of a repeated task was trained on twice
            raise DataError(f"data.tasks={self.tasks} names a task twice; list each once")

    def fingerprint(self) -> str:
        # the filter shapes the text; the package's release and files are the rows; the split's sizes and the
        # filter's thresholds are named too, so that editing one rebuilds the cache even without a version bump
        return self._fingerprint(LEAK_FILTER_VERSION, True, staicc_identity())

    def _fingerprint(self, version: int, thresholds: bool, identity: list) -> str:
        """thresholds: rule (e)'s too, named since session 55 (editing one reused the cache: found by review)."""
        from momattn.data import overlap, staicc

        sizes = [staicc.ICL_TEST_ROWS, staicc.ICL_DEMO_ROWS, staicc.LM_VAL_FRACTION, staicc.MIN_SUBSTRING_WORDS,
                 staicc.NEAR_CHARS, overlap.N, overlap.SHARE,
                 *([staicc.RESERVED_SHARE, staicc.BOILERPLATE] if thresholds else [])]
        return digest(["staicc", 1, self.tasks, self.split_seed, version, identity, sizes])

    def same_rows(self, fingerprint: str) -> bool:
        """Whether `fingerprint` is this corpus's under an earlier leak filter (LEAK_FILTER_VERSION): the rows and
        their split are the same, and a filter only drops documents, so the LM-val text made now holds none of the
        rows the checkpoint trained on (evaluate.py warned that the files had changed)."""
        identity = staicc_identity()  # (the package's files, read once for every version's key)
        return any(fingerprint == self._fingerprint(v, thresholds, identity)
                   for v in range(1, LEAK_FILTER_VERSION + 1) for thresholds in (False, True))

    def documents(self, split: Split) -> list[str]:
        return lm_texts(self.tasks, split, self.split_seed)


def nul_problem(text: str) -> str | None:
    """Why text that is mostly NUL characters is no text, or None: UTF-16 without a byte-order mark decodes as valid
    UTF-8 with a NUL beside every ASCII letter (iconv -t UTF-16LE writes it), and trained as one NUL-filled
    document; a file of zero bytes likewise. A stray NUL or two in real text passes."""
    n = text.count("\x00")
    if n < 16 or 4 * n < len(text):
        return None
    if order := utf16_order(text):
        return (f"holds NUL characters ({n} of {len(text)}): UTF-16 without a byte-order mark, it seems; convert it, "
                f"e.g. iconv -f {order} -t utf-8")
    return f"holds NUL characters ({n} of {len(text)}): binary data, not text"


def check_text(docs: list[str], name: str, data_files: Any, what: str) -> None:
    """A DataError where a hub corpus's documents are NUL-filled (nul_problem over them all), naming the corpus."""
    if not any("\x00" in d for d in docs) or not (problem := nul_problem(joined := "".join(docs))):
        return
    if utf16_order(joined) is None and utf16_order(lines := "\n".join(docs)):  # the text builder splits at "\n",
        # whose NUL byte stays at the next row's start: joined without it, the NULs swapped sides at every row and
        # UTF-16 with a document per line read as "binary data" (found by review)
        problem = nul_problem(lines) or problem
    if problem:
        raise DataError(f"data.name='{name}'" + (f" data.data_files={data_files}" if data_files else "")
                        + f": the text of {what} {problem}")


def utf16_order(data: str | bytes) -> str | None:
    """'utf-16le' or 'utf-16be' where data (text, or the raw bytes) looks like UTF-16 written without a byte-order
    mark: a quarter or more NULs, nearly all on one side of each character (ASCII's high byte); else None."""
    nul = "\x00" if isinstance(data, str) else b"\x00"
    head = data[:4096]
    odd, even = head[1::2].count(nul), head[0::2].count(nul)
    if 4 * (odd + even) < len(head) or max(odd, even) <= 4 * min(odd, even):
        return None
    return "utf-16le" if odd > even else "utf-16be"


def not_utf8_why(data: bytes, otherwise: str) -> tuple[str, str]:
    """(why bytes that are not UTF-8 are not, the encoding iconv -f converts them from): UTF-16 by its byte-order
    mark (Windows' "Unicode") or by its NULs, else `otherwise` and latin1 (whose advice made NULs of UTF-16)."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "UTF-16, by its byte-order mark", "utf-16"
    if order := utf16_order(data):
        return "UTF-16 without a byte-order mark, it seems", order
    return otherwise, "latin1"


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark (Windows editors write one) is not text
        if problem := nul_problem(text):
            raise DataError(f"data file '{path}' {problem}")
        return text
    except UnicodeDecodeError as e:
        why, encoding = not_utf8_why(data, f"byte {e.start}: {data[e.start:e.start + 4]!r}")
        raise DataError(f"data file '{path}' is not UTF-8 text ({why}); convert it, e.g. iconv -f {encoding} -t "
                        "utf-8") from e


def _held_out(docs: list[str], split: Split, fraction: float, seed: int, source: Any = None) -> list[str]:
    """A seeded `fraction` of the documents for validation; the rest, less any copy of a validation document's
    text (a boilerplate paragraph, a repeated row), for training: a copy in both made the val loss too good. How
    many were left out is said once per `source` (they went without a word: found by review)."""
    rest, val = seeded_split(len(docs), fraction, seed)
    held = [docs[i] for i in val]
    if split == "val":
        return held
    return without_val_copies([docs[i] for i in rest], held, source,
                              f"a document held out for validation (data.val_fraction={fraction})")


def same_text(doc: str) -> str:
    """A document as copies of it are compared: its words, whatever the whitespace between them (a .jsonl row's
    CRLF against a .txt file's LF, a trailing newline) made a copy look like another document."""
    return " ".join(doc.split())


_SAID: set[tuple] = set()  # the warnings given in this process


def _check_suffix(p: Path, matched: str = "") -> None:
    if p.suffix.lower() not in (".txt", ".jsonl", ".json", ".md", ""):  # CORPUS.TXT is text too
        raise DataError(f"data.paths: '{p}'{matched} has suffix '{p.suffix}'; use .txt or .md (plain text), .jsonl or "
                        ".json (JSON rows)")


@dataclass
class TextFiles:
    """Your own corpus: .txt files (documents separated by blank lines; also .md and no suffix) and .jsonl files
    (one JSON object per line, text in `text_field`; a .json file may also hold one array of such objects); a path
    may be a pattern (corpus/*.txt, corpus/**/*.txt through subfolders: the files it matches, in name order). A seeded `val_fraction` of the documents
    is held out for validation."""

    paths: list[str] = field(default_factory=list)
    val_fraction: float = 0.05
    text_field: str = "text"  # jsonl: the key that holds the text
    seed: int = SPLIT_SEED  # the train/val split

    def __post_init__(self):
        self.paths = [self.paths] if isinstance(self.paths, str | Path) else list(self.paths)
        if not self.paths:
            raise DataError("data=text_files needs data.paths=[file1.txt,file2.jsonl,...]")
        for p in map(Path, self.paths):
            _check_suffix(p)
        if not 0.0 < self.val_fraction < 1.0:
            raise DataError(f"data.val_fraction={self.val_fraction} must lie in (0, 1)")
        check_seed(self.seed)
        plain = not any(_is_json(p) for p in self.paths)
        if self.text_field != "text" and plain and (said := (self.text_field, *self.paths)) not in _SAID:
            _SAID.add(said)  # once per process: a sweep's check of its jobs builds each job's source too
            print(f"[momattn] warning: data.text_field='{self.text_field}' is read from .jsonl and .json files only; "
                  "data.paths names none, so it is not used (a plain-text file's documents are its blank-line "
                  "separated paragraphs)", file=sys.stderr, flush=True)
        self._docs: list[str] | None = None

    @property
    def _files(self) -> list[Path]:
        """The files, checked when they are needed (a config is valid on any machine; its files are not)."""
        files = []
        for given in self.paths:  # a pattern (*, ?, [...]) is the files it matches, in name order, as data=hf takes
            p = Path(given).expanduser()
            if not p.exists() and glob.has_magic(str(p)):
                if not (matched := named_files(given)):
                    raise DataError(f"data.paths: '{given}' matches no file; check the pattern")
                for f in matched:  # what it matches is read as the suffix says: a .csv as text was not refused
                    _check_suffix(f, f" (matched by '{given}'; narrow the pattern, e.g. *.txt)")
                files += matched
            else:
                files.append(p)
        for p in files:
            if p.is_dir():
                raise DataError(f"data.paths: '{p}' is a directory; list the files in it, "
                                f"e.g. data.paths=[{p}/part1.txt,{p}/part2.jsonl], or a pattern: "
                                f"data.paths=['{p}/*.txt']")
            if not p.is_file():
                raise DataError(f"data.paths: '{p}' does not exist (or is not a file); check the path")
        seen: dict[tuple, Path] = {}
        for p in files:  # one file twice trained on every document of it twice (data.tasks refuses a repeat too)
            if (first := seen.setdefault(file_id(p), p)) is not p:
                raise DataError(f"data.paths names one file twice ('{first}' and '{p}'); list each file once")
        return files

    def fingerprint(self) -> str:
        # 2: blank lines; 3: training leaves out copies of validation documents; 4: one document is cut near its
        # val_fraction (it was cut at the last space before that, however far); 5: copies compared whatever their
        # whitespace, files by a sample of their bytes too; 6: a line of any whitespace is blank
        return self._fingerprint(6)

    def _fingerprint(self, version: int, field: str | None = None) -> str:
        files = [file_stamp(p) for p in self._files]
        if field is None:  # a field no file reads rebuilt the token cache and the BPE, and evaluate.py called the
            # corpus changed (review); "text", the default, keeps the key of the runs before
            field = self.text_field if any(_is_json(p) for p in self._files) else "text"
        return digest(["text_files", version, files, self.val_fraction, field, self.seed])

    def same_rows(self, fingerprint: str) -> bool:
        """Whether `fingerprint` is these files' under version 5, whose documents were these where no line is
        blank by today's rule alone (a \\f, a no-break space): evaluate.py called every earlier checkpoint's corpus
        changed when the version moved on. Or these files' under version 6 with the text_field that none of them
        reads (the fingerprint of session 56)."""
        if fingerprint == self._fingerprint(6, self.text_field):
            return True
        return fingerprint == self._fingerprint(5) and not any(
            _paragraphs(t, _OLD_BLANK_LINE) != _paragraphs(t) for p in self._files
            if not _is_json(p) for t in [_read_utf8(p).replace("\r\n", "\n")])

    def _read(self, p: Path) -> list[str]:
        text = _read_utf8(p)
        if not _is_json(p):
            if "\r" in text and "\n" not in text:  # it was read as one document, its blank lines unseen
                raise DataError(f"data file '{p}' ends its lines with a carriage return alone (classic Mac OS), so "
                                "its blank lines between documents cannot be seen; convert it, e.g. tr '\\r' '\\n'")
            text = text.replace("\r\n", "\n")
            docs = _paragraphs(text)
            # lines ended by a carriage return alone beside \n ones: blank lines among them are not seen (documents
            # joined without a word: review); \r\r\n is one line end, read right
            mac = _paragraphs(re.sub(r"\r+\n", "\n", text).replace("\r", "\n")) if "\r" in text else docs
            if len(mac) > len(docs) and (said := ("mixed", str(p))) not in _SAID:
                _SAID.add(said)
                print(f"[momattn] warning: data file '{p}' mixes line ends: some lines end with a carriage return "
                      f"alone, and the blank lines among them are not seen, so its {len(mac)} paragraphs are read as "
                      f"{len(docs)} documents; convert those line ends to \\n if they were meant to separate them",
                      file=sys.stderr, flush=True)
            return docs
        docs = []
        for where, row in self._json_rows(p, text):
            if not isinstance(row, dict) or self.text_field not in row:
                raise DataError(f"'{p}' {where} has no field '{self.text_field}'; set data.text_field to the text's key")
            value = row[self.text_field]
            if not isinstance(value, str):  # null or a number would become the documents "None" or "5"
                raise DataError(f"'{p}' {where}: field '{self.text_field}' holds {type(value).__name__} "
                                f"{json.dumps(value)[:60]}, not text; fix or drop that {where.split()[0]}")
            try:
                value.encode()
            except UnicodeEncodeError:  # "\ud800" in JSON: a traceback from the tokenizer, after the other files
                raise DataError(f"'{p}' {where}: field '{self.text_field}' holds a lone surrogate "
                                f"({json.dumps(value)[:60]}), which is no character; fix or drop that "
                                f"{where.split()[0]}") from None
            if value.strip():
                docs.append(value.strip())
        return docs

    @staticmethod
    def _json_rows(p: Path, text: str):
        """('line n' or 'item n', the object) of a JSON Lines file, or of a .json file holding one array of objects
        (read line by line, its first line '[' had no field 'text')."""
        if p.suffix.lower() == ".json" and text.lstrip().startswith("["):
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"'{p}' is not valid JSON ({e.msg}, line {e.lineno}); a .json file holds one array "
                                "of objects, or one object per line") from e
            yield from ((f"item {n}", row) for n, row in enumerate(rows, 1))
            return
        for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 or U+0085 are text in JSON
            if not line.strip():
                continue
            try:
                yield f"line {n}", json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"'{p}' line {n} is not valid JSON ({e.msg}); each line must be one JSON object") from e

    def documents(self, split: Split) -> list[str]:
        if self._docs is None:
            docs = [d for p in self._files for d in self._read(p)]
            if not docs:
                raise DataError(f"data.paths={[str(p) for p in self._files]} hold no text (empty or whitespace only)")
            self._docs = docs
        if len(self._docs) < 2:  # one document: its tail is the validation text, its head the training text
            doc = self._docs[0]
            cut = max(1, min(int(len(doc) * (1 - self.val_fraction)), len(doc) - 1))
            near = max(0, cut - 200)  # a word's length: a space far before the cut (CJK text) would move it there
            space = max(doc.rfind(" ", near, cut), doc.rfind("\n", near, cut))
            cut = space if space > 0 else cut  # at a space where there is one near
            return [doc[cut:].strip()] if split == "val" else [doc[:cut]]
        held = _held_out(self._docs, split, self.val_fraction, self.seed, self)
        if split == "val":
            self._warn_share(held)
        return held

    def _warn_share(self, held: list[str]) -> None:
        """Whole documents are held out, at least one: with few documents validation can take far more of the text
        than val_fraction (two documents: about half), which the user should hear before training on the rest."""
        share = sum(map(len, held)) / max(1, sum(map(len, self._docs)))
        if share > max(2 * self.val_fraction, self.val_fraction + 0.05) and not getattr(self, "_warned", False):
            self._warned = True
            print(f"[momattn] warning: data.val_fraction={self.val_fraction} held out {len(held)} of "
                  f"{len(self._docs)} documents, {share:.0%} of the text (whole documents, at least one); for a "
                  "share nearer val_fraction give more documents (a blank line separates documents in a .txt file)",
                  file=sys.stderr, flush=True)


@dataclass
class HubCorpus:
    """Any `datasets` corpus by hub name (Salesforce/wikitext, HuggingFaceFW/fineweb, ...; datasets >= 4 refuses
    script datasets such as openwebtext), a local builder (json, text) or a local folder (one that save_to_disk wrote
    included)."""

    name: str = ""  # hub name, or a builder: json | text | csv
    config: str | None = None
    train_split: str = "train"
    val_split: str | None = "validation"  # null: hold out val_fraction of train
    text_field: str = "text"
    data_files: Any = None  # local builders: {train: a.jsonl, validation: b.jsonl}; a file or a list: the train split's
    val_fraction: float = 0.01
    seed: int = SPLIT_SEED
    revision: str | None = None  # a hub commit or tag; the token cache is keyed by it (unpinned: by the name only)

    def __post_init__(self):
        if not self.name:
            raise DataError("data=hf needs data.name=<hub dataset>, e.g. data.name=Salesforce/wikitext "
                            "data.config=wikitext-103-raw-v1")
        check_splits(self.train_split, self.val_split)
        self.data_files = split_files(self.data_files, self.train_split)
        check_local_files(self.name, self.data_files)
        check_builder_config(self.name, self.config)
        check_unread_splits(self.data_files, self.train_split, self.val_split)
        check_split_files(self.data_files)
        if self.val_split is None:  # seed and val_fraction hold out part of train only then
            check_seed(self.seed)
            if not 0.0 < self.val_fraction < 1.0:
                raise DataError(f"data.val_fraction={self.val_fraction} must lie in (0, 1)")
        else:  # one changed from its default was ignored without a word (one set to the default cannot be told)
            for key in ("val_fraction", "seed"):
                if (value := getattr(self, key)) != _HUB_DEFAULTS[key]:
                    raise DataError(f"data.{key}={value} has no effect while data.val_split='{self.val_split}' (that "
                                    "split is the validation set, read whole); to hold out part of "
                                    f"data.train_split='{self.train_split}' instead set data.val_split=null, or drop "
                                    f"data.{key}")

    def fingerprint(self) -> str:
        return digest(["hf", 1, self.name, self.config, self.train_split, self.val_split, self.text_field,
                       self.data_files, local_files(self.data_files), self.val_fraction, self.seed]
                      + ([self.revision] if self.revision else [])  # unpinned: the key of earlier releases
                      + folder_files(self.name)
                      + ([] if self.val_split else ["held-out copies left out", "whatever their whitespace"])
                      + ([VAL_COPIES_RULE] if local_val_split(self.val_split, self.data_files, self.name) else []))

    @property
    def split_size_advice(self) -> dict[str, str]:
        """How to make a split longer than one training window (TokenDataModule's advice), in this source's keys:
        data.val_fraction only where it holds out part of train (it is refused beside a validation split)."""
        if self.val_split is None:
            return {"val": "add text, or hold out more of it (data.val_fraction)"}
        return {"val": f"give the validation split (data.val_split='{self.val_split}') more text, or set "
                       "data.val_split=null to hold out part of the train split"}

    def _load(self, split: str, arrow_dir: str | None = None):
        datasets = import_datasets()
        if (saved := saved_dataset(self.name, split, self.train_split)) is not None:
            return saved
        check_files_there(self.name, self.data_files, split)
        try:
            return datasets.load_dataset(self.name, self.config, split=split, data_files=self.data_files,
                                         revision=self.revision, cache_dir=arrow_dir)
        except UnicodeDecodeError as e:
            raise not_utf8(self.name, self.data_files, e) from None
        except StopIteration:  # what datasets raises for files without a single row
            raise no_rows(self.name, self.data_files) from None
        except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError, ...)
            if wrong := unknown_split(self.name, split, self.val_split, e) or bad_slice(split, self.val_split, e) \
                    or empty_folder(self.name, e):
                raise wrong from None
            if (self.data_files or folder_files(self.name)) and damaged(e) and (
                    not isinstance(e, ValueError) or type(e).__name__ == "ArrowInvalid"):
                # (a parquet file that is not one raises pyarrow's ArrowInvalid itself: it got the advice to use
                # local files, which it was; found by review)
                # local files that do not parse (named by data.data_files, or a folder's files)
                if (bad := raised_from(e, UnicodeDecodeError)) is not None:  # the text builder's: wrapped, with the wrong advice
                    raise not_utf8(self.name, self.data_files, bad) from None
                raise unparsed_rows(self.name, self.data_files, split, e) from e
            raise DataError(
                f"cannot load data.name='{self.name}' (config={self.config}, split={split}): "
                f"{type(e).__name__}: {first_line(e, 300)}. Without network, use local files: "
                "data=text_files data.paths=[...] or data=hf data.name=json data.data_files={train: a.jsonl} "
                "data.val_split=null (or data.data_files={train: a.jsonl, validation: b.jsonl})"
            ) from e

    def documents(self, split: Split) -> list[str]:
        key = self.fingerprint() if split == "val" and self.val_split else None  # the settings and files read
        if key and (kept := getattr(self, "_val_documents", None)) and kept[0] == key:
            return list(kept[1])  # read once: the training split's documents are checked against them too
        read = self.val_split if split == "val" and self.val_split else self.train_split
        arrow_dir = self._arrow_dir()
        ds = self._load(read, arrow_dir)
        if self.text_field not in ds.column_names:
            raise DataError(f"data.name='{self.name}' has no column '{self.text_field}' (columns: {ds.column_names}); "
                            "set data.text_field")
        try:
            texts = list(ds[self.text_field])  # datasets 4: a lazy column, decoded here
        except UnicodeDecodeError as e:  # arrow's json reader keeps the bytes; reading the column decodes them
            raise not_utf8(self.name, self.data_files, e) from None
        if split == "train" and self.val_split:
            self._check_disjoint(ds.num_rows, arrow_dir)
        odd = next((t for t in texts if t is not None and not isinstance(t, str)), None)
        if odd is not None:
            raise DataError(f"data.text_field='{self.text_field}' of data.name='{self.name}' holds "
                            f"{type(odd).__name__} values ({odd!r:.60}), not text; set data.text_field to the text")
        # a byte-order mark is not text (text_files drops it: datasets' text builder kept it on the first row). The
        # fingerprint stays: a token cache built before keeps the mark's one token, where a new key would rebuild
        # every hf cache and have evaluate.py call every such checkpoint's corpus changed
        docs = [d for t in texts if t and (d := t.lstrip("\ufeff")).strip()]
        if not docs:  # (an error naming no split or cause came later, after a BPE was trained: found by review)
            raise DataError(f"data.name='{self.name}'" + (f" data.data_files={self.data_files}" if self.data_files
                                                          else "")
                            + f": the {len(texts)} rows of its {read} split hold no text in data.text_field="
                            f"'{self.text_field}' (blank or null rows); give that split text"
                            + (", or set data.val_split=null to hold out part of the train split"
                               if split == "val" and self.val_split else ""))
        check_text(docs, self.name, self.data_files, f"its {read} split")
        if self.val_split and split == "train" and local_val_split(self.val_split, self.data_files, self.name):
            return without_val_copies(docs, self.documents("val"), self)
        if not self.val_split:
            return _held_out(docs, split, self.val_fraction, self.seed, self)  # no validation split on the hub
        if key:
            self._val_documents = (key, tuple(docs))
        return docs

    def _arrow_dir(self) -> str | None:
        """Where datasets writes its Arrow copy of local files: a folder of this process in the token cache's folder
        (arrow/), made at the first read and removed when the process ends (or by the next run on this host, after a
        kill), so each split is converted once per run. datasets keys its own copy (~/.cache/huggingface, kept for
        good) by each file's path and modification time only: a file edited with its time put back (cp -p, rsync -a)
        was read as the old text, into a new token cache (found by review). None (datasets' own cache) for a hub
        corpus, downloaded."""
        if not (named_files(self.data_files) or folder_files(self.name)) or saved_dataset_folder(self.name):
            return None
        folder = getattr(self, "_arrow", None)
        if folder is None or not Path(folder).is_dir():
            folder = self._arrow = arrow_folder(getattr(self, "arrow_root", None))
            import weakref

            weakref.finalize(self, _remove_folder, folder)
        return folder

    def _check_disjoint(self, train_rows: int, arrow_dir: str | None) -> None:
        """Slices of one split as train and validation splits (train[5%:] and train[:10%]) share no row: shared
        ones were validated on as training text, without a word (found by review)."""
        if split_name(self.train_split) != split_name(self.val_split) or "[" not in f"{self.train_split}{self.val_split}":
            return
        import datasets

        rows = {split_name(self.train_split): train_rows if "[" not in self.train_split
                else self._load(split_name(self.train_split), arrow_dir).num_rows}
        try:
            ranges = [[(a.from_, a.to) for a in datasets.ReadInstruction.from_spec(s).to_absolute(rows)]
                      for s in (self.train_split, self.val_split)]
        except Exception:  # (a slice datasets read but cannot place: not judged here)
            return
        shared = sorted({(max(a, c), min(b, d)) for a, b in ranges[0] for c, d in ranges[1] if max(a, c) < min(b, d)})
        if shared:
            n = sum(b - a for a, b in shared)
            raise DataError(f"data.train_split='{self.train_split}' and data.val_split='{self.val_split}' share {n} of "
                            f"the {next(iter(rows.values()))} rows of split '{split_name(self.train_split)}' (rows "
                            + ", ".join(f"{a}..{b - 1}" for a, b in shared[:3]) + ("..." if len(shared) > 3 else "")
                            + "), so validation would read training text; give them slices that do not overlap "
                            f"(e.g. {split_name(self.train_split)}[10%:] and {split_name(self.train_split)}[:10%])")


_HUB_DEFAULTS = {f.name: f.default for f in fields(HubCorpus)}


def arrow_folder(root: str | Path | None) -> str:
    """A new folder for one process's Arrow copies under root (the token cache's folder; default: momattn's cache)
    /arrow, named by host and PID; the folders of this host's processes that ended (a kill) are removed first."""
    import os
    import tempfile

    from momattn.io import _host, _running, cache_root

    base = Path(root if root is not None else cache_root()).expanduser() / "arrow"
    base.mkdir(parents=True, exist_ok=True)
    for old in base.glob(f"read-{_host()}-*"):
        if (m := re.fullmatch(rf"read-{re.escape(_host())}-(\d+)-[a-z0-9_]+", old.name)) and not _running(int(m[1])):
            _remove_folder(str(old))
    return tempfile.mkdtemp(prefix=f"read-{_host()}-{os.getpid()}-", dir=base)


def _remove_folder(folder: str) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


VAL_COPIES_RULE = "copies of a local validation split's documents left out of training"


def local_val_split(val_split: str | None, data_files: Any, name: str = "") -> bool:
    """Whether the validation split is the user's own local files (data.data_files={train: ..., validation: ...},
    or a local folder as data.name: files, or a DatasetDict that save_to_disk wrote): a copy of one of its
    documents among the training files is then a mistake to undo, as with a held-out fraction. A hub corpus's
    published splits are taken as they are."""
    if not val_split:
        return False
    if name and Path(str(name)).expanduser().is_dir():  # one folder named two ways was checked one way only
        return True
    val_split = split_name(val_split)  # a slice of it (validation[:50%]) is its files too (found by review)
    return isinstance(data_files, Mapping) and val_split in data_files and bool(named_files(data_files[val_split]))


def without_val_copies(train: list[str], val: Iterable[str], source: Any, what: str | None = None) -> list[str]:
    """The training documents less any copy of a validation document (compared by their words, same_text): a
    copy in both made the val loss too good. Says how many it left out (copies of `what`, by default a document
    of the source's validation split), once per source (a source of None: not said)."""
    keys = {same_text(d) for d in val}
    kept = [d for d in train if same_text(d) not in keys]
    if len(kept) < len(train) and source is not None and not getattr(source, "_said_val_copies", False):
        source._said_val_copies = True
        what = what or f"a document of the validation split (data.val_split={source.val_split})"
        print(f"[momattn] data: {len(train) - len(kept)} of the {len(train)} training documents copy {what}; left "
              "out of training", file=sys.stderr, flush=True)
    return kept


def not_utf8(name: str, data_files: Any, e: UnicodeDecodeError) -> DataError:
    """A corpus's bytes that are not UTF-8, with the file that holds them where the files are local, and the
    conversion that fits them: UTF-16 (by its byte-order mark, or its NULs) was advised latin1, which makes NULs of
    it (found by review)."""
    data = bytes(e.object)
    path = next((p for p in named_files(data_files) if not _decodes(p)), None) if data_files else None
    if path is not None:  # the file's own start tells its kind better than the chunk datasets decoded
        with open(path, "rb") as f:
            data = f.read(4096)
    return _not_utf8_file(name, data_files, path, *not_utf8_why(
        data, f"a byte that is not UTF-8: {bytes(e.object)[e.start:e.start + 4]!r}"))


def _not_utf8_file(name: str, data_files: Any, path: Path | None, why: str, encoding: str) -> DataError:
    what = f"the file {path}" if path is not None else "a file"
    return DataError(f"data.name='{name}' data.data_files={data_files}: {what} is not UTF-8 text ({why}); "
                     f"convert it, e.g. iconv -f {encoding} -t utf-8")


def _decodes(path: Path) -> bool:
    """Whether a local file is UTF-8 throughout (read in 1 MiB pieces); True where it cannot be read."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as f:
            while piece := f.read(1 << 20):
                decoder.decode(piece)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    except OSError:
        return True
    return True


def wide_file(name: str, data_files: Any) -> DataError | None:
    """A named local file that is UTF-16 (by its byte-order mark, or its NULs) or not UTF-8: the JSON builder
    cannot parse its rows, and the advice was to choose another builder (flows review); None where all read."""
    for p in named_files(data_files) if data_files else []:
        if p.suffix.lower() not in (".json", ".jsonl", ".txt", ".csv", ".tsv"):  # compressed or binary (a .gz cut
            continue  # short is damaged, not latin1: test_streaming)
        try:
            with open(p, "rb") as f:
                head = f.read(4096)
        except OSError:
            continue
        why, encoding = not_utf8_why(head, "a byte that is not UTF-8")
        if encoding != "latin1" or not _decodes(p):
            return _not_utf8_file(name, data_files, p, why, encoding)
    return None


def unparsed_rows(name: str, data_files: Any, split: str, e: BaseException) -> DataError:
    """Rows datasets cannot parse (a line that is not JSON), named by pyarrow's cause ("... in row 0"), not by
    datasets' "An error occurred while generating the dataset"."""
    if (wide := wide_file(name, data_files)) is not None:
        return wide
    cause = e.__cause__ or e
    files = f" (data.data_files={data_files})" if data_files else ""
    if type(cause).__name__ == "CastError" and "column names don't match" in str(cause):
        # "Couldn't cast\n<name: type lines>\nto\n{<the features of one file>}\nbecause column names don't match":
        # it was "a row of the validation split cannot be read", of a train file without the text column
        wanted = re.findall(r"'([^']+)': ", str(cause).split("\nto\n")[-1])
        return DataError(f"data.name='{name}'{files}: the files do not all have the same columns (datasets reads "
                         f"them all with the columns of one of them: {', '.join(wanted) or '?'}); give every file the "
                         "same columns, with the text in the one data.text_field names")
    return DataError(f"data.name='{name}'{files}: a row of the {split} split cannot be read ({type(cause).__name__}: "
                     f"{first_line(cause, 200)}); fix or remove it, or choose the builder that reads the files (json "
                     "for JSON lines, text for plain text)")


def saved_dataset_folder(name: str) -> bool:
    """Whether `name` is a folder that Dataset.save_to_disk wrote (read as it is: no copy is made of it)."""
    return (Path(str(name)).expanduser() / "state.json").is_file()


def saved_dataset(name: str, split: str, train_split: str):
    """The rows of a folder that Dataset.save_to_disk wrote (datasets.load_dataset refuses one: 'use
    load_from_disk'), or None where `name` is no such folder. It has no splits: it is the training split."""
    folder = Path(str(name)).expanduser()
    if not saved_dataset_folder(name):  # (a DatasetDict's folder has one per split: load_dataset reads it)
        return None
    if split != train_split:
        raise DataError(f"data.name='{name}' is one Dataset saved with save_to_disk, without splits: it is the "
                        f"training split, and has no split '{split}'; set data.val_split=null to hold out part of it "
                        "(or save a DatasetDict with a validation split)")
    import datasets

    try:
        return datasets.load_from_disk(str(folder))
    except Exception as e:  # a cut .arrow file (pyarrow's ArrowInvalid), a damaged state.json (JSONDecodeError), ...
        raise DataError(f"data.name='{name}' is a folder that Dataset.save_to_disk wrote, but it cannot be read "
                        f"({type(e).__name__}: {first_line(e, 200)}); save the dataset again") from None


def unknown_split(name: str, split: str, val_split: str | None, e: BaseException) -> DataError | None:
    """A split the dataset does not have, named by its key with the splits it has (datasets says 'Unknown split'
    or, streaming, 'Bad split'); None for any other failure."""
    if not (isinstance(e, ValueError) and re.search(r"Unknown split|Bad split", str(e))):
        return None
    splits = re.search(r"(?:one of|splits:)\s*(\[[^\]]*\])", str(e))  # not a slice in the split's own name
    key = "val_split" if split == val_split else "train_split"
    return DataError(f"data.{key}='{split}' is not a split of data.name='{name}'"
                     + (f" (its splits: {splits.group(1)})" if splits else "") + "; name one of them"
                     + (", or data.val_split=null to hold out part of the training split" if key == "val_split" else ""))


def bad_slice(split: str, val_split: str | None, e: BaseException) -> DataError | None:
    """A split slice datasets cannot read ('train[:50', 'train[:150%]'), named by its key: it was blamed on the
    network ('Without network, use local files'), beside local files. None for any other failure."""
    if split == split_name(split) or not (isinstance(e, ValueError) and
                                          re.search(r"instruction format|slice boundar", str(e), re.IGNORECASE)):
        return None
    key, name = "val_split" if split == val_split else "train_split", split_name(split)
    return DataError(f"data.{key}='{split}': datasets cannot read this slice ({first_line(e, 120)}); write it as "
                     f"{name}[from:to], each bound a row number or a percent between -100% and 100%, e.g. "
                     f"data.{key}='{name}[:50%]' or '{name}[100:]'")


def damaged(e: BaseException) -> bool:
    """A local file that cannot be read to its end: a compressed file cut short (EOFError), one whose compression
    is damaged (zlib.error, gzip's BadGzipFile), rows not of the builder's format (pyarrow's ArrowInvalid, a
    ValueError; datasets' DatasetGenerationError)."""
    import gzip
    import zlib

    return isinstance(e, EOFError | zlib.error | gzip.BadGzipFile | ValueError) or \
        type(e).__name__ == "DatasetGenerationError"


def no_rows(name: str, data_files: Any) -> DataError:
    return DataError(f"data.name='{name}' data.data_files={data_files}: no rows (an empty file, or a pattern that "
                     "matches no file)")


LOCAL_BUILDERS = ("json", "text", "csv", "parquet", "arrow")  # datasets' builders of local files


def check_local_files(name: str, data_files) -> None:
    """datasets' local builders without data_files read every file of the current folder (a repository's own
    sources trained as text, or parsed as JSON)."""
    if str(name).lower() in LOCAL_BUILDERS and not data_files:
        ext = {"text": "txt", "json": "jsonl"}.get(str(name).lower(), str(name).lower())
        raise DataError(f"data.name={name} reads local files: name them with data.data_files={{train: a.{ext}}} "
                        f"(without it, every file of the current folder is read)")
    if str(name).lower() == "text" and (js := [p for p in named_files(data_files) if p.suffix.lower() in
                                               (".json", ".jsonl")]):  # each JSON line trained as text (found by review)
        raise DataError(f"data.name=text reads every line of a file as text, JSON included, and data.data_files names "
                        f"{js[0]}: use data.name=json (with data.text_field) for JSON Lines files")


def check_files_there(name: str, data_files: dict | None, reading: str | None = None) -> None:
    """Before a local builder reads data_files: a file that is not there, or a pattern that matches none, named
    with its split (datasets' error for it sent the user to check the hub name and the network); and the split
    `reading`, where its files are all local and empty (datasets said to use local files, or to choose the text
    builder)."""
    if str(name).lower() not in LOCAL_BUILDERS:
        return
    for split, files in (data_files or {}).items():
        for f in files if isinstance(files, list | tuple) else [files]:
            path = Path(str(f)).expanduser()
            if "://" in str(f):  # a URL: datasets fetches it
                continue
            if glob.has_magic(str(path)):
                if not named_files(str(path)):
                    raise DataError(f"data.data_files: the '{split}' pattern '{f}' matches no file")
            elif not path.is_file():
                raise DataError(f"data.data_files: the '{split}' file '{f}' {not_a_file(path)}")
    split = split_name(reading)  # (a slice of the split reads its files)
    files = (data_files or {}).get(split) if reading is not None else None
    local = all("://" not in str(f) for f in (files if isinstance(files, list | tuple) else [files]))
    if local and (paths := named_files(files)) and all(p.stat().st_size == 0 for p in paths):
        # datasets said "Instruction 'validation' corresponds to no data", or a row could not be read (text)
        shown = ", ".join(str(p) for p in paths[:3]) + (", ..." if len(paths) > 3 else "")
        raise DataError(f"data.data_files: the '{split}' split's {'file is' if len(paths) == 1 else 'files are'} "
                        f"empty ({shown}): no rows to read; give it a file with documents")


def empty_folder(name: str, e: BaseException) -> DataError | None:
    """data.name a local folder without a file datasets reads (it was sent to check the hub name and the network);
    None for any other failure."""
    if type(e).__name__ != "EmptyDatasetError" or not Path(str(name)).expanduser().is_dir():
        return None
    return DataError(f"data.name='{name}' is a folder with no data files datasets reads (.jsonl, .json, .txt, .csv, "
                     ".parquet, .arrow); put the files there, or name them: data.name=json data.data_files={train: "
                     "a.jsonl}")


def split_files(data_files: Any, train_split: str) -> dict | None:
    """data.data_files as {split: files}: a file or a list of files (what datasets reads as the train split) are
    the training split's."""
    if isinstance(data_files, str | list | tuple):  # keyed by the split's name ('train[:50%]' reads split 'train':
        # keyed whole, datasets refused the slice as a split name, with the advice to use local files)
        return {split_name(train_split): data_files} if data_files else None
    if data_files is not None and not isinstance(data_files, Mapping):
        raise DataError(f"data.data_files={data_files!r} is not a file, a list or a mapping of splits to files; write "
                        "e.g. data.data_files={train: a.jsonl, validation: b.jsonl}")
    return dict(data_files) if data_files else None


def split_name(split: str | None) -> str | None:
    """A split's name without its slice: 'train[:50%]' reads split 'train'."""
    return None if split is None else str(split).split("[", 1)[0].strip()


def check_unread_splits(data_files: dict | None, train_split: str, val_split: str | None) -> None:
    """A validation file in data.data_files beside data.val_split=null, which holds out part of train instead, was
    never read, without a word (found by review). (Other splits no setting reads, a test split, are datasets' to
    list; a misspelt data.train_split is named when the split is read.)"""
    if val_split is not None or split_name(train_split) not in (data_files or {}):
        return
    for split in data_files:
        if str(split) != split_name(train_split) and str(split).lower() in ("validation", "valid", "val", "dev"):
            # (the training split itself may be named so: data.train_split=dev was refused, flows review)
            raise DataError(f"data.data_files gives a '{split}' split, which is never read: data.val_split=null "
                            f"holds out part of the train split for validation instead; set data.val_split={split} "
                            "to validate on it, or drop it from data.data_files")


def check_builder_config(name: str, config: str | None) -> None:
    """datasets' local builders (json, text, ...) take no config name: data.config=foo was accepted and ignored."""
    if config not in (None, "default") and str(name).lower() in LOCAL_BUILDERS:  # ('default' is theirs: review)
        raise DataError(f"data.config='{config}' is not read by the local {name} builder, which has no configs; "
                        "drop it (data.config=null)")


def check_split_files(data_files: dict | None) -> None:
    """A file in two splits (train and validation), or twice in one: validation on training text, or every row of
    it trained twice. Compared as files, not names (a glob matching the validation file too, a link, a hard link)."""
    named: dict[tuple, tuple[str, Path]] = {}
    for split, files in (data_files or {}).items():
        for p in named_files(files):  # stat only: no file is read for this
            if (seen := named.get(key := file_id(p))) is not None:
                other, first = seen
                same = other == str(split)
                also = "" if first.resolve() == p.resolve() else f" (as {first} and {p}, one file)"
                raise DataError(f"data.data_files names {p.resolve()} " + (f"twice in '{split}'" if same else
                                f"in the '{other}' and '{split}' splits") + also + ": " + (
                                "every row of it would be trained on twice" if same else
                                "validation would read training text") + "; list each file once")
            named[key] = (str(split), p)


def check_splits(train_split: str, val_split: str | None) -> None:
    """A validation split that is the training split would validate on training text."""
    if val_split is not None and val_split == train_split:
        raise DataError(f"data.val_split='{val_split}' is the training split too, so validation would read training "
                        "text; name another split, or data.val_split=null to hold out part of the training split")


def check_seed(seed: int, seeds: str = "the train/validation split") -> None:
    if seed < 0:
        raise DataError(f"data.seed={seed} must be >= 0 (it seeds {seeds})")


def folder_files(name: str) -> list:
    """[local_files of everything under it] where a dataset's name is a local folder (datasets reads its files);
    [] for a hub name, whose token cache is keyed by the name (and revision) as before."""
    folder = Path(str(name)).expanduser()
    return [local_files(str(folder / "**" / "*"))] if folder.is_dir() else []


def local_files(data_files: Any) -> list:
    """(resolved path, size, mtime) of every local file that data_files names (a path, a list, a mapping of
    splits to either; glob patterns expanded), so that a token cache keyed by it changes when a file does."""
    if data_files is None:
        return []
    if isinstance(data_files, Mapping):
        return [[str(k), local_files(v)] for k, v in sorted(data_files.items(), key=lambda kv: str(kv[0]))]
    if isinstance(data_files, list | tuple):
        return [local_files(v) for v in data_files]
    return [file_stamp(p) for p in named_files(data_files)]


def named_files(files: Any) -> list[Path]:
    """The local files that one split's data_files (a path or a glob pattern, or a list of them) names; of a
    mapping of splits, every split's."""
    if files is None:
        return []
    if isinstance(files, Mapping):
        return [p for f in files.values() for p in named_files(f)]
    if isinstance(files, list | tuple):
        return [p for f in files for p in named_files(f)]
    pattern = str(Path(str(files)).expanduser())
    paths = sorted(Path(p) for p in glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [Path(pattern)]
    return [p for p in paths if p.is_file()]


# the (inode, ctime) of every file file_stamp reads while a recording_changes() block is open
_CHANGES: contextvars.ContextVar[list | None] = contextvars.ContextVar("momattn_file_changes", default=None)


def file_stamp(p: Path) -> tuple:
    """(resolved path, size, mtime, a digest of the first 64 KiB and, past 128 KiB, the last 64 KiB: ends_digest): a
    source's fingerprint, kept in its checkpoints (evaluate.py: is the corpus still this one?), changes when the file
    does, also where another version kept its size and time (cp -p, rsync -a, tar x), unless the edit lies outside
    the bytes read (the middle of a file over 128 KiB, or the end of one between 64 and 128 KiB). The token cache's key adds each file's inode and ctime
    (recording_changes): an edit in the middle of a large file whose time was set back (touch -r, os.utime) reused
    the old tokens; those are left out of the fingerprint, which a chmod, a hard link or a copy to another node
    changes though the text is the same."""
    st = p.stat()
    ends = ends_digest(p, st.st_size)
    if (changes := _CHANGES.get()) is not None:
        changes.append((str(p.resolve()), st.st_ino, st.st_ctime_ns))
    return (str(p.resolve()), st.st_size, st.st_mtime_ns, ends)


def ends_digest(p: Path, size: int, tail_over: int = 1 << 17) -> str:
    """A digest of a file's first 64 KiB and, where it is over `tail_over` bytes, its last 64 KiB (file_stamp
    reads the end only past 128 KiB, as its keys always have; a stream's order key reads it always)."""
    h = hashlib.blake2b(digest_size=8)
    with open(p, "rb") as f:
        h.update(f.read(1 << 16))
        if size > tail_over:
            f.seek(max(0, size - (1 << 16)))
            h.update(f.read())
    return h.hexdigest()


@contextlib.contextmanager
def recording_changes() -> Iterator[list]:
    """Collect (path, inode, ctime) of the files every file_stamp in the block reads (the token cache's key)."""
    token = _CHANGES.set([])
    try:
        yield _CHANGES.get()
    finally:
        _CHANGES.reset(token)


def cache_fingerprint(source: DataSource) -> str:
    """The source's fingerprint, plus its local files' inode and ctime where it reads any: what keys the caches
    built from it (the token cache, a trained BPE), and not the fingerprint checkpoints keep."""
    with recording_changes() as changes:
        fingerprint = source.fingerprint()
    return fingerprint + (f"-{digest(sorted(changes), 12)}" if changes else "")


# the data sections of run configs written before `_target_` (stored in older checkpoints): source: <name>
LEGACY_SOURCES = {"staicc": StaiccCorpus, "text_files": TextFiles, "hf": HubCorpus}


def make_source(data: Mapping) -> DataSource:
    """The source a `data` section names: `_target_: module.Class` (or, in older configs, `source: staicc |
    text_files | hf`); the other keys are its fields, except LoaderConfig's, which are ignored here."""
    kwargs = {k: v for k, v in (to_plain(data) or {}).items() if k not in LOADER_KEYS}
    target, legacy = kwargs.pop("_target_", None), kwargs.pop("source", None)
    if target is not None and legacy is not None:
        raise ConfigError(f"data has both _target_={target} and source={legacy}; keep one (_target_ is current)")
    if target is None and legacy not in LEGACY_SOURCES:
        raise ConfigError(f"data.source='{legacy}' is unknown.{did_you_mean(legacy, LEGACY_SOURCES)} Choose one of "
                          f"{', '.join(LEGACY_SOURCES)}, or name a class: data._target_=module.Class")
    cls = locate(target, "data._target_") if target is not None else LEGACY_SOURCES[legacy]
    if not isinstance(cls, type):  # a function was called with the section's keys (save_hparams_to_yaml wrote a file)
        raise ConfigError(f"data._target_={target} is not a class; name a data source class, e.g. "
                          "momattn.data.sources.TextFiles")
    if not all(callable(getattr(cls, m, None)) for m in ("fingerprint", "documents")):
        # momattn calls this class itself, past Hydra's blocklist: subprocess.Popen ran, then failed on its missing
        # fingerprint; collections.OrderedDict was a traceback from inspect (found by review)
        raise ConfigError(f"data._target_={target} is not a data source: a source has the methods fingerprint() "
                          "and documents(split) (momattn.data.sources.DataSource), e.g. momattn.data.sources.TextFiles")
    known = known_keys(cls)
    for key in kwargs if known is not None else ():
        if key not in known:
            raise ConfigError(f"data.{key} is not a known key.{did_you_mean(key, [*known, *LOADER_KEYS])} Known keys "
                              f"of data ({cls.__name__}): {', '.join(known)}; loader keys: {', '.join(LOADER_KEYS)}")
    return typed(cls, kwargs, "data")


def merge_data(base: Mapping, override: Mapping | None) -> dict:
    """A data section with `override` applied: keys merged over `base`, unless `override` names a source of
    its own (`_target_` or `source`), which then replaces base's source and keeps only its loader keys."""
    base, override = dict(to_plain(base) or {}), dict(to_plain(override) or {})
    if "_target_" in override or "source" in override:
        base = {k: v for k, v in base.items() if k in LOADER_KEYS}
    return {**base, **override}
