"""Callbacks and plugins that keep work safe: atomic checkpoint files, a checkpoint on SIGTERM (preemption),
throughput/MFU on any device, and fault injection for the tests (MOMATTN_FAULT)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ThroughputMonitor

from momattn.checkpoint import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """Every checkpoint is written to a temporary file and renamed: a kill at any moment leaves the previous
    complete file in place (Lightning's own writer opens the target path directly)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        fault = os.environ.get("MOMATTN_FAULT", "")
        if fault.startswith("kill_during_save@") and checkpoint.get("global_step", -1) >= int(fault.split("@")[1]):
            _kill_while_writing(checkpoint, Path(path))
        atomic_torch_save(checkpoint, path)


def _kill_while_writing(checkpoint, path: Path) -> None:
    """Test fault: start writing the checkpoint the way atomic_torch_save does, then die half-way through."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(checkpoint, f)
        f.flush()
        f.truncate(f.tell() // 2)
    os.kill(os.getpid(), signal.SIGKILL)


class PreemptionCheckpoint(Callback):
    """On SIGTERM, finish the current optimizer step, write last.ckpt and exit cleanly with a resume command."""

    def __init__(self, dirpath: str | os.PathLike):
        self.dirpath = Path(dirpath)
        self.pending = False
        self.saved_path: Path | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not (trainer.received_sigterm or self.pending):
            return
        if (batch_idx + 1) % trainer.accumulate_grad_batches:  # mid-accumulation: wait for the step boundary
            trainer._signal_connector.received_sigterm = False
            self.pending = True
            return
        trainer._signal_connector.received_sigterm = True  # Lightning stops after this hook
        self.pending = False
        self.saved_path = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(self.saved_path)

    def on_validation_batch_end(self, trainer, *args, **kwargs):
        if trainer.received_sigterm and trainer.training is False and not trainer.sanity_checking:
            trainer._signal_connector.received_sigterm = False  # let validation finish; save after the next step
            self.pending = True


class FaultInjection(Callback):
    """MOMATTN_FAULT=sigterm@N | kill@N | nan@N: simulate a preemption, a crash or a NaN at optimizer step N."""

    def __init__(self, spec: str):
        self.kind, step = spec.split("@")
        self.step = int(step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.kind == "nan" and trainer.global_step == self.step:  # this one batch's loss becomes NaN
            self._saved = pl_module.model.wte.weight.detach().clone()
            with torch.no_grad():
                pl_module.model.wte.weight.fill_(float("nan"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if getattr(self, "_saved", None) is not None:
            with torch.no_grad():
                pl_module.model.wte.weight.copy_(self._saved)
            self._saved = None
        if trainer.global_step == self.step and (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            if self.kind == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            elif self.kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)


def measured_peak_flops(seconds: float = 0.3) -> float:
    """Achievable fp32 matmul FLOP/s of this CPU (for MFU on CPU, where no datasheet peak is known)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    torch.mm(a, b)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        n += 1
    return 2 * 1024**3 * n / (time.perf_counter() - t0)


class Throughput(ThroughputMonitor):
    """Lightning's ThroughputMonitor (tokens/s, FLOP/s, MFU) with FLOPs from the model; on CPU, MFU is relative
    to the measured matmul peak (logged once as throughput/peak_flops)."""

    def setup(self, trainer, pl_module, stage):
        super().setup(trainer, pl_module, stage)
        if trainer.strategy.root_device.type == "cpu" and self.available_flops is None:
            self.available_flops = measured_peak_flops()
            for t in self._throughputs.values():
                t.available_flops = self.available_flops
            print(f"[momattn] CPU MFU is relative to a measured fp32 matmul peak of {self.available_flops / 1e9:.1f} "
                  "GFLOP/s per process", file=sys.stderr)
