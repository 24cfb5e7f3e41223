"""Export a checkpoint as a Hugging Face model folder: model.safetensors + config.json + the tokenizer.

    python -m momattn.export ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt out=exported [overwrite=true]

- vanilla attention with learned positions -> GPT2LMHeadModel (plain transformers, no remote code):
  GPT-2's Conv1D layers hold the transposes of our nn.Linear weights, the output layer is tied to wte,
  activation_function="gelu" (momattn's exact erf GELU, not GPT-2's tanh "gelu_new"), layer norm eps 1e-5;
  a model trained without biases gets zero biases (GPT-2 always has them).
- momentum, multirate_ema or rotary positions -> MomattnForCausalLM, with momattn/hf/modeling_momattn.py
  copied into the folder (config.json's auto_map): load it with trust_remote_code=True. It has no dropout: its
  logits are the model's, but fine-tuning it (it takes labels) runs without the model's model.dropout, which
  config.json records as `trained_dropout` (GPT-2 exports carry it as resid/embd/attn_pdrop).
The vocabulary stays padded (config vocab_size = the model's, >= the tokenizer's; generation_config.json's
suppress_tokens keeps generate() off the padding ids, as momattn's generate); the tokenizer is the checkpoint's
own tokenizer.json, its end-of-text token serving as bos, eos and unk.

Needs the [hf] extra: pip install 'momattn[hf]' (transformers, safetensors).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
from pathlib import Path

import torch

from momattn.errors import ConfigError, DataError, UserError, did_you_mean
from momattn.io import atomic_write, atomic_write_text, remove_stale
from momattn.model import GPT
from momattn.tokenizer import EOT, Tokenizer

MODELING_FILE = Path(__file__).resolve().parent / "hf" / "modeling_momattn.py"
EXPORTABLE_ATTENTION = ("vanilla", "momentum", "multirate_ema")
KEYS = ("ckpt_path", "out", "overwrite")


def _require_hf():
    try:
        import safetensors.torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"exporting needs the [hf] extra ({e.name} is missing): pip install 'momattn[hf]'") from e


def gpt2_state(model: GPT) -> dict[str, torch.Tensor]:
    """Our state dict under GPT-2's names and layouts (Conv1D: weight (in, out)); lm_head is tied to wte."""
    c = model.config
    out = {"transformer.wte.weight": model.wte.weight, "transformer.wpe.weight": model.wpe.weight}
    linear = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    for name, mod in model.named_modules():
        if not name.startswith("blocks."):
            continue
        hf = "transformer.h." + name[len("blocks."):]
        if name.endswith(linear):
            out[hf + ".weight"] = mod.weight.t()
            out[hf + ".bias"] = mod.bias if mod.bias is not None else torch.zeros(mod.out_features)
        elif name.endswith(("ln_1", "ln_2")):
            out[hf + ".weight"] = mod.weight
            out[hf + ".bias"] = mod.bias if mod.bias is not None else torch.zeros(c.n_embd)
    ln = model.ln_f
    out["transformer.ln_f.weight"] = ln.weight
    out["transformer.ln_f.bias"] = ln.bias if ln.bias is not None else torch.zeros(c.n_embd)
    return out


def gpt2_config(model: GPT, tokenizer: Tokenizer) -> dict:
    from transformers import GPT2Config

    c = model.config
    return GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
        # the model's dropout where GPT-2 has it alike (embeddings, attention probabilities, both residual
        # branches): a model fine-tuned from the export trains as it did here (all 0.0 before; found by review)
        n_inner=c.n_inner, activation_function="gelu", resid_pdrop=c.dropout, embd_pdrop=c.dropout,
        attn_pdrop=c.dropout,
        layer_norm_epsilon=1e-5, tie_word_embeddings=True, bos_token_id=tokenizer.eot_id,
        eos_token_id=tokenizer.eot_id, architectures=["GPT2LMHeadModel"],
    ).to_dict()


def momattn_config(model: GPT, tokenizer: Tokenizer) -> dict:
    from momattn.hf.modeling_momattn import MomattnConfig

    c, a = model.config, model.config.attention
    cfg = MomattnConfig(
        vocab_size=c.vocab_size, block_size=c.block_size, n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd,
        n_inner=c.n_inner, bias=c.bias, pos_emb=c.pos_emb, attention_kind=a.kind, eta=a.eta,
        learnable_eta=a.learnable_eta, include_current=a.include_current, n_rates=a.n_rates,
        trained_dropout=c.dropout, bos_token_id=tokenizer.eot_id, eos_token_id=tokenizer.eot_id, architectures=["MomattnForCausalLM"],
    )
    cfg.auto_map = {"AutoConfig": "modeling_momattn.MomattnConfig",
                    "AutoModelForCausalLM": "modeling_momattn.MomattnForCausalLM"}
    return cfg.to_dict()


