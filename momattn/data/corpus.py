"""Token cache: documents -> token ids through `datasets.map` -> one memory-mapped file on disk, keyed by the
source and the tokenizer, built once (under a file lock, written atomically) and reused by later runs.

Layout in the cache dir: <key>.bin (raw token ids) and <key>.json (dtype, token count, CRC-32 of the .bin). A .bin
whose size does not match its .json (truncated, half-copied) is rebuilt; so is one whose bytes no longer match the
CRC. The CRC is checked (2 GB/s) once per change of the file: the .json records the size, mtime, ctime and inode it
was last checked at, so an untouched cache opens without reading it, and one copied, rewritten or touched is read
once. (Bit rot that changes none of these is not caught.)
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zlib
from collections.abc import Iterable, Iterator, Mapping, Set
from pathlib import Path

import numpy as np

from momattn.data.sources import DataSource, cache_fingerprint, import_datasets, make_source
from momattn.errors import DataError
from momattn.io import atomic_write, atomic_write_text, cache_root, file_lock, remove_stale_temps
from momattn.tokenizer import Tokenizer


def own_documents(source, split: str) -> list[str]:
    """source.documents(split) as a list of strings: a generator was a TypeError traceback (no len()), found by
    review; anything else than strings is a DataError naming the source."""
    docs = source.documents(split)
    if isinstance(docs, str | bytes | Mapping | Set) or not isinstance(docs, Iterable):  # (a dict's keys, a
        # set's order of the hash seed: not documents in order)
        raise DataError(f"the data source {type(source).__name__}: documents('{split}') returned a "
                        f"{type(docs).__name__}, not a list of documents (one string each)")
    docs = docs if isinstance(docs, list) else list(docs)
    if (bad := next((d for d in docs if not isinstance(d, str)), None)) is not None:
        raise DataError(f"the data source {type(source).__name__}: documents('{split}') holds "
                        f"{repr(bad)[:40]} ({type(bad).__name__}), not a string; each document is one string")
    return docs


def _crc32(path: Path, block: int = 64 << 20) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(block):
            crc = zlib.crc32(chunk, crc)
    return crc


def _stamp(bin_path: Path) -> list[int]:
    """What a copy (even `cp -p`, `rsync -a`), a rewrite or `touch` changes: size, mtime, ctime, inode."""
    st = bin_path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _problem(bin_path: Path, meta_path: Path) -> str | None:
    """None where the .bin holds what its .json says: the right size, and (caches that carry a CRC) the same bytes
    as when it was written; else what is wrong. The CRC is read again only when the file's stamp (_stamp) has
    changed since it was last checked; a match is then recorded in the .json (where the folder is writable)."""
    if not (bin_path.exists() and meta_path.exists()):
        return "incomplete" if bin_path.exists() or meta_path.exists() else "missing"
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("key", bin_path.stem) != bin_path.stem:  # a cache copied under another's name (another
            # tokenizer's ids, read as this one's: found by review); caches written before the key was kept pass
            return f"another cache's (written for key {meta['key']})"
        if bin_path.stat().st_size != meta["n_tokens"] * np.dtype(meta["dtype"]).itemsize:
            return "truncated"
        if "crc32" not in meta or meta.get("checked") == _stamp(bin_path):
            return None
        if _crc32(bin_path) != meta["crc32"]:
            return "damaged (its bytes do not match the CRC-32 recorded when it was written)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # (valid JSON that is no object: a list)
        return "unreadable"
    try:
        atomic_write_text(meta_path, json.dumps({**meta, "checked": _stamp(bin_path)}))
    except OSError:  # a read-only cache: checked again next time
        pass
    return None


def _open(bin_path: Path, meta_path: Path) -> np.ndarray:
    meta = json.loads(meta_path.read_text())
    return np.memmap(bin_path, dtype=meta["dtype"], mode="r", shape=(meta["n_tokens"],))


def token_dtype(tokenizer: Tokenizer) -> np.dtype:
    """uint16 where every id the tokenizer can give fits, uint32 otherwise."""
    return np.dtype(np.uint16 if tokenizer.max_id <= 65535 else np.uint32)


def _tokenize(docs: list[str], tokenizer: Tokenizer, desc: str, num_proc: int = 1) -> Iterator[np.ndarray]:
    """The token ids of `docs`, each document followed by eot, in chunks of token_dtype(tokenizer): the whole
    corpus is never held as int64 or as one array (a hub corpus of N tokens needs ~2N bytes here, not ~32N)."""
    import time

    datasets = import_datasets()  # a log file: no carriage-return bar
    datasets.disable_caching()  # our cache is the .bin file; no arrow copies in ~/.cache/huggingface
    eot, dtype = tokenizer.eot_id, token_dtype(tokenizer)

    def encode(batch):
        return {"ids": [ids + [eot] for ids in tokenizer.encode_documents(batch["text"])]}

    t0 = time.perf_counter()
    num_proc = max(1, min(num_proc, len(docs) // 1000))  # a process per 1,000 documents at most
    features = datasets.Features({"ids": datasets.Sequence(datasets.Value(dtype.name))})  # stored as dtype
    ds = datasets.Dataset.from_dict({"text": docs}).map(encode, batched=True, batch_size=1000, remove_columns=["text"],
                                                        features=features, desc=desc,
                                                        num_proc=num_proc if num_proc > 1 else None)
    n = 0
    for chunk in ds.data.column("ids").chunks:  # arrow chunks, no Python lists
        ids = chunk.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        n += len(ids)
        yield ids
    dt = time.perf_counter() - t0
    print(f"[momattn] {desc}: {n / 1e6:.2f}M tokens in {dt:.1f} s ({n / max(dt, 1e-9) / 1e3:.0f}K "
          f"tokens/s, {num_proc} process{'es' if num_proc > 1 else ''})", file=sys.stderr, flush=True)


# 2: a special token's spelling inside a document is text (Tokenizer.encode_documents), no longer the token
CACHE_FORMAT = 2


def cache_key(source_fingerprint: str, tokenizer: Tokenizer, split: str) -> str:
    key = f"{source_fingerprint}|{tokenizer.fingerprint}|{split}|{CACHE_FORMAT}"
    return hashlib.sha256(key.encode()).hexdigest()[:20]


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
    cache = Path(cache_dir).expanduser() if cache_dir else cache_root()
    try:
        (cache / "tokens").mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file on the path, a read-only or missing mount: not a stack trace from deep inside
        raise DataError(f"the token cache folder '{cache / 'tokens'}' cannot be made ({e.strerror or e}); set "
                        "cache_dir (evaluate.py, analyze.py), data.cache_dir or MOMATTN_CACHE to a writable "
                        "folder") from None
    key = cache_key(cache_fingerprint(source), tokenizer, split)  # the local files' inode and ctime too
    bin_path, meta_path = cache / "tokens" / f"{key}.bin", cache / "tokens" / f"{key}.json"
    if _problem(bin_path, meta_path) is None:
        return _open(bin_path, meta_path)
    with file_lock(cache / "tokens" / f"{key}.lock", waiting=f"the {split} split's token cache"):
        problem = _problem(bin_path, meta_path)
        if problem is None:  # another process built it while we waited
            return _open(bin_path, meta_path)
        if problem != "missing":
            print(f"[momattn] warning: token cache {bin_path} is {problem}; rebuilding it", file=sys.stderr, flush=True)
        for tmp in remove_stale_temps(cache / "tokens"):  # a killed build's partial .bin, as large as its tokens
            print(f"[momattn] removed {tmp.name}, a partial token cache of a killed process", file=sys.stderr)
        ids, n_docs = _own_token_ids(source, tokenizer, split)
        if ids is None:
            print(f"[momattn] building the {split} split's token cache (once): reading its documents", file=sys.stderr,
                  flush=True)  # (the default corpus's leak filter takes ~20 s here, silent: found by review)
            docs = own_documents(source, split)
            if not docs:
                why = ""
                if getattr(source, "val_fraction", None) is not None and getattr(source, "val_split", None) is None:
                    why = (f" (data.val_fraction={source.val_fraction} holds out part of its documents for validation, "
                           "and a training document that copies a held-out one is dropped: give more documents)")
                raise DataError(f"the {split} split of the data source {type(source).__name__} is empty{why}; "
                                "nothing to tokenize")
            chunks, n_docs = _tokenize(docs, tokenizer, f"tokenizing {split} ({len(docs)} docs)", num_proc), len(docs)
            dtype = token_dtype(tokenizer)
        else:
            chunks, dtype = [ids], ids.dtype
        n_tokens, crc = 0, 0

        def write(f) -> None:
            nonlocal n_tokens, crc
            for c in chunks:
                c = np.ascontiguousarray(c)
                f.write(c.data)
                crc = zlib.crc32(c.data, crc)
                n_tokens += len(c)

        atomic_write(bin_path, write)  # the .json last: a .bin without it is never trusted
        atomic_write_text(meta_path, json.dumps({"n_tokens": n_tokens, "dtype": np.dtype(dtype).name, "split": split,
                                                 "tokenizer": tokenizer.name, "documents": n_docs, "key": key,
                                                 "format": CACHE_FORMAT, "crc32": crc,
                                                 "checked": _stamp(bin_path)}))
    return _open(bin_path, meta_path)
