"""momattn checkpoints as an lm-evaluation-harness model ("momattn" in lm-eval's own model registry).

    python -m momattn.lm_eval_adapter --model momattn --model_args ckpt_path=last.ckpt --tasks lambada_openai
    # in Python: import momattn.lm_eval_adapter, then lm_eval.simple_evaluate(model="momattn", model_args=...)

lm-eval 0.4.x resolves `--model NAME` against its built-in registry only, so the adapter's module must be
imported first: `python -m momattn.lm_eval_adapter ARGS` imports it (registering "momattn") and then runs
lm-eval's own command line with ARGS, unchanged.

- loglikelihood: every (context, continuation) is one row, the context cut from the left so that the row
  fits the model's context (block_size tokens of input); rows are sorted by length and batched up to
  batch_tokens tokens (and batch_size rows, when lm-eval gives an int), so neighbours need little padding.
  Returns (sum log p(continuation), whether each token was the argmax over the tokenizer's ids).
- loglikelihood_rolling: lm-eval's disjoint rolling windows (one token of context each), scored as above.
- device: --device (lm-eval's default cuda:0; where there is no CUDA GPU, the CPU) or device= in --model_args
  (a GPU named there and missing is an error).
- batch_size: lm-eval's --batch_size defaults to 1 row per forward pass (said on stderr); --batch_size auto lets
  batch_tokens bound each batch.
- generate_until: one request at a time with the KV cache (momattn.generate.sample_tokens), greedy unless
  do_sample=true (then temperature, top_k and top_p as in transformers, but top_k defaults to 0, the whole
  vocabulary, where transformers takes 50: pass top_k=50 for its sampling); stops at the end-of-text token or at
  the first `until` string, which is cut off.
Needs the [lm-eval] extra: pip install 'momattn[lm-eval]'.
"""

from __future__ import annotations

import contextlib
import math
import sys

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

try:
    # lm_eval.models: the lazy table of lm-eval's own models. get_model reads it only while the registry is empty,
    # so with "momattn" registered first, --model hf / dummy were "not found"
    import lm_eval.models  # noqa: F401
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as e:  # without the extra: say how to get it, not a ModuleNotFoundError traceback
    if not (e.name or "").startswith("lm_eval"):
        raise
    _WHY = f"the lm-eval adapter needs the [lm-eval] extra ({e.name} is missing): pip install 'momattn[lm-eval]'"
    if __name__ == "__main__":  # one line and exit status 2, as main() reports other bad input
        print(f"error: {_WHY}", file=sys.stderr)
        sys.exit(2)
    from momattn.errors import ConfigError

    raise ConfigError(_WHY) from None

from momattn.generate import StreamDecoder, inference_autocast, sample_tokens
from momattn.hardware import resolve_device

Pair = tuple[list[int], list[int]]  # (context ids, continuation ids)


def _is_float(v) -> bool:
    """A finite number, or a string that reads as one (--gen_kwargs temperature=0.7)."""
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def rows_per_batch(batch_size: int | str, flag: str = "--model_args batch_size") -> int | None:
    """The rows a batch may hold: batch_size as a count, or None for auto / auto:N (batch_tokens bounds a batch).
    flag: where the value came from, for the message."""
    from momattn.errors import ConfigError

    text = str(batch_size).strip()
    auto, _, every = text.partition(":")
    if auto == "auto" and (not every or every.isdigit()):
        return None
    if isinstance(batch_size, bool) or not text.isdigit() or int(text) < 1:  # -2, 0, abc: was auto, unnoticed
        raise ConfigError(f"{flag}={batch_size!r} must be an int >= 1, auto or auto:N")
    return int(text)


def _no_chat_template():
    from momattn.errors import ConfigError

    return ConfigError("--apply_chat_template: a momattn model has no chat template (a base LM trained on plain "
                       "text, its tokenizer has no chat roles); drop the flag (and --fewshot_as_multiturn)")


