"""Checkpoints: safe reading (no code runs), and loading a model + tokenizer from a checkpoint alone (no Lightning needed).

A momattn checkpoint is a Lightning checkpoint (`state_dict` keys prefixed `model.`) plus a `momattn` entry:
    {"format": 1, "model_config": asdict(GPTConfig), "tokenizer": tokenizer.json string,
     "config": the resolved run config (dict), "wandb_run_id": str | None, "rng": RNG states}
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import sys
import time
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from momattn.errors import CheckpointError, ConfigError, DataError
from momattn.model import ATTENTION_SETTINGS, ATTENTION_SWITCHES, GPT, AttentionConfig, GPTConfig
from momattn.quoting import printable
from momattn.tokenizer import Tokenizer
from momattn.utils import leaves

FORMAT = 1


def _refused_globals(path: Path) -> list[str]:
    """The globals (functions, classes) a file's pickle names that the weights-only loader refuses; read by
    scanning the pickle's opcodes, without running anything. [] where the file cannot be scanned."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:
        return []


def _load_safely(p: Path, path) -> Any:
    if not zipfile.is_zipfile(p):  # torch.save has written zip archives since torch 1.6; a cut one has no index
        with contextlib.suppress(OSError):
            if p.stat().st_size == 0:  # (it read "truncated": review)
                raise CheckpointError(f"checkpoint '{path}' is empty (0 bytes): nothing was written to it. Use "
                                      "another one, e.g. a best-step*.ckpt in the run's checkpoints/ folder")
        raise _unreadable(path, "no zip index")
    try:
        # weights_only: tensors, primitives and containers only; a pickle naming any other global (os.system,
        # a class with __reduce__) is refused before anything runs. Checkpoints written by train.py need no
        # extra allow-listed globals (RNG states are stored as tensors and tuples; see momattn.lit.rng_state).
        # mmap: reading the metadata (resume, evaluate.py's up-front check) does not pull every tensor into
        # RAM; the weights are paged in only when a model is loaded from them.
        return torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        refused = _refused_globals(p)
        if refused or "weights only load failed" in str(e).lower():
            what = ", ".join(refused[:5]) if refused else _first_line(e)
            raise CheckpointError(
                f"checkpoint '{path}' contains code or objects a safe load refuses ({what}); momattn never executes "
                "code from a checkpoint. Only load files you trust, written by train.py"
            ) from None
        raise _unreadable(path, e) from e
    except MemoryError:
        raise
    except Exception as e:  # damaged bytes inside the archive surface as anything: KeyError, RuntimeError, ...
        raise _unreadable(path, e) from e


SHARDED_META = "meta.pt"  # what Lightning's FSDP writes beside the shards: everything but weights and optimizer


# what a real shard index names, no more: torch.distributed.checkpoint's metadata dataclasses by name, not its
# modules (they import os and hold functions that torch.load any file: a prefix let both run, found by review)
_DCP_METADATA = ("Metadata", "MetadataIndex", "StorageMeta", "TensorStorageMetadata", "BytesStorageMetadata",
                 "ChunkStorageMetadata", "TensorProperties", "_MEM_FORMAT_ENCODING")
_DCP_SAFE = {("torch", "Size"), ("collections", "OrderedDict"), ("torch.serialization", "_get_layout"),
             ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
             ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
             *(("torch.distributed.checkpoint.metadata", n) for n in _DCP_METADATA)}


class _DcpUnpickler(pickle.Unpickler):
    """torch.distributed.checkpoint's shard index is a pickle: only its own metadata classes and torch's dtypes,
    layouts, memory formats and Size may appear in it; anything else (os.system, ...) is refused unrun."""

    def find_class(self, module: str, name: str):
        if (module, name) in _DCP_SAFE:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout,
                                                                         torch.memory_format)):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a checkpoint's shard index")


def _safe_read_metadata(self, *args, **kwargs):
    """FileSystemReader.read_metadata with the shard index (.metadata) through an allow-list unpickler."""
    with open(Path(self.path) / ".metadata", "rb") as f:
        metadata = _DcpUnpickler(f).load()
    if getattr(metadata, "storage_meta", None) is None:
        from torch.distributed.checkpoint.metadata import StorageMeta

        metadata.storage_meta = StorageMeta()
    metadata.storage_meta.load_id = self.load_id
    return metadata


