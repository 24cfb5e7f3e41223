"""Text sources: the embedded StaICC corpus, your own txt/jsonl files, or any `datasets` hub corpus.

Each source gives documents for split 'train' or 'val' and a fingerprint that keys the token cache.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from momattn.data.staicc import SPLIT_SEED, STAICC_FILES, lm_texts
from momattn.errors import DataError


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StaiccCorpus:
    """LM-train / LM-val rows of the StaICC tasks; rows reserved for ICL evaluation are never included."""

    def __init__(self, tasks=("agnews", "mr", "subj", "sst5", "trec"), split_seed: int = SPLIT_SEED, **_):
        bad = [t for t in tasks if t not in STAICC_FILES]
        if bad or not tasks:
            raise DataError(f"data.tasks={list(tasks)}: unknown or empty; choose among {', '.join(STAICC_FILES)}")
        self.tasks, self.split_seed = list(tasks), int(split_seed)

    def fingerprint(self) -> str:
        return _digest(["staicc", 1, self.tasks, self.split_seed])

    def documents(self, split: str) -> list[str]:
        return lm_texts(self.tasks, split, self.split_seed)


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"data file '{path}' is not UTF-8 text (byte {e.start}: {data[e.start:e.start + 4]!r}); "
                        "convert it, e.g. iconv -f latin1 -t utf-8") from e


class TextFiles:
    """Your own corpus: .txt files (documents separated by blank lines) and .jsonl files (one JSON object per
    line, text in `text_field`). A seeded `val_fraction` of the documents is held out for validation."""

    def __init__(self, paths=(), val_fraction: float = 0.05, text_field: str = "text", seed: int = SPLIT_SEED, **_):
        if isinstance(paths, str):
            paths = [paths]
        if not paths:
            raise DataError("data=text_files needs data.paths=[file1.txt,file2.jsonl,...]")
        self.paths = [Path(p).expanduser() for p in paths]
        for p in self.paths:
            if not p.is_file():
                raise DataError(f"data.paths: '{p}' does not exist (or is not a file); check the path")
            if p.suffix not in (".txt", ".jsonl", ".json", ".md", ""):
                raise DataError(f"data.paths: '{p}' has suffix '{p.suffix}'; use .txt (plain text) or .jsonl")
        if not 0.0 < val_fraction < 1.0:
            raise DataError(f"data.val_fraction={val_fraction} must lie in (0, 1)")
        self.val_fraction, self.text_field, self.seed = val_fraction, text_field, seed
        self._docs: list[str] | None = None

    def fingerprint(self) -> str:
        files = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in self.paths]
        return _digest(["text_files", 1, files, self.val_fraction, self.text_field, self.seed])

    def _read(self, p: Path) -> list[str]:
        text = _read_utf8(p)
        if p.suffix not in (".jsonl", ".json"):
            return [d.strip() for d in text.split("\n\n") if d.strip()]
        docs = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"'{p}' line {n} is not valid JSON ({e.msg}); each line must be one JSON object") from e
            if not isinstance(row, dict) or self.text_field not in row:
                raise DataError(f"'{p}' line {n} has no field '{self.text_field}'; set data.text_field to the text's key")
            if str(row[self.text_field]).strip():
                docs.append(str(row[self.text_field]).strip())
        return docs

    def documents(self, split: str) -> list[str]:
        if self._docs is None:
            docs = [d for p in self.paths for d in self._read(p)]
            if not docs:
                raise DataError(f"data.paths={[str(p) for p in self.paths]} hold no text (empty or whitespace only)")
            if len(docs) < 2:  # one document: hold out its tail so that validation still has text
                cut = int(len(docs[0]) * (1 - self.val_fraction))
                docs = [docs[0][:cut], docs[0][cut:]]
            self._docs = docs
        docs = self._docs
        perm = np.random.default_rng(self.seed).permutation(len(docs))
        n_val = max(1, int(round(self.val_fraction * len(docs))))
        idx = perm[:n_val] if split == "val" else perm[n_val:]
        return [docs[i] for i in sorted(idx)]


class HubCorpus:
    """Any `datasets` corpus by hub name (wikitext-103, openwebtext, ...) or a local builder (json, text)."""

    def __init__(self, name: str = "", config: str | None = None, train_split: str = "train",
                 val_split: str | None = "validation", text_field: str = "text", data_files: Mapping | None = None,
                 val_fraction: float = 0.01, seed: int = SPLIT_SEED, **_):
        if not name:
            raise DataError("data=hf needs data.name=<hub dataset>, e.g. data.name=Salesforce/wikitext data.config=wikitext-103-raw-v1")
        self.name, self.config, self.text_field = name, config, text_field
        self.train_split, self.val_split = train_split, val_split
        self.data_files = dict(data_files) if data_files else None
        self.val_fraction, self.seed = val_fraction, seed

    def fingerprint(self) -> str:
        return _digest(["hf", 1, self.name, self.config, self.train_split, self.val_split, self.text_field,
                        self.data_files, self.val_fraction, self.seed])

    def _load(self, split: str):
        import datasets

        try:
            return datasets.load_dataset(self.name, self.config, split=split, data_files=self.data_files)
        except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError, ...)
            raise DataError(
                f"cannot load data.name='{self.name}' (config={self.config}, split={split}): "
                f"{type(e).__name__}: {str(e).splitlines()[0][:300]}. Without network, use local files: "
                "data=text_files data.paths=[...] or data=hf data.name=json data.data_files={train: a.jsonl}"
            ) from e

    def documents(self, split: str) -> list[str]:
        if split == "val" and self.val_split:
            ds = self._load(self.val_split)
        else:
            ds = self._load(self.train_split)
        if self.text_field not in ds.column_names:
            raise DataError(f"data.name='{self.name}' has no column '{self.text_field}' (columns: {ds.column_names}); "
                            "set data.text_field")
        docs = [t for t in ds[self.text_field] if t and t.strip()]
        if not self.val_split:  # no validation split on the hub: hold out a seeded fraction of train
            perm = np.random.default_rng(self.seed).permutation(len(docs))
            n_val = max(1, int(round(self.val_fraction * len(docs))))
            keep = perm[:n_val] if split == "val" else perm[n_val:]
            docs = [docs[i] for i in sorted(keep)]
        return docs


SOURCES = {"staicc": StaiccCorpus, "text_files": TextFiles, "hf": HubCorpus}


def make_source(data_cfg: Mapping):
    kind = data_cfg.get("source")
    if kind not in SOURCES:
        raise DataError(f"data.source='{kind}' is unknown; choose one of {', '.join(SOURCES)}")
    kwargs = {k: v for k, v in data_cfg.items() if k != "source"}
    return SOURCES[kind](**kwargs)