@register_model("momattn")
class MomattnLM(TemplateLM):
    ARGS = ("ckpt_path", "device", "batch_size", "batch_tokens", "max_gen_toks", "precision", "max_batch_size")

    def __init__(self, ckpt_path: str | None = None, device: str | None = "auto", batch_size: int | str = 16,
                 batch_tokens: int = 4096, max_gen_toks: int = 256, precision: str = "auto",
                 max_batch_size: int | None = None, **kwargs):
        """precision: auto is bf16 autocast where the device has native bf16 (as training would run it; log-
        likelihoods then differ from exact ones by up to ~0.1 nat a row), 32-true exact float32 scores."""
        super().__init__()
        from momattn.checkpoint import load_checkpoint
        from momattn.errors import ConfigError, did_you_mean
        from momattn.generate import check_inference_precision

        for key in kwargs:  # a misspelt argument (precison=32-true) would otherwise score in another precision
            raise ConfigError(f"--model_args {key}= is not an argument of the momattn model.{did_you_mean(key, self.ARGS)}"
                              f" It takes {', '.join(self.ARGS)}")
        check_inference_precision(precision, f"--model_args precision={precision}")
        counts = {"batch_tokens": batch_tokens, "max_gen_toks": max_gen_toks}
        if max_batch_size is not None:
            counts["max_batch_size"] = max_batch_size
        for key, v in counts.items():
            if isinstance(v, bool) or not str(v).strip().isdigit() or int(v) < 1:  # "4k" or 0: said here
                raise ConfigError(f"--model_args {key}={v!r} must be an int >= 1")
        if isinstance(ckpt_path, int | float) and not isinstance(ckpt_path, bool):
            ckpt_path = str(ckpt_path)  # lm-eval's parser read ckpt_path=123 as a number (spelt 001: quote it)
        if not ckpt_path:
            raise ConfigError("the momattn model needs --model_args ckpt_path=PATH (a .ckpt written by train.py)")
        if str(device or "").startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's --device defaults to cuda:0; like its own HF model, run on the CPU where there is no GPU
            print(f"momattn: device={device} but no CUDA GPU is available; running on the CPU", file=sys.stderr)
            device = "cpu"
        self._device = resolve_device(device or "auto")
        self.model, self.tokenizer = load_checkpoint(ckpt_path, map_location=self._device)
        self.precision = precision
        # auto: batch_tokens bounds a batch, and lm-eval's --max_batch_size (64 unless set) its rows, as for its own
        # models (it was dropped without a word)
        self.max_rows = rows_per_batch(batch_size) or (int(max_batch_size) if max_batch_size is not None else None)
        self.batch_tokens, self.max_gen_toks = int(batch_tokens), int(max_gen_toks)
        self._warned: set[str] = set()  # generation settings already reported as ignored

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> MomattnLM:
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> MomattnLM:
        # lm-eval always adds its --device and --batch_size (cuda:0 and 1 by default): --model_args win over them
        from momattn.errors import ConfigError

        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        if "batch_size" in extra:  # lm-eval's own --batch_size 0: named as such, not as a --model_args value
            if rows_per_batch(extra["batch_size"], "--batch_size") == 1:  # its default: one row per forward pass
                print("momattn: --batch_size 1 (lm-eval's default) scores one row per forward pass; --batch_size auto "
                      "lets batch_tokens bound each batch instead: the same scores, several times faster",
                      file=sys.stderr)
        device = str(arg_dict.get("device") or "")
        if device.startswith("cuda") and not torch.cuda.is_available():  # asked for by name: not lm-eval's default
            raise ConfigError(f"--model_args device={device}, but no CUDA GPU is available; use device=cpu (or leave "
                              "device out: lm-eval's --device default then falls back to the CPU)")
        return cls(**arg_dict, **extra)

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eot_id

    @property
    def max_length(self) -> int:
        return self.model.config.block_size

    @property
    def device(self) -> str:
        return self._device

    @property
    def tokenizer_name(self) -> str:  # lm-eval reads it only for --apply_chat_template
        raise _no_chat_template()

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        if chat_template:
            raise _no_chat_template()
        return None

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    # -- scoring ---------------------------------------------------------------------------------------------

    def _fit(self, context: list[int], continuation: list[int]) -> tuple[list[int], int]:
        """The input row (at most block_size tokens) and where its continuation's predictions start."""
        # an empty context (lm-eval moves a whitespace-only context's spaces into the continuation) reads as
        # lm-eval's own empty context: the end-of-text token
        whole = ((context or [self.eot_token_id]) + continuation)[-(self.max_length + 1):]
        return whole[:-1], len(whole) - 1 - len(continuation)  # position i predicts token i + 1

    @torch.no_grad()
    def score_pairs(self, pairs: list[Pair], disable_tqdm: bool = True) -> list[tuple[float, bool]]:
        """(sum log p(continuation | context), greedy) for each pair, batched by length."""
        from momattn.errors import DataError

        longest = max((len(cont) for _, cont in pairs), default=0)
        if longest > self.max_length:
            raise DataError(f"a continuation of {longest} tokens is longer than the model's context of "
                            f"{self.max_length} (block_size): it cannot be scored in one window")
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)

        def flush(batch: list[int]):
            rows = [self._fit(*pairs[i]) for i in batch]
            x = torch.full((len(rows), max(len(r) for r, _ in rows)), self.eot_token_id, dtype=torch.long)
            for j, (r, _) in enumerate(rows):
                x[j, : len(r)] = torch.tensor(r)  # right-padded: a causal model never looks right
            where = [(j, rows[j][1] + n) for j, i in enumerate(batch) for n in range(len(pairs[i][1]))]
            if not where:  # empty continuations only: log p = 0, trivially greedy
                for i in batch:
                    out[i] = (0.0, True)
                return
            select = tuple(torch.tensor(v, device=self._device) for v in zip(*where))
            with inference_autocast(self._device, self.precision):  # the LM head only where continuations are
                logits = self.model(x.to(self._device), select=select)  # (M, V)
            logp, at = F.log_softmax(logits.double(), dim=-1), 0
            for i in batch:
                cont = pairs[i][1]
                lp, at = logp[at : at + len(cont)], at + len(cont)  # (N, V)
                target = torch.tensor(cont, device=lp.device)
                # greedy over the tokenizer's ids, as generate_until: never the embedding's padding rows (ginc.py)
                greedy = lp[:, : self.tokenizer.n_ids].argmax(-1)
                out[i] = (float(lp.gather(1, target[:, None]).sum()), bool((greedy == target).all()))

        batches: list[list[int]] = [[]]
        width = 0
        for i in order:
            w = min(max(len(pairs[i][0]), 1) + len(pairs[i][1]) - 1, self.max_length)  # an empty context: [eot]
            width, batch = max(width, w), batches[-1]
            if batch and ((len(batch) + 1) * width > self.batch_tokens or len(batch) == (self.max_rows or 1 << 30)):
                batches.append([])
                width = w
            batches[-1].append(i)
        # the bar moves as batches are scored (it ran through the planning, then stood at the end while they were)
        with tqdm(total=len(pairs), disable=disable_tqdm, desc="momattn scoring") as bar:
            for batch in filter(None, batches):
                flush(batch)
                bar.update(len(batch))
        return out

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        results = self.score_pairs([(list(ctx), list(cont)) for _, ctx, cont in requests], disable_tqdm)
        for (key, _, _), res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", key, res)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for n, req in enumerate(requests):
            tokens = self.tok_encode(req.args[0])
            for w in get_rolling_token_windows(tokens, self.eot_token_id, self.max_length, 1):
                windows.append(make_disjoint_window(w))
                owner.append(n)
        totals = [0.0] * len(requests)
        for n, (lp, _) in zip(owner, self.score_pairs(windows, disable_tqdm)):
            totals[n] += lp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), total)
        return totals

    # -- generation ------------------------------------------------------------------------------------------

    def _generation_settings(self, kwargs: dict) -> tuple[list[str], int, float, int | None, float]:
        """(until, max_gen_toks, temperature (0: greedy), top_k, top_p) popped from a request's generation kwargs;
        a ConfigError naming a setting of the wrong type or range (null: the default)."""
        from momattn.errors import ConfigError

        def bad(key: str, value, must: str) -> ConfigError:
            return ConfigError(f"generation setting {key}={value!r} must be {must} (the task's generation_kwargs "
                               "or --gen_kwargs)")

        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else until
        if not isinstance(until, list | tuple) or not all(isinstance(s, str) for s in until):
            raise bad("until", until, "a string or a list of strings")
        settings = {}
        for key, default, must in (("max_gen_toks", self.max_gen_toks, "an int >= 0"),
                                   ("temperature", 1.0, "a number >= 0"),
                                   ("top_k", 0, "an int >= 0 (0: the whole vocabulary)")):
            v = kwargs.pop(key, None)
            v = default if v is None else v
            number = _is_float(v) if key == "temperature" else str(v).strip().isdigit()
            if isinstance(v, bool) or not number or float(v) < 0:
                raise bad(key, v, must)
            settings[key] = float(v) if key == "temperature" else int(v)
        top_p = kwargs.pop("top_p", None)
        top_p = 1.0 if top_p is None else top_p
        if isinstance(top_p, bool) or not _is_float(top_p) or not 0 < float(top_p) <= 1:
            raise bad("top_p", top_p, "a number in (0, 1] (1: the whole distribution)")
        do_sample = kwargs.pop("do_sample", None)
        do_sample = {"true": True, "false": False, "1": True, "0": False}.get(str(do_sample).strip().lower(),
                                                                             do_sample)  # "false" was bool("false")
        if do_sample is not None and not isinstance(do_sample, bool):
            raise bad("do_sample", do_sample, "true or false")
        sample = bool(do_sample) and settings["temperature"] > 0
        # greedy unless sampling; top_k 0: the whole vocabulary (transformers' meaning)
        return (list(until), settings["max_gen_toks"], settings["temperature"] if sample else 0.0,
                settings["top_k"] or None, float(top_p))

    def _has_stop(self, tokens: list[int], until: list[str]) -> bool:
        text = self.tok_decode(tokens)
        return any(s and s in text for s in until)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in tqdm(requests, disable=disable_tqdm, desc="momattn generating"):
            context, kwargs = req.args[0], dict(req.args[1] or {})
            until, max_new, temperature, top_k, top_p = self._generation_settings(kwargs)
            ignored = sorted(set(kwargs) - self._warned)
            if ignored:  # repetition_penalty, ...: say so once instead of sampling otherwise than asked
                print(f"momattn: generation settings {', '.join(ignored)} are not supported and are ignored",
                      file=sys.stderr)
                self._warned.update(ignored)
            ids = self.tok_encode(context) or [self.eot_token_id]
            idx = torch.tensor([ids], dtype=torch.long, device=self._device)
            # a stop string ending in the newest token lies in its last (one per byte, + 1) tokens; the decode
            # starts a few before them (a decoder's context). Decoding the whole continuation at every token
            # made generation quadratic in max_gen_toks; a hit in the tail is confirmed on the whole text
            tail = max((len(s.encode()) for s in until), default=0) + 1 + StreamDecoder.MARGIN
            tokens = []
            with torch.no_grad(), inference_autocast(self._device, self.precision):
                for tok in sample_tokens(self.model, idx, max_new, temperature, top_k,
                                         vocab=self.tokenizer.n_ids, top_p=top_p):
                    if int(tok[0]) == self.eot_token_id:
                        break
                    tokens.append(int(tok[0]))
                    if until and self._has_stop(tokens[-tail:], until) and self._has_stop(tokens, until):
                        break
            text = self.tok_decode(tokens)
            for s in until:
                if s:
                    text = text.split(s)[0]
            self.cache_hook.add_partial("generate_until", (context, req.args[1]), text)
            out.append(text)
        return out