def _safe_load_bytes(self, read_item, value):
    """DefaultLoadPlanner.load_bytes (non-tensor entries: optimizer hyper-parameters), but torch.load weights-only."""
    from torch.distributed.checkpoint._traverse import set_element

    obj = torch.load(value, weights_only=True)
    if self.flatten_state_dict:
        set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
    else:
        self.state_dict[read_item.dest_index.fqn] = obj


@contextlib.contextmanager
def safe_sharded_reads(path):
    """Within: torch.distributed.checkpoint reads shard indexes and non-tensor entries without running code (its
    own readers unpickle both; Lightning's FSDP resume uses them), and a refusal is a CheckpointError."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    saved = FileSystemReader.read_metadata, DefaultLoadPlanner.load_bytes
    FileSystemReader.read_metadata, DefaultLoadPlanner.load_bytes = _safe_read_metadata, _safe_load_bytes
    try:
        yield
    except BaseException as e:  # torch.distributed.checkpoint wraps errors in CheckpointException(BaseException)
        if isinstance(e, (KeyboardInterrupt, SystemExit, CheckpointError)):
            raise
        refused = re.search(r"(\S+) is not allowed in a checkpoint's shard index|Weights only load failed", str(e))
        if refused:
            raise CheckpointError(f"checkpoint '{path}' contains code or objects a safe load refuses "
                                  f"({refused.group(1) or 'a non-tensor entry'}); momattn never executes code from a "
                                  "checkpoint. Only load files you trust, written by train.py") from None
        raise _unreadable(path, e) from None
    finally:
        FileSystemReader.read_metadata, DefaultLoadPlanner.load_bytes = saved


def _read_sharded(p: Path, path) -> dict:
    """A sharded checkpoint folder (trainer=fsdp, momattn.strategies), consolidated in memory into the layout of
    a single-file checkpoint: state_dict, optimizer_states and the rest from meta.pt. Reads on any number of
    processes (this is how a 2-process FSDP run resumes on one process without FSDP)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    meta = _load_safely(p / SHARDED_META, path)
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint '{path}': its {SHARDED_META} is not a dict; it was not written by train.py")
    if not (p / ".metadata").is_file():  # torch logged two tracebacks, then a CheckpointException naming nothing
        raise CheckpointError(f"checkpoint '{path}' is a sharded checkpoint folder without its shard index "
                              "(.metadata): it is incomplete. Use another one, e.g. a best-step* checkpoint in the "
                              "run's checkpoints/ folder")
    ckpt: dict[str, Any] = {}
    with safe_sharded_reads(path):
        try:  # read once here, where a damaged index is named, instead of inside torch's loader
            _safe_read_metadata(FileSystemReader(p))
        except Exception as e:
            if "is not allowed in a checkpoint's shard index" in str(e):
                raise  # a refusal: safe_sharded_reads says so
            raise CheckpointError(f"checkpoint '{path}': its shard index (.metadata) cannot be read "
                                  f"({_first_line(e)}); it is damaged. Use another one, e.g. a best-step* "
                                  "checkpoint in the run's checkpoints/ folder") from None
        _load_state_dict(ckpt, storage_reader=FileSystemReader(p), planner=_EmptyStateDictLoadPlanner(), no_dist=True)
    ckpt.update(meta)
    ckpt["state_dict"] = ckpt.pop("model", None)
    n_opt = sum(1 for k in ckpt if k.startswith("optimizer_") and k[len("optimizer_"):].isdigit())
    if n_opt:
        ckpt["optimizer_states"] = [ckpt.pop(f"optimizer_{i}") for i in range(n_opt)]
    return ckpt


