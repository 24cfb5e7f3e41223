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
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from momattn.data.sources import make_source
from momattn.errors import DataError
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


def _tokenize(docs: list[str], tokenizer: Tokenizer, desc: str) -> np.ndarray:
    import datasets

    datasets.disable_caching()  # our cache is the .bin file; no arrow copies in ~/.cache/huggingface
    eot = tokenizer.eot_id

    def encode(batch):
        return {"ids": [ids + [eot] for ids in tokenizer.encode_batch(batch["text"])]}

    ds = datasets.Dataset.from_dict({"text": docs}).map(encode, batched=True, batch_size=1000, remove_columns=["text"],
                                                        desc=desc)
    dtype = np.uint16 if tokenizer.vocab_size <= 65535 else np.uint32
    chunks = [c.flatten().to_numpy(zero_copy_only=False) for c in ds.data.column("ids").chunks]  # arrow, no lists
    return np.concatenate(chunks).astype(dtype) if chunks else np.empty(0, dtype=dtype)


def cache_key(source_fingerprint: str, tokenizer: Tokenizer, split: str) -> str:
    return hashlib.sha256(f"{source_fingerprint}|{tokenizer.fingerprint}|{split}".encode()).hexdigest()[:20]


def load_tokens(data_cfg: Mapping, tokenizer: Tokenizer, split: str, cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """1-D token ids of the LM split ('train' or 'val'), documents separated by tokenizer.eot_id (memmap)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    source = make_source(data_cfg)
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
        docs = source.documents(split)
        if not docs:
            raise DataError(f"the {split} split of data.source={data_cfg.get('source')} is empty; nothing to tokenize")
        ids = _tokenize(docs, tokenizer, f"tokenizing {split} ({len(docs)} docs)")
        tmp = bin_path.with_name(f".{bin_path.name}.tmp{os.getpid()}")
        ids.tofile(tmp)
        os.replace(tmp, bin_path)  # the .json is written last: a .bin without a matching .json is never trusted
        tmp_meta = meta_path.with_name(f".{meta_path.name}.tmp{os.getpid()}")
        tmp_meta.write_text(json.dumps({"n_tokens": int(len(ids)), "dtype": np.dtype(ids.dtype).name,
                                        "split": split, "tokenizer": tokenizer.name, "documents": len(docs)}))
        os.replace(tmp_meta, meta_path)
    return _open(bin_path, meta_path)
