"""python -m momattn.export: the exported folder loads in transformers with logits equal to ours (1e-4), as
GPT2LMHeadModel for vanilla + learned positions and through the copied modeling file otherwise."""

from __future__ import annotations

import ast
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, run_cli
from test_generate import padding_first_checkpoint, tiny_checkpoint

from momattn.checkpoint import load_checkpoint
from momattn.errors import ConfigError, DataError
from momattn.export import MODELING_FILE, export, parse_args

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")


def parity(ckpt, out, trust: bool):
    from safetensors import safe_open

    ours, tok = load_checkpoint(ckpt)
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=trust, output_loading_info=True)
    hf.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"], info  # none left at its random start
    with safe_open(out / "model.safetensors", "pt") as f:
        # transformers up to 4.48 (which the hf extra admits) renamed every key holding "gamma" or "beta" to
        # weight / bias as it loaded: multirate_ema's gamma stayed random there (found by review)
        assert not [k for k in f.keys() if "gamma" in k or "beta" in k]
    ids = torch.randint(0, ours.config.vocab_size, (3, ours.config.block_size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (hf(ids).logits - ours(ids)).abs().max().item()
    assert diff < 1e-4
    with torch.no_grad():  # and to float64 in float64 (the memory term was float32 there: found by review)
        diff = (hf.double()(ids).logits - ours.double()(ids)).abs().max().item()
    hf.float()
    assert diff < 1e-10, diff
    hf_tok = transformers.AutoTokenizer.from_pretrained(out, trust_remote_code=trust)
    text = "The café serves crème brûlée. 東京 ✓"
    assert hf_tok(text)["input_ids"] == tok.encode(text)
    assert hf_tok.decode(tok.encode(text)) == text and hf_tok.eos_token_id == tok.eot_id
    # the documented model(**tokenizer(text)): no token_type_ids, which transformers 4.x's fast tokenizer returned
    # unless the config names the inputs (GPT-2 added them as embeddings; generate refused them: found by review)
    assert json.loads((out / "tokenizer_config.json").read_text())["model_input_names"] == ["input_ids",
                                                                                            "attention_mask"]
    enc = hf_tok(text, return_tensors="pt")
    assert set(enc) == {"input_ids", "attention_mask"}
    with torch.no_grad():
        assert (hf(**enc).logits - ours(enc["input_ids"])).abs().max().item() < 1e-4
    return hf


@pytest.mark.parametrize("bias", [True, False])
def test_vanilla_learned_positions_load_as_gpt2(tmp_path, bias):
    ckpt = tiny_checkpoint(tmp_path / "v.ckpt", bias=bias)
    out = export(ckpt, tmp_path / "hf")
    assert not (out / MODELING_FILE.name).exists()  # plain transformers, no remote code
    config = json.loads((out / "config.json").read_text())
    assert config["activation_function"] == "gelu"  # exact erf GELU
    assert config["torch_dtype"] == "float32" and config.get("dtype", "float32") == "float32"  # not dtype: null
    hf = parity(ckpt, out, trust=False)
    assert type(hf) is transformers.GPT2LMHeadModel
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied, as ours
    assert hf.config.vocab_size == 320 > 300  # the padded vocabulary is kept


@pytest.mark.parametrize(("attention", "pos_emb", "attn"), [
    ("momentum", "learned", {}),
    ("momentum", "learned", {"eta": 0.7}),  # not exact in float32: a float64 export holds the config's (flows review)
    ("momentum", "rotary", {"learnable_eta": True, "eta": 0.7, "include_current": True}),
    ("multirate_ema", "learned", {"n_rates": 3}),
    ("multirate_ema", "rotary", {}),
    ("vanilla", "rotary", {}),
])
def test_other_variants_load_with_their_own_modeling_file(tmp_path, attention, pos_emb, attn):
    ckpt = tiny_checkpoint(tmp_path / "m.ckpt", attention, pos_emb=pos_emb, **attn)
    out = export(ckpt, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_momattn.MomattnForCausalLM"
    hf = parity(ckpt, out, trust=True)
    assert type(hf).__name__ == "MomattnForCausalLM"


@pytest.mark.parametrize("attention", ["vanilla", "momentum"])  # GPT2LMHeadModel, MomattnForCausalLM
def test_the_models_dropout_is_carried_or_recorded(tmp_path, attention):
    # GPT-2's three dropouts were written as 0.0: fine-tuning the export dropped the model's dropout unsaid (found
    # by review); the modeling file has none, and config.json records the one the model trained with
    out = export(tiny_checkpoint(tmp_path / "d.ckpt", attention, dropout=0.2), tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    if attention == "vanilla":
        assert config["resid_pdrop"] == config["embd_pdrop"] == config["attn_pdrop"] == 0.2
    else:
        assert config["trained_dropout"] == 0.2


def test_modeling_file_is_self_contained():
    tree = ast.parse(MODELING_FILE.read_text())
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert roots <= {"__future__", "math", "torch", "transformers"}
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree))


def test_the_modeling_files_learned_rates_stay_below_one_as_the_models_do():
    # a float32 sigmoid is exactly 1.0 past a logit of ~16.6: momattn's model keeps its rates below 1, and the
    # exported file computes them the same way (found by review)
    import importlib.util

    from momattn.model import _below_one

    spec = importlib.util.spec_from_file_location("modeling_momattn_under_test", MODELING_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    logits = torch.tensor([-40.0, 0.0, 16.0, 17.0, 40.0])
    rates = module._rate(logits)
    assert (rates < 1).all() and torch.equal(rates, _below_one(torch.sigmoid(logits)))


def test_refusals_and_arguments(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "v.ckpt")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep me")
    with pytest.raises(ConfigError, match="is not empty; pick a new folder or pass overwrite=true"):
        export(ckpt, tmp_path / "busy")
    assert (tmp_path / "busy" / "x").read_text() == "keep me"
    export(ckpt, tmp_path / "busy", overwrite=True)
    with pytest.raises(ConfigError, match="'outt=x' is not an export argument. Did you mean 'out'"):
        parse_args(["ckpt_path=a", "outt=x"])
    with pytest.raises(ConfigError, match="missing out="):
        parse_args(["ckpt_path=a"])
    with pytest.raises(ConfigError, match=r"^out=' ' is empty"):  # it wrote a folder named ' '
        parse_args(["ckpt_path=a", "out= "])
    with pytest.raises(ConfigError, match=r"^out is given twice \(out=A and out=B\); give it once$"):
        parse_args(["ckpt_path=a", "out=A", "out=B"])  # the last one was taken silently


def test_cli_exports_and_reports_bad_input_in_one_line(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "m.ckpt", "momentum")
    r = run_cli("-m", ["momattn.export", f"ckpt_path={ckpt}", f"out={tmp_path / 'hf'}"], ROOT)
    assert r.returncode == 0 and "trust_remote_code=True" in r.stdout, r.stderr
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
            "modeling_momattn.py"} <= {p.name for p in (tmp_path / "hf").iterdir()}
    r = run_cli("-m", ["momattn.export", f"ckpt_path={tmp_path / 'nope.ckpt'}", f"out={tmp_path / 'o'}"], ROOT)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_the_exported_model_generates_as_momattn_does_and_refuses_left_padding(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "m.ckpt", "momentum", block_size=16, learnable_eta=True, eta=0.7)
    out = export(ckpt, tmp_path / "hf")
    ours, _ = load_checkpoint(ckpt)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    ids = torch.randint(0, 300, (1, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # greedy, 20 tokens past the context of 16: both slide a window of 16 tokens
        theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=31, do_sample=False,
                             use_cache=False, pad_token_id=0)
        mine = ours.generate(ids, 31, temperature=0)
    assert torch.equal(theirs, mine)
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    with pytest.raises(ValueError, match="attention_mask has a padded position before a real one"):
        hf(ids, attention_mask=mask)
    right = torch.tensor([[1, 1, 1, 0, 0]])  # right padding: the real positions are untouched
    torch.testing.assert_close(hf(ids, attention_mask=right).logits[:, :3], hf(ids[:, :3]).logits)
    fresh = type(hf)(hf.config)  # a model built from the config starts where momattn's does
    assert torch.allclose(torch.sigmoid(fresh.blocks[0].attn.eta_logit), torch.tensor(0.7))
    # it keeps no cache: one given scored the new token alone, at position 0, with no word; assisted generation
    # ended in an AttributeError deep in transformers; output_attentions gave None (found by review)
    with pytest.raises(ValueError, match="past_key_values: this model keeps no cache; pass the whole sequence"):
        hf(ids[:, -1:], past_key_values=transformers.DynamicCache(), use_cache=True)
    with pytest.raises(ValueError, match="output_attentions: this model does not return attention weights"):
        hf(ids, output_attentions=True)
    assert json.loads((out / "generation_config.json").read_text())["use_cache"] is False
    assert hf.config.use_cache is False and hf.generation_config.use_cache is False
    with pytest.raises(Exception) as e:  # transformers' own one line: it needs a cache
        hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False,
                    prompt_lookup_num_tokens=2, pad_token_id=0)
    assert not isinstance(e.value, AttributeError), e.value
    # the training loss in float64 for a float64 model, as its logits are (it was float32)
    double = hf.double()
    with torch.no_grad():
        loss = double(ids, labels=ids).loss
        exact = F.cross_entropy(double(ids).logits[0, :-1], ids[0, 1:])
    assert loss.dtype == torch.float64 and abs(loss.item() - exact.item()) < 1e-12


@pytest.mark.parametrize("attention", ["vanilla", "momentum"])  # GPT2LMHeadModel, MomattnForCausalLM
def test_the_exported_model_never_generates_a_padding_id(tmp_path, attention):
    ckpt = padding_first_checkpoint(tmp_path / "p.ckpt", attention, block_size=16)
    out = export(ckpt, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=attention != "vanilla").eval()
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert int(hf(ids).logits[0, -1].argmax()) >= 300  # unmasked, a padding id (300..319) wins
        for kw in ({"do_sample": False}, {"do_sample": True, "top_k": 5}):
            gen = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, use_cache=False,
                              pad_token_id=0, **kw)
            assert int(gen.max()) < 300
    assert hf.generation_config.suppress_tokens == list(range(300, 320))


def test_the_exported_multirate_ema_matches_momattn_past_a_few_hundred_tokens(tmp_path):
    # the kernel is summed per channel first: no (C, R, T, T) tensor (gigabytes at T = 512 before)
    ckpt = tiny_checkpoint(tmp_path / "m.ckpt", "multirate_ema", block_size=384, n_rates=4)
    parity(ckpt, export(ckpt, tmp_path / "hf"), trust=True)


def test_overwrite_of_a_momentum_export_with_a_gpt2_one_leaves_no_modeling_file(tmp_path):
    export(tiny_checkpoint(tmp_path / "m.ckpt", "momentum"), tmp_path / "hf")
    for stale in ("pytorch_model.bin", "model.safetensors.index.json", "model-00001-of-00002.safetensors"):
        (tmp_path / "hf" / stale).write_bytes(b"another export's weights")  # kept beside the new ones, loadable
    for mine in ("notes.txt", "pytorch_model_backup.bin", "faiss.index.json"):  # not Hugging Face's names
        (tmp_path / "hf" / mine).write_text("mine")
    out = export(tiny_checkpoint(tmp_path / "v.ckpt"), tmp_path / "hf", overwrite=True)
    assert not (out / MODELING_FILE.name).exists()
    assert not {"pytorch_model.bin", "model.safetensors.index.json", "model-00001-of-00002.safetensors"} & \
        {p.name for p in out.iterdir()}
    assert all((out / mine).read_text() == "mine" for mine in ("notes.txt", "pytorch_model_backup.bin",
                                                                 "faiss.index.json"))
    assert type(transformers.AutoModelForCausalLM.from_pretrained(out)) is transformers.GPT2LMHeadModel


def test_a_failed_overwrite_leaves_no_config_that_would_load_new_weights_as_another_model(tmp_path, monkeypatch):
    import momattn.export as ex

    out = export(tiny_checkpoint(tmp_path / "m.ckpt", "momentum"), tmp_path / "hf")
    real = ex.write_tokenizer

    def disk_full(*a, **k):  # the disk fills after the new weights were written
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ex, "write_tokenizer", disk_full)
    with pytest.raises(DataError, match="could not write the export to out=.*No space left on device.*no config.json"
                                        ".*free the space"):
        export(tiny_checkpoint(tmp_path / "v.ckpt"), out, overwrite=True)
    monkeypatch.setattr(ex, "write_tokenizer", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "denied")))
    with pytest.raises(DataError, match="denied; it is incomplete .*; pick a writable folder"):  # not "free the space"
        export(tiny_checkpoint(tmp_path / "v.ckpt"), out, overwrite=True)
    assert not (out / "config.json").exists()  # was: the momentum config over GPT-2 weights, loaded as random
    monkeypatch.setattr(ex, "write_tokenizer", real)
    parity(tmp_path / "v.ckpt", export(tmp_path / "v.ckpt", out, overwrite=True), trust=False)  # a rerun completes
    monkeypatch.setattr(ex, "_write", lambda out, *a: (_ for _ in ()).throw(PermissionError(13, "denied")))
    with pytest.raises(DataError, match="denied; nothing was written; pick a writable folder"):  # not "incomplete"
        export(tmp_path / "v.ckpt", tmp_path / "never", overwrite=True)
    # a read-only folder holding a complete export: it was called incomplete, with no config.json (found by review)
    with pytest.raises(DataError, match="denied; nothing in it was changed; pick a writable folder"):
        export(tmp_path / "v.ckpt", out, overwrite=True)
    assert (out / "config.json").exists()


