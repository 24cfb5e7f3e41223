"""LightningDataModule over a memory-mapped token file: resumable, deterministic, DDP-aware.

Training samples form one global stream: sample g is window perm_e[g mod W] of epoch e = g // W (W windows of
block_size + 1 tokens, perm_e a permutation seeded by (seed, e)). Rank r of a world of size n takes samples
start + r, start + r + n, ...; on resume `start` follows from the restored global step, so the run continues
exactly where it stopped. The checkpoint also records the data position itself, so a resume with other
samples per step (batch size, accumulation, devices) continues there too, and which order of which windows that
position counts in: a resume with another seed or other training text starts the new order at its beginning (a
position in the old order would train some windows twice and skip others), and says so.
"""

from __future__ import annotations

import os
import signal
import sys
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler

from momattn.errors import DataError


def ignore_sigterm(worker_id: int) -> None:
    """A DataLoader worker leaves SIGTERM to the main process. SLURM's preemption, time limit and scancel signal
    every process of a job: a worker that died of it made torch raise "DataLoader worker ... killed by signal"
    inside the preemption save, which lost every step since the last checkpoint (the worker ends when the main
    process shuts the loader down, or when it is gone)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.environ.get("PL_SEED_WORKERS") == "1":  # what Lightning adds itself where a loader has no worker_init_fn
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)


@dataclass(frozen=True)
class _MappedFile:
    """Where a read-only memmap's tokens lie in their file: what a worker maps again instead of a pickled copy."""
    path: str
    dtype: str
    offset: int
    length: int


def _mapped_file(tokens) -> _MappedFile | None:
    """The file span of a 1-D read-only memmap (or a contiguous slice of one, whose own `offset` is its parent's)."""
    root = tokens
    while isinstance(getattr(root, "base", None), np.memmap):
        root = root.base
    if not (isinstance(tokens, np.memmap) and isinstance(root, np.memmap) and root.filename and tokens.ndim == 1
            and tokens.flags.c_contiguous and root.mode == "r"):
        return None
    start = root.offset + tokens.ctypes.data - root.ctypes.data
    return _MappedFile(str(root.filename), tokens.dtype.str, int(start), len(tokens))