def momattn_state(model: GPT) -> dict[str, torch.Tensor]:
    """The modeling file's names: lm_head is tied to wte; multirate_ema's gamma is rate_mix there (the modeling
    file says why)."""
    return {k.removesuffix(".attn.gamma") + ".attn.rate_mix" if k.endswith(".attn.gamma") else k: v
            for k, v in model.state_dict().items() if k != "lm_head.weight"}


def check_exportable(model: GPT) -> None:
    kind = model.config.attention.kind
    if kind not in EXPORTABLE_ATTENTION:
        raise ConfigError(f"attention kind '{kind}' cannot be exported: momattn/hf/modeling_momattn.py "
                          f"implements {', '.join(EXPORTABLE_ATTENTION)}")
    if model.lm_head.weight is not model.wte.weight:
        raise ConfigError("this model's output layer is not tied to its input embedding; the exported "
                          "formats assume tied embeddings")


def hf_tokenizer_json(tokenizer: Tokenizer) -> str:
    """The tokenizer as transformers should read it: momattn encodes without special tokens, and transformers'
    tokenizer(text) adds them by default, so a post-processor that adds any (a BOS/CLS template in a tokenizer=file
    run) is left out of the export; HF users got ids the model never saw before each text (found by review)."""
    text = tokenizer.to_json()
    spec = json.loads(text)
    if not _adds_tokens(spec.get("post_processor")):  # read from the JSON: a probe text may not encode (GINC's
        return text                                   # word-level vocabulary refuses unknown words; diff review)
    spec["post_processor"] = None
    return json.dumps(spec, ensure_ascii=False)


def _adds_tokens(processor: dict | None) -> bool:
    """Whether a tokenizers post-processor (its JSON) adds special tokens: a template (BOS/CLS ...), BERT's or
    RoBERTa's, or a Sequence holding one. ByteLevel's only trims offsets."""
    if not isinstance(processor, dict):
        return False
    if processor.get("type") == "Sequence":
        return any(_adds_tokens(p) for p in processor.get("processors") or [])
    return processor.get("type") in ("TemplateProcessing", "BertProcessing", "RobertaProcessing")


