"""Sampling from a checkpoint, streamed to stdout as tokens arrive (generate.py's body; conf/generate.yaml).

    python generate.py ckpt_path=last.ckpt prompt="Once upon a time" max_new_tokens=100 temperature=0.8 top_k=50

- Decoding is incremental with the model's KV cache; once the context is full, every token is sampled from a
  window of the last block_size tokens, re-encoded (the same rule as GPT.generate, nanoGPT's crop and the
  exported MomattnForCausalLM), so any length can be sampled. (A vanilla export with learned positions is a
  stock GPT2LMHeadModel, whose generate stops with an index error past n_positions, as GPT-2's does.)
- Text is printed as soon as it is whole: a multi-byte character split over several BPE tokens waits for
  its last byte instead of printing a replacement character.
- Deterministic for a seed: one torch.Generator drives every sample, in order.
- Precision `auto`: bf16 autocast on a GPU with bf16 (fp16 on older GPUs) or a CPU where bf16 pays, fp32
  elsewhere (momattn.hardware.resolve_precision).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import torch
import torch.nn.functional as F

from momattn.errors import ConfigError, not_a_file
from momattn.eval.lm import last_logits
from momattn.hardware import resolve_device, resolve_precision
from momattn.tokenizer import EOT

AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


@dataclass
class GenerateConfig:
    """conf/generate.yaml."""

    ckpt_path: str | None = None  # a .ckpt written by train.py
    prompt: str | None = None  # the text to continue; "\n" typed on the command line is a line break
    prompt_file: str | None = None  # or a UTF-8 file whose text is the prompt (less a final line break)
    max_new_tokens: int = 200  # tokens sampled after the prompt, per sample
    temperature: float = 0.8  # < 1 sharpens, > 1 flattens; 0 = greedy (argmax)
    top_k: int | None = 200  # sample among the k likeliest tokens; null = the whole vocabulary
    top_p: float = 1.0  # nucleus: sample among the likeliest tokens whose probability adds up to top_p; 1 = all
    num_samples: int = 1  # samples drawn one after another, separated by a line of dashes
    # a sample ends where it writes one of these (left out); the default: the end of its document. [] = never
    stop: list[str] = field(default_factory=lambda: [EOT])
    seed: int = 1337
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:1
    precision: str = "auto"  # auto | 32-true | bf16-mixed | 16-mixed

    def _read_prompt_file(self) -> None:
        """prompt_file's text as the prompt (a long or multi-line one needed \\n escapes and Hydra's quoting, and
        nanoGPT's prompt=FILE:... was continued as those words: found by review)."""
        if self.prompt is not None:
            raise ConfigError("give prompt= or prompt_file=, not both")
        name = self.prompt_file
        if not isinstance(name, str) or not name:
            raise ConfigError(f"prompt_file={name!r} must be a path to a text file")
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(f"prompt_file={name} {not_a_file(path)}")
        try:
            self.prompt = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"prompt_file={name} is not UTF-8 text ({e.reason} at byte {e.start}); convert it, "
                              "e.g. iconv -f latin1 -t utf-8") from None
        except OSError as e:
            raise ConfigError(f"prompt_file={name} cannot be read ({e.strerror or e})") from None
        # less the one line break that ends a file that editors and echo write (diff review): the model continued
        # after it, on a new line, where prompt="..." continues the line
        self.prompt = self.prompt.removesuffix("\n").removesuffix("\r")
        if not self.prompt:
            raise ConfigError(f"prompt_file={name} is empty; give it the text to continue")

    def __post_init__(self):
        if not self.ckpt_path:
            raise ConfigError("no checkpoint given: pass ckpt_path=PATH (a .ckpt written by train.py)")
        if self.prompt_file is not None:
            self._read_prompt_file()
            given = []
        else:
            given = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("prompt=")][-1:]  # as typed (last wins)
        if self.prompt is None or not str(self.prompt):
            null = " (prompt=null reads as no value: quote it, 'prompt=\"null\"', to continue the word)" \
                if self.prompt is None and given and given[0].strip().lower() in ("null", "~") else ""
            raise ConfigError(f'prompt is empty{null}; pass the text to continue, e.g. prompt="Once upon a time"')
        if not isinstance(self.prompt, str):  # Hydra reads prompt=true as a bool, prompt=0.10 as 0.1, [a,b] a list
            raise ConfigError(f"prompt={self.prompt!r} was read as a {type(self.prompt).__name__}, not text; quote "
                              f"it so that Hydra keeps it as written: 'prompt=\"{given[0] if given else self.prompt}\"'")
        if self.prompt_file is None and self.prompt.startswith("FILE:") and \
                Path(self.prompt[5:]).expanduser().is_file():  # nanoGPT's form: continued as those words (review)
            raise ConfigError(f"prompt={self.prompt} would continue the text 'FILE:...'; a file's text is the "
                              f"prompt with prompt_file={self.prompt[5:]}")
        typed = given[0] if given else self.prompt
        if typed != typed.strip() and typed[:1] not in "'\"" and self.prompt == typed.strip():
            # Hydra drops the spaces around an unquoted value: "prompt=The film " continued "The film"
            print(f"[momattn] warning: prompt={typed!r} reads as {self.prompt!r}: Hydra drops the spaces around an "
                  f"unquoted value, and a tokenizer sees them; quote it to keep them: \"prompt='{typed}'\"",
                  file=sys.stderr)
        if self.prompt_file is None:
            self.prompt = self.prompt.replace("\\n", "\n")
        self.stop = _stop_strings(self.stop)
        for name, low in (("max_new_tokens", 1), ("num_samples", 1)):
            v = getattr(self, name)
            if not _is_int(v) or v < low:
                raise ConfigError(f"{name}={v!r} must be an int >= {low}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, int | float) or \
                not math.isfinite(self.temperature) or self.temperature < 0:
            raise ConfigError(f"temperature={self.temperature!r} must be a number >= 0 (0 = greedy)")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            raise ConfigError(f"top_k={self.top_k!r} must be an int >= 1, or null for the whole vocabulary")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, int | float) or not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p={self.top_p!r} must be a number in (0, 1]: the probability mass sampled from "
                              "(1 = the whole distribution)")
        # torch takes it mod 2**64 (-1 sampled as 2**64-1), and a CPU generator reads its low 32 bits only: 2**32
        # sampled as 0 (found by review)
        if not _is_int(self.seed) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed={self.seed!r} must be an int in [0, 2**32) (a CPU torch generator reads 32 bits "
                              "of its seed: larger ones sample as their remainder)")
        check_inference_precision(self.precision, f"precision={self.precision!r}")