def holds_optimizer(path: str | os.PathLike, meta: dict) -> bool:
    """Whether a checkpoint can resume training: an optimizer state beside the weights (save_weights_only=true
    writes none). meta: read_meta's dict; a sharded folder's optimizer is read from its shard index (its meta.pt
    has none: a weights-only folder resumed into Lightning's KeyError after set-up, flows review)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        return "optimizer_states" in meta
    from torch.distributed.checkpoint import FileSystemReader

    with safe_sharded_reads(path):
        index = _safe_read_metadata(FileSystemReader(p))
    return any(str(k).startswith("optimizer_") for k in index.state_dict_metadata)


def _first_line(e: Exception | str) -> str:
    if isinstance(e, str):
        return e
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0][:200] if lines else ''}"


def _unreadable(path, e: Exception | str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint '{path}' cannot be read ({_first_line(e)}); it is truncated or not a PyTorch checkpoint. "
        "Use another one, e.g. a best-step*.ckpt in the run's checkpoints/ folder"
    )


def _data_state_problem(state: Any) -> str | None:
    """Why the data's position a resume continues at (TokenDataModule.state_dict) cannot be used; None if it can
    be, or is absent. A bad one failed after the model and data were built, with a traceback (trust review)."""
    if state is None:
        return None
    if not isinstance(state, dict):
        return f"its 'TokenDataModule' entry (where the data continues) is of type {type(state).__name__}, not a dict"
    for key in ("position", "step", "samples_per_step"):
        value = state.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0 or (key == "samples_per_step" and
                                                                                  value == 0):
            return (f"its 'TokenDataModule.{key}' entry (where the data continues) is {value!r}, not a whole number "
                    f"{'>= 1' if key == 'samples_per_step' else '>= 0'}")
    point = state.get("stream_point")
    if point is not None and (not isinstance(point, list) or not point or
                              any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in point)):
        return f"its 'TokenDataModule.stream_point' entry (where the stream continues) is {point!r}"
    return None


def _rng_problem(rng: Any) -> str | None:
    """Why a checkpoint's RNG states (momattn.lit.rng_state) cannot be restored, tried on throwaway generators (a
    resume restores them once training starts, where a bad one was a traceback); None if they can be, or are absent."""
    if rng is None:
        return None
    try:
        import random

        import numpy as np

        random.Random().setstate(rng["python"])
        name, keys, pos, has_gauss, gauss = rng["numpy"]
        np.random.RandomState().set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.Generator().set_state(rng["torch"])
        cuda = rng.get("cuda")
        if cuda is not None and not (isinstance(cuda, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in cuda)):
            raise TypeError(f"cuda is {type(cuda).__name__}, not a list of tensors")
    except Exception as e:
        return f"its 'momattn.rng' entry (the RNG states a resume restores) is not usable ({type(e).__name__}: {e})"
    return None


def _check_structure(ckpt: Any, path, targets: bool = True) -> None:
    """What the rest of momattn reads from a checkpoint, checked once with a message naming the bad entry.
    targets: also the classes its config and command line name (momattn.trust); train.py's resume reads the
    command line first, and checks those with the classes its own command line trusts."""
    if not isinstance(ckpt, dict) or "momattn" not in ckpt:
        raise CheckpointError(f"'{path}' is a PyTorch file but not a momattn checkpoint (no 'momattn' entry); "
                              "pass a .ckpt written by train.py")
    if "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint '{path}' has no 'state_dict' entry (no weights); pass a .ckpt written by "
                              "train.py")
    meta, state = ckpt["momattn"], ckpt["state_dict"]
    bad = None
    if not isinstance(meta, dict):
        bad = f"its 'momattn' entry is of type {type(meta).__name__}, not a dict"
    elif meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint '{path}' has format {meta.get('format')!r}, this momattn reads {FORMAT}")
    elif not isinstance(meta.get("model_config"), dict) or not isinstance(meta["model_config"].get("attention"), dict):
        bad = "its 'momattn.model_config' entry is missing or not a dict with an 'attention' dict"
    elif not isinstance(meta.get("tokenizer"), str):
        bad = "its 'momattn.tokenizer' entry is missing or not a tokenizer.json string"
    elif not isinstance(meta["model_config"]["attention"].get("kind"), str):
        bad = "its 'momattn.model_config.attention' entry has no 'kind' (vanilla, momentum, ...)"
    elif not isinstance(meta.get("config", {}), dict):
        bad = f"its 'momattn.config' entry is of type {type(meta['config']).__name__}, not the run's config dict"
    elif not isinstance(data := (meta.get("config") or {}).get("data") or {}, dict):
        bad = f"its run config's 'data' entry is of type {type(data).__name__}, not a dict"
    elif (seed := data.get("split_seed")) is not None and (
            not isinstance(seed, int) or isinstance(seed, bool)):  # evaluate.py's ValueError from int('abc')
        bad = f"its run config's data.split_seed is {seed!r}, not an integer"
    elif "global_step" in ckpt and (not isinstance(ckpt["global_step"], int) or isinstance(ckpt["global_step"], bool)
                                    or ckpt["global_step"] < 0):
        bad = f"its 'global_step' entry is {ckpt['global_step']!r}, not a whole number of steps"
    elif not isinstance(state, dict):
        bad = f"its 'state_dict' entry is of type {type(state).__name__}, not a dict of tensors"
    elif (skipped := meta.get("skipped_nonfinite")) is not None and (not isinstance(skipped, int)
                                                                     or isinstance(skipped, bool)):
        bad = f"its 'momattn.skipped_nonfinite' entry is {skipped!r}, not an integer"
    elif bad := _rng_problem(meta.get("rng")) or _data_state_problem(ckpt.get("TokenDataModule")):
        pass
    else:
        odd = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if odd:
            bad = f"its 'state_dict' holds entries that are not named tensors ({odd[:3]})"
    if bad:
        raise CheckpointError(f"checkpoint '{path}' is damaged or was not written by train.py: {bad}; "
                              "use another checkpoint, e.g. a best-step*.ckpt in the run's checkpoints/ folder")
    if not isinstance(meta.get("overrides") or [], list):
        raise CheckpointError(f"checkpoint '{path}' is damaged or was not written by train.py: its recorded command "
                              "line ('momattn.overrides') is not a list")
    if not targets:
        return
    from momattn.trust import check_config, check_overrides

    check_config(meta.get("config"), path)  # a _target_ there is imported and called: momattn's classes only
    # the targets of what a reader builds (data sources); a resume checks the rest of what it repeats (cli)
    check_overrides(meta.get("overrides"), f"checkpoint '{path}': its recorded command line", built=True)


_VERIFIED: set[tuple] = set()  # (file, size, times, inode, device) whose CRC-32s this process has checked


def verify_file(path: str | os.PathLike) -> None:
    """Check a checkpoint file's every byte against its CRC-32s (_verify_crc) where a resume first reads it, before
    the data are tokenized (the check came inside fit: a damaged file was found after minutes, or hours, of set-up;
    found by review). A sharded folder has no CRCs to check."""
    p = Path(path).expanduser()
    if p.is_file():
        _verify_crc(p, path)


def _verify_crc(p: Path, path) -> None:
    """torch's reader never checks the zip's CRC-32s: damaged bytes inside a tensor load as garbage or NaN weights
    (and a resume then stops at a "loss became nan" that is no fault of the run). Reads the whole file (~2 GB/s),
    once per process: a resume checks it before its set-up, then loads it in fit."""
    try:
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
    except OSError as e:
        raise _unreadable(path, e) from None
    if key in _VERIFIED:
        return
    try:
        with zipfile.ZipFile(p) as z:
            # torch.serialization.set_crc32_options(False) writes CRCs of 0: nothing to check against
            bad = z.testzip() if any(i.CRC for i in z.infolist() if i.file_size) else None
    except (OSError, zipfile.BadZipFile, ValueError, RuntimeError) as e:
        raise _unreadable(path, e) from None
    if bad is not None:
        raise CheckpointError(f"checkpoint '{path}' is damaged: the bytes of its entry {bad} do not match their CRC-32 "
                              "(a disk or copy error). Use another one, e.g. a best-step*.ckpt in the run's "
                              "checkpoints/ folder")
    _VERIFIED.add(key)


def _zip_records(p: Path, path) -> dict[int, zipfile.ZipInfo]:
    """The tensors' records of a checkpoint file, by the offset of their bytes in it, read from the zip's headers
    (no tensor read). torch.save stores every entry uncompressed; the memory-mapped load reads a compressed one's
    bytes as they are (a re-zipped file loaded garbage, blamed on its RNG state or its weights: trust review)."""
    import struct

    try:
        with zipfile.ZipFile(p) as z, open(p, "rb") as f:
            records = {}
            for info in z.infolist():
                if info.compress_type != zipfile.ZIP_STORED:
                    raise CheckpointError(
                        f"checkpoint '{path}' has a compressed entry ({info.filename}): torch.save stores everything "
                        "uncompressed, so the file was re-zipped by another tool. Use the file train.py wrote, or "
                        "write it again with torch: python -c \"import torch; torch.save(torch.load('IN', "
                        "weights_only=True), 'OUT')\"")
                if "/data/" in info.filename and info.file_size:
                    f.seek(info.header_offset + 26)
                    name_len, extra_len = struct.unpack("<HH", f.read(4))
                    records[info.header_offset + 30 + name_len + extra_len] = info
    except (OSError, zipfile.BadZipFile, ValueError, struct.error) as e:
        raise _unreadable(path, e) from None
    return records


def _check_records(path, ckpt: Any, records: dict[int, zipfile.ZipInfo]) -> None:
    """Every tensor's bytes are its own record (_zip_records), whole. The memory-mapped load reads a tensor's bytes
    from its record's offset without torch's check of the record's size: a record cut short (with a valid CRC)
    loaded the next record's bytes as weights, without a word (trust review)."""
    storages: dict[int, int] = {}  # data_ptr -> nbytes: with mmap, the file's base + the record's offset
    for o in leaves(ckpt):
        if isinstance(o, torch.Tensor) and (st := o.untyped_storage()).nbytes():
            storages[st.data_ptr()] = st.nbytes()
    ptrs, offsets = sorted(storages), sorted(records)
    base = ptrs[0] - offsets[0] if ptrs and offsets else 0
    for ptr in ptrs:
        info = records.get(ptr - base)
        if info is None or info.file_size != storages[ptr]:
            what = (f"its entry {info.filename} holds {info.file_size} bytes where its tensor needs {storages[ptr]}"
                    if info is not None else "a tensor's bytes are not where its entry is")
            raise CheckpointError(f"checkpoint '{path}' is damaged: {what} (a file cut or edited inside). Use "
                                  "another one, e.g. a best-step*.ckpt in the run's checkpoints/ folder")


