"""The lm-evaluation-harness adapter: "momattn" in lm-eval's registry, run offline on local task YAMLs
(tests/data/lm_eval), with log-likelihoods equal to momattn's own scoring on the same strings."""

from __future__ import annotations

import math
import re
import sys

import pytest
import torch
from conftest import ROOT, run_cli
from test_generate import tiny_checkpoint

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from momattn.eval.scoring import PrefixScorer  # noqa: E402
from momattn.generate import sample_tokens  # noqa: E402
from momattn.lm_eval_adapter import MomattnLM  # noqa: E402

DATA = ROOT / "tests" / "data" / "lm_eval"
TASKS = ["momattn_tiny_mc", "momattn_tiny_rolling", "momattn_tiny_gen"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("lm_eval") / "tiny.ckpt", "momentum", block_size=64)


def req(kind, *args):
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def test_simple_evaluate_runs_local_tasks_and_matches_momattn_scoring(ckpt, monkeypatch):
    monkeypatch.chdir(DATA)  # the task YAMLs name their JSONL relative to the working folder
    out = lm_eval.simple_evaluate(model="momattn", model_args=f"ckpt_path={ckpt},batch_tokens=256,precision=32-true", tasks=TASKS,
                                  # only the local tasks: indexing lm-eval's ~15k built-in ones takes ~10 s
                                  task_manager=TaskManager(include_path=str(DATA), include_defaults=False),
                                  log_samples=True,
                                  batch_size=4, limit=6)
    res = out["results"]
    assert 0 <= res["momattn_tiny_mc"]["acc,none"] <= 1
    assert res["momattn_tiny_rolling"]["word_perplexity,none"] > 1
    assert "exact_match,none" in res["momattn_tiny_gen"]
    lm = MomattnLM(ckpt_path=str(ckpt))
    scorer = PrefixScorer(lm.model, [])
    for sample in out["samples"]["momattn_tiny_mc"]:
        for (context, continuation), (ll, _greedy) in zip(sample["arguments"], [r[0] for r in sample["resps"]]):
            ctx, cont = lm._encode_pair(context, continuation)
            ((ref, n),) = scorer.score([(ctx, cont)])
            assert n == len(cont) and ll == pytest.approx(ref, abs=1e-6)
    eot = PrefixScorer(lm.model, [lm.eot_token_id])
    for sample in out["samples"]["momattn_tiny_rolling"]:
        text = sample["arguments"][0][0]
        ((ref, _),) = eot.score([([], lm.tok_encode(text))])
        assert sample["resps"][0][0] == pytest.approx(ref, abs=1e-6)  # shorter than the context: one window


@pytest.mark.parametrize("precision", ["32-true", "auto"])
def test_loglikelihood_is_batch_independent_and_greedy_is_the_argmax(ckpt, precision):
    """Scores do not depend on how rows are batched and padded: to float32 rounding in fp32; under bf16 autocast
    (`auto` where this CPU trains in bf16) to bf16's, since a float32 last-bit difference from another matmul shape can
    flip a bf16 rounding of an activation."""
    lm = MomattnLM(ckpt_path=str(ckpt), batch_size=1, precision=precision)
    texts = [("Review: a fine film\nSentiment:", " Positive"), ("Review: dull\nSentiment:", " Negative"),
             ("The café", " serves crème brûlée."), ("", "Über naïve")]
    one = lm.loglikelihood([req("loglikelihood", *t) for t in texts])
    lm.max_rows, lm.batch_tokens = None, 10_000
    many = lm.loglikelihood([req("loglikelihood", *t) for t in texts])
    tol = dict(abs=1e-5) if precision == "32-true" else dict(rel=1e-4)
    assert [a for a, _ in one] == pytest.approx([b for b, _ in many], **tol) and all(a < 0 for a, _ in one)
    ctx = lm.tok_encode("Review: a fine film\nSentiment:")
    nxt = int(lm.model(torch.tensor([ctx]))[0, -1].argmax())
    ((_, greedy),) = lm._loglikelihood_tokens([(("", ""), ctx, [nxt])])
    assert greedy


