"""Corpora bigger than memory or disk: `data=hf_stream` reads a `datasets` corpus as a stream and tokenizes it on
the fly, packing documents (each followed by <eot>) into one token stream cut into training windows.

Window g of the stream is tokens [g * T, g * T + T + 1) of the packed stream (T = block_size), the same layout as
the cached path (TokenWindows without shuffling; the order comes from the corpus and its shuffle buffer). Sample g
of the run is window g: DDP ranks take every world-th sample through the same StreamSampler as the cached path,
and a resume restarts at sample global_step x samples_per_step, exactly where the run stopped. The checkpoint
records where a window at or before that sample starts (its Point: epoch, document, token), and the resume reads
the documents before it without tokenizing them (16x faster than tokenizing them: benchmarks/bench_data.py); a
checkpoint without one (before session 45) is reached by tokenizing the stream up to it. When the stream ends, the
next epoch reads it again, shuffled with a seed drawn from (seed, epoch) (epoch 0: the seed itself).

A background thread tokenizes ahead of training (the `tokenizers` library releases the GIL), so the pipeline
overlaps the training step instead of adding to it. Validation uses the documents of the first `val_docs` rows of
the validation split (or, without one, of the train stream, which training then leaves out): a fixed, cached set.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from momattn.data.sources import (
    LOCAL_BUILDERS,
    VAL_COPIES_RULE,
    Split,
    check_builder_config,
    check_files_there,
    check_local_files,
    check_seed,
    check_split_files,
    check_splits,
    check_text,
    check_unread_splits,
    damaged,
    empty_folder,
    ends_digest,
    folder_files,
    local_files,
    local_val_split,
    named_files,
    no_rows,
    not_utf8,
    same_text,
    saved_dataset,
    split_files,
    unknown_split,
    unparsed_rows,
)
from momattn.errors import DataError, first_line
from momattn.utils import digest


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of an epoch: `seed` itself in epoch 0, then one drawn from (seed, epoch), so that no two
    (seed, epoch) pairs share an order (seed + epoch made seed 1's second epoch seed 2's first)."""
    return seed if epoch == 0 else int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


_VAL_DOCS = 2_000  # data.val_docs' default


