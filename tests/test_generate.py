"""generate.py: streamed sampling with the KV cache, deterministic for a seed, clear errors for bad input.

`tiny_checkpoint` (also used by test_export.py and test_lm_eval.py) writes a checkpoint in the format
momattn.checkpoint reads, from a tiny GPT and a byte-level BPE trained on a few sentences, in a second.
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
import torch
from conftest import run_cli

from momattn.checkpoint import checkpoint_meta, load_checkpoint
from momattn.errors import CheckpointError, ConfigError
from momattn.generate import GenerateConfig, StreamDecoder, generate_text, sample_tokens
from momattn.io import atomic_torch_save
from momattn.model import GPT, AttentionConfig, GPTConfig
from momattn.tokenizer import Tokenizer, train_bpe

TEXT = ["The café serves crème brûlée. The film was great; the plot was thin.",
        "Sentence: a fine movie\nLabel: Positive", "Sentence: a dull movie\nLabel: Negative",
        "Über naïve résumé — 東京 ✓"] * 4


def tiny_checkpoint(path, attention: str = "vanilla", pos_emb: str = "learned", block_size: int = 32,
                    bias: bool = True, seed: int = 0, dropout: float = 0.0, **attn):
    """A checkpoint of a randomly initialised 2-layer GPT (non-zero biases, so every parameter matters)."""
    tok = train_bpe(lambda: TEXT, vocab_size=300)
    torch.manual_seed(seed)
    cfg = GPTConfig(block_size=block_size, vocab_size=320, n_layer=2, n_head=2, n_embd=16, bias=bias,
                    pos_emb=pos_emb, dropout=dropout, attention=AttentionConfig(kind=attention, **attn))
    model = GPT(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    atomic_torch_save({"state_dict": state, "momattn": checkpoint_meta(cfg, tok, {})}, path)
    return path


def padding_first_checkpoint(path, attention: str = "vanilla", **kw):
    """tiny_checkpoint with the padding ids (300..319, above the tokenizer's) made the likeliest everywhere: the
    final norm gives its bias b whatever the input, and the padding rows of the tied embedding are 10 b."""
    ckpt = torch.load(tiny_checkpoint(path, attention, **kw), weights_only=False)
    sd, n_ids = ckpt["state_dict"], Tokenizer.from_json(ckpt["momattn"]["tokenizer"]).n_ids
    sd["model.ln_f.weight"].zero_()
    sd["model.wte.weight"][n_ids:] = 10 * sd["model.ln_f.bias"]
    atomic_torch_save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("gen") / "tiny.ckpt", block_size=16)


def cfg(ckpt, **kw):
    return GenerateConfig(**{"ckpt_path": str(ckpt), "prompt": "The film", "max_new_tokens": 12, **kw})


def test_same_seed_same_samples_other_seed_other_samples(ckpt):
    model, tok = load_checkpoint(ckpt)
    a = generate_text(model, tok, cfg(ckpt, num_samples=2, seed=3, temperature=1.0, top_k=None), "cpu", io.StringIO())
    b = generate_text(model, tok, cfg(ckpt, num_samples=2, seed=3, temperature=1.0, top_k=None), "cpu", io.StringIO())
    c = generate_text(model, tok, cfg(ckpt, num_samples=2, seed=4, temperature=1.0, top_k=None), "cpu", io.StringIO())
    assert a == b and a != c
    assert a[0] != a[1]  # the samples of one run differ: the generator moves on


@pytest.mark.parametrize("attention", ["vanilla", "momentum", "multirate_ema"])
def test_cached_sampling_matches_model_generate_past_the_context(tmp_path, attention):
    """40 tokens after a 16-token context: the cache is refilled twice, exactly as GPT.generate does it."""
    model, _ = load_checkpoint(tiny_checkpoint(tmp_path / "m.ckpt", attention, block_size=16))
    idx = torch.randint(0, 300, (2, 5), generator=torch.Generator().manual_seed(0))
    ours = list(sample_tokens(model, idx, 40, 0.9, 20, torch.Generator().manual_seed(1)))
    ref = model.generate(idx, 40, 0.9, 20, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.stack(ours, 1), ref[:, 5:])


def test_greedy_within_the_context_matches_full_recomputation(tmp_path):
    model, _ = load_checkpoint(tiny_checkpoint(tmp_path / "m.ckpt", "momentum", block_size=32))
    idx = torch.tensor([[5, 6, 7, 8]])
    got = torch.stack(list(sample_tokens(model, idx, 20, temperature=0)), 1)
    seq = idx
    for _ in range(20):  # no cache: the whole sequence again at every step
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(got, seq[:, 4:])


def test_streamed_text_is_the_decoded_sample_and_prints_whole_characters(ckpt):
    model, tok = load_checkpoint(ckpt)
    out = io.StringIO()
    samples = generate_text(model, tok, cfg(ckpt, prompt="Über", max_new_tokens=30, num_samples=2), "cpu", out)
    assert out.getvalue() == "Über" + samples[0] + "\n---------------\nÜber" + samples[1] + "\n"
    ids = tok.encode("東京 ✓ é")
    assert any(tok.decode([i]).endswith("\ufffd") for i in ids)  # these characters span several tokens
    stream = StreamDecoder(tok.decode)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == "東京 ✓ é" and not any("\ufffd" in p for p in pieces)


@pytest.mark.parametrize(("kw", "culprit"), [
    ({"prompt": ""}, "prompt is empty"), ({"prompt": None}, "prompt is empty"),
    ({"max_new_tokens": 0}, "max_new_tokens=0"), ({"temperature": -0.5}, "temperature=-0.5"),
    ({"top_k": 0}, "top_k=0"), ({"num_samples": 0}, "num_samples=0"), ({"ckpt_path": None}, "ckpt_path=PATH"),
    ({"temperature": float("nan")}, "temperature=nan"), ({"prompt": True}, "prompt=True was read as a bool"),
    ({"prompt": 0.1}, "prompt=0.1 was read as a float"), ({"prompt": ["a", "b"]}, "was read as a list"),
    ({"seed": 2**70}, "seed=1180591620717411303424 must be an int in"), ({"seed": -1}, r"seed=-1 must be an int in \[0,"),
    # a CPU generator reads 32 bits of its seed: 2**32 sampled as seed 0 (found by review)
    ({"seed": 2**32}, r"seed=4294967296 must be an int in \[0, 2\*\*32\)"), ({"top_p": 0}, "top_p=0 must be a number in"),
    ({"top_p": 1.5}, "top_p=1.5 must be"), ({"top_p": "0.9"}, "top_p='0.9' must be"),
    ({"top_p": float("nan")}, "top_p=nan must be"), ({"stop": 5}, "stop=5 must be a list of non-empty strings"),
    ({"stop": ["a", ""]}, r"stop=\['a', ''\] must be"), ({"stop": [1]}, r"stop=\[1\] must be"),
])
def test_bad_settings_name_the_culprit(kw, culprit):
    with pytest.raises(ConfigError, match=culprit.replace("(", r"\(")):
        GenerateConfig(**{"ckpt_path": "x.ckpt", "prompt": "hi", **kw})


def test_a_prompt_file_is_the_prompt_as_it_is_and_a_bad_one_is_one_line(tmp_path):
    # a long or multi-line prompt needed escapes and Hydra's quoting; nanoGPT's prompt=FILE:... was continued as
    # those words (found by review)
    (tmp_path / "p.txt").write_text("The film\nwas  \\n ${x} ")
    assert GenerateConfig(ckpt_path="x.ckpt", prompt_file=str(tmp_path / "p.txt")).prompt == "The film\nwas  \\n ${x} "
    for ending in ("\n", "\r\n"):  # the line break that ends a file (editors, echo) is not the prompt's (diff review)
        (tmp_path / "q.txt").write_bytes(f"The film was{ending}".encode())
        assert GenerateConfig(ckpt_path="x.ckpt", prompt_file=str(tmp_path / "q.txt")).prompt == "The film was"
    (tmp_path / "q.txt").write_text("\n")
    with pytest.raises(ConfigError, match="q.txt is empty"):
        GenerateConfig(ckpt_path="x.ckpt", prompt_file=str(tmp_path / "q.txt"))
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin1"))
    for kw, culprit in (({"prompt_file": str(tmp_path / "gone.txt")}, "prompt_file=.*gone.txt does not exist"),
                        ({"prompt_file": str(tmp_path)}, "is a folder"),
                        ({"prompt_file": str(tmp_path / "empty.txt")}, "empty.txt is empty"),
                        ({"prompt_file": str(tmp_path / "latin1.txt")}, "latin1.txt is not UTF-8 text"),
                        ({"prompt_file": str(tmp_path / "p.txt"), "prompt": "hi"}, "give prompt= or prompt_file=, not both"),
                        ({"prompt": f"FILE:{tmp_path / 'p.txt'}"}, r"prompt=FILE:.* with prompt_file=.*p.txt$")):
        with pytest.raises(ConfigError, match=culprit):
            GenerateConfig(**{"ckpt_path": "x.ckpt", **kw})
    assert GenerateConfig(ckpt_path="x.ckpt", prompt="FILE: none here").prompt == "FILE: none here"


def test_missing_checkpoint_is_a_checkpoint_error(tmp_path):
    from momattn.generate import run_generate

    with pytest.raises(CheckpointError, match="does not exist"):
        run_generate({"ckpt_path": str(tmp_path / "nope.ckpt"), "prompt": "hi"})
    # train.py's resume shortcut, typed here: "checkpoint 'last' does not exist" (found by review)
    with pytest.raises(CheckpointError, match="ckpt_path=last is train.py's way to resume a run folder's newest "
                                              "checkpoint; here, give the checkpoint's path"):
        run_generate({"ckpt_path": "last", "prompt": "hi"})


def test_cli_streams_to_stdout_and_rejects_bad_input_with_exit_2(ckpt, tmp_path):
    args = [f"ckpt_path={ckpt}", "prompt=The film", "max_new_tokens=8", "seed=5", "device=cpu"]
    r1, r2 = run_cli("generate.py", args, tmp_path), run_cli("generate.py", args, tmp_path)
    assert r1.returncode == 0, r1.stderr
    assert r1.stdout.startswith("The film") and r1.stdout == r2.stdout
    assert not list(tmp_path.iterdir())  # no outputs/ folder, no .hydra
    for bad, culprit in (("temperature=-1", "temperature=-1"), ("top_k=0", "top_k=0"),
                         ("max_new_tokens=0", "max_new_tokens=0"), ("prompt=", "prompt is empty"),
                         ("prompt=null", "prompt is empty (prompt=null reads as no value: quote it"),
                         ("prompt=0.10", "was read as a float, not text; quote it so that Hydra keeps it as written: "
                                         "'prompt=\"0.10\"'"),
                         (f"ckpt_path={tmp_path}/missing.ckpt", "does not exist"),
                         ("hydra.run.dir=/proc/x", "cannot write the output folder /proc/x"),  # was a traceback
                         # read as the job's overrides before any check: omegaconf's traceback, exit 1 (found by review)
                         ("prompt=it ${x}", "config interpolation failed at prompt: Interpolation key 'x' not found; "
                                            "a '${' meant as text is written '\\${'")):
        r = run_cli("generate.py", [*args, bad], tmp_path)
        assert r.returncode == 2 and culprit in r.stderr and "Traceback" not in r.stderr, r.stderr
    # the space Hydra drops from an unquoted value is named (the model saw "The film", silently); a terminal that
    # cannot show a character gets an escape (was a UnicodeEncodeError)
    r = run_cli("generate.py", [*args, "prompt=The film "], tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("The film"), r.stderr
    assert "prompt='The film ' reads as 'The film': Hydra drops the spaces around an unquoted value" in r.stderr
    r = run_cli("generate.py", [*args, "prompt='The é '"], tmp_path, env={"PYTHONIOENCODING": "ascii"}, fresh=True)
    assert r.returncode == 0 and r.stdout.startswith("The \\xe9 ") and "warning" not in r.stderr, (r.stdout, r.stderr)


def test_stream_decoder_keeps_the_spaces_a_tokenizer_puts_between_tokens():
    from momattn.generate import StreamDecoder

    words = StreamDecoder(lambda ids: " ".join(f"x{i}" for i in ids), context=[3, 17])  # GINC-like symbols
    assert [words.push(t) for t in (26, 5)] + [words.flush()] == [" x26", " x5", ""]
    raw = bytes("é✓", "utf-8")  # byte-level: 2 + 3 bytes, one token per byte
    bytewise = StreamDecoder(lambda ids: bytes(ids).decode("utf-8", errors="replace"))
    assert [bytewise.push(b) for b in raw] == ["", "é", "", "", "✓"]
    # eight lead bytes of junk, then the two bytes that complete the last into 東: the streamed text had one
    # replacement character more than the sample (found by review)
    ids = [0xE6] * 8 + [0x9D, 0xB1]
    bytewise = StreamDecoder(lambda ids: bytes(ids).decode("utf-8", errors="replace"), context=list(b"Hi"))
    pieces = [bytewise.push(b) for b in ids] + [bytewise.flush()]
    assert "".join(pieces) == bytes(ids).decode("utf-8", errors="replace") == "\ufffd" * 7 + "東"
    bytewise = StreamDecoder(lambda ids: bytes(ids).decode("utf-8", errors="replace"))  # junk to the end: all shown
    assert "".join([bytewise.push(b) for b in [0xE6] * 9] + [bytewise.flush()]) == "\ufffd" * 9


def test_a_tiny_temperature_samples_the_argmax_instead_of_failing():
    from momattn.generate import next_token

    logits = torch.tensor([[1.0, 3.0, 2.0], [0.5, -1.0, 0.25]])
    g = torch.Generator().manual_seed(0)
    assert next_token(logits, 1e-40, None, g).tolist() == [[1], [0]]  # float32 logits / 1e-40 overflowed to inf
    assert next_token(logits, 1e-320, None, g).tolist() == [[1], [0]]  # and float64 ones / 1e-320 (nan softmax)


def test_top_p_samples_only_the_nucleus():
    from momattn.generate import next_token

    logits = torch.tensor([[0.05, 0.5, 0.15, 0.3]]).log().repeat(2000, 1)  # (2000, 4)
    g = torch.Generator().manual_seed(0)
    counts = lambda ids: torch.bincount(ids.flatten(), minlength=4).tolist()  # noqa: E731
    # 0.5 + 0.3 reaches 0.7: ids 1 and 3 only, in their renormalised shares 5:3
    nucleus = counts(next_token(logits, 1.0, None, g, top_p=0.7))
    assert nucleus[0] == nucleus[2] == 0 and 0.55 < nucleus[1] / 2000 < 0.7
    assert counts(next_token(logits, 1.0, None, g, top_p=0.5)) == [0, 2000, 0, 0]  # the first alone reaches 0.5
    assert counts(next_token(logits, 1.0, None, g, top_p=1e-9)) == [0, 2000, 0, 0]  # the likeliest is always kept
    assert min(counts(next_token(logits, 1.0, None, g, top_p=1.0))) > 0  # 1: the whole distribution
    assert counts(next_token(logits, 1.0, 2, g, top_p=0.99))[0] == 0  # after top_k (ids 1 and 3 left)


def test_model_generate_takes_top_p_and_refuses_one_out_of_range():
    model = GPT(GPTConfig(block_size=16, vocab_size=32, n_layer=1, n_head=2, n_embd=16))
    idx = torch.zeros(1, 2, dtype=torch.long)
    greedy = model.generate(idx, 5, temperature=0)
    assert torch.equal(model.generate(idx, 5, top_p=1e-9, generator=torch.Generator().manual_seed(0)), greedy)
    with pytest.raises(ValueError, match="top_p=0 must be in"):
        model.generate(idx, 5, top_p=0)
    for k in (0, -1, 2.5):  # an IndexError / RuntimeError from torch.topk
        with pytest.raises(ValueError, match=f"top_k={k} must be an int >= 1"):
            model.generate(idx, 5, top_k=k)
    assert torch.equal(model.generate(idx, 0), idx)  # nothing to sample: the prompt
    # -3 returned the prompt as if sampled; an empty prompt was an IndexError, temperature None a TypeError and
    # inf sampled uniformly, which generate.py refuses (found by review)
    for bad, match in (({"max_new_tokens": -3}, "max_new_tokens=-3 must be an int >= 0"),
                       ({"max_new_tokens": 2.0}, "max_new_tokens=2.0 must be an int"),
                       ({"idx": torch.zeros(1, 0, dtype=torch.long)}, r"idx of shape \(1, 0\) must be \(B, T\)"),
                       ({"temperature": None}, "temperature=None must be a finite number"),
                       ({"temperature": float("inf")}, "temperature=inf must be a finite number"),
                       # True sampled at temperature 1 and top_p 1; an id past the vocabulary was the embedding's
                       # IndexError (found by review)
                       ({"temperature": True}, "temperature=True must be a finite number"),
                       ({"top_p": True}, "top_p=True must be in"),
                       ({"idx": torch.tensor([[3, 32]])}, r"idx holds token id 32, outside this model's vocabulary of "
                                                         r"32 ids \(0..31\)"),
                       ({"idx": torch.tensor([[-1, 3]])}, "idx holds token id -1")):
        with pytest.raises(ValueError, match=match):
            model.generate(**{"idx": idx, "max_new_tokens": 5, **bad})


def test_model_generate_runs_no_forward_after_its_last_token():
    """The last sampled token's logits were computed and thrown away: max_new_tokens=1 cost two forward passes."""
    model = GPT(GPTConfig(block_size=16, vocab_size=32, n_layer=1, n_head=2, n_embd=16))
    calls = []
    real = model.last_logits
    model.last_logits = lambda *a, **kw: calls.append(1) or real(*a, **kw)
    for n in (1, 3):
        calls.clear()
        assert model.generate(torch.zeros(1, 2, dtype=torch.long), n, temperature=0).shape == (1, 2 + n)
        assert len(calls) == n  # the prompt's forward, then one per token but the last


def test_samples_never_take_the_models_padding_ids(ckpt):
    # the model's vocabulary (320) is the tokenizer's (300) rounded up; ids 300..319 decode to nothing
    model, tok = load_checkpoint(ckpt)
    idx = torch.tensor([tok.encode("The film")])
    g = torch.Generator().manual_seed(0)
    ids = [int(t) for t in sample_tokens(model, idx, 200, temperature=50.0, generator=g, vocab=tok.max_id + 1)]
    assert max(ids) <= tok.max_id < model.config.vocab_size - 1
    text = generate_text(model, tok, cfg(ckpt, temperature=50.0, top_k=None, max_new_tokens=60), "cpu",
                         io.StringIO())[0]
    assert len(tok.encode(text)) >= 30  # every sampled token is text (a padding id printed nothing)


def test_model_generate_from_a_checkpoint_never_takes_a_padding_id(tmp_path):
    # the Python API of the README (load_checkpoint, then model.generate) masks them as generate.py does
    model, tok = load_checkpoint(padding_first_checkpoint(tmp_path / "p.ckpt", block_size=16))
    idx = torch.tensor([tok.encode("The film")])
    assert int(model(idx)[0, -1].argmax()) >= tok.n_ids  # unmasked, a padding id wins
    # nor is given one: its untrained row was read and it decoded as '' (found by review)
    with pytest.raises(ValueError, match=f"idx holds token id {tok.n_ids}: ids {tok.n_ids}..{model.config.vocab_size - 1} "
                                         "are the vocabulary's padding"):
        model.generate(torch.tensor([[*tok.encode("The"), tok.n_ids]]), 2)
    for kw in ({"temperature": 0}, {"temperature": 1.0, "top_k": 5}):  # 30 tokens: past the context of 16 too
        out = model.generate(idx, 30, generator=torch.Generator().manual_seed(0), **kw)
        assert int(out.max()) < tok.n_ids < model.config.vocab_size


def test_an_unresolvable_interpolation_is_a_config_error_naming_the_key():
    # prompt='${oops}' on the command line: was omegaconf's InterpolationKeyError with a traceback (exit 1)
    from omegaconf import OmegaConf

    from momattn.generate import run_generate

    conf = OmegaConf.create({"ckpt_path": "x.ckpt", "prompt": "${oops}"})
    with pytest.raises(ConfigError, match="config interpolation failed at prompt: Interpolation key 'oops'"):
        run_generate(conf)


def test_model_generate_takes_a_tiny_temperature_as_greedy_and_refuses_a_negative_one(ckpt):
    # the README's Python API: logits / 1e-40 overflowed to inf and multinomial failed on the nan probabilities;
    # a negative temperature sampled the least likely tokens first
    model, tok = load_checkpoint(ckpt)
    idx = torch.tensor([tok.encode("The film")])
    g = torch.Generator().manual_seed(0)
    assert torch.equal(model.generate(idx, 20, temperature=1e-40, generator=g), model.generate(idx, 20, temperature=0))
    for bad in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="temperature=.* must be a finite number >= 0"):
            model.generate(idx, 5, temperature=bad)