def test_long_inputs_keep_their_last_tokens_and_roll_over_windows(tmp_path):
    lm = MomattnLM(ckpt_path=str(tiny_checkpoint(tmp_path / "s.ckpt", "multirate_ema", block_size=16)),
                   precision="32-true")  # fp32, to compare with the plain model at 1e-6
    ctx, cont = list(range(40, 70)), [80, 81, 82]  # 33 tokens: the context keeps its last 14
    ((ll, _),) = lm._loglikelihood_tokens([(("", ""), ctx, cont)])
    x = torch.tensor([ctx[-14:] + cont[:-1]])  # 16 tokens of input; the last one is never fed
    logp = torch.log_softmax(lm.model(x)[0, -3:].detach().double(), -1)
    assert ll == pytest.approx(float(logp[range(3), cont].sum()), abs=1e-6)
    text = "The café serves crème brûlée. " * 6
    (rolled,) = lm.loglikelihood_rolling([req("loglikelihood_rolling", text)])
    tokens, total = lm.tok_encode(text), 0.0
    for start in range(0, len(tokens), 16):  # disjoint windows of 16 predicted tokens, one of context each
        context = [lm.eot_token_id] if start == 0 else tokens[max(0, start - 16):start]
        context = context[-(16 - len(tokens[start:start + 16]) + 1):] if start else context
        ((lp, _),) = lm._loglikelihood_tokens([(("", ""), context, tokens[start:start + 16])])
        total += lp
    assert len(tokens) > 32 and math.isfinite(rolled) and rolled == pytest.approx(total, abs=1e-6)