@dataclass
class StreamingHubCorpus:
    """A `datasets` corpus read with streaming=True: nothing is downloaded or stored beyond what is being read."""

    name: str = ""  # hub name (HuggingFaceFW/fineweb, allenai/c4 with config=en, ...) or a builder: json | text | parquet
    config: str | None = None
    train_split: str = "train"
    val_split: str | None = "validation"  # null: the first val_docs documents of the train stream
    text_field: str = "text"
    data_files: Any = None  # local builders: {train: a.jsonl, validation: b.jsonl}; a file or a list: the train split's
    revision: str | None = None  # a hub commit or tag: pin it, so a resume reads the same stream
    shuffle_buffer: int = 10_000  # documents shuffled in a buffer of this size (0: corpus order)
    seed: int = 1234
    val_docs: int = _VAL_DOCS  # validation documents (read once, cached like any corpus)
    tokenizer_docs: int = 50_000  # documents a BPE tokenizer is trained on (tokenizer=bpe)

    def __post_init__(self):
        if not self.name:
            raise DataError("data=hf_stream needs data.name=<hub dataset>, e.g. data.name=HuggingFaceFW/fineweb "
                            "data.config=sample-10BT data.val_split=null (it has no validation split), or data.name=json data.data_files={train: a.jsonl}")
        check_splits(self.train_split, self.val_split)
        for key in ("train_split", "val_split"):  # datasets streams whole splits: 'train[:50%]' was "not a split"
            if "[" in str(getattr(self, key) or ""):
                raise DataError(f"data.{key}='{getattr(self, key)}': a stream reads whole splits, not a slice of one; "
                                "name the split (data=hf, which reads the corpus up front, takes slices)")
        self.data_files = split_files(self.data_files, self.train_split)
        check_local_files(self.name, self.data_files)
        check_builder_config(self.name, self.config)
        check_unread_splits(self.data_files, self.train_split, self.val_split)
        check_split_files(self.data_files)
        check_seed(self.seed, "the shuffle buffer")
        for key, least in (("shuffle_buffer", 0), ("val_docs", 1), ("tokenizer_docs", 1)):  # the one key at fault
            if getattr(self, key) < least:
                raise DataError(f"data.{key}={getattr(self, key)} must be >= {least}")

    @property
    def split_size_advice(self) -> dict[str, str]:
        """How to make the validation split longer than one training window (TokenDataModule's advice): more of its
        rows (data.val_docs: its first rows are read), or a split with more text."""
        where = f"data.val_split='{self.val_split}'" if self.val_split else "the train split's first rows"
        return {"val": f"raise data.val_docs={self.val_docs} (the first rows of {where} are read) where it has more "
                       "rows, or give it more text"}

    def fingerprint(self) -> str:
        return digest(["hf_stream", 1, self.name, self.config, self.train_split, self.val_split, self.text_field,
                       self.data_files, local_files(self.data_files), self.revision, self.shuffle_buffer, self.seed, self.val_docs,
                       self.tokenizer_docs] + folder_files(self.name) + ([] if self.val_split else [HELD_OUT_RULE])
                      + ([VAL_COPIES_RULE] if local_val_split(self.val_split, self.data_files, self.name) else []))

    def order(self) -> str:
        """The settings that decide the training stream's documents and their order: a resume whose order differs
        starts the new one at its beginning (TokenDataModule). Local files count by their size and a digest of
        their first and last 64 KiB, not by how data.data_files spells them: the same files named by another path
        (relative for absolute, moved to another disk) restarted the stream at its beginning (found by review). Not
        told apart: a same-size edit in the middle of a file over 128 KiB, an unpinned hub corpus updated, and the
        files of a local folder (data.name=<folder>) or of a URL, which count by their names."""
        return self._order(self._files_key())

    def order_aliases(self) -> list[str]:
        """The order's key as releases before session 45 spelt it (data.data_files as written): a checkpoint of
        theirs still resumes in place."""
        return [self._order(self.data_files)]

    def _files_key(self):
        if str(self.name).lower() not in LOCAL_BUILDERS or not self.data_files:
            return self.data_files
        if getattr(self, "_files", None) is None:  # read once per process (each checkpoint asks)
            self._files = {str(split): [_ends(f) for f in named_files(files)]
                           + [f for f in (files if isinstance(files, list | tuple) else [files]) if "://" in str(f)]
                           for split, files in self.data_files.items()}  # each file's (size, digest), and URLs
        return self._files

    def _order(self, files) -> str:
        held = [self.val_docs, HELD_OUT_RULE] if self.val_split is None else []  # the rows left out of training
        if local_val_split(self.val_split, self.data_files, self.name):  # the copies left out, of the val_docs
            # read: another val_docs is another stream (the default's key stays that of earlier releases)
            held += [VAL_COPIES_RULE, *([self.val_docs] if self.val_docs != _VAL_DOCS else [])]
        return digest(["hf_stream", self.name, self.config, self.train_split, self.val_split, self.text_field,
                       files, self.revision, self.shuffle_buffer, self.seed, *held])

    def _open(self, split: str):
        import datasets

        if (saved := saved_dataset(self.name, split, self.train_split)) is not None:
            return saved.to_iterable_dataset()
        check_files_there(self.name, self.data_files, split)
        try:
            return datasets.load_dataset(self.name, self.config, split=split, data_files=self.data_files,
                                         revision=self.revision, streaming=True)
        except StopIteration:  # what datasets raises for files without a single row
            raise no_rows(self.name, self.data_files) from None
        except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError, ...)
            if wrong := unknown_split(self.name, split, self.val_split, e) or empty_folder(self.name, e):
                raise wrong from None
            if self._local() and damaged(e):  # a damaged file, not the hub or the network (found by review)
                raise unparsed_rows(self.name, self.data_files, split, e) from None
            raise DataError(
                f"cannot stream data.name='{self.name}' (config={self.config}, split={split}): "
                f"{type(e).__name__}: {first_line(e, 300)}. Streaming reads the hub "
                "while training: check the name and the network (HF_DATASETS_OFFLINE=1 forbids it), or stream "
                "local files: data.name=json data.data_files={train: a.jsonl, validation: b.jsonl}"
            ) from None

    def _local(self) -> bool:
        """Whether the stream reads local files (data_files, or a folder named by data.name)."""
        return bool(self.data_files or folder_files(self.name))

    def texts(self, split: str, epoch: int = 0, shuffle: bool = True, limit: int | None = None) -> Iterator[str]:
        """The non-empty documents of `split` in stream order (of its first `limit` rows), shuffled (the shards'
        order, and in a buffer; by epoch_seed) unless shuffle=False."""
        ds = self._open(split)
        if limit is not None:
            ds = ds.take(limit)
        if shuffle and self.shuffle_buffer:
            ds = ds.shuffle(seed=epoch_seed(self.seed, epoch), buffer_size=self.shuffle_buffer)
        rows = iter(ds)
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except UnicodeDecodeError as e:
                raise not_utf8(self.name, self.data_files, e) from None
            except Exception as e:  # pyarrow's ArrowInvalid (a line that is not JSON), datasets' generation errors;
                # a local file cut short or damaged (a gzip's EOFError hours in was a traceback; found by review)
                if not (isinstance(e, ValueError) or type(e).__name__ == "DatasetGenerationError"
                        or self._local() and damaged(e)):
                    raise  # a connection or other failure: as it is
                raise unparsed_rows(self.name, self.data_files, split, e) from None
            if self.text_field not in row:
                raise DataError(f"data.name='{self.name}' has no field '{self.text_field}' (fields: {sorted(row)}); "
                                "set data.text_field")
            text = row[self.text_field]
            if text is not None and not isinstance(text, str):  # a number: the wrong column (null rows are skipped)
                raise DataError(f"data.text_field='{self.text_field}' of data.name='{self.name}' holds "
                                f"{type(text).__name__} values ({text!r:.60}), not text; set data.text_field")
            if text and (text := text.lstrip("\ufeff")).strip():  # a byte-order mark is not text (HubCorpus)
                yield text

    def train_texts(self, epoch: int = 0) -> Iterator[str]:
        """The training stream. Without a validation split, the documents of the train split's first val_docs rows
        are held out by their text, so no epoch trains on them (nor on a copy elsewhere in the stream). Skipping
        those rows by position instead (datasets' skip) stopped datasets from shuffling the shards' order: every epoch
        then read the shards in their stored order, shuffled only inside the buffer."""
        if self.val_split and not local_val_split(self.val_split, self.data_files, self.name):
            return self.texts(self.train_split, epoch)
        held = self._held_out()
        return (t for t in self.texts(self.train_split, epoch) if _text_key(t) not in held)

    def _held_out(self) -> frozenset[bytes]:
        """The documents no epoch trains on: the held-out first val_docs rows of the train split, or (a local
        validation split of the user's own files) the validation documents, whose copies are left out."""
        if getattr(self, "_held", None) is None:
            self._held = frozenset(_text_key(t) for t in self.texts(self.val_split or self.train_split, shuffle=False,
                                                                     limit=self.val_docs))
        return self._held

    def documents(self, split: Split) -> list[str]:
        """Bounded lists only: 'val' = the non-empty documents among the first val_docs rows of the validation
        split (or of the train split, held out from training), 'train' = the first tokenizer_docs training
        documents (what a BPE tokenizer is trained on; training itself reads train_texts)."""
        if split == "val":
            docs = list(self.texts(self.val_split or self.train_split, shuffle=False, limit=self.val_docs))
        else:
            docs = list(islice(self.train_texts(), self.tokenizer_docs))
        if not docs and split == "train":
            raise self.no_training_documents()
        if not docs and next(iter(self._open(self.val_split or self.train_split).take(1)), None) is None:
            raise no_rows(self.name, self.data_files)  # an empty file: no val_docs gives it text (found by review)
        if not docs:
            where = (f"data.val_split='{self.val_split}'" if self.val_split else
                     f"data.train_split='{self.train_split}', held out for validation (data.val_split=null)")
            more = next(iter(self._open(self.val_split or self.train_split).skip(self.val_docs).take(1)), None)
            raise DataError(f"data.name='{self.name}': the first data.val_docs={self.val_docs} rows of {where} hold "
                            "no text (blank or null rows); " + ("raise data.val_docs, or " if more is not None else "")
                            + "name a validation split with text")  # (a split with no more rows: found by review)
        # judged on these bounded lists, read at start-up: UTF-16 shows in its first rows, and one junk row hours
        # into a web corpus does not end the run (HubCorpus judges its whole split so)
        check_text(docs, self.name, self.data_files, f"its first {split} documents")
        return docs

    def check_start(self, rows: int = 1_000) -> None:
        """Judge the text of the training split's first rows at start-up, whatever the tokenizer: documents('train')
        judges them only where a BPE tokenizer is trained on them, so under tokenizer=gpt2 a UTF-16 file read as
        UTF-8 trained to the end without a word (found by review)."""
        # rows left out of training (held out, or copies of the validation split's): one left to train on is seen
        # now, not at the first training batch after the model's set-up (found by review). Read in stream order, it
        # is the row after the held-out ones as a rule. One pass serves both (the stream was opened for each)
        held = self._held_out() if not self.val_split or local_val_split(self.val_split, self.data_files,
                                                                          self.name) else None
        docs, trainable = [], held is None
        for text in self.texts(self.train_split, shuffle=False):
            if len(docs) < rows:
                docs.append(text)
            trainable = trainable or _text_key(text) not in held
            if trainable and len(docs) >= rows:
                break
        if docs:
            check_text(docs, self.name, self.data_files, "its first train documents")
        if not trainable:
            raise self.no_training_documents()

    def no_training_documents(self) -> DataError:
        """Why the training stream yields no document, and what to change: every row held out for validation, or
        a train split without text."""
        rows = not self.val_split or local_val_split(self.val_split, self.data_files, self.name)
        if rows and any(True for _ in self.texts(self.train_split, shuffle=False)):
            if self.val_split:  # every row copies one of the validation split's documents
                return DataError(f"data.name='{self.name}': every row of the train split copies a document of the "
                                 f"validation split (data.val_split={self.val_split}), and copies are left out of "
                                 "training; give training files of their own")
            return DataError(f"data.name='{self.name}': every row of the train split is among the first "
                             f"data.val_docs={self.val_docs}, held out for validation (or a copy of one); "
                             + ("lower data.val_docs" if self.val_docs > 1 else "give more documents, or a "
                                "validation split of their own (data.data_files={train: ..., validation: ...})"))
        return DataError(f"the training stream of data.name='{self.name}' (data.train_split={self.train_split}) has "
                         f"no documents with text in data.text_field='{self.text_field}'")


