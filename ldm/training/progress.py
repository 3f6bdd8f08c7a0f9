"""The progress of a training run: `ProgressLog`, one line of progress (step, loss, it/s, ETA) through
`logging` every few seconds, for output that goes to a file rather than a terminal, and `StepProgressBar`,
the terminal bar, counting optimizer steps towards ``max_steps`` over the whole run.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar

#: Progress of a run (the progress lines, the thread count, the final checkpoint): a logger of its own, so
#: that a caller such as the demo can show these lines and silence the rest. Its name predates this module
#: and is the one users and the demo filter on.
progress_logger = logging.getLogger("ldm.callbacks.progress")


def _is_step_limited(trainer: pl.Trainer) -> bool:
    """Training stops at ``max_steps`` (not after a number of epochs)."""
    return trainer.max_steps is not None and trainer.max_steps > 0 and trainer.max_epochs in (None, -1)


def _format_duration(seconds: float) -> str:
    """``1h02m03s``, ``4m05s`` or ``17s``."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _loss_value(outputs: Any, metrics: dict[str, Any]) -> tuple[str, float] | None:
    """The training loss of the last batch: the step's returned loss, else the first logged
    per-step metric with "loss" in its name (the autoencoders log ``aeloss_step``)."""
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        return "loss", float(loss)
    candidates = [k for k in metrics if "loss" in k and not k.endswith("_epoch") and not k.startswith("val")]
    steps = [k for k in candidates if k.endswith("_step")] or candidates
    if steps:
        value = metrics[steps[0]]
        return steps[0], float(value) if not isinstance(value, torch.Tensor) else float(value.detach().float())
    return None


class ProgressLog(pl.Callback):
    """Logs one line of progress every ``interval`` seconds (and after the first and the last step):

        step 1200/2500 (48.0%) epoch 1 | loss 0.1234 | 5.21 it/s | elapsed 3m50s | ETA 4m09s

    "it/s" is optimizer steps per second since the previous line; the ETA assumes that speed for the
    remaining steps. Lightning's progress bar draws only on a terminal: this is what a run whose output
    goes to a file, a scheduler or CI shows instead. Rank 0 only.
    """

    def __init__(self, interval: float = 20.0):
        super().__init__()
        if interval < 0:
            raise ValueError(f"ProgressLog interval must be >= 0 seconds (0 logs every step); got {interval}")
        self.interval = interval  # seconds between two lines; 0 logs every step
        self._last_time = 0.0
        self._last_step = 0
        self._start_time = 0.0
        self._start_step = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_time = self._last_time = time.monotonic()
        self._start_step = self._last_step = trainer.global_step
        if trainer.is_global_zero:
            target = f"step {trainer.max_steps}" if _is_step_limited(trainer) else f"{trainer.max_epochs} epochs"
            start = f"from step {trainer.global_step}" if trainer.global_step else "from step 0"
            progress_logger.info("training %s to %s; progress every %gs", start, target, self.interval)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.monotonic()
        first = self._last_step == self._start_step
        done = _is_step_limited(trainer) and trainer.global_step >= trainer.max_steps
        if trainer.is_global_zero and (first or done or now - self._last_time >= self.interval):
            progress_logger.info(self.line(trainer, outputs, now))
            self._last_time, self._last_step = now, trainer.global_step

    def line(self, trainer: pl.Trainer, outputs: Any, now: float) -> str:
        step = trainer.global_step
        dt = now - self._last_time
        rate = (step - self._last_step) / dt if dt > 0 else float("nan")
        if _is_step_limited(trainer):
            position = f"step {step}/{trainer.max_steps} ({100.0 * step / trainer.max_steps:.1f}%)"
            eta = f"ETA {_format_duration((trainer.max_steps - step) / rate)}" if rate > 0 else "ETA ?"
        else:
            position, eta = f"step {step}", None
        parts = [f"{position} epoch {trainer.current_epoch}"]
        loss = _loss_value(outputs, trainer.callback_metrics)
        if loss is not None:
            parts.append(f"{loss[0]} {loss[1]:.4g}")
        parts.append(f"{rate:.2f} it/s" if math.isfinite(rate) else "it/s ?")
        parts.append(f"elapsed {_format_duration(now - self._start_time)}")
        if eta:
            parts.append(eta)
        return " | ".join(parts)


class StepProgressBar(TQDMProgressBar):
    """Lightning's terminal bar, counting optimizer steps (``global_step``) towards ``max_steps`` over the
    whole run when training is limited by steps, so that it agrees with ``max_steps``, the checkpoints and
    the logs (also for models that step two optimizers per batch, and after a resume). Runs limited by
    epochs keep the per-epoch bar."""

    @property
    def total_train_batches(self) -> int | float:
        if _is_step_limited(self.trainer):
            return self.trainer.max_steps
        return super().total_train_batches

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        if _is_step_limited(trainer) and self.train_progress_bar is not None:
            self.train_progress_bar.initial = trainer.global_step
            self.train_progress_bar.n = trainer.global_step
            self.train_progress_bar.refresh()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not _is_step_limited(trainer):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        bar = self.train_progress_bar
        if bar is not None and self._should_update(trainer.global_step, bar.total):
            bar.n = trainer.global_step
            bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))