def read_checkpoint(path: str | os.PathLike, verify: bool = False, targets: bool = True) -> dict:
    """The raw checkpoint dict, loaded without running any code, with a clear error for a missing, truncated,
    foreign, code-carrying or malformed file. verify: also check every byte against the zip's CRC-32s (where the
    weights will be used: a resume, a model load; not for reading the metadata). targets: also the classes its
    config and recorded command line name (train.py's resume reads its command line with targets=False, and checks
    them itself, trusting the classes today's command line names)."""
    if type(path) is int:  # Hydra reads ckpt_path=123 as a number: the file named 123 (refused until review found it)
        path = str(path)
    if not isinstance(path, str | os.PathLike) or not str(path).strip():  # ckpt_path=true / [a] / 1.5: not a path
        raise CheckpointError(f"ckpt_path={path!r} is not a path; pass the path of a .ckpt written by train.py")
    p = Path(path).expanduser()
    if not p.exists():
        if str(path) == "last":  # train.py's resume shortcut, typed to another entry point (found by review)
            raise CheckpointError("ckpt_path=last is train.py's way to resume a run folder's newest checkpoint; here, "
                                  "give the checkpoint's path, e.g. ckpt_path=<run folder>/checkpoints/last.ckpt")
        raise CheckpointError(f"checkpoint '{path}' does not exist; pass the path of a .ckpt written by train.py")
    if not p.is_dir() and not p.is_file():  # a FIFO or /dev/zero: reading it would wait, or never end
        raise CheckpointError(f"checkpoint '{path}' is not a regular file; pass the path of a .ckpt written by "
                              "train.py")
    if p.is_dir() and not (p / SHARDED_META).is_file():
        found = sorted(p.glob("*.ckpt")) or sorted(p.glob("checkpoints/*.ckpt"))
        last = [f for f in found if f.name == "last.ckpt"]
        jobs = [] if found else sorted(p.glob("*/checkpoints/last.ckpt")) or sorted(p.glob("*/checkpoints/*.ckpt"))
        hint = f"e.g. {(last or found)[0]}" if found else (  # a sweep's folder: not one run's (found by review)
            f"it holds a sweep's runs, e.g. {jobs[0]}; for every run of the sweep, pass sweep_dir={path} to "
            "evaluate.py or analyze.py instead" if jobs else f"none is there; a run keeps them in {p}/checkpoints/")
        raise CheckpointError(f"checkpoint '{path}' is a folder; pass a .ckpt file inside it ({hint})")
    # a file's records, before it is loaded (a compressed one is named first); a folder's shards are torch's
    records = _zip_records(p, path) if not p.is_dir() and zipfile.is_zipfile(p) else None
    ckpt = _read_sharded(p, path) if p.is_dir() else _load_safely(p, path)
    _check_structure(ckpt, path, targets)
    if verify and not p.is_dir():
        _verify_crc(p, path)
    if records is not None:  # every read: the zip's headers and the tensors' sizes, no tensor read (a cut record
        # was found only where the weights were loaded: after a first checkpoint was scored in full, diff review)
        _check_records(path, ckpt, records)
    return ckpt