def _ends(path) -> list:
    """[size, a digest of the first and the last 64 KiB] of a file (the two overlap in a file under 128 KiB)."""
    size = path.stat().st_size
    return [size, ends_digest(path, size, tail_over=-1)]


HELD_OUT_RULE = "copies whatever their whitespace"  # in the keys: a held-out copy with a trailing newline was trained


def _text_key(text: str) -> bytes:
    return hashlib.blake2b(same_text(text).encode(), digest_size=16).digest()


def packed_windows(texts: Callable[[int], Iterator[str]], encode_batch: Callable[[list[str]], list[list[int]]],
                   eot: int, block_size: int, batch_docs: int = 64,
                   no_documents: Callable[[], DataError] | None = None) -> Iterator[np.ndarray]:
    """Windows of block_size + 1 tokens, window g = packed tokens [g T, g T + T + 1), over epochs 0, 1, ... of
    texts(epoch) (each document followed by eot). Raises DataError when an epoch yields no document (no_documents'
    error, where given: what to change)."""
    return (w for w, _ in located_windows(texts, encode_batch, eot, block_size, batch_docs, no_documents))


Point = tuple[int, int, int]  # (epoch, document, token): where a window starts in the packed stream


def located_windows(texts: Callable[[int], Iterator[str]], encode_batch: Callable[[list[str]], list[list[int]]],
                    eot: int, block_size: int, batch_docs: int = 64,
                    no_documents: Callable[[], DataError] | None = None,
                    start: Point = (0, 0, 0)) -> Iterator[tuple[np.ndarray, Point]]:
    """packed_windows' windows, each with the Point where it starts: its first token is token `token` of
    document `document` of texts(epoch) (counted from 0; a document's tokens end with its eot). start: a window's
    own Point to begin at; the documents before it are read but not tokenized (a resume reaches its window at the
    speed of reading the corpus, not of tokenizing it)."""
    buf = np.empty(0, dtype=np.int64)
    pieces: deque[list[int]] = deque()  # [epoch, document, first token, count] of each document buf holds, in order
    epoch, skip, first = start
    n_windows, n_tokens = int(start != (0, 0, 0)), 0  # a resumed stream is known to have windows
    while True:
        n_docs = 0
        docs_of_epoch = texts(epoch)
        if skip:
            n_docs = sum(1 for _ in islice(docs_of_epoch, skip))
        while docs := list(islice(docs_of_epoch, batch_docs)):  # tokenized batch_docs documents at a time
            ids = [np.asarray(d + [eot], dtype=np.int64) for d in encode_batch(docs)]
            if first:  # the resumed window starts inside the first of them
                if first >= len(ids[0]):  # that document is shorter than where the window started in it
                    raise DataError(f"document {n_docs} of the training stream's epoch {epoch} has {len(ids[0])} "
                                    f"tokens, and the checkpoint's run stopped at its token {first}: its text changed "
                                    "since (pin data.revision, or start a new run)")
                ids[0] = ids[0][first:]
            pieces.extend([epoch, n_docs + i, first if i == 0 else 0, len(t)] for i, t in enumerate(ids))
            first = 0
            n_docs += len(docs)
            n_tokens += sum(map(len, ids)) if epoch == 0 else 0
            buf = np.concatenate([buf, *ids])
            while len(buf) >= block_size + 1:
                n_windows += 1
                yield buf[: block_size + 1], (pieces[0][0], pieces[0][1], pieces[0][2])
                buf = buf[block_size:]
                _drop(pieces, block_size)
        if skip and n_docs <= skip:  # no document `skip`: the corpus changed under an unchanged setting (an unpinned
            # hub corpus, a file rewritten); one that lost just that document went on into the next epoch (review)
            raise DataError(f"the training stream's epoch {epoch} has {n_docs} documents, and the checkpoint's run "
                            f"stopped inside document {skip}: its text changed since (pin data.revision, or start a "
                            "new run)")
        if n_docs == 0:
            raise no_documents() if no_documents else DataError("the training stream has no documents")
        if n_windows == 0:  # each window would be the few tokens repeated, epoch after epoch
            raise DataError(f"the training stream has {n_tokens} tokens in all, fewer than one training window of "
                            f"model.block_size + 1 = {block_size + 1}; give more text or a smaller model.block_size")
        epoch, skip = epoch + 1, 0