def _stop_strings(stop) -> list[str]:
    """stop as a list of non-empty strings ("\\n" typed: a line break); one string alone, or null, is taken too."""
    if stop is None:
        return []
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, Sequence) or not all(isinstance(s, str) and s for s in items):
        raise ConfigError(f"stop={stop!r} must be a list of non-empty strings, e.g. 'stop=[\"\\n\\n\"]' (quoted, so "
                          f"that Hydra keeps them as text), or [] to sample max_new_tokens every time")
    return [s.replace("\\n", "\n") for s in items]


def check_inference_precision(precision, setting: str) -> None:
    """The precisions inference_autocast knows; `setting` names it in the error (another string meant fp32)."""
    if str(precision) not in ("auto", "32-true", *AUTOCAST_DTYPES):
        raise ConfigError(f"{setting} is unknown; choose auto, 32-true, bf16-mixed or 16-mixed")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def inference_autocast(device: str, precision: str = "auto") -> contextlib.AbstractContextManager:
    """The autocast context for inference on `device` (a no-op where fp32 is resolved)."""
    accelerator = "gpu" if str(device).startswith("cuda") else "cpu"
    dtype = AUTOCAST_DTYPES.get(resolve_precision(precision, accelerator))
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def next_token(logits: torch.Tensor, temperature: float, top_k: int | None,
               generator: torch.Generator | None, top_p: float = 1.0) -> torch.Tensor:
    """logits (B, V) -> the sampled token ids (B, 1). top_k, then top_p (nucleus: the fewest likeliest tokens whose
    probability, after temperature and top_k, reaches top_p; the likeliest is always kept)."""
    # float64 where the device has it (MPS does not), the largest logit at 0 first: a tiny temperature then sends
    # the others to -inf (greedy) instead of every logit to inf (nan probabilities)
    logits = logits.float() if logits.device.type == "mps" else logits.double()
    if temperature < torch.finfo(logits.dtype).tiny:  # 0, or so small that it would divide 0 by 0
        return logits.argmax(-1, keepdim=True)
    logits = (logits - logits.max(-1, keepdim=True).values) / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)  # (B, V)
    if top_p < 1:
        p, order = probs.sort(-1, descending=True)  # (B, V)
        drop = p.cumsum(-1) - p >= top_p  # the mass before a token already reaches top_p
        probs = probs.masked_fill(drop.scatter(-1, order, drop), 0.0)  # back in vocabulary order
    return torch.multinomial(probs, 1, generator=generator)  # (B, 1)