def read_meta(path: str | os.PathLike, targets: bool = True) -> dict:
    """What a resume needs without the weights: the checkpoint dict minus state_dict / optimizer_states where it
    can be had cheaply (a sharded folder: its meta.pt alone; a file: memory-mapped, tensors not paged in)."""
    p = Path(path).expanduser()
    if p.is_dir() and (p / SHARDED_META).is_file():
        meta = _load_safely(p / SHARDED_META, path)
        _check_structure({**meta, "state_dict": {}} if isinstance(meta, dict) else meta, path, targets)
        return meta
    return read_checkpoint(path, targets=targets)


def newest_checkpoint(out_dir: Path) -> str:
    """A run folder's last.ckpt and its step, as a stop's message says it."""
    last = out_dir / "checkpoints" / "last.ckpt"
    try:
        return f"{last} is at step {read_meta(last)['global_step']}"
    except Exception:
        from momattn.cli import saved_checkpoints

        others = sorted(p.name for p in saved_checkpoints(out_dir) if p.name != "last.ckpt")  # (save_last=false: it
        # said "no checkpoint was written yet" beside them; found by review)
        holds = f"{out_dir / 'checkpoints'} holds {', '.join(others)}"
        if last.exists():  # damaged, or not train.py's (diff review: it read "no last.ckpt")
            return f"{last} cannot be read" + (f"; {holds}" if others else "")
        return f"no last.ckpt, but {holds}" if others else "no checkpoint was written yet"


