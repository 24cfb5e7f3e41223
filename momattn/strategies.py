"""FSDP with sharded checkpoints that are written atomically, on GPUs and (for tests and small runs) on CPU.

`trainer=fsdp` builds ShardedFSDP: every rank writes its shard of the weights and optimizer state into one
checkpoint folder (torch.distributed.checkpoint; `meta.pt` holds the rest: step, schedulers, momattn's entry).
The folder is written under a temporary name and renamed over the old one, so a crash mid-save keeps the previous
checkpoint. Resuming reshards: the folder loads on any number of FSDP processes, and momattn consolidates it in
memory for a run without FSDP (momattn.checkpoint.read_checkpoint). On CPU, Lightning's FSDPStrategy refuses the
accelerator; torch's FSDP works there with gloo when given the CPU as its device, which CPUShardedFSDP does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.precision import FSDPPrecision
from lightning.pytorch.strategies import FSDPStrategy

from momattn.io import remove_path as _remove
from momattn.io import swap_into


class ShardedFSDP(FSDPStrategy):
    """FSDPStrategy(state_dict_type='sharded', use_orig_params=True, one unit per Block) whose checkpoint folders
    appear atomically.
    use_orig_params keeps the parameter names, so weight decay still skips biases, LayerNorms and eta."""

    def __init__(self, **kwargs: Any):
        from momattn.model import Block

        kwargs.setdefault("state_dict_type", "sharded")
        kwargs.setdefault("use_orig_params", True)
        # one FSDP unit per transformer block: a process gathers one block's weights at a time, not the whole
        # model's (one unit held every weight and gradient unsharded through forward and backward)
        kwargs.setdefault("auto_wrap_policy", {Block})
        super().__init__(**kwargs)

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        if self._state_dict_type != "sharded":
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        tmp = path.with_name(f".{path.name}.tmp")
        if self.global_rank == 0:
            _remove(tmp)  # left by a crash during an earlier save
        self.barrier("momattn_fsdp_save_start")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("momattn_fsdp_save_end")  # every shard is on disk
        if self.global_rank == 0:
            swap_into(tmp, path)  # a file (a run's last.ckpt before FSDP) or an earlier folder
        self.barrier("momattn_fsdp_save_done")

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        """A sharded folder, read without running code from it (torch's own readers unpickle its shard index and
        non-tensor entries); a single-file checkpoint (written without FSDP) is refused: Lightning's path for it
        crashed the process (a segmentation fault at the first optimizer step)."""
        from momattn.checkpoint import safe_sharded_reads
        from momattn.errors import CheckpointError

        path = Path(checkpoint_path)
        if not path.is_dir():
            raise CheckpointError(
                f"checkpoint '{path}' is a single file, written without FSDP; trainer=fsdp resumes only the sharded "
                "folders it writes. Resume it with the strategy it was trained with (trainer=ddp, or one device)")
        with safe_sharded_reads(path):
            return super().load_checkpoint(checkpoint_path, weights_only)

    def remove_checkpoint(self, filepath) -> None:
        if self.global_rank == 0:
            _remove(Path(filepath))


class CPUShardedFSDP(ShardedFSDP):
    """ShardedFSDP on CPU processes (gloo): the model is wrapped with device_id=cpu before Lightning sees it, and a
    mixed precision autocasts on the CPU (_CPUFSDPPrecision)."""

    @property
    def precision_plugin(self):
        return super().precision_plugin

    @precision_plugin.setter
    def precision_plugin(self, plugin) -> None:  # Lightning's connector sets FSDP's own plugin: the CPU's instead
        if plugin is not None and type(plugin) is FSDPPrecision:
            plugin = _CPUFSDPPrecision(plugin.precision, plugin.scaler)
        ShardedFSDP.precision_plugin.fset(self, plugin)

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        if not any(isinstance(m, FSDP) for m in model.modules()):
            model = FSDP(module=model, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
                         sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"), **self.kwargs)
        return super()._setup_model(model)


class _CPUFSDPPrecision(FSDPPrecision):
    """Lightning's FSDP precision, whose mixed precisions autocast on CUDA alone: on a CPU "bf16-mixed" ran with
    autocast disabled (a warning per process), so LayerNorm, softmax, the residual stream and the loss computed in
    FSDP's bf16 parameters, a bf16-true run under the bf16-mixed name (found by review). Here a mixed precision is
    what it is without FSDP: float32 parameters (and gradients reduced in float32), autocast on the CPU."""

    @property
    def mixed_precision_config(self):
        if "mixed" not in self.precision:
            return super().mixed_precision_config
        from torch.distributed.fsdp import MixedPrecision

        return MixedPrecision(param_dtype=torch.float32, reduce_dtype=torch.float32, buffer_dtype=torch.float32)

    def forward_context(self):
        if "mixed" in self.precision:
            return torch.autocast("cpu", dtype=torch.bfloat16 if self.precision == "bf16-mixed" else torch.float16)
        return super().forward_context()