def _drop(pieces: deque[list[int]], n: int) -> None:
    """The first n tokens of the buffer that `pieces` describes leave it."""
    while n:
        if pieces[0][3] <= n:
            n -= pieces.popleft()[3]
        else:
            pieces[0][2] += n
            pieces[0][3] -= n
            n = 0


class StreamWindows(Dataset):
    """Item g -> (x, y) of window g of the stream. Items must be asked for in increasing order (StreamSampler
    does); an earlier one restarts the stream. A thread reads and tokenizes up to `ahead` windows in advance.

    The Points of the latest `kept` windows taken from the thread are kept: a checkpoint records one
    (point_before), and a resume from it (resume_at) reads the documents before it without tokenizing them."""

    def __init__(self, source: StreamingHubCorpus, tokenizer, block_size: int, ahead: int = 256,
                 kept: int = 1 << 16):
        self.source, self.tokenizer, self.block_size, self.ahead = source, tokenizer, block_size, ahead
        self.kept, self._points = kept, OrderedDict()  # window -> its Point, oldest first
        self._resume: tuple[int, Point] | None = None  # where a resume starts the thread (window, its Point)
        self._reset()

    def _reset(self) -> None:
        self._queue: queue.Queue | None = None
        self._stop: threading.Event | None = None
        self._next = 0  # index of the next window the queue holds

    def order(self) -> str:
        """Which windows, in which order (TokenWindows.order's counterpart): the stream's settings, the tokenizer and
        the window size."""
        return f"stream/{self.source.order()}/{self.tokenizer.fingerprint}/{self.block_size}"

    def order_aliases(self) -> list[str]:
        """Other keys of the same order (the source's order_aliases): a checkpoint that recorded one resumes."""
        return [f"stream/{a}/{self.tokenizer.fingerprint}/{self.block_size}" for a in self.source.order_aliases()]

    def __getstate__(self):  # DataLoader workers get a copy without the thread
        state = dict(self.__dict__)
        state.update(_queue=None, _stop=None, _next=0)
        return state

    def point_before(self, g: int) -> tuple[int, Point] | None:
        """The latest window at or before window g whose Point was kept, with it; None where there is none."""
        return next(((k, p) for k, p in reversed(self._points.items()) if k <= g), None)

    def resume_at(self, g: int, point: Point) -> None:
        """Start the stream at window g, whose Point a checkpoint recorded (point_before), for any window >= g."""
        self._resume = (int(g), tuple(int(x) for x in point))

    def _start(self, g: int) -> None:
        self._stop = threading.Event()
        self._queue = q = queue.Queue(maxsize=self.ahead)
        stop, tok = self._stop, self.tokenizer
        first, at = self._resume if self._resume is not None and self._resume[0] <= g else (0, (0, 0, 0))
        self._next = first

        def produce():
            try:
                for w in located_windows(self.source.train_texts, tok.encode_documents, tok.eot_id, self.block_size,
                                         no_documents=self.source.no_training_documents, start=at):
                    while not stop.is_set():
                        try:
                            q.put(w, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            except BaseException as e:  # handed to the consumer, raised there (unless it has gone)
                while not stop.is_set():
                    try:
                        q.put(e, timeout=0.1)
                        return
                    except queue.Full:
                        continue

        threading.Thread(target=produce, daemon=True, name="momattn-stream").start()

    def close(self) -> None:
        if self._stop is not None:
            self._stop.set()
        self._reset()

    def window(self, g: int) -> np.ndarray:
        if self._queue is None or g < self._next:
            self.close()
            self._start(g)
        while True:
            got = self._queue.get()
            if isinstance(got, BaseException):
                self.close()
                raise got
            w, self._points[self._next] = got
            self._points.move_to_end(self._next)  # after a restart, kept again as the newest
            if len(self._points) > self.kept:
                self._points.popitem(last=False)
            self._next += 1
            if self._next - 1 == g:
                return w

    def __len__(self) -> int:  # unbounded: the sampler says how many samples a run takes
        return 1 << 62

    def __getitem__(self, g: int):
        chunk = torch.from_numpy(self.window(int(g)).copy())
        return chunk[:-1], chunk[1:]