def model_config_from(meta: dict, path: str | os.PathLike | None = None) -> GPTConfig:
    """The GPTConfig stored in a checkpoint's `momattn` entry (a CheckpointError if it has unknown fields)."""
    mc = dict(meta["model_config"])
    try:
        att = dict(mc["attention"])
        # a switch its kind does not read: train.py accepted and ignored these before 2026-12-03, and the checkpoint
        # kept them: what the model was, not a damaged file (diff review)
        att.update({k: False for k in ATTENTION_SWITCHES if k in att and att.get("kind") not in ATTENTION_SETTINGS[k]})
        mc["attention"] = AttentionConfig(**att)
        return GPTConfig(**mc)
    except TypeError as e:  # a field this momattn does not know (or lacks a required one)
        raise CheckpointError(f"checkpoint '{path or '?'}' has a model config this momattn cannot build ({e}); "
                              "it was written by another momattn version") from e
    except ConfigError as e:  # a value GPTConfig refuses (block_size=0): the checkpoint's, not the command line's
        raise CheckpointError(f"checkpoint '{path or '?'}' has a model config this momattn cannot build ({e}); "
                              "the checkpoint is damaged or was not written by train.py") from None


def model_state(ckpt: dict) -> dict:
    """The GPT's own state_dict from a Lightning checkpoint (keys without the 'model.' prefix)."""
    return {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}


def _some(names: list[str], n: int = 4) -> str:
    """The first n names, and how many more (the list was cut without a word: found by review)."""
    return str(list(names[:n])) + (f" and {len(names) - n} more" if len(names) > n else "")


def load_state_into(model: GPT, state: dict, path: str | os.PathLike) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to wte
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint '{path}' does not fit this model: missing {_some(missing)}, unexpected {_some(unexpected)}; "
            "it comes from an incompatible model or attention variant"
        )