def test_generate_until_is_greedy_and_stops_at_the_stop_string(ckpt):
    lm = MomattnLM(ckpt_path=str(ckpt), precision="32-true")
    prompt = "Review: a fine film\nSentiment:"
    (free,) = lm.generate_until([req("generate_until", prompt, {"until": [], "max_gen_toks": 12})])
    ids = torch.tensor([lm.tok_encode(prompt)])
    greedy = [int(t) for t in sample_tokens(lm.model, ids, 12, temperature=0)]
    eot = greedy.index(lm.eot_token_id) if lm.eot_token_id in greedy else len(greedy)
    assert free == lm.tok_decode(greedy[:eot])
    stop = free[len(free) // 2: len(free) // 2 + 2] if len(free) > 3 else "\n"
    (cut,) = lm.generate_until([req("generate_until", prompt, {"until": [stop], "max_gen_toks": 12})])
    assert cut == free.split(stop)[0] if stop in free else cut == free


@pytest.mark.slow
def test_the_lm_eval_command_line_finds_the_momattn_model(ckpt, monkeypatch, capsys):
    # device= and batch_size= in --model_args, beside the --device cuda:0 and --batch_size 1 lm-eval always adds
    r = run_cli("-m", ["momattn.lm_eval_adapter", "--model", "momattn", "--model_args",
                       f"ckpt_path={ckpt},device=cpu,batch_size=4", "--tasks", "momattn_tiny_mc", "--include_path",
                       str(DATA), "--limit", "4"], DATA, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "momattn_tiny_mc" in r.stdout and "acc" in r.stdout
    # registering "momattn" filled lm-eval's registry before its lazy table of built-in models was read, so
    # --model hf / dummy were "not found" in the same process
    from lm_eval.api.registry import get_model

    assert get_model("momattn") is MomattnLM and get_model("dummy").__name__ == "DummyLM"
    # the same command line in this process (lm-eval is imported already): was a NotImplementedError traceback
    from momattn.lm_eval_adapter import main

    monkeypatch.chdir(DATA)
    monkeypatch.setattr("sys.argv", ["lm_eval", "--model", "momattn", "--model_args", f"ckpt_path={ckpt},device=cpu",
                                     "--tasks", "momattn_tiny_mc", "--include_path", str(DATA), "--limit", "2",
                                     "--apply_chat_template"])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--apply_chat_template: a momattn model has no chat template" in err, err
    assert "Traceback" not in err
    # a bad --gen_kwargs is refused before any request is scored (it ended the run at its first generation, every
    # loglikelihood request scored and nothing written: found by review)
    import momattn.lm_eval_adapter as adapter

    monkeypatch.setattr(adapter.MomattnLM, "loglikelihood", lambda *a: pytest.fail("scored before the check"))
    monkeypatch.setattr("sys.argv", ["lm_eval", "--model", "momattn", "--model_args", f"ckpt_path={ckpt},device=cpu",
                                     "--tasks", "momattn_tiny_mc", "--include_path", str(DATA), "--gen_kwargs",
                                     "do_sample=True", "temperature=-1"])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and "generation setting temperature=-1.0 must be a number >= 0" in err, err
    adapter.check_gen_kwargs(["--model", "hf", "--gen_kwargs", "temperature=-1"])  # another model's: lm-eval's
    adapter.check_gen_kwargs(["--model", "momattn", "--gen_kwargs", "temperature=0.7,top_p=0.9"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback is for machines without a GPU")
def test_lm_evals_default_device_falls_back_to_the_cpu_without_a_gpu(ckpt, capsys):
    from momattn.errors import ConfigError

    lm = MomattnLM(ckpt_path=str(ckpt), device="cuda:0")  # what lm-eval passes when --device is not given
    assert lm.device == "cpu" and "no CUDA GPU is available; running on the CPU" in capsys.readouterr().err
    lm = MomattnLM.create_from_arg_string(f"ckpt_path={ckpt}", {"device": "cuda:0", "batch_size": 1})
    assert lm.device == "cpu" and "--batch_size 1 (lm-eval's default) scores one row per forward pass; " \
        "--batch_size auto" in capsys.readouterr().err
    # a GPU named in --model_args is the user's own request: it ran on the CPU, one stderr line said so
    with pytest.raises(ConfigError, match="^--model_args device=cuda:0, but no CUDA GPU is available; use device=cpu"):
        MomattnLM.create_from_arg_string(f"ckpt_path={ckpt},device=cuda:0", {"device": "cuda:0"})


@pytest.mark.slow
def test_generation_settings_and_bad_input_are_handled_as_lm_eval_users_expect(ckpt, capsys):
    from momattn.errors import DataError

    lm = MomattnLM(ckpt_path=str(ckpt), precision="32-true")
    settings = {"until": [], "max_gen_toks": 4, "do_sample": True, "top_k": 0, "top_p": 0.9,
                "repetition_penalty": 1.2}
    (text,) = lm.generate_until([req("generate_until", "Review:", settings)])  # top_k=0: no top-k, as in HF
    assert isinstance(text, str)
    assert "generation settings repetition_penalty are not supported and are ignored" in capsys.readouterr().err
    lm.generate_until([req("generate_until", "Review:", settings)])
    assert "repetition_penalty" not in capsys.readouterr().err  # said once
    # top_p is honoured: a nucleus too small for a second token is greedy generation
    tiny = {"until": [], "max_gen_toks": 6, "do_sample": True, "temperature": 1.0, "top_p": 1e-9}
    greedy = {"until": [], "max_gen_toks": 6}
    assert lm.generate_until([req("generate_until", "Review:", tiny)]) == \
        lm.generate_until([req("generate_until", "Review:", greedy)])
    # do_sample "false" (a string) was bool("false"): sampling at temperature 5
    for off in ("false", 0):  # --gen_kwargs do_sample=0 arrives as an int
        text_false = {"until": [], "max_gen_toks": 6, "do_sample": off, "temperature": 5.0}
        assert lm.generate_until([req("generate_until", "Review:", text_false)]) == \
            lm.generate_until([req("generate_until", "Review:", greedy)])
    with pytest.raises(DataError, match="a continuation of 70 tokens is longer than the model's context of 64"):
        lm.score_pairs([([1], [5] * 70)])
    r = run_cli("-m", ["momattn.lm_eval_adapter", "--model", "momattn", "--model_args", "ckpt_path=nope.ckpt",
                       "--tasks", "momattn_tiny_mc", "--include_path", str(DATA)], DATA, timeout=600)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


def test_a_misspelt_task_is_one_line_naming_it(monkeypatch, capsys):
    # lm-eval's 17-line traceback ending in "ValueError: Tasks not found: lambada_opena" (found by review; its
    # message read from lm-eval 0.4 by hand: indexing its tasks takes ~10 s, so lm-eval's raise is stood in for)
    import lm_eval.__main__

    from momattn.lm_eval_adapter import main

    def cli_evaluate():
        raise ValueError("Tasks not found: lambada_opena. Try `lm-eval --tasks {list_groups,list_subtasks}` ...")

    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", cli_evaluate)
    monkeypatch.setattr(sys, "argv", ["lm_eval"])  # (main names the program in it)
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    assert "error: lm-eval: Tasks not found: lambada_opena. Try" in capsys.readouterr().err
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", lambda: int("x"))  # any other ValueError: as it is
    with pytest.raises(ValueError, match="invalid literal"):
        main()


def test_misspelt_model_args_and_precisions_are_refused_and_model_args_win_over_lm_evals_own(ckpt):
    from momattn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"precison= is not an argument of the momattn model. Did you mean 'precision'"):
        MomattnLM.create_from_arg_string(f"ckpt_path={ckpt},precison=32-true")
    with pytest.raises(ConfigError, match="precision=bf16 is unknown"):
        MomattnLM(ckpt_path=str(ckpt), precision="bf16")  # would have meant fp32, silently
    for arg in ("batch_tokens=abc", "max_gen_toks=2k", "batch_tokens=0"):  # was int()'s ValueError, or accepted
        with pytest.raises(ConfigError, match=f"--model_args {arg.split('=')[0]}=.* must be an int >= 1"):
            MomattnLM.create_from_arg_string(f"ckpt_path={ckpt},{arg}")
    lm = MomattnLM.create_from_arg_string(f"ckpt_path={ckpt},device=cpu,batch_size=3",
                                          {"device": "cuda:0", "batch_size": 1, "max_batch_size": None})
    assert lm.device == "cpu" and lm.max_rows == 3


def test_the_scoring_bar_moves_as_batches_are_scored(ckpt, monkeypatch):
    import momattn.lm_eval_adapter as adapter

    lm = MomattnLM(ckpt_path=str(ckpt), precision="32-true", batch_size=2)
    seen, forward = [], lm.model.forward

    class Bar:  # what the bar showed each time the model ran (it ran through the batching first, then stood at
        n = 0   # the end while every batch was scored)

        def __init__(self, total, **kw):
            self.total = total

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, k):
            Bar.n += k

    monkeypatch.setattr(adapter, "tqdm", Bar)
    monkeypatch.setattr(lm.model, "forward", lambda *a, **k: seen.append(Bar.n) or forward(*a, **k))
    pairs = [([1, 2, 3], [4]), ([5], [6, 7]), ([8, 9], [10]), ([2], [3]), ([4, 4], [5])]
    out = lm.score_pairs(pairs, disable_tqdm=False)
    assert seen == [0, 2, 4] and Bar.n == 5  # 5 rows in batches of 2, 2, 1
    for (lp, greedy), (alone, alone_greedy) in zip(out, [lm.score_pairs([p])[0] for p in pairs]):
        assert lp == pytest.approx(alone, abs=1e-5) and greedy == alone_greedy


def test_a_whitespace_only_context_reads_as_the_empty_context(ckpt):
    lm = MomattnLM(ckpt_path=str(ckpt), precision="32-true")
    ((blank, _), (empty, _)) = lm.loglikelihood([req("loglikelihood", "\n", "Yes"), req("loglikelihood", "", "\nYes")])
    assert blank == pytest.approx(empty, abs=1e-6) and blank < 0  # lm-eval moved the "\n" to the continuation
    assert lm.score_pairs([([1, 2], [])]) == [(0.0, True)]


@pytest.mark.parametrize("arg", ["batch_size=abc", "batch_size=-2", "batch_size=0", "batch_size=auto:x", "batch_size=2.5"])
def test_a_batch_size_that_is_neither_a_count_nor_auto_is_refused(ckpt, arg):
    from momattn.errors import ConfigError

    # it was taken silently as batch_size=auto (rows bounded by batch_tokens alone), a misspelt count unnoticed
    key, value = arg.split("=")
    with pytest.raises(ConfigError, match=f"--model_args {key}='?{value}'? must be an int >= 1, auto or auto:N"):
        MomattnLM.create_from_arg_string(f"ckpt_path={ckpt},{arg}")
    for ok, rows in (("4", 4), ("auto", None), ("auto:8", None)):  # lm-eval's own --batch_size spellings
        assert MomattnLM.create_from_arg_string(f"ckpt_path={ckpt}", {"batch_size": ok}).max_rows == rows
    with pytest.raises(ConfigError, match="^--batch_size='0' must be an int >= 1"):  # lm-eval's flag, not model_args
        MomattnLM.create_from_arg_string(f"ckpt_path={ckpt}", {"batch_size": "0"})


def test_lm_evals_max_batch_size_caps_the_rows_of_an_auto_batch(ckpt, tmp_path, monkeypatch):
    from momattn.errors import ConfigError

    # --batch_size auto --max_batch_size 2 still scored 10 rows per forward pass: the cap was dropped without a word
    lm = MomattnLM.create_from_arg_string(f"ckpt_path={ckpt},precision=32-true",
                                          {"batch_size": "auto", "max_batch_size": 2})
    assert lm.max_rows == 2
    rows = []
    forward = lm.model.forward
    monkeypatch.setattr(lm.model, "forward", lambda idx, *a, **k: rows.append(len(idx)) or forward(idx, *a, **k))
    lm.score_pairs([([1, 2, 3], [4, 5])] * 5)
    assert rows and max(rows) == 2
    assert MomattnLM.create_from_arg_string(f"ckpt_path={ckpt}", {"batch_size": 3, "max_batch_size": 2}).max_rows == 3
    assert MomattnLM.create_from_arg_string(f"ckpt_path={ckpt}", {"batch_size": "auto"}).max_rows is None
    with pytest.raises(ConfigError, match="^--model_args max_batch_size='abc' must be an int >= 1"):
        MomattnLM.create_from_arg_string(f"ckpt_path={ckpt},max_batch_size=abc")


def test_a_checkpoint_named_like_a_number_loads(ckpt, tmp_path, monkeypatch):
    # lm-eval's --model_args parser read ckpt_path=123 as the int 123, which was refused as "not a path"
    import shutil

    shutil.copy(ckpt, tmp_path / "123")
    monkeypatch.chdir(tmp_path)
    assert MomattnLM.create_from_arg_string("ckpt_path=123,device=cpu").model.config.block_size == 64


@pytest.mark.parametrize(("setting", "says"), [
    ({"max_gen_toks": "abc"}, "max_gen_toks='abc' must be an int >= 0"),  # was int()'s ValueError traceback
    ({"max_gen_toks": -1}, "max_gen_toks=-1 must be an int >= 0"),  # was silently nothing generated
    ({"temperature": "hot", "do_sample": True}, "temperature='hot' must be a number >= 0"),
    ({"top_k": -1, "do_sample": True}, r"top_k=-1 must be an int >= 0 \(0: the whole vocabulary\)"),  # torch.topk's error
    ({"until": [3]}, r"until=\[3\] must be a string or a list of strings"),  # TypeError in `s in text`
    ({"top_p": 0, "do_sample": True}, r"top_p=0 must be a number in \(0, 1\]"),
    ({"top_p": "most", "do_sample": True}, r"top_p='most' must be a number in \(0, 1\]"),
    ({"do_sample": "maybe"}, r"do_sample='maybe' must be true or false"),  # bool('maybe'): sampled
])
def test_bad_generation_settings_are_refused_by_name(ckpt, setting, says):
    from momattn.errors import ConfigError

    lm = MomattnLM(ckpt_path=str(ckpt), precision="32-true")
    with pytest.raises(ConfigError, match=f"generation setting {says} .*generation_kwargs or --gen_kwargs"):
        lm.generate_until([req("generate_until", "Review:", {"until": ["\n"], **setting})])


def test_a_null_max_gen_toks_or_until_takes_the_defaults(ckpt):
    lm = MomattnLM(ckpt_path=str(ckpt), precision="32-true", max_gen_toks=3)
    (null,) = lm.generate_until([req("generate_until", "Review:", {"until": None, "max_gen_toks": None})])
    (default,) = lm.generate_until([req("generate_until", "Review:", {})])  # was int(None)'s TypeError
    assert null == default and len(lm.tok_encode(default)) <= 3


def test_without_lm_eval_the_command_says_which_extra_to_install(tmp_path):
    # was a ModuleNotFoundError traceback that did not say how to get lm-eval
    (tmp_path / "lm_eval.py").write_text("raise ModuleNotFoundError(\"No module named 'lm_eval'\", name='lm_eval')\n")
    path = f"{tmp_path}{__import__('os').pathsep}{ROOT}"
    r = run_cli("-m", ["momattn.lm_eval_adapter", "--model", "momattn"], tmp_path, env={"PYTHONPATH": path}, fresh=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "needs the [lm-eval] extra (lm_eval is missing): pip install 'momattn[lm-eval]'" in r.stderr
    # the momattn-lm-eval console script (pyproject's [project.scripts]) likewise: it showed the traceback
    import re
    import subprocess
    import sys

    module, func = re.search(r'^momattn-lm-eval = "([\w.]+):(\w+)"', (ROOT / "pyproject.toml").read_text(), re.M).groups()
    r = subprocess.run([sys.executable, "-c", f"import {module}; {module}.{func}()", "--model", "momattn"], cwd=tmp_path,
                       env={**__import__("os").environ, "PYTHONPATH": path}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "error: the lm-eval adapter needs the [lm-eval] extra" in r.stderr


def test_generate_until_decodes_a_bounded_tail_per_token_and_cuts_stop_strings_as_before(tmp_path):
    # each generated token decoded the whole continuation again (and searched all of it for the stop strings):
    # quadratic in max_gen_toks (2,000 tokens: 2 million tokens decoded)
    lm = MomattnLM(ckpt_path=str(tiny_checkpoint(tmp_path / "long.ckpt", "momentum", block_size=512)),
                   precision="32-true")  # a context longer than the sample: the KV cache, no re-encoded windows
    decoded, real = [], lm.tok_decode
    lm.tok_decode = lambda ids: decoded.append(len(ids)) or real(ids)
    n = 300
    (free,) = lm.generate_until([req("generate_until", "Review:", {"until": ["zzqq"], "max_gen_toks": n})])
    ids = torch.tensor([lm.tok_encode("Review:")])
    greedy = [int(t) for t in sample_tokens(lm.model, ids, n, temperature=0, vocab=lm.tokenizer.n_ids)]
    assert lm.eot_token_id not in greedy and free == real(greedy) and "zzqq" not in free
    assert sum(decoded) < 30 * n, sum(decoded)  # was n (n + 1) / 2
    # stop strings: one spanning two tokens, several requests at once with their own until and max_gen_toks
    cut = next(i for i in range(20, n) if real(greedy[i - 1:i]).strip() and real(greedy[i:i + 1]).strip())
    span = real(greedy[cut - 1:cut])[-1] + real(greedy[cut:cut + 1])[0]
    reqs = [(["zzqq", span], n), ([span], 5), (["zzqq"], 7), ([real(greedy[40:43])], n)]
    got = lm.generate_until([req("generate_until", "Review:", {"until": u, "max_gen_toks": m}) for u, m in reqs])
    for (until, m), text in zip(reqs, got):
        expect = real(greedy[:m])
        for s in until:
            expect = expect.split(s)[0]
        assert text == expect and not any(s in text for s in until)


def test_is_greedy_means_what_greedy_generation_gives_never_a_padding_id(tmp_path):
    # the argmax ran over the embedding's padding rows too (ids no text has, which generate_until never gives):
    # where one of them was likeliest, the continuation greedy generation returns was scored "not greedy"
    from test_generate import padding_first_checkpoint

    lm = MomattnLM(ckpt_path=str(padding_first_checkpoint(tmp_path / "p.ckpt", "momentum", block_size=16)),
                   precision="32-true")
    (text,) = lm.generate_until([req("generate_until", "Review:", {"until": [], "max_gen_toks": 3})])
    ctx = lm.tok_encode("Review:")
    assert int(lm.model(torch.tensor([ctx]))[0, -1].argmax()) >= lm.tokenizer.n_ids  # a padding id is likeliest
    cont = [int(t) for t in sample_tokens(lm.model, torch.tensor([ctx]), 3, temperature=0, vocab=lm.tokenizer.n_ids)]
    assert lm.tok_decode(cont) == text
    ((ll, greedy),) = lm._loglikelihood_tokens([(("", ""), ctx, cont)])
    assert greedy and ll < 0


def test_a_hub_task_without_network_is_one_line(monkeypatch, capsys):
    import lm_eval.__main__

    from momattn.lm_eval_adapter import main

    def offline():  # what datasets raises for --tasks lambada_openai without network (a 60-line traceback)
        raise ConnectionError("Couldn't reach 'EleutherAI/lambada_openai' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", offline)
    monkeypatch.setattr("sys.argv", ["momattn.lm_eval_adapter"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    assert "error: lm-eval could not fetch a task's data (Couldn't reach 'EleutherAI/lambada_openai' on the Hub " \
           "(LocalEntryNotFoundError)); without network" in capsys.readouterr().err


def test_a_local_tasks_missing_data_file_is_one_line(ckpt, tmp_path, capsys):
    """Run from anywhere but the folder its data_files are relative to, a local task ended in datasets' 57-line
    FileNotFoundError traceback (found by review: the README's offline use)."""
    from momattn.lm_eval_adapter import main

    with pytest.MonkeyPatch.context() as m:
        m.chdir(tmp_path)  # tiny_reviews.jsonl is not here
        m.setattr("sys.argv", ["momattn.lm_eval_adapter", "--model", "momattn", "--model_args",
                               f"ckpt_path={ckpt},device=cpu", "--tasks", "momattn_tiny_mc", "--include_path",
                               str(DATA), "--limit", "2"])
        with pytest.raises(SystemExit) as e:
            main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and "error: lm-eval: a task's data file was not found (" in err and \
        "tiny_reviews.jsonl" in err and "data_files are read from the working folder" in err, err[-2000:]


def test_a_tasks_bad_generation_kwargs_are_refused_before_any_request_is_scored(ckpt, tmp_path, monkeypatch, capsys):
    # a task YAML's max_gen_toks: abc ended the run at its first generation, after every loglikelihood request was
    # scored, and nothing was written; temperature: hot was lm-eval's 45-line traceback (found by review)
    import shutil

    import momattn.lm_eval_adapter as adapter

    for f in DATA.iterdir():
        shutil.copy(f, tmp_path)
    gen = (tmp_path / "momattn_tiny_gen.yaml").read_text()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(adapter.MomattnLM, "loglikelihood", lambda *a: pytest.fail("scored before the check"))
    for name, was, now, says in (
            ("bad", "max_gen_toks: 6", "max_gen_toks: abc",
             r"error: task momattn_tiny_gen_bad: generation setting max_gen_toks='abc' must be an int >= 0"),
            ("hot", "do_sample: false", "do_sample: true\n  temperature: hot",
             r"error: lm-eval cannot read a task's YAML: could not convert string to float: 'hot'")):
        assert was in gen
        (tmp_path / "momattn_tiny_gen.yaml").write_text(
            gen.replace("task: momattn_tiny_gen", f"task: momattn_tiny_gen_{name}").replace(was, now))
        monkeypatch.setattr("sys.argv", ["lm_eval", "--model", "momattn", "--model_args",
                                         f"ckpt_path={ckpt},device=cpu", "--tasks",
                                         f"momattn_tiny_mc,momattn_tiny_gen_{name}", "--include_path", str(tmp_path),
                                         "--output_path", str(tmp_path / "out")])
        with pytest.raises(SystemExit) as e:
            adapter.main()
        err = capsys.readouterr().err  # (in-process, lm-eval's log handlers may hold an earlier test's stream)
        assert e.value.code == 2 and re.search(says, [ln for ln in err.splitlines() if ln.startswith("error:")][-1])
    # as a command: one line, no traceback
    r = run_cli("-m", ["momattn.lm_eval_adapter", "--model", "momattn", "--model_args", f"ckpt_path={ckpt},device=cpu",
                       "--tasks", "momattn_tiny_gen_hot", "--include_path", str(tmp_path)], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and re.search(says, r.stderr), r.stderr[-2000:]
