"""Token cache: documents -> token ids through `datasets.map` -> one memory-mapped file on disk, keyed by the
source and the tokenizer, built once (under a file lock, written atomically) and reused by later runs.

Layout in the cache dir: <key>.bin (raw token ids) and <key>.json (dtype, token count). A .bin whose size does
not match its .json (truncated, half-copied) is detected and rebuilt.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import sys
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from momattn.data.sources import DataSource, make_source
from momattn.errors import DataError
from momattn.io import atomic_write, atomic_write_text
from momattn.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("MOMATTN_CACHE", Path.home() / ".cache" / "momattn")).expanduser()


@contextmanager
def file_lock(path: Path):
    """Exclusive lock across processes (parallel sweep jobs building the same cache wait for each other)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _valid(bin_path: Path, meta_path: Path) -> bool:
    if not (bin_path.exists() and meta_path.exists()):
        return False
    try:
        meta = json.loads(meta_path.read_text())
        return bin_path.stat().st_size == meta["n_tokens"] * np.dtype(meta["dtype"]).itemsize
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _open(bin_path: Path, meta_path: Path) -> np.ndarray:
    meta = json.loads(meta_path.read_text())
    return np.memmap(bin_path, dtype=meta["dtype"], mode="r", shape=(meta["n_tokens"],))


def _tokenize(docs: list[str], tokenizer: Tokenizer, desc: str, num_proc: int = 1) -> np.ndarray:
    import time

    import datasets

    datasets.disable_caching()  # our cache is the .bin file; no arrow copies in ~/.cache/huggingface
    if not sys.stderr.isatty():  # a log file: no carriage-return bar
        datasets.disable_progress_bars()
    eot = tokenizer.eot_id

    def encode(batch):
        return {"ids": [ids + [eot] for ids in tokenizer.encode_batch(batch["text"])]}

    t0 = time.perf_counter()
    num_proc = max(1, min(num_proc, len(docs) // 1000))  # a process per 1,000 documents at most
    ds = datasets.Dataset.from_dict({"text": docs}).map(encode, batched=True, batch_size=1000, remove_columns=["text"],
                                                        desc=desc, num_proc=num_proc if num_proc > 1 else None)
    chunks = [c.flatten().to_numpy(zero_copy_only=False) for c in ds.data.column("ids").chunks]  # arrow, no lists
    # by the largest id, not vocab_size: a tokenizer file may number its tokens beyond its size
    top = max([tokenizer.vocab_size - 1, *(int(c.max()) for c in chunks if len(c))])
    dtype = np.uint16 if top <= 65535 else np.uint32
    ids = np.concatenate(chunks).astype(dtype) if chunks else np.empty(0, dtype=dtype)
    dt = time.perf_counter() - t0
    print(f"[momattn] {desc}: {len(ids) / 1e6:.2f}M tokens in {dt:.1f} s ({len(ids) / max(dt, 1e-9) / 1e3:.0f}K "
          f"tokens/s, {num_proc} process{'es' if num_proc > 1 else ''})", file=sys.stderr, flush=True)
    return ids


def cache_key(source_fingerprint: str, tokenizer: Tokenizer, split: str) -> str:
    return hashlib.sha256(f"{source_fingerprint}|{tokenizer.fingerprint}|{split}".encode()).hexdigest()[:20]


def _own_token_ids(source, tokenizer: Tokenizer, split: str) -> tuple[np.ndarray | None, int]:
    """A source that generates token ids itself (GINC: `token_ids(split)`, the same ids its own tokenizer gives,
    100x faster than tokenizing its text) is used directly when the run uses that tokenizer."""
    if not (hasattr(source, "token_ids") and hasattr(source, "tokenizer")):
        return None, 0
    if source.tokenizer().fingerprint != tokenizer.fingerprint:
        return None, 0
    ids = np.asarray(source.token_ids(split))
    return ids, int((ids == tokenizer.eot_id).sum())


def load_tokens(source: DataSource | Mapping, tokenizer: Tokenizer, split: str,
                cache_dir: str | os.PathLike | None = None, num_proc: int = 1) -> np.ndarray:
    """1-D token ids of the LM split ('train' or 'val'), documents separated by tokenizer.eot_id (memmap).
    `source` is a data source, or a `data` config section (see momattn.data.sources.make_source)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if isinstance(source, Mapping):
        source = make_source(source)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    key = cache_key(source.fingerprint(), tokenizer, split)
    bin_path, meta_path = cache / "tokens" / f"{key}.bin", cache / "tokens" / f"{key}.json"
    if _valid(bin_path, meta_path):
        return _open(bin_path, meta_path)
    with file_lock(cache / "tokens" / f"{key}.lock"):
        if _valid(bin_path, meta_path):  # another process built it while we waited
            return _open(bin_path, meta_path)
        if bin_path.exists() or meta_path.exists():
            log.warning("token cache %s is incomplete or truncated; rebuilding it", bin_path)
        ids, n_docs = _own_token_ids(source, tokenizer, split)
        if ids is None:
            docs = source.documents(split)
            if not docs:
                raise DataError(f"the {split} split of the data source {type(source).__name__} is empty; "
                                "nothing to tokenize")
            ids, n_docs = _tokenize(docs, tokenizer, f"tokenizing {split} ({len(docs)} docs)", num_proc), len(docs)
        atomic_write(bin_path, lambda f: f.write(ids.data))  # the .json last: a .bin without it is never trusted
        atomic_write_text(meta_path, json.dumps({"n_tokens": int(len(ids)), "dtype": np.dtype(ids.dtype).name,
                                                 "split": split, "tokenizer": tokenizer.name, "documents": n_docs}))
    return _open(bin_path, meta_path)