def write_tokenizer(tokenizer: Tokenizer, block_size: int, out: Path) -> None:
    atomic_write_text(out / "tokenizer.json", hf_tokenizer_json(tokenizer))
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    # model_input_names: transformers 4.x's fast tokenizer otherwise also returns token_type_ids (zeros), which
    # GPT2LMHeadModel adds as embeddings (model(**tokenizer(text)) was silently wrong) and MomattnForCausalLM's
    # generate refuses (found by review)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": block_size,
              "model_input_names": ["input_ids", "attention_mask"],
              "add_prefix_space": False, "clean_up_tokenization_spaces": False, **special}
    atomic_write_text(out / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
    atomic_write_text(out / "special_tokens_map.json", json.dumps(special, indent=2) + "\n")


def export(ckpt_path: str, out: str | Path, overwrite: bool = False) -> Path:
    """Write the Hugging Face folder `out` for a checkpoint; returns its path."""
    _require_hf()
    from momattn.checkpoint import load_checkpoint

    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        what = "is a file" if not out.is_dir() else "is not empty"
        raise ConfigError(f"out='{out}' {what}; pick a new folder" + ("" if not out.is_dir() else
                                                                       " or pass overwrite=true"))
    above = next(p for p in out.absolute().parents if p.exists() or p.is_symlink())  # before reading the checkpoint
    if out.is_symlink() and not out.exists() or not above.is_dir():
        culprit = f"'{out}' is a link to nothing" if out.is_symlink() else f"'{above}' is not a folder"
        raise ConfigError(f"out='{out}' cannot be created: {culprit}; pick another folder")
    if not os.access(above, os.W_OK | os.X_OK):  # (said after the checkpoint was read: found by review)
        raise ConfigError(f"out='{out}' cannot be written: '{above}' is not writable; pick another folder")
    model, tokenizer = load_checkpoint(ckpt_path, check_env=False)  # (never run here)
    check_exportable(model)
    c = model.config
    as_gpt2 = c.attention.kind == "vanilla" and c.pos_emb == "learned"
    state = gpt2_state(model) if as_gpt2 else momattn_state(model)
    config = gpt2_config(model, tokenizer) if as_gpt2 else momattn_config(model, tokenizer)
    state = {k: v.detach().float().contiguous().clone() for k, v in state.items()}
    config["torch_dtype"] = "float32"  # transformers < 5 reads this name
    if "dtype" in config:  # transformers >= 5: its own name, null from to_dict() beside the other
        config["dtype"] = "float32"
    changed: list[str] = []  # what _write did before a failure
    try:
        _write(out, state, config, tokenizer, c.block_size, as_gpt2, changed)
    except OSError as e:
        fix = "free the space or pick another folder" if e.errno == errno.ENOSPC else "pick a writable folder"
        # from what was done, not from what the folder holds: a read-only folder with an earlier export (or the
        # user's own files) was called incomplete, with no config.json, though nothing in it had changed (review)
        state_of = "it is incomplete (no config.json, so nothing loads it)" if changed else \
            "nothing in it was changed" if (out / "config.json").exists() else "nothing was written"
        raise DataError(f"could not write the export to out='{out}': {e}; {state_of}; {fix}, then export "
                        "again") from None
    return out


def _save_safetensors(state: dict, f) -> None:
    """save_file into atomic_write's temporary file f, by name. safetensors writes a temporary file of its own
    (mode 0600, not fsynced) and renames it over that name, so f's handle is left on an unlinked empty file:
    the file now at the name gets f's mode (what the umask gives, as the folder's other files) and its fsync."""
    from safetensors.torch import save_file

    mode = os.fstat(f.fileno()).st_mode & 0o777
    save_file(state, f.name, metadata={"format": "pt"})
    os.chmod(f.name, mode)
    fd = os.open(f.name, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(out: Path, state: dict, config: dict, tokenizer: Tokenizer, block_size: int, as_gpt2: bool,
           changed: list[str]) -> None:
    """The folder's files, config.json last: a failure part-way (a full disk) leaves a folder without one, which
    from_pretrained refuses, never new weights beside an earlier export's config (loaded as a random model).
    `changed` gets a word once the folder no longer holds what it held."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / "config.json").exists():
        (out / "config.json").unlink()
        changed.append("config.json removed")
    # overwrite=true: another export's weights in other formats (a pickled pytorch_model.bin, shards and their
    # index) would be left beside these, for a loader that looks for them first or by choice
    remove_stale(out, ["pytorch_model.bin", "pytorch_model-*-of-*.bin", "model-*-of-*.safetensors", "tf_model.h5",
                       "tf_model-*-of-*.h5", "flax_model.msgpack", "flax_model-*-of-*.msgpack",
                       *(f"{w}.index.json" for w in ("pytorch_model.bin", "model.safetensors", "tf_model.h5",
                                                     "flax_model.msgpack"))], keep=())  # Hugging Face's names only
    # written by name into atomic_write's temporary file (save() would hold a second copy of the weights in memory)
    atomic_write(out / "model.safetensors", lambda f: _save_safetensors(state, f))
    changed.append("model.safetensors written")
    gen = {"bos_token_id": tokenizer.eot_id, "eos_token_id": tokenizer.eot_id}
    if not as_gpt2:  # no cache: assisted or prompt-lookup generation then gets transformers' own one line
        gen["use_cache"] = False
    if padding := list(range(tokenizer.n_ids, config["vocab_size"])):  # ids that decode to nothing
        gen["suppress_tokens"] = padding
    atomic_write_text(out / "generation_config.json", json.dumps(gen, indent=2) + "\n")
    write_tokenizer(tokenizer, block_size, out)
    if not as_gpt2:
        shutil.copy(MODELING_FILE, out / MODELING_FILE.name)
    else:  # overwrite=true over a momentum export: its modeling file would contradict config.json
        (out / MODELING_FILE.name).unlink(missing_ok=True)
    atomic_write_text(out / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")


def parse_args(argv: list[str]) -> dict:
    """key=value arguments (the same style as train.py's); ConfigError naming an unknown or missing key."""
    args = {}
    for a in argv:
        key, sep, value = a.partition("=")
        if not sep or key not in KEYS:
            raise ConfigError(f"'{a}' is not an export argument.{did_you_mean(key, KEYS)} "
                              "Usage: python -m momattn.export ckpt_path=PATH out=DIR [overwrite=true]")
        if key in args:  # out=A out=B: which one was meant?
            raise ConfigError(f"{key} is given twice ({key}={args[key]} and {a}); give it once")
        args[key] = value
    for key in ("ckpt_path", "out"):
        if key not in args:
            raise ConfigError(f"missing {key}=...; usage: python -m momattn.export ckpt_path=PATH out=DIR")
        if not args[key].strip():  # out=" " wrote a folder named by a space
            raise ConfigError(f"{key}={args[key]!r} is empty; usage: python -m momattn.export ckpt_path=PATH out=DIR")
    if args.get("overwrite", "false").lower() not in ("true", "false"):
        raise ConfigError(f"overwrite={args['overwrite']} must be true or false")
    args["overwrite"] = args.get("overwrite", "false").lower() == "true"
    return args


def main(argv: list[str] | None = None) -> None:
    from momattn.cli import report

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print((__doc__ or "python -m momattn.export ckpt_path=PATH out=DIR [overwrite=true]").strip())
        return
    try:
        args = parse_args(argv)
        out = export(args["ckpt_path"], args["out"], args["overwrite"])
    except UserError as e:
        report(e, hydra=False)
        sys.exit(2)
    remote = "auto_map" in json.loads((out / "config.json").read_text())
    kind = "MomattnForCausalLM (load with trust_remote_code=True)" if remote else "GPT2LMHeadModel"
    print(f"exported {args['ckpt_path']} to {out}/ as {kind}")


if __name__ == "__main__":
    main()