def test_a_reader_that_leaves_early_ends_sampling_without_a_traceback(ckpt, tmp_path):
    # `python generate.py ... | head -1`: was a BrokenPipeError traceback and exit 1
    import subprocess
    import sys

    from conftest import ROOT

    proc = subprocess.Popen([sys.executable, str(ROOT / "generate.py"), f"ckpt_path={ckpt}", 'prompt="a\\nb"',
                             "max_new_tokens=2000", "num_samples=50", "device=cpu"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"a\n"
    proc.stdout.close()  # the reader leaves while samples are still being written
    err = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 0 and "Traceback" not in err and "Error" not in err, err


def test_ctrl_c_ends_sampling_with_the_text_so_far_and_no_traceback(ckpt, monkeypatch, capsys):
    # was torch's KeyboardInterrupt traceback, some 40 lines deep in the model, under the streamed text
    import momattn.generate as gen

    def interrupted(model, tokenizer, cfg, device, out=None):
        print("The film was", end="")
        raise KeyboardInterrupt

    monkeypatch.setattr(gen, "generate_text", interrupted)
    with pytest.raises(SystemExit) as e:
        gen.run_generate({"ckpt_path": str(ckpt), "prompt": "The film", "device": "cpu"})
    assert e.value.code == 130 and capsys.readouterr().out == "The film was\n"


def test_stream_decoder_decodes_a_bounded_window_and_prints_what_whole_decodes_print(ckpt):
    # each token decoded the whole sequence again: 8,000 sampled tokens took 24 s of decoding alone
    import os
    import random

    _, tok = load_checkpoint(ckpt)
    decoded = []

    def counting(ids):
        decoded.append(len(ids))
        return tok.decode(ids)

    def whole_decodes(context, ids):  # the rule by definition: decode everything, print what is new once whole
        seq, shown, held, out = list(context), tok.decode(list(context)), 0, []
        for t in ids:
            seq.append(t)
            if tok.decode(seq).endswith("\ufffd") and held < 7:
                held += 1
                continue
            text = tok.decode(seq)
            out.append(text[len(os.path.commonprefix([shown, text])):])
            shown, held = text, 0
        if held:
            text = tok.decode(seq)
            out.append(text[len(os.path.commonprefix([shown, text])):])
        return "".join(out)

    rng = random.Random(0)
    context = tok.encode("Über naïve résumé — 東京")
    for _ in range(20):  # random ids: broken multi-byte characters and junk bytes among them
        ids = [rng.randrange(tok.n_ids) for _ in range(rng.randrange(1, 60))]
        stream = StreamDecoder(tok.decode, context)
        assert "".join([stream.push(t) for t in ids] + [stream.flush()]) == whole_decodes(context, ids)
    stream = StreamDecoder(counting, context)
    for t in tok.encode("東京 ✓ é " * 300):  # ~1,800 tokens: each decode reads a few of them, not all
        stream.push(t)
    assert max(decoded) < 20


def test_stop_at_holds_back_only_what_could_begin_a_stop_string():
    from momattn.generate import StopAt

    stop = StopAt(["\n\n", "END"])
    assert [stop.push(p) for p in ["Hello wo", "rld\n", "E", "N", "x\n", "\nmore"]] == \
        ["Hello wo", "rld", "\n", "", "ENx", ""]
    assert stop.done and stop.push("again") == "" and stop.flush() == ""
    stop = StopAt(["END"])
    assert stop.push("the EN") == "the " and stop.flush() == "EN"  # a sample that ends inside a partial stop string
    assert StopAt([]).push("anything\n\n") == "anything\n\n"


@pytest.mark.parametrize("stops", [["abc", "b"], ["b", "abc"], ["xab", "abz"], ["aa", "a"], ["ca", "abca"]])
def test_stop_at_cuts_the_same_wherever_the_pieces_break(stops):
    """The text a stop string cuts is that of the text fed a character at a time, for every way of breaking it into
    pieces (a stop string inside another one used to cut by where a token ended)."""
    import itertools

    from momattn.generate import StopAt

    for text in ["xabcd", "xabzab", "caabca", "zzz", "xxabcabc"]:
        def run(pieces):
            stop = StopAt(stops)
            return "".join(stop.push(p) for p in pieces) + stop.flush()

        want = run(list(text))
        for cuts in itertools.product([0, 1], repeat=len(text) - 1):  # every way of breaking the text
            bounds = [0, *[i + 1 for i, c in enumerate(cuts) if c], len(text)]
            assert run([text[i:j] for i, j in zip(bounds, bounds[1:])]) == want, (text, cuts)
        assert not any(s in want for s in stops)


def test_a_sample_ends_at_a_stop_string_printed_and_returned_alike(ckpt):
    model, tok = load_checkpoint(ckpt)
    kw = {"max_new_tokens": 30, "temperature": 1.0, "top_k": None, "seed": 2, "stop": []}
    (full,) = generate_text(model, tok, cfg(ckpt, **kw), "cpu", io.StringIO())
    cut = full[6:9]  # a string from the middle of the sample
    assert len(full) > 12 and full.find(cut) > 0
    out = io.StringIO()
    samples = generate_text(model, tok, cfg(ckpt, **{**kw, "stop": ["never there", cut]}), "cpu", out)
    assert samples == [full[: full.find(cut)]]
    assert out.getvalue() == "The film" + samples[0] + "\n"


def test_by_default_a_sample_ends_with_its_document(tmp_path):
    """The default stop is the document separator: a model that always samples it gives empty samples; stop=[]
    samples max_new_tokens of them (printed as the separator's spelling)."""
    from momattn.tokenizer import EOT

    path = tiny_checkpoint(tmp_path / "eot.ckpt")
    ckpt = torch.load(path, weights_only=False)
    sd, tok = ckpt["state_dict"], Tokenizer.from_json(ckpt["momattn"]["tokenizer"])
    sd["model.ln_f.weight"].zero_()  # the final norm gives its bias whatever the input: make EOT its best match
    sd["model.wte.weight"][tok.encode(EOT)[0]] = 10 * sd["model.ln_f.bias"]
    atomic_torch_save(ckpt, path)
    model, tok = load_checkpoint(path)
    assert generate_text(model, tok, cfg(path, temperature=0), "cpu", io.StringIO()) == [""]
    assert generate_text(model, tok, cfg(path, temperature=0, stop=[], max_new_tokens=3), "cpu",
                         io.StringIO()) == [EOT * 3]


def test_the_document_separator_ends_a_sample_at_its_token_leaving_no_separator_space(monkeypatch):
    """A tokenizer that puts spaces between tokens (GINC's) decodes "x2 <|endoftext|>": the sample ends at the
    separator's token, before it is decoded, so no space is left before it; text held back for another stop string
    is released."""
    import contextlib

    import momattn.generate as gen
    from momattn.tokenizer import EOT

    names = ["x1", "x2", "\n", EOT, "x3"]

    class Spaced:
        n_ids, eot_id = len(names), names.index(EOT)

        def encode(self, text):
            return [names.index(w) for w in text.split(" ")]

        def decode(self, ids):
            return " ".join(names[i] for i in ids)

    def sampled(ids):
        return lambda *a, **kw: iter(torch.tensor([i]) for i in ids)

    monkeypatch.setattr(gen, "inference_autocast", lambda *a: contextlib.nullcontext())
    for ids, stop, want in [([1, 0, 3, 4], [EOT], " x2 x1"), ([1, 2, 3, 4], [" \n \n", EOT], " x2 \n"),
                            ([1, 0, 3, 4], [], " x2 x1 " + EOT + " x3")]:
        monkeypatch.setattr(gen, "sample_tokens", sampled(ids))
        out = io.StringIO()
        model = SimpleNamespace(config=SimpleNamespace(block_size=8))  # sample_tokens is the fake above
        got = generate_text(model, Spaced(), GenerateConfig(ckpt_path="x", prompt="x1", stop=stop), "cpu", out)
        assert got == [want] and out.getvalue() == "x1" + want + "\n", (stop, got)


def test_a_prompt_longer_than_the_context_is_said_to_be_cut(ckpt, capsys):
    """The model continues from the prompt's last block_size tokens (nanoGPT's crop): said, not silent."""
    model, tok = load_checkpoint(ckpt)
    long = "The film was long and " * 20
    n = len(tok.encode(long))
    assert n > model.config.block_size
    out = io.StringIO()
    generate_text(model, tok, cfg(ckpt, prompt=long, max_new_tokens=2), "cpu", out)
    assert out.getvalue().startswith(long)  # printed whole
    assert (f"the prompt is {n} tokens, longer than the model's context of {model.config.block_size}: sampling "
            f"continues from its last {model.config.block_size} tokens") in capsys.readouterr().err
    generate_text(model, tok, cfg(ckpt), "cpu", io.StringIO())
    assert "longer than the model's context" not in capsys.readouterr().err


def test_stream_decoder_prints_a_byte_fallback_tokenizers_text_whole(tmp_path):
    """A Llama-style tokenizer.json (Metaspace, <0xNN> byte tokens, a ByteFallback decoder) decodes a run of byte
    tokens together, into replacement characters where the run does not begin at a character: a window cut inside
    one printed the newline after "✓✓✓" as U+FFFD (found by review)."""
    import random

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from momattn.tokenizer import file_tokenizer

    words = ["the", "cat", "sat", "on", "mat", "hat", "Hello", "world"]  # nothing outside ASCII: byte tokens below
    rng = random.Random(0)
    hf = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    hf.pre_tokenizer = pre_tokenizers.Metaspace()
    hf.decoder = decoders.Sequence([decoders.Metaspace(), decoders.ByteFallback(), decoders.Fuse()])
    hf.train_from_iterator([" ".join(rng.choice(words) for _ in range(30)) for _ in range(100)], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<|endoftext|>"] + [f"<0x{i:02X}>" for i in range(256)]))
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = file_tokenizer(str(tmp_path / "tokenizer.json"))
    pool = ["Hello", " world", " 日本", " 😀", " naïve", "✓", " the cat", "\n", "ж", " €"]
    for text in ["✓✓✓\nok", *("".join(rng.choice(pool) for _ in range(rng.randint(1, 12))) for _ in range(200))]:
        context = tok.encode("Hello")
        ids = tok.encode("Hello" + text)[len(context):]
        stream = StreamDecoder(tok.decode, context)
        assert "".join([stream.push(t) for t in ids] + [stream.flush()]) == tok.decode(context + ids)[5:], text