@torch.no_grad()
def sample_tokens(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                  top_k: int | None = None, generator: torch.Generator | None = None,
                  vocab: int | None = None, top_p: float = 1.0) -> Iterator[torch.Tensor]:
    """Yield max_new_tokens sampled tokens (B,) one at a time after the prompts idx (B, T), using the KV cache.
    vocab: only ids below it (the tokenizer's; the model's vocabulary is padded to a multiple of 64, and its
    padding ids decode to nothing); by default the model's n_ids, as GPT.generate."""
    vocab = getattr(model, "n_ids", None) if vocab is None else vocab
    block = model.config.block_size
    cache = model.new_cache()
    logits = last_logits(model, idx[:, -block:], cache)  # (B, V): no LM head over the rest of the prompt
    for step in range(max_new_tokens):
        if vocab is not None and vocab < logits.size(-1):
            logits = logits.clone()
            logits[:, vocab:] = float("-inf")
        nxt = next_token(logits, temperature, top_k, generator, top_p)  # (B, 1)
        yield nxt[:, 0]
        if step == max_new_tokens - 1:
            break
        idx = torch.cat([idx, nxt], dim=1)
        if cache.length >= block:  # context full: re-encode a window of the last block_size tokens
            cache = model.new_cache()
            logits = last_logits(model, idx[:, -block:], cache)
        else:
            logits = last_logits(model, nxt, cache)


class StreamDecoder:
    """Token ids in, printable text out. The text is the decode of the sequence (context included) minus what was
    already shown, so tokenizers that put spaces between tokens (GINC's symbols) print them; and it is released
    once it decodes without a trailing replacement character, so a character whose bytes span several tokens
    prints whole. The decode starts a few tokens before the text not yet shown (`start`), not at the first token:
    decoding the whole sequence at every token made a long sample quadratic (8,000 tokens: 24 s of decoding)."""

    MARGIN = 8  # tokens decoded before the unshown text: the context a decoder needs for what follows them

    def __init__(self, decode: Callable[[Sequence[int]], str], context: Sequence[int] = ()):
        self.decode = decode
        self.ids = [int(t) for t in context]
        self.start = -1  # (none yet: _window decodes its own)
        self.start, self.shown = self._window("")  # the decode of ids[start:] shown so far
        self.held = 0  # tokens whose text is held back (a broken multi-byte character so far)

    def _window(self, text: str) -> tuple[int, str]:
        """The next `start`, MARGIN tokens before the end, and the decode from there (`text`, the decode from the
        current start, where it does not move). Where that decode would begin inside a character, a start up to
        MARGIN tokens further back that does not: a byte-fallback decoder (Llama's <0xNN> tokens) turns a whole
        run of byte tokens into replacement characters where the run does not begin at a character, and a
        window cut there printed a newline after a multi-byte character as U+FFFD (found by review)."""
        end = max(len(self.ids) - self.MARGIN, 0)
        for start in range(end, max(self.start, end - self.MARGIN) - 1, -1):
            decoded = text if start == self.start else self.decode(self.ids[start:])
            if start == 0 or not decoded.startswith("\ufffd"):
                return start, decoded
        return end, self.decode(self.ids[end:])  # junk bytes all the way back: cut at the margin, as before

    def _release(self, text: str, keep: int = 0) -> str:
        """The part of `text` (the decode of ids[start:]) not shown yet, but its last `keep` characters; `start`
        then moves up to MARGIN tokens before the end (see _window)."""
        same = len(os.path.commonprefix([self.shown, text]))  # all of `shown`, unless a decoder rewrote its end
        new = text[same:len(text) - keep]
        start, shown = self._window(text)
        self.shown, self.start, self.held = shown[:len(shown) - keep], start, 0
        return new

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        text = self.decode(self.ids[self.start:])
        if text.endswith("\ufffd"):
            if self.held < 7:  # a character has at most 4 bytes: a longer run that still ends in a broken one is
                self.held += 1  # junk the model sampled, as is, but its last one, which the next tokens may
                return ""  # complete (shown, it stayed beside the character: found by review)
            return self._release(text, keep=1)
        return self._release(text)

    def flush(self) -> str:
        return self._release(self.decode(self.ids[self.start:]))