class TokenWindows(Dataset):
    """Item g -> (x, y): block_size input tokens and the same shifted by one."""

    def __init__(self, tokens: np.ndarray, block_size: int, seed: int, shuffle: bool = True):
        self.tokens, self.block_size, self.seed, self.shuffle = tokens, block_size, seed, shuffle
        self.n_windows = (len(tokens) - 1) // block_size
        self._perm_epoch, self._perm = -1, None
        self._order: str | None = None

    def order(self) -> str:
        """Which windows, in which order: the seed, the window size and count, and a CRC-32 of the tokens (of 256
        evenly spaced runs of 4096 where there are more: a few MB read, whatever the corpus's size)."""
        if self._order is None:
            crc, n = 0, len(self.tokens)
            for s in range(0, n, max(4096, -(-n // 256))):
                crc = zlib.crc32(np.ascontiguousarray(self.tokens[s : s + 4096]).tobytes(), crc)
            self._order = f"{self.seed if self.shuffle else 'in order'}/{self.block_size}/{self.n_windows}/{crc:08x}"
        return self._order

    def window(self, g: int) -> int:
        epoch, i = divmod(g, self.n_windows)
        if not self.shuffle:
            return i
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            self._perm_epoch = epoch
        return int(self._perm[i])

    def __len__(self) -> int:
        return self.n_windows

    # a DataLoader worker started by spawn or forkserver (macOS's default; Linux's from Python 3.14) gets this by
    # pickle, where a memmap pickles as a copy of its data: the whole token cache in each worker's RAM (review)
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if (mapped := _mapped_file(self.tokens)) is not None:
            state["tokens"] = mapped
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(tokens := state["tokens"], _MappedFile):
            state["tokens"] = np.memmap(tokens.path, dtype=tokens.dtype, mode="r", offset=tokens.offset,
                                        shape=(tokens.length,))
        self.__dict__.update(state)

    def __getitem__(self, g: int):
        s = self.window(g) * self.block_size
        chunk = torch.from_numpy(self.tokens[s : s + self.block_size + 1].astype(np.int64))
        return chunk[:-1], chunk[1:]


class StreamSampler(Sampler[int]):
    """Global sample indices start + rank, start + rank + world, ... up to total (exclusive).

    start is an int or a callable read each time an iterator is made or the length asked: the datamodule passes
    the restored global step's position, so an iterator Lightning makes again (a new epoch, a resume) continues
    the stream where training is, however many batches DataLoader workers had prefetched and dropped. The
    sampler keeps no position of its own, and its length is the whole stream's: it never changes under a running
    iterator (with workers, a shared position moved on by their prefetching shortened the epoch Lightning was
    counting, and the run looped over empty epochs)."""

    def __init__(self, start: int | Callable[[], int], total: int, rank: int = 0, world: int = 1,
                 length: int | None = None):
        self.start, self.total, self.rank, self.world = start, total, rank, world
        self.length = total if length is None else length  # the whole stream's samples, which __len__ reports

    def _first(self) -> int:
        return (self.start() if callable(self.start) else self.start) + self.rank

    def __iter__(self):
        return iter(range(self._first(), self.total, self.world))

    def __len__(self) -> int:
        # the whole stream's length, wherever it starts: on a resume inside an epoch Lightning restores its batch
        # count there and reads the rest of the epoch's length; a length of the rest alone made it end the epoch
        # at once, stepping the optimizer on one micro-batch of an accumulation
        return max(0, -(-(self.length - self.rank) // self.world))


def check_window(name: str, tokens, block_size: int, more: Mapping[str, str] | None = None,
                 at_most: bool = False) -> None:
    """A DataError where a split's tokens are fewer than one training window (block_size + 1); more: the data
    source's own advice by split (its split_size_advice), else the text sources'. at_most: `tokens` is a bound of
    the count (the split's bytes, before a byte-level BPE is trained)."""
    if len(tokens) < block_size + 1:
        advice = (more or {}).get(name) or ("add text" + (", hold out more of it (data.val_fraction)"
                                                          if name == "val" else ""))
        count = (f"at most {len(tokens)} tokens (a byte each and one end-of-text per document, before the BPE is "
                 "trained)") if at_most else f"{len(tokens)} tokens"
        raise DataError(f"the {name} split has {count}, fewer than one training window of "
                        f"model.block_size + 1 = {block_size + 1}; {advice} or lower model.block_size")


class TokenDataModule(LightningDataModule):
    def __init__(self, train_tokens: np.ndarray | Dataset, val_tokens: np.ndarray, block_size: int, batch_size: int,
                 max_steps: int, accumulate: int, val_batches: int, seed: int, num_workers: int = 0,
                 more: Mapping[str, str] | None = None):
        """train_tokens: the cached token ids, or a dataset of windows read in order (data=hf_stream's). more:
        how the data source makes a split longer ({'train': ..., 'val': ...}, its own keys), where a split is
        shorter than one window; else the text sources' advice."""
        super().__init__()
        splits = (("val", val_tokens),) if isinstance(train_tokens, Dataset) else \
            (("train", train_tokens), ("val", val_tokens))
        for name, toks in splits:
            check_window(name, toks, block_size, more)
        self.train_set = train_tokens if isinstance(train_tokens, Dataset) else \
            TokenWindows(train_tokens, block_size, seed)
        self.val_set = TokenWindows(val_tokens, block_size, seed, shuffle=False)
        self.batch_size, self.max_steps, self.accumulate = batch_size, max_steps, accumulate
        self.val_batches, self.num_workers = val_batches, num_workers
        self._resumed: dict | None = None  # the data position a checkpoint recorded (load_state_dict)
        self._restarted_from: int | None = None  # that position, where it counted another order (not continued)

    def _per_step(self) -> int:
        return self.batch_size * self.accumulate * self.trainer.world_size

    def _offset(self) -> int:
        """Samples between this run's step x samples_per_step and the data position. 0 unless the run resumed
        from a checkpoint taken with other samples per step (another data.batch_size, accumulation or number of
        devices): the stream then continues where that run stopped, not where step x this run's size points."""
        if not self._resumed:
            return 0
        return self._resumed["position"] - self._resumed["step"] * self._per_step()

    def _order(self) -> str | None:
        order = getattr(self.train_set, "order", None)  # TokenWindows', a stream's (StreamWindows)
        return order() if callable(order) else None

    def _validated(self) -> str:
        """Which windows validation reads: the split's order() and how many of it (val_dataloader's n)."""
        return f"{self.val_set.order()}/{self._val_count(self.trainer.world_size)}"

    def state_dict(self) -> dict:
        step = self.trainer.global_step  # checkpoints are taken between optimizer steps
        position = step * self._per_step() + self._offset()
        state = {"position": position, "step": step, "samples_per_step": self._per_step(), "order": self._order(),
                 "val": self._validated()}
        point_before = getattr(self.train_set, "point_before", None)  # a stream's: where a window starts in it
        if callable(point_before) and (at := point_before(position)) is not None:
            state["stream_point"] = [at[0], *at[1]]  # [window, epoch, document, token]: a resume seeks it
        return state

    def continues(self, state: dict) -> bool:
        """Whether a checkpoint's data state (state_dict) counted this run's order of the training windows: its
        position then goes on here; else (another seed or other text) the new order starts at 0."""
        was, now = state.get("order"), self._order()
        aliases = getattr(self.train_set, "order_aliases", None)  # the same order, as an earlier release keyed it
        return not (was is not None and now is not None and was != now
                    and was not in (aliases() if callable(aliases) else []))

    def load_state_dict(self, state: dict) -> None:
        self._resumed, self._restarted_from = dict(state), None
        if not self.continues(state):  # another seed or other text: the old position
            self._restarted_from = int(state["position"])  # means nothing in the new order, which starts at 0
            self._resumed["position"] = 0
        elif (point := state.get("stream_point")) is not None and hasattr(self.train_set, "resume_at"):
            self.train_set.resume_at(point[0], tuple(point[1:]))  # read up to it, not tokenized up to it

    def _loader(self, dataset, sampler) -> DataLoader:
        # its own generator: creating an iterator must not draw from the global RNG that dropout uses
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          drop_last=True, persistent_workers=False, generator=torch.Generator().manual_seed(0),
                          worker_init_fn=ignore_sigterm if self.num_workers else None)

    def train_dataloader(self) -> DataLoader:
        world, rank, per_step, offset = self.trainer.world_size, self.trainer.global_rank, self._per_step(), self._offset()
        trainer = self.trainer
        if self._restarted_from is not None and rank == 0:
            print(f"[momattn] the training windows or their order differ from the checkpoint's run (another seed, "
                  f"other training text or model.block_size): the data starts at the beginning of the new order, "
                  f"not at sample {self._restarted_from}, where that run stopped in its own", file=sys.stderr)
        elif offset and rank == 0:
            was = self._resumed["samples_per_step"]
            print(f"[momattn] resumed with {per_step} samples per optimizer step (the checkpoint's run took {was}): "
                  f"the data continues at sample {self._resumed['position']}, where that run stopped", file=sys.stderr)
        if self._resumed and self._resumed.get("val") not in (None, self._validated()) and rank == 0:
            # best-*.ckpt and val/loss compared across two validation sets without a word (found by review)
            print("[momattn] the validation windows differ from the checkpoint's run (data.val_batches or "
                  "data.batch_size, the number of processes, each of which validates data.val_batches batches, the "
                  "split or the corpus changed): val/loss before and after this resume are not comparable, and the "
                  "best checkpoint kept so far was chosen on the old ones", file=sys.stderr)

        def start() -> int:  # the global step (restored on resume) -> the exact data position
            return trainer.global_step * per_step + offset

        # the stream ends max_steps' samples after where the resumed step stands (offset: a position counted with
        # other samples per step, or a new order restarted at 0); its length is never less than max_steps' samples
        # in this run's units, which Lightning's restored batch count is measured against (a shorter one ended the
        # restored epoch early, stepping on part of an accumulation)
        total = self.max_steps * per_step + offset
        return self._loader(self.train_set, StreamSampler(start, total, rank, world,
                                                          length=max(total, self.max_steps * per_step)))

    def _val_count(self, world: int) -> int:
        """The windows validated per validation, over all ranks."""
        n = min(len(self.val_set), self.val_batches * self.batch_size * world)
        n -= n % (self.batch_size * world)
        if n == 0:  # fewer windows than one global batch: an equal share each (every rank must validate, or the
            n = min(len(self.val_set), self.batch_size * world)  # others wait for it in their all_gather forever)
            n -= n % world
        return n

    def _val_windows(self, world: int) -> list[int]:
        """The windows validated, over all ranks: n spread evenly over the whole split (the first n would be its
        first documents only: in the default corpus AGNews, whose text comes first, and none of the MR, Subj, SST-5
        or TREC text)."""
        n = self._val_count(world)
        return [j * len(self.val_set) // n for j in range(n)] if n else []

    def validated_targets(self, world: int) -> np.ndarray:
        """The tokens val/loss is measured on (each validated window's targets): the text a baseline that stands
        beside val/ppl must be measured on too."""
        t = self.val_set.block_size
        windows = self._val_windows(world) or range(len(self.val_set))  # none validated: the split's windows
        return np.concatenate([self.val_set.tokens[i * t + 1 : i * t + t + 1] for i in windows] or [[]]).astype(int)

    def val_dataloader(self) -> DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        n = self._val_count(world)
        if n == 0:
            raise DataError(f"the val split has {len(self.val_set)} window(s) of model.block_size tokens, fewer than "
                            f"the {world} training processes (each validates its share); add validation text or "
                            "lower model.block_size")
        spread = self._val_windows(world)
        return DataLoader(self.val_set, batch_size=min(self.batch_size, n), sampler=spread[rank::world],
                          num_workers=self.num_workers, generator=torch.Generator().manual_seed(0),
                          worker_init_fn=ignore_sigterm if self.num_workers else None)