def _offline_errors() -> tuple[type[BaseException], ...]:
    """What a hub download raises without network: datasets' ConnectionError, requests' own."""
    try:
        from requests.exceptions import ConnectionError as RequestsConnectionError
    except ImportError:
        return (ConnectionError,)
    return ConnectionError, RequestsConnectionError


def check_gen_kwargs(argv: list[str]) -> None:
    """--gen_kwargs as lm-eval reads them, checked as generate_until checks each request's, before any work: a bad
    temperature ended the run at its first generation, after every loglikelihood request was scored, and nothing
    was written (found by review). Only for --model momattn; left to lm-eval where it cannot be read."""
    import argparse
    from types import SimpleNamespace

    try:
        from lm_eval._cli.run import MergeDictAction  # lm-eval's own parser of the flag
    except ImportError:
        return
    ap = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    ap.add_argument("--model")
    ap.add_argument("--gen_kwargs", nargs="+", action=MergeDictAction, default=None)
    try:
        args = ap.parse_known_args(argv)[0]
    except (argparse.ArgumentError, ValueError, SyntaxError):
        return
    if args.model == "momattn" and args.gen_kwargs:
        MomattnLM._generation_settings(SimpleNamespace(max_gen_toks=256), dict(args.gen_kwargs))


def check_task_generation(lm, task_dict) -> None:
    """Every generate_until task's generation_kwargs (its YAML's, with --gen_kwargs merged in), checked as
    generate_until checks each request's, before any request is scored: a task's bad max_gen_toks ended the run at
    its first generation, after every loglikelihood request was scored, and nothing was written (found by review)."""
    from momattn.errors import UserError
    from momattn.utils import leaves

    for task in leaves(task_dict):
        config = getattr(task, "config", None)
        if getattr(config, "output_type", None) == "generate_until":
            try:
                lm._generation_settings(dict(getattr(config, "generation_kwargs", None) or {}))
            except UserError as e:
                raise type(e)(f"task {getattr(config, 'task', None) or '?'}: {e}") from None