def weights_digest(model: torch.nn.Module) -> str:
    """A digest of a model's weights by name, each as float32 (bf16 weights and their float32 copy read the same):
    which weights an evaluation scored, so that a sweep reuses a run's own evaluation only for its last.ckpt's."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().float() if t.is_floating_point() else t.detach()
        h.update(f"{name.removeprefix('_orig_mod.')}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    check_env: bool = True) -> tuple[GPT, Tokenizer]:
    """(model, tokenizer) from a checkpoint alone. model(idx (B, T)) -> logits (B, T, V), in eval mode.
    check_env=False: the model is not run (an export, a digest of its weights), so the attention's environment
    variables are not judged."""
    return model_from(read_checkpoint(path, verify=True), path, map_location, check_env)


def model_from(ckpt: dict, path: str | os.PathLike, map_location: str | torch.device = "cpu",
               check_env: bool = True) -> tuple[GPT, Tokenizer]:
    """load_checkpoint's (model, tokenizer) from the dict read_checkpoint(path, verify=True) gave: where its step
    labels the weights, both come from one read (a file replaced between two reads labelled one step's scores
    with another's)."""
    meta = ckpt["momattn"]
    model = GPT(model_config_from(meta, path))
    try:
        load_state_into(model, model_state(ckpt), path)
    except RuntimeError as e:  # shape mismatch: torch's first line only says "Error(s) in loading state_dict"
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = next((ln for ln in lines if ln.startswith("size mismatch")), lines[-1] if lines else type(e).__name__)
        raise CheckpointError(f"checkpoint '{path}' does not fit its own model config: {why}") from e
    if bad := next((k for k, v in model.state_dict().items() if v.is_floating_point() and not v.isfinite().all()),
                   None):  # a run that diverged is stopped before saving: such weights were damaged elsewhere
        raise CheckpointError(f"checkpoint '{path}' holds non-finite weights (nan or inf in {bad}); its model "
                              "cannot be used. Take an earlier checkpoint of the run")
    tokenizer = checkpoint_tokenizer(meta, path)
    if tokenizer.n_ids > model.config.vocab_size:
        raise CheckpointError(f"checkpoint '{path}': tokenizer has {tokenizer.n_ids} ids but the model only "
                              f"{model.config.vocab_size}; the checkpoint was assembled from mismatched parts")
    model.n_ids = tokenizer.n_ids  # model.generate samples no padding id
    if check_env:
        check_environment(model.config.attention.kind, torch.device(map_location))
    return model.to(map_location).eval(), tokenizer


def check_environment(kind: str, device: torch.device) -> None:
    """The environment variables the attention reads (MOMATTN_SCAN_BACKEND, MOMATTN_TRITON_CHUNK,
    MOMATTN_CPU_ATTENTION), judged for a model of this kind on this device as train.py judges them at start-up:
    generate.py, evaluate.py, analyze.py and lm-eval met them at the first forward, as a traceback (found by
    review)."""
    from momattn import cpu_attention, ops

    if problem := ops.backend_problem(kernel=kind != "vanilla", on_cpu=device.type == "cpu") or \
            cpu_attention.setting_problem():
        raise ConfigError(problem)


def checkpoint_tokenizer(meta: dict, path) -> Tokenizer:
    """The tokenizer a checkpoint stores, or a CheckpointError naming the checkpoint where it is damaged."""
    try:
        # (the name reaches the console and results.md: a control character in it is escaped, not obeyed)
        tok = Tokenizer.from_json(meta["tokenizer"], name=printable(meta.get("tokenizer_name", "tokenizer")))
    except DataError as e:
        raise CheckpointError(f"checkpoint '{path}': its tokenizer is damaged: {e}") from None
    # a tokenizer that multiplies text (a normalizer replacing ' ' by 100,000 characters: 3 GB of ids for 400
    # characters of a corpus) or whose patterns backtrack for seconds is refused before it reads one (found by
    # review); each probe it can encode is measured (one failing the first alone measured none: second review)
    for probe in _PROBES:
        t0 = time.thread_time()  # this thread's CPU time: a stall (swapping, a paused VM) is not the tokenizer's
        try:  # (the library itself: Tokenizer.encode refuses a multiplied text, and says less)
            ids = len(tok.hf.encode(probe, add_special_tokens=False).ids)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # noqa: BLE001 (the library raises bare Exceptions, and panics)
            continue  # one that cannot encode plain English (GINC's symbols): nothing to measure
        took = time.thread_time() - t0
        if ids > 8 * len(probe):
            raise CheckpointError(f"checkpoint '{path}': its tokenizer turns {len(probe)} characters of plain text "
                                  f"into {ids:,} tokens (a byte-level tokenizer gives at most one per byte): it is "
                                  "crafted or damaged; use a checkpoint you trust")
        if took > PROBE_S:
            raise CheckpointError(f"checkpoint '{path}': its tokenizer takes {took:.1f} s to encode {len(probe)} "
                                  "characters of plain text (a BPE takes well under a millisecond; at this rate a "
                                  "megabyte takes hours): its patterns are crafted or damaged; use a checkpoint you "
                                  "trust")
    return tok


_PROBES = ("The quick brown fox jumps over the lazy dog, 0123456789; caf\u00e9 na\u00efve \u65e5\u672c.\n" * 4,
           "The quick brown fox jumps over the lazy dog, 0123456789.\n" * 4, "a b c d e f g h i j k l m n o p\n" * 8)
PROBE_S = 0.5  # CPU seconds a probe may take (thousands of times what any trained tokenizer takes)


def checkpoint_meta(model_config: GPTConfig, tokenizer: Tokenizer, config: dict, **extra) -> dict:
    return {"format": FORMAT, "model_config": asdict(model_config), "tokenizer": tokenizer.to_json(),
            "tokenizer_name": tokenizer.name, "config": config, **extra}


def newest_last_checkpoint(root_dir: Path) -> Path | None:
    """The most recently written checkpoints/last.ckpt under root_dir/outputs and root_dir/multirun, if any (one
    left aside by a kill restored first: the search chose an older run's, found by review)."""
    from momattn.io import restore_left_aside

    found = []
    for folder in (f for d in ("outputs", "multirun") for f in (root_dir / d).glob("**/checkpoints")):  # one walk
        restore_left_aside(folder, unless_held=True)  # (only where a kill left one aside)
        if (folder / "last.ckpt").exists():
            found.append(folder / "last.ckpt")
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def resolve_ckpt_path(ckpt_path: str | None, out_dir: Path, root_dir: Path, search: bool = True) -> Path | None:
    """`ckpt_path=last` -> this run folder's last.ckpt; where it has none, the newest last.ckpt under outputs/ and
    multirun/ if search (the run folder was not chosen), else None: a folder that was chosen (hydra.run.dir, a
    multirun job's own) never resumes another run's weights; its run starts from step 0."""
    if not ckpt_path:
        return None
    if ckpt_path != "last":
        return Path(ckpt_path).expanduser()
    own = out_dir / "checkpoints" / "last.ckpt"
    if own.exists():
        return own
    if not search:
        from momattn.cli import saved_checkpoints

        others = sorted(p.name for p in saved_checkpoints(out_dir))  # (not a killed writer's partial file: review)
        if others:  # saved progress (save_last=false, an FSDP swap cut short): never trained over from step 0
            raise CheckpointError(f"ckpt_path=last: {out_dir}/checkpoints has no last.ckpt but holds {others}; "
                                  "resume from one of them with ckpt_path=<its path> (or move them away to start "
                                  "this run again from step 0)")
        from momattn.cli import other_rank

        if not other_rank():  # said once, by the job's first process
            print(f"[momattn] ckpt_path=last: {out_dir}/checkpoints holds no checkpoint (the run stopped before its "
                  "first one, or never started); starting it from step 0", file=sys.stderr, flush=True)
        return None
    newest = newest_last_checkpoint(root_dir)
    if newest is None:
        raise no_run_to_resume(root_dir)
    return newest


def no_run_to_resume(root_dir: Path) -> CheckpointError:
    return CheckpointError(f"ckpt_path=last: no run to resume: no checkpoints/last.ckpt under {root_dir}/outputs nor "
                           f"{root_dir}/multirun (where it searches); name the run's folder, ckpt_path=last "
                           "hydra.run.dir=<run folder> (paths.output_dir follows it), or pass the checkpoint's path, "
                           "e.g. ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt")


def check_compatible(resumed: GPTConfig, current: GPTConfig, path: Path) -> None:
    """A resume must keep the architecture (dropout may change)."""
    a, b = asdict(resumed), asdict(current)
    diff = {k: (a[k], b[k]) for k in a if a[k] != b[k] and k != "dropout"}  # dropout may change on resume
    if diff:
        raise CheckpointError(
            f"checkpoint '{path}' was trained with a different model: "
            + "; ".join(f"{k}: checkpoint {v[0]} vs config {v[1]}" for k, v in diff.items())
            + ". Resume with the checkpoint's own model/attention settings (or start a new run without ckpt_path)"
        )