def test_an_output_folder_that_cannot_be_made_is_refused_before_the_checkpoint_is_read(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    missing = tmp_path / "no.ckpt"  # never read: the folder is refused first
    with pytest.raises(ConfigError, match=r"cannot be created: '.*afile' is not a folder"):
        export(missing, tmp_path / "afile" / "hf")
    with pytest.raises(ConfigError, match=r"cannot be created: '.*dangling' is a link to nothing"):
        export(missing, tmp_path / "dangling")
    with monkeypatch.context() as m:  # a folder this user cannot write in (root writes anywhere: simulated)
        m.setattr("momattn.export.os.access", lambda p, mode: False)
        with pytest.raises(ConfigError, match=r"cannot be written: '.*' is not writable; pick another folder"):
            export(missing, tmp_path / "ro" / "hf")
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    parity(ckpt := tiny_checkpoint(tmp_path / "v.ckpt"), export(ckpt, "."), trust=False)  # out=.: was StopIteration


def test_the_weights_file_is_fsynced_and_as_readable_as_the_rest_of_the_folder(tmp_path, monkeypatch):
    # safetensors' save_file writes a temporary file of its own (mode 0600, never fsynced) and renames it over the
    # name it is given, so atomic_write's handle pointed at an unlinked empty file: its fsync missed the weights,
    # and model.safetensors was readable by its owner only, beside a world-readable config.json
    import os

    import momattn.io as mio

    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(mio.os, "fsync", fsync)
    out = export(tiny_checkpoint(tmp_path / "v.ckpt"), tmp_path / "hf")
    weights = out / "model.safetensors"
    assert weights.stat().st_ino in synced
    assert weights.stat().st_mode & 0o777 == (out / "config.json").stat().st_mode & 0o777


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_the_usage_and_exits_0(flag, capsys):
    from momattn.export import main

    main([flag])  # it was "error: '--help' is not an export argument", exit 2
    out = capsys.readouterr().out
    assert "python -m momattn.export ckpt_path=" in out and "trust_remote_code=True" in out


@pytest.mark.parametrize("attention", ["momentum", "multirate_ema"])
def test_the_exported_model_returns_hidden_states_and_tuples_when_asked(tmp_path, attention):
    # output_hidden_states=True gave hidden_states=None and return_dict=False a CausalLMOutput (unpacking it gave
    # its key names): probes of the representations read nothing. GPT-2's convention: the embeddings, each block's
    # output, the last one after the final norm
    ckpt = tiny_checkpoint(tmp_path / "m.ckpt", attention)
    ours, _ = load_checkpoint(ckpt)
    hf = transformers.AutoModelForCausalLM.from_pretrained(export(ckpt, tmp_path / "hf"), trust_remote_code=True)
    seen = []
    for block in ours.blocks:
        block.register_forward_hook(lambda m, args, out: seen.append(out))
    ids = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = ours(ids)
        out = hf(ids, output_hidden_states=True)
        loss, tuple_logits, hidden = hf(ids, labels=ids, output_hidden_states=True, return_dict=False)
    assert len(out.hidden_states) == ours.config.n_layer + 1
    torch.testing.assert_close(out.hidden_states[0], ours.wte(ids) + ours.wpe(torch.arange(9)))
    for mine, theirs in zip(seen[:-1], out.hidden_states[1:-1]):
        torch.testing.assert_close(theirs, mine, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.hidden_states[-1], ours.ln_f(seen[-1]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tuple_logits, logits, atol=1e-4, rtol=1e-4)
    assert loss.ndim == 0 and len(hidden) == len(out.hidden_states)
    # HF Trainer with gradient accumulation passes num_items_in_batch (target tokens of all micro-batches) and
    # leaves the division to the model: a mean per micro-batch trained k times too hard (found by review)
    with torch.no_grad():
        total = hf(ids, labels=ids, num_items_in_batch=torch.tensor(40)).loss
    torch.testing.assert_close(total, loss * 2 * 8 / 40)  # 2 rows of 8 targets each
    assert hf(ids).hidden_states is None and len(hf(ids, return_dict=False)) == 1  # not asked: logits alone
    gen = hf.generate(ids[:1, :4], max_new_tokens=2, do_sample=False, use_cache=False, pad_token_id=0,
                      output_hidden_states=True, return_dict_in_generate=True)
    assert [len(step) for step in gen.hidden_states] == [ours.config.n_layer + 1] * 2  # was (None, None)


def test_a_tokenizer_that_adds_special_tokens_is_exported_without_adding_them(tmp_path):
    """momattn encodes without special tokens; transformers' tokenizer(text) adds them by default, so a BOS template
    in a tokenizer=file run's tokenizer gave HF users an id the model never saw before each text (found by review)."""
    from tokenizers import processors

    from momattn.io import atomic_torch_save
    from momattn.tokenizer import EOT, Tokenizer

    ckpt = torch.load(tiny_checkpoint(tmp_path / "t.ckpt"), weights_only=False)
    tok = Tokenizer.from_json(ckpt["momattn"]["tokenizer"])
    tok.hf.post_processor = processors.TemplateProcessing(single=f"{EOT} $A", special_tokens=[(EOT, tok.eot_id)])
    assert tok.hf.encode("The film", add_special_tokens=True).ids[0] == tok.eot_id  # the template adds one
    ckpt["momattn"]["tokenizer"] = tok.to_json()
    atomic_torch_save(ckpt, tmp_path / "t.ckpt")
    out = export(tmp_path / "t.ckpt", tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok("The film")["input_ids"] == tok.encode("The film") and tok.eot_id not in tok.encode("The film")
    # a tokenizer that adds none is exported as it is
    plain = export(tiny_checkpoint(tmp_path / "p.ckpt"), tmp_path / "hf2")
    assert (plain / "tokenizer.json").read_text() == load_checkpoint(tmp_path / "p.ckpt")[1].to_json()


def test_a_ginc_checkpoint_exports_with_its_word_level_tokenizer(tmp_path):
    """Its vocabulary refuses unknown words: the post-processor check encoded a probe text, a traceback that left a
    folder without config.json (found by the diff review)."""
    from test_analysis import ginc_checkpoint

    path = ginc_checkpoint(tmp_path, "momentum")
    out = export(path, tmp_path / "hf")
    assert (out / "config.json").exists()
    assert (out / "tokenizer.json").read_text() == load_checkpoint(path)[1].to_json()


def test_the_modeling_files_rotary_equals_the_models_in_float32_and_float64():
    """float32 angles for a float32 or bf16 model, as momattn trains with; exact float64 ones for a float64 model,
    as momattn's float64 model now has (float32 angles were 3.6e-5 off at position 1023: model review)."""
    from momattn.hf.modeling_momattn import rotary
    from momattn.model import Rotary

    x = torch.randn(1, 2, 1024, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ours = Rotary(64, 1024)
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        assert torch.equal(rotary(x.to(dtype)), ours(x.to(dtype), start=0)), dtype
    angles = torch.arange(1024, dtype=torch.float64)[:, None] * 10000.0 ** (-torch.arange(0, 64, 2, dtype=torch.float64)
                                                                           / 64)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    exact = torch.stack((x1 * angles.cos() - x2 * angles.sin(), x1 * angles.sin() + x2 * angles.cos()), -1).flatten(-2)
    assert (rotary(x) - exact).abs().max() < 1e-12  # float32 angles: 1e-4 off