def _in_task_config(e: BaseException) -> bool:
    """Whether e was raised while lm-eval built a task's config from its YAML (TaskConfig.__post_init__)."""
    tb = e.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "__post_init__" and "lm_eval" in code.co_filename.replace("\\", "/"):
            return True
        tb = tb.tb_next
    return False


@contextlib.contextmanager
def _tasks_checked():
    """lm-eval's evaluate(), with check_task_generation first where the model is momattn's."""
    import lm_eval.evaluator as evaluator

    run = evaluator.evaluate

    def checked(*args, **kwargs):
        lm = kwargs.get("lm", args[0] if args else None)
        task_dict = kwargs.get("task_dict", args[1] if len(args) > 1 else None)
        own = getattr(lm, "lm", lm)  # --use_cache wraps the model in lm-eval's CachingLM (diff review)
        if isinstance(own, MomattnLM):
            check_task_generation(own, task_dict)
        return run(*args, **kwargs)

    evaluator.evaluate = checked
    try:
        yield
    finally:
        evaluator.evaluate = run


def main() -> None:
    """lm-eval's own command line, with the "momattn" model registered."""
    from lm_eval.__main__ import cli_evaluate

    from momattn.cli import report
    from momattn.console import quiet_console
    from momattn.errors import DataError, UserError, first_line

    quiet_console()  # (the hub's retries, two lines each, before the error below)
    sys.argv[0] = "lm_eval"
    try:
        check_gen_kwargs(sys.argv[1:])
        with _tasks_checked():
            cli_evaluate()
    except UserError as e:  # a missing checkpoint, a bad model argument: one line, not lm-eval's traceback
        report(e, hydra=False)
        sys.exit(2)
    except ValueError as e:  # a misspelt task: lm-eval's traceback ending in "Tasks not found: ..." (found by review)
        if _in_task_config(e):  # a task YAML's value lm-eval cannot read (temperature: hot): its
            # TaskConfig's traceback, 45 lines (found by review)
            report(DataError(f"lm-eval cannot read a task's YAML: {first_line(e, 300)} (e.g. a generation_kwargs "
                             "value of the wrong type); fix it in the task's YAML"), hydra=False)
            sys.exit(2)
        if not str(e).startswith("Tasks not found"):
            raise
        report(DataError(f"lm-eval: {first_line(e, 300)}; `--tasks list` lists the tasks lm-eval knows, and "
                         "--include_path adds a folder of your own task YAMLs"), hydra=False)
        sys.exit(2)
    except FileNotFoundError as e:  # a local task's data file: a 57-line traceback from datasets (found by review)
        if not str(e).startswith("Unable to find"):  # datasets' words for data_files; another missing file: as is
            raise
        report(DataError(f"lm-eval: a task's data file was not found ({first_line(e, 300)}); a task YAML's "
                         "data_files are read from the working folder, not the YAML's: run from the folder they "
                         "are relative to, or give them as absolute paths"), hydra=False)
        sys.exit(2)
    except _offline_errors() as e:  # a hub task without network: a 60-line traceback from datasets
        report(DataError(f"lm-eval could not fetch a task's data ({first_line(e)}); without network, only tasks "
                         "whose data is local (--include_path with local files, or the hub cache with "
                         "HF_DATASETS_OFFLINE=1) can run"), hydra=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
