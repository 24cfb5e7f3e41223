"""One progress display for training: a bar on a terminal, periodic lines in a log file.

On a terminal: one tqdm bar over optimizer steps with loss, tokens/s and ETA. Not on a terminal (a log file,
a cluster job, a pipe): one line every `interval_s` seconds, never carriage returns. Validation results
print as one line each in both cases."""

from __future__ import annotations

import sys
import time
from collections import deque

from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

from momattn.utils import duration, stderr_tty


def _rate(x: float) -> str:
    return f"{x / 1e3:.1f}K" if x >= 1e3 else f"{x:.0f}"


class TrainProgress(ProgressBar):
    """Steps, loss, tokens/s and ETA: a tqdm bar when stderr is a terminal, else a line every interval_s."""

    def __init__(self, interval_s: float = 30.0, window: int = 20, tty: bool | None = None):
        super().__init__()
        self.interval_s, self.window = interval_s, window
        self.tty = stderr_tty() if tty is None else tty
        self._enabled, self._bar = True, None
        self._times: deque = deque(maxlen=window + 1)  # (time, tokens so far) at recent steps
        self._tokens, self._last_line, self._t0, self._step0 = 0, 0.0, 0.0, 0
        self._val_t0: float | None = None  # when the validation under way started (its time is not training's)
        self._line_step: int | None = None  # the step of the last line printed

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _status(self, trainer) -> dict:
        step, total = trainer.global_step, trainer.max_steps
        loss = trainer.callback_metrics.get("train/loss")
        rate = None
        if len(self._times) >= 2:
            (t0, n0), (t1, n1) = self._times[0], self._times[-1]
            rate = (n1 - n0) / max(t1 - t0, 1e-9)
        elapsed = time.perf_counter() - self._t0
        done = step - self._step0
        eta = elapsed / done * (total - step) if done > 0 and total > 0 else None
        return {"step": step, "total": total, "loss": None if loss is None else float(loss), "rate": rate,
                "elapsed": elapsed, "eta": eta}

    @staticmethod
    def line(s: dict) -> str:
        total = s["total"]
        parts = [f"[momattn] step {s['step']}/{total}" + (f" ({100 * s['step'] / total:.0f}%)" if total > 0 else "")]
        if s["loss"] is not None:
            parts.append(f"loss {s['loss']:.4f}")
        if s["rate"] is not None:
            parts.append(f"{_rate(s['rate'])} tok/s")
        parts.append(f"elapsed {duration(s['elapsed'])}")
        if s["eta"] is not None:
            parts.append(f"ETA {duration(s['eta'])}")
        return "  ".join(parts)

    def on_train_start(self, trainer, pl_module):
        self._t0, self._step0 = time.perf_counter(), trainer.global_step
        self._last_line = self._t0
        if self._enabled and self.tty and trainer.is_global_zero:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=trainer.max_steps if trainer.max_steps > 0 else None, initial=trainer.global_step,
                             desc="train", unit="step", dynamic_ncols=True, file=sys.stderr, leave=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._tokens += batch[0].numel() * trainer.world_size
        now = time.perf_counter()
        self._times.append((now, self._tokens))
        if not (self._enabled and trainer.is_global_zero):
            return
        s = self._status(trainer)
        if self._bar is not None:
            self._bar.n = s["step"]
            post = {}
            if s["loss"] is not None:
                post["loss"] = f"{s['loss']:.4f}"
            if s["rate"] is not None:
                post["tok/s"] = _rate(s["rate"])
            self._bar.set_postfix(post, refresh=False)
            self._bar.refresh()
        elif now - self._last_line >= self.interval_s:
            self._last_line, self._line_step = now, s["step"]
            print(self.line(s), file=sys.stderr, flush=True)

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._val_t0 = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._val_t0 is not None:
            # the tokens/s shown is training's, as the summary's: the window's times move past the validation and the
            # checkpoint saved after it (they read as a slowdown over the next window of steps)
            spent, self._val_t0 = time.perf_counter() - self._val_t0, None
            self._times = type(self._times)(((t + spent, n) for t, n in self._times), maxlen=self._times.maxlen)

    def on_validation_end(self, trainer, pl_module):
        if not (self._enabled and trainer.is_global_zero) or trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        if "val/loss" in m:
            text = f"[momattn] step {trainer.global_step}: val/loss {float(m['val/loss']):.4f}  " \
                   f"val/ppl {float(m['val/ppl']):.2f}"
            (self._bar.write(text, file=sys.stderr) if self._bar is not None else print(text, file=sys.stderr,
                                                                                       flush=True))

    def on_train_end(self, trainer, pl_module):
        if self._bar is not None:
            self._bar.n = trainer.global_step
            self._bar.close()
            self._bar = None
        elif self._enabled and trainer.is_global_zero and self._line_step != trainer.global_step:  # (its line twice,
            print(self.line(self._status(trainer)), file=sys.stderr, flush=True)  # where one fell on the last step)