class StopAt:
    """Streamed text in, the text before the first stop string out: what could still begin a stop string is held
    back until the next piece shows whether it does (`done`: a stop string was written; the rest is dropped).
    "First" is the one complete first, as if the text came a character at a time (of two that end together, the
    longer), so where the pieces break does not matter, even for a stop string inside another ("b" in "abc")."""

    def __init__(self, stop: Sequence[str]):
        self.stop, self.pending, self.done = list(stop), "", False

    def push(self, piece: str) -> str:
        if self.done:
            return ""
        text = self.pending + piece
        hits = [(i + len(s), i) for s in self.stop if (i := text.find(s)) >= 0]  # (end, start) of each first use
        if hits:
            self.pending, self.done = "", True
            return text[: min(hits)[1]]
        keep = max((k for s in self.stop for k in range(min(len(s) - 1, len(text)), 0, -1)
                    if s.startswith(text[len(text) - k:])), default=0)  # the longest tail that begins a stop string
        self.pending = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return text


def generate_text(model, tokenizer, cfg: GenerateConfig, device: str, out: TextIO = sys.stdout) -> list[str]:
    """Write cfg.num_samples continuations of cfg.prompt to `out` as they are sampled; return them."""
    prompt_ids = tokenizer.encode(cfg.prompt)
    if not prompt_ids:
        raise ConfigError(f"prompt={cfg.prompt!r} encodes to no tokens; give some text")
    if len(prompt_ids) > (block := model.config.block_size):  # the model sees its last block_size tokens only
        print(f"[momattn] the prompt is {len(prompt_ids)} tokens, longer than the model's context of {block}: "
              f"sampling continues from its last {block} tokens (the whole prompt is still printed)",
              file=sys.stderr, flush=True)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)  # (1, T)
    samples = []
    for i in range(cfg.num_samples):
        if i:
            out.write("\n---------------\n")
        out.write(cfg.prompt)
        out.flush()
        stream, stop, text = StreamDecoder(tokenizer.decode, prompt_ids), StopAt(cfg.stop), []
        # the document separator as a stop ends the sample at its token, before it is decoded: a tokenizer that puts
        # spaces between tokens (GINC's) would otherwise leave one before it
        eot = getattr(tokenizer, "eot_id", None) if EOT in cfg.stop else None
        with inference_autocast(device, cfg.precision):
            for tok in sample_tokens(model, idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k, generator,
                                     vocab=tokenizer.n_ids, top_p=cfg.top_p):
                if eot is not None and int(tok[0]) == eot:
                    break  # (what the decoder and StopAt hold back is released below)
                piece = stop.push(stream.push(int(tok[0])))
                if piece:
                    text.append(piece)
                    out.write(piece)
                    out.flush()
                if stop.done:
                    break
        text.append(stop.push(stream.flush()) + stop.flush())
        out.write(text[-1] + ("\n" if i == cfg.num_samples - 1 else ""))
        out.flush()
        samples.append("".join(text))
    return samples


class _Escaping:
    """A text stream whose characters its encoding cannot hold are written as escapes (a terminal that cannot show
    a sampled character: a UnicodeEncodeError ended the stream)."""

    def __init__(self, out: TextIO):
        self.out, self.encoding = out, getattr(out, "encoding", None) or "utf-8"

    def write(self, text: str) -> None:
        try:
            self.out.write(text)
        except UnicodeEncodeError:
            self.out.write(text.encode(self.encoding, "backslashreplace").decode(self.encoding))

    def flush(self) -> None:
        self.out.flush()


def run_generate(conf) -> list[str]:
    """generate.py's body: a Hydra config (or mapping) -> samples streamed to stdout."""
    from momattn.checkpoint import load_checkpoint
    from momattn.eval.config import build

    cfg = build(GenerateConfig, conf)
    device = resolve_device(cfg.device)
    model, tokenizer = load_checkpoint(cfg.ckpt_path, map_location=device)
    try:
        return generate_text(model, tokenizer, cfg, device, _Escaping(sys.stdout))
    except BrokenPipeError:  # `generate.py ... | head`: the reader left; no traceback, nothing more to sample
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (Python's own flush at exit fails too)
        return []
    except KeyboardInterrupt:  # Ctrl-C, the way to end a long stream: the text so far stays, without a traceback
        print(flush=True)
        sys.exit(130)  # the shell's code for a command ended by SIGINT
