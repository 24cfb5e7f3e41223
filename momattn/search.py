"""Optuna's search space for the chosen attention (hparams_search=optuna): what that attention has, nothing else.

The common part (lr, warm-up) is in conf/hparams_search/optuna.yaml; this adds, per trial, the parameters that
exist only for some attentions, so that `python train.py -m hparams_search=optuna` works with any of them."""

from __future__ import annotations

ETA_RANGE = (0.05, 0.95)
N_RATES = (4, 8, 16)


def attention_space(cfg, trial) -> None:
    """Called by hydra-optuna-sweeper for each trial (hydra.sweeper.custom_search_space) with the sweep's config."""
    att = cfg.attention
    if att.kind == "momentum" and not att.get("learnable_eta", False):  # a learnable eta is trained, not searched
        trial.suggest_float("attention.eta", *ETA_RANGE)
    elif att.kind == "multirate_ema":
        trial.suggest_categorical("attention.n_rates", list(N_RATES))
