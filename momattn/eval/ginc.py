"""In-context accuracy on GINC prompts (Xie et al. 2022), the world the checkpoint was trained on.

    ginc            in-distribution concepts, example length 5 (the headline)
    ginc_l3 ..      example length 3 (any length: ginc_l<N>)
    ginc_ood        held-out concepts, length 5 (a control: flat in k); ginc_ood_l<N> likewise

prompt  = <eot> + k examples of l symbols, each followed by "/", + the test input x (l - 1 symbols)
label   = the Bayes-optimal next symbol given x under the prompt's true concept (momattn.data.ginc)
acc     = greedy next token (argmax over the model's whole vocabulary at the last position) == label: the
          paper's metric and the headline. The vocabulary is the tokenizer's ids: the embedding's padding rows
          (up to a multiple of 64) are no token, and model.generate never emits them either
acc_cand = argmax over the V symbols only (the framework's candidate rule: every candidate is one token, so
          its mean log-prob is that token's log-prob; end-of-text is not a candidate)
delimiter_baseline = share of labels that are "/" (always answering "/"); chance = 1 / V

For each k of icl.shots (k = 'max': as many as fit the context, at most icl.max_shots) and each seed of
icl.seeds, icl.max_examples prompts (2500, Xie et al.'s count, when null). A k whose prompt does not fit the
context is reported as not fitting, never truncated. The prompt seed depends on the seed alone, so the test
inputs are the same at every k (paired); demonstrations come from a stream that adds k.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from momattn.errors import ConfigError, DataError
from momattn.eval.config import IclConfig
from momattn.eval.lm import LanguageModel, last_logits
from momattn.eval.ppl import model_device
from momattn.eval.results import MIN_DEMOS, SeedRun, ShotResult, TaskResult, warn_nonfinite, warn_ties
from momattn.utils import done_line, stable_seed, stderr_tty

DEFAULT_LEN = 5
DEFAULT_PROMPTS = 2500  # Xie et al.'s prompts per (l, k)
NAME = re.compile(r"ginc(?P<ood>_ood)?(?:_l(?P<len>\d+))?")

PROTOCOL = (
    "GINC (Xie et al. 2022): prompt = <eot> + k examples of l symbols each followed by '/' + the test input "
    "(l - 1 symbols); label = the Bayes-optimal next symbol under the prompt's true concept given the test "
    "input alone. acc (headline) = greedy next token over the whole vocabulary == label; acc_cand = argmax "
    "over the V symbols (end-of-text excluded); delimiter_baseline = share of '/' labels; chance = 1/V. "
    "k='max' = as many examples as fit the context (up to max_shots); a k that does not fit is not scored. "
    "max_examples prompts per seed (2500 when null); every seed at every k; test inputs paired across k. "
    "No demonstration-leak check: prompts are sampled, and a demonstration equal to the test input is "
    "part of the task."
)


@dataclass(frozen=True)
class GincTask:
    name: str
    example_len: int
    ood: bool

    @property
    def source(self) -> str:
        concepts = "held-out (OOD) concepts" if self.ood else "pretraining concepts"
        return f"ginc: the checkpoint's GINC world, {concepts}, example length {self.example_len}"


def ginc_task(name: str, key: str = "icl.tasks") -> GincTask | None:
    """The GINC task a name stands for (ginc, ginc_l8, ginc_ood, ginc_ood_l3, ...), or None; errors name the
    setting `key`."""
    m = NAME.fullmatch(name)
    if m is None:
        return None
    length = int(m["len"]) if m["len"] else DEFAULT_LEN
    if length < 2:
        raise ConfigError(f"{key}: '{name}' asks for GINC examples of {length} symbol(s); the length must "
                          "be >= 2 (the test input is l - 1 symbols), e.g. ginc_l3")
    return GincTask(name, length, m["ood"] is not None)


def check_separator(tasks: Sequence, separator: str, key: str = "icl.separator") -> None:
    """A separator other than the default would be silently ignored by GINC tasks, whose prompts end each example
    with "/" (the world the checkpoint was trained on): ConfigError naming the setting `key`."""
    ginc = [t.name for t in tasks if isinstance(t, GincTask)]
    if ginc and separator != "eot":
        raise ConfigError(f"{key}={separator!r} does not apply to GINC tasks ({', '.join(ginc)}): a GINC prompt "
                          "ends each example with '/', the delimiter the checkpoint was trained on (Xie et al. "
                          f"2022), so the setting would be ignored; leave {key}=eot for GINC, or score text tasks")


def check_test_seed(tasks: Sequence, test_seed: int, key: str = "icl.test_seed", seeds_key: str = "icl.seeds"
                    ) -> None:
    """A test_seed other than the default would be silently ignored by GINC tasks, whose test inputs are drawn
    with each prompt seed (`seeds_key`), not from a shuffled test set: ConfigError naming the setting `key`."""
    ginc = [t.name for t in tasks if isinstance(t, GincTask)]
    if ginc and test_seed != IclConfig.test_seed:
        raise ConfigError(f"{key}={test_seed!r} does not apply to GINC tasks ({', '.join(ginc)}): GINC's test "
                          f"prompts follow {seeds_key} (each seed draws its prompts, test inputs included), so the "
                          f"setting would be ignored; leave {key}={IclConfig.test_seed} for GINC, and choose other "
                          f"test inputs with {seeds_key}")


def check_prompt_count(tasks: Sequence, n: int | None, key: str = "icl.max_examples") -> None:
    """GINC makes exactly `n` prompts per (task, k, seed), all at once, where a text task's max_examples only caps
    its test file: ConfigError naming the setting `key` above MAX_PROMPTS (10**6 ran out of memory)."""
    from momattn.data.ginc import MAX_PROMPTS

    ginc = [t.name for t in tasks if isinstance(t, GincTask)]
    if ginc and n is not None and n > MAX_PROMPTS:
        raise ConfigError(f"{key}={n} is more prompts than GINC makes at once ({', '.join(ginc)}): it must be <= "
                          f"{MAX_PROMPTS:,} (each prompt is generated and held in memory; Xie et al. use "
                          f"{DEFAULT_PROMPTS}); score more seeds for a larger sample")


def check_ginc_icl(tasks: Sequence, icl: IclConfig, prefix: str = "icl.") -> None:
    """The ICL settings GINC tasks cannot honour (separator, test_seed, max_examples above MAX_PROMPTS), each
    refused naming {prefix}<key>: evaluate.py's icl.*, train.py's eval.icl.*."""
    check_separator(tasks, icl.separator, key=f"{prefix}separator")
    check_test_seed(tasks, icl.test_seed, key=f"{prefix}test_seed", seeds_key=f"{prefix}seeds")
    check_prompt_count(tasks, icl.max_examples, key=f"{prefix}max_examples")


def describe_data(data_cfg: Mapping | None) -> str:
    """The data option a run chose, as typed (data=staicc), not its class (momattn.data.sources.StaiccCorpus)."""
    data = dict(data_cfg or {})
    target = data.get("_target_")
    what = (data_option(target) or target) if target else data.get("source")
    return f"data={what}" if what else "no data section"


def data_option(target: str) -> str | None:
    """The conf/data option whose _target_ is `target` (None for a class of the user's own)."""
    import yaml

    for f in sorted((Path(__file__).resolve().parents[2] / "conf" / "data").glob("*.yaml")):
        if (yaml.safe_load(f.read_text()) or {}).get("_target_") == target:
            return f.stem
    return None


def ginc_world(data_cfg: Mapping | None, task_name: str = "ginc", key: str = "icl.tasks", ood_task: str | None = None,
               trained_on: str | None = None, training: bool = False):
    """The GincCorpus of a run config's `data` section; ConfigError (naming the setting `key`) if the run did not
    train on GINC, or an OOD task (`ood_task`) is asked of a world without held-out concepts (training: advised as
    train.py's, whose data.* keys can change it); DataError where the
    world is not the one the checkpoint trained on (`trained_on`, its data fingerprint): a changed generator
    (VERSION) made other prompts, scored without a word (found by review)."""
    from momattn.data.ginc import VERSION, GincCorpus
    from momattn.data.sources import make_source

    source = make_source(data_cfg) if data_cfg else None
    if not isinstance(source, GincCorpus):
        raise ConfigError(f"task '{task_name}' needs a checkpoint trained with data=ginc; this one was trained on "
                          f"{describe_data(data_cfg)}. "
                          + ("Drop the ginc tasks from icl.tasks" if key == "icl.tasks" else
                             f"Choose a text task ({key}=sst2, ...)")
                          + ", or use a GINC checkpoint (python train.py data=ginc ...)")
    if ood_task is not None and source.n_train_concepts == source.n_concepts:  # the data.* key is train.py's
        raise ConfigError(f"{key}: '{ood_task}' scores concepts held out of pretraining, but " + (
            f"this run's GINC world pretrains on all of its {source.n_concepts} concepts (data.n_train_concepts = "
            f"data.n_concepts); lower data.n_train_concepts or drop the ood tasks from {key}" if training else
            f"this checkpoint's GINC world pretrained on all of its {source.n_concepts} concepts "
            "(data.n_train_concepts = data.n_concepts); "
            + (f"drop the ood tasks from {key}" if key == "icl.tasks" else f"choose {key}=ginc")))
    if ood_task is not None and (twin := source.held_out_twin()):  # (told to change the world's data.* keys, which
        # evaluate.py has none of: flows review)
        raise ConfigError(f"{key}: '{ood_task}' scores concepts held out of pretraining, but in this "
                          f"{'run' if training else 'checkpoint'}'s GINC world, {twin}; "
                          + ("raise data.n_properties or data.n_permutations, change data.seed, or " if training else "")
                          + (f"drop the ood tasks from {key}" if key == "icl.tasks" else f"choose {key}=ginc"))
    if trained_on is not None and source.fingerprint() != trained_on:
        raise DataError(f"'{task_name}': the GINC world this momattn builds from the checkpoint's data section is not "
                        f"the one the model trained on (the generator, version {VERSION} here, or its defaults changed "
                        "since), so its prompts and labels would come from another world; evaluate it with the "
                        "momattn that trained it")
    return source


class GincEvaluator:
    """GINC accuracy by k (and example length, one task per length) of one model."""

    def __init__(self, model: LanguageModel, tokenizer, cfg: IclConfig, world, batch_tokens: int = 4096):
        self.model, self.tokenizer, self.cfg, self.world = model, tokenizer, cfg, world
        self.batch_tokens = batch_tokens
        self.context = model.config.block_size
        self.start = [tokenizer.eot_id]
        self.n_prompts = cfg.max_examples or DEFAULT_PROMPTS
        self.predictions: list[dict] = []

    def k_max_fit(self, task: GincTask) -> int:
        from momattn.data.ginc import max_shots, prompt_length

        need = len(self.start) + prompt_length(task.example_len, 0)  # <eot> + the test input, k=0
        if need > self.context:  # (max_shots would name the context less the <eot>: 255 of a 256-token model)
            raise ConfigError(f"icl.tasks: '{task.name}': a GINC prompt of examples of length {task.example_len} "
                              f"needs {need} tokens even with k=0 (<eot> + the {task.example_len - 1}-symbol test "
                              f"input) but the model's context is {self.context} tokens (model.block_size); use a "
                              "shorter example length or a model with a longer context")
        try:
            return max_shots(task.example_len, self.context - len(self.start))
        except ConfigError as e:
            raise ConfigError(f"icl.tasks: '{task.name}': {e}") from e

    def encode(self, task: GincTask, prompts: Sequence) -> torch.Tensor:
        """(N, T) token ids of the prompts, after checking the tokenizer maps symbol i to token i."""
        rows = []
        for p in prompts:
            ids = self.tokenizer.encode(p.text)
            if list(ids) != list(p.symbols):
                raise DataError(f"task '{task.name}': the checkpoint's tokenizer ({self.tokenizer.name}) does not "
                                "map GINC symbol i to token i; evaluate a checkpoint trained with data=ginc "
                                "tokenizer=source")
            rows.append(self.start + list(ids))
        x = torch.tensor(rows, dtype=torch.long)
        if x.size(1) > self.context:  # a bug guard: k was checked against the context before
            raise DataError(f"task '{task.name}': a {x.size(1)}-token prompt exceeds the context {self.context}")
        return x

    @torch.inference_mode()
    def last_logprobs(self, x: torch.Tensor) -> torch.Tensor:
        """(N, n_ids) float32 log-probabilities of the token after each prompt over the tokenizer's ids (the
        embedding's padding rows are no token: their share went into logprob_label), in batches of batch_tokens."""
        device = model_device(self.model)
        rows = max(1, self.batch_tokens // x.size(1))
        out = []
        for i in range(0, len(x), rows):
            logits = last_logits(self.model, x[i : i + rows].to(device))[:, : self.tokenizer.n_ids]  # (B, n_ids)
            out.append(F.log_softmax(logits.float(), dim=-1).cpu())
        return torch.cat(out)

    def greedy(self, logp: torch.Tensor) -> torch.Tensor:
        """(N,) the answer `acc` scores: the argmax over the tokenizer's ids, not the embedding's padding rows."""
        return logp[:, : self.tokenizer.n_ids].argmax(-1)

    def prompts(self, task: GincTask, k: int, seed: int, n: int | None = None) -> list:
        """The prompts this evaluator scores for (task, k, seed): n of them (default: its own count)."""
        return self.world.prompts(task.example_len, k, n or self.n_prompts, ood=task.ood,
                                  seed=stable_seed("ginc-prompts", seed))

    def evaluate_run(self, task: GincTask, k: int, seed: int, shots: int | str | None = None) -> SeedRun:
        """shots: the icl.shots value that asked for k examples ("max"), as the predictions record it."""
        prompts = self.prompts(task, k, seed)
        logp = self.last_logprobs(self.encode(task, prompts))  # (N, n_ids)
        n_sym = self.world.n_symbols
        greedy = self.greedy(logp)
        cand = logp[:, :n_sym].argmax(-1)
        labels = torch.tensor([p.label for p in prompts])
        for p, g, c, lp in zip(prompts, greedy.tolist(), cand.tolist(), logp.gather(1, labels[:, None])[:, 0]):
            self.predictions.append({"task": task.name, "k": k if shots is None else shots, "seed": seed, "label": p.label, "pred": g,
                                     "pred_cand": c, "concept": p.concept, "k_used": p.k,
                                     "logprob_label": float(lp)})
        acc, acc_cand = float((greedy == labels).double().mean()), float((cand == labels).double().mean())
        broken = int((~torch.isfinite(logp)).any(-1).sum())
        top = logp[:, : self.tokenizer.n_ids]
        ties = int(((top == top.max(-1, keepdim=True).values).sum(-1) > 1).sum())  # argmax takes the lowest id
        if broken:  # argmax over nan is symbol 0, the delimiter: an accuracy that looks like a baseline
            warn_nonfinite(task.name, k, seed, broken, len(prompts), "prompts")
            acc = acc_cand = float("nan")
        elif ties:
            warn_ties(task.name, k, seed, ties, len(prompts), "the lowest token id, 0 being the delimiter /")
        return SeedRun(seed=seed, acc=acc, k_used_mean=float(k),
                       k_used_min=k, k_used_max=k, n=len(prompts),
                       acc_cand=acc_cand, n_ties=None if broken else ties,
                       delimiter_baseline=float((labels == 0).double().mean()))

    def evaluate_task(self, task: GincTask) -> TaskResult:
        n_sym = self.world.n_symbols
        chance = 1.0 / n_sym
        fit = self.k_max_fit(task)
        t0 = time.perf_counter()
        result = TaskResult(name=task.name, kind="ginc", source=task.source, chance=chance, n=self.n_prompts,
                            example_len=task.example_len, ood=task.ood, n_symbols=n_sym,
                            world=self.world.world_settings())
        for k in self.cfg.shots:
            if k != "max" and k > fit:
                result.shots[str(k)] = ShotResult(
                    k=str(k), fits=False, chance=chance, k_used_mean=0.0, k_max_fit=fit,
                    note=f"does not fit: k={k} examples of length {task.example_len} need more than the "
                         f"{self.context}-token context (at most k={fit})")
                continue
            kk = min(fit, self.cfg.max_shots) if k == "max" else k
            if k == "max" and kk < min(MIN_DEMOS, self.cfg.max_shots):  # known before scoring: not scored (text too)
                result.shots[str(k)] = ShotResult(
                    k=str(k), fits=False, chance=chance, k_used_mean=float(kk), k_max_fit=fit,
                    note=f"does not fit: k=max places only {kk} examples in the context")
                continue
            runs = [self.evaluate_run(task, kk, s, shots=k)
                    for s in tqdm(self.cfg.seeds, desc=f"icl {task.name} k={k}", leave=False, disable=not stderr_tty())]
            result.shots[str(k)] = ShotResult.from_runs(k, runs, chance, True, k_max_fit=fit)
        done_line(f"icl {task.name}: k in {list(self.cfg.shots)}, {len(self.cfg.seeds)} seed(s)", t0)
        return result

    def evaluate_tasks(self, tasks: Sequence[GincTask]) -> dict[str, TaskResult]:
        for t in tasks:
            self.k_max_fit(t)  # every length checked against the context before any scoring
        was_training = self.model.training
        self.model.eval()
        try:
            return {t.name: self.evaluate_task(t) for t in tasks}
        finally:
            self.model.train(was_training)
