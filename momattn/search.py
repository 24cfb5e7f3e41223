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
    if att.kind == "momentum" and not _true(att.get("learnable_eta", False)) and \
            "attention.eta" not in fixed:  # a learnable eta is trained, not searched
        _suggest(trial, "float", "attention.eta", ETA_RANGE, "attention.eta=choice(0.1,0.3,0.5)")
    elif att.kind == "multirate_ema" and "attention.n_rates" not in fixed:
        _suggest(trial, "categorical", "attention.n_rates", list(N_RATES), "attention.n_rates=choice(4,8,16)")


def _true(value) -> bool:
    """A bool setting as the typed config reads it (yes, on, 1, y: true): attention.learnable_eta=yes trained eta
    and searched it too (found by review)."""
    from omegaconf.nodes import BooleanNode

    try:
        return bool(BooleanNode(value)._value())
    except Exception:  # not a bool: the typed config refuses it
        return False


def _suggest(trial, kind: str, name: str, space, example: str) -> None:
    """trial.suggest_<kind>(name, space); a grid sampler, which samples only the grid the command line gives, is
    told in one line to give the attention's parameter as a choice (it raised Optuna's ValueError, a traceback)."""
    try:
        if kind == "float":
            trial.suggest_float(name, *space)
        else:
            trial.suggest_categorical(name, space)
    except ValueError:
        from optuna.samplers import GridSampler

        if not isinstance(getattr(getattr(trial, "study", None), "sampler", None), GridSampler):
            raise
        from momattn.errors import ConfigError

        if "attention" in trial.params:  # listing it too is refused: vanilla's trials have no attention.eta
            raise ConfigError(f"hydra/sweeper/sampler=grid samples one grid for every trial, and this search tunes "
                              f"the attention itself and {name}, which only some attentions have: search one "
                              f"attention per search (attention={trial.params['attention']} '{example}'), or use "
                              "another sampler (drop hydra/sweeper/sampler=grid)") from None
        raise ConfigError(f"hydra/sweeper/sampler=grid samples only the values the command line lists, and this "
                          f"search also tunes {name} (the attention's own parameter): list its values too, e.g. "
                          f"'{example}'") from None


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
