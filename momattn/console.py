"""A quiet console: library chatter off, so that what momattn prints (start line, progress, results) is seen.
Imports nothing heavy: every entry point calls quiet_console() first."""

from __future__ import annotations

import logging
import os
import warnings

# messages from libraries that say nothing a momattn user can act on (the momattn start line says what runs)
_QUIET_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_utilities",
                  "alembic")  # optuna's storage imports alembic, whose "setup plugin ..." lines fill a sweep's head
_QUIET_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\).*",  # Lightning's own use of a deprecated torch API
    r".*The anonymous setting has no effect.*",  # W&B, raised by Lightning's WandbLogger
    r".*torch.distributed.nn.functional.all_gather is deprecated.*",  # Lightning's all_gather under DDP
    r".*Please use DTensor instead and we are deprecating ShardedTensor.*",  # FSDP's sharded state dict
    r".*auto_wrap_policy.*will be ignored.*",  # CPUShardedFSDP wraps the model itself
    # val/loss and val/ppl are summed over every rank by LitGPT's all_gather before they are logged
    r".*It is recommended to use `self.log\('val/(loss|ppl)'.*sync_dist=True.*",
    r".*_get_pg_default_device` will be deprecated.*",  # torch's own FSDP code, on a sharded resume
    r".*Multiple backends are registered with this ProcessGroup.*",
    r".*`load_state_dict` is deprecated and will be removed.*",
    r".*FSDP is switching to use .?.?NO_SHARD.*",  # one process under trainer=fsdp (a sharded run resumed on one)
    r".*When using .?.?NO_SHARD.?.? for .?.?ShardingStrategy.*full_state_dict will ?be returned.*",  # (torch's third
    # copy of it reads "willbe": it came through; found by review)
)


def quiet_console() -> None:
    """Silence library chatter: Lightning INFO lines (GPU/TPU availability, tips), W&B's banner and run
    history, deprecation warnings about library internals. Errors and warnings that matter still print.
    MOMATTN_VERBOSE=1 keeps everything."""
    if os.environ.get("MOMATTN_VERBOSE"):
        return
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # but not why Lightning killed this process: another rank ended (out of memory, a crash), said at INFO just
    # before the SIGKILL; without it a DDP run ended in a bare "Killed", exit 137 (found by review)
    logging.getLogger("lightning.fabric.strategies.launchers.subprocess_script").setLevel(logging.INFO)
    # a font cache built by another matplotlib install (a recreated venv) names fonts that are gone: one warning per
    # family, twenty for one plot, while the fallback font draws it the same
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    # without network each of its retries was two lines (its handler's and Hydra's) before the one-line error
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    for pattern in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    os.environ.setdefault("WANDB_SILENT", "true")  # momattn prints where the W&B run is, and how to sync it


def quiet_resume(same_folder: bool) -> None:
    """A resume restores its data position itself (TokenDataModule: sample g of the global stream from the step
    alone; tests/test_faults.py checks the losses), which Lightning cannot see: its 'dataloader is not resumable'
    says nothing true here. Into its own run folder, 'folder exists and is not empty' is expected too."""
    warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable.*")
    # a callback the resume leaves out (the fault injector; an EarlyStopping dropped to train on past its stop, as
    # momattn advises) is left out on purpose: Lightning's 'Please add the following callbacks' said the opposite,
    # once per job of a sweep (flows review)
    warnings.filterwarnings("ignore", message=r".*callbacks used to create the checkpoint need to be provided.*")
    if same_folder:
        warnings.filterwarnings("ignore", message=r".*(Checkpoint directory|Experiment logs directory) .* exists "
                                                  r"and is not empty.*")
