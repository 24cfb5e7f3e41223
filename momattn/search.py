"""Optuna's search space for the chosen attention (hparams_search=optuna): what that attention has, nothing else.

The common part (lr, warm-up) is in conf/hparams_search/optuna.yaml; this adds, per trial, the parameters that
exist only for some attentions, so that `python train.py -m hparams_search=optuna` works with any of them, and
with a search over the attention itself (`attention=vanilla,momentum`: each trial gets its own attention's)."""

from __future__ import annotations

from pathlib import Path

from momattn.cli import CONF_DIR

ETA_RANGE = (0.05, 0.95)
N_RATES = (4, 8, 16)


def attention_space(cfg, trial) -> None:
    """Called by hydra-optuna-sweeper for each trial (hydra.sweeper.custom_search_space) with the sweep's config."""
    att = trial_attention(cfg, trial)
    # what the command line fixed (attention.eta=0.3) or the sweep already searches (attention.eta=choice(...))
    fixed = {**trial.user_attrs, **trial.params}  # is not suggested a second time
    if att.kind == "momentum" and str(att.get("learnable_eta", False)).lower() != "true" and \
            "attention.eta" not in fixed:  # a learnable eta is trained, not searched
        trial.suggest_float("attention.eta", *ETA_RANGE)
    elif att.kind == "multirate_ema" and "attention.n_rates" not in fixed:
        trial.suggest_categorical("attention.n_rates", list(N_RATES))


def trial_attention(cfg, trial):
    """The attention section this trial trains. Where the sweep searches the attention group itself, Optuna has
    suggested it (trial.params["attention"]) while the sweep's config still holds the default one: read the
    chosen option's file, with the command line's fixed attention.* overrides on top."""
    from omegaconf import OmegaConf

    name = trial.params.get("attention")
    if name is None:
        return cfg.attention
    roots = [Path(s.path) for s in OmegaConf.select(cfg, "hydra.runtime.config_sources", default=None) or []
             if s.get("schema") == "file"] + [CONF_DIR]
    path = next((p for r in roots if (p := r / "attention" / f"{name}.yaml").is_file()), None)
    if path is None:
        raise FileNotFoundError(f"attention={name}: no attention/{name}.yaml under {', '.join(map(str, roots))}")
    fixed = {k.split(".", 1)[1]: v for k, v in trial.user_attrs.items() if k.startswith("attention.")}
    return OmegaConf.merge(OmegaConf.load(path), fixed)
