"""Lightning callbacks and plugins used by ``main.py``.

- `SetupCallback`: creates the run directory and writes the merged configs (rank 0 only).
- `ImageLogger`: calls the model's ``log_images`` every N batches and writes image grids.
- `CUDACallback`: epoch time and peak CUDA memory, when training on CUDA.
- `SignalCheckpoint`: writes ``last.ckpt`` after a SIGUSR1 (sent by cluster schedulers before preemption).
- `RunCheckpoint`: Lightning's `ModelCheckpoint`, plus ``last.ckpt`` at the final step of a run.
- `ProgressLog`: one line of progress (step, loss, it/s, ETA) through `logging` every few seconds, for
  output that goes to a file rather than a terminal.
- `StepProgressBar`: the terminal bar, counting optimizer steps towards ``max_steps`` over the whole run.
- `AtomicCheckpointIO`: every checkpoint is written to a temporary file, then renamed into place,
  so a killed run leaves either the previous checkpoint or the new one, never a truncated file.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import time
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torchvision
from omegaconf import OmegaConf
from PIL import Image
from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_only

from ldm.util import atomic_path

logger = logging.getLogger(__name__)
#: Progress of a run (the progress lines, the final checkpoint): a logger of its own, so that a caller
#: such as the demo can show these lines and silence the rest.
progress_logger = logging.getLogger(__name__ + ".progress")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` that never leaves a partially written checkpoint behind."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


class SetupCallback(pl.Callback):
    """Creates ``logdir``, ``checkpoints/`` and ``configs/`` and saves the merged configs on rank 0."""

    def __init__(self, resume: str, now: str, logdir: str, ckptdir: str, cfgdir: str, config: Any,
                 lightning_config: Any):
        super().__init__()
        self.resume = resume  # the checkpoint or logdir being resumed ("" for a new run)
        self.now = now  # the run's timestamp, used in config file names
        self.logdir = logdir  # the run directory
        self.ckptdir = ckptdir  # where checkpoints go
        self.cfgdir = cfgdir  # where the merged configs go
        self.config = config  # the merged project config (model, data)
        self.lightning_config = lightning_config  # the merged `lightning:` section

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.global_rank != 0:
            return
        for d in (self.logdir, self.ckptdir, self.cfgdir):
            os.makedirs(d, exist_ok=True)
        if "callbacks" in self.lightning_config and "metrics_over_trainsteps_checkpoint" in self.lightning_config.callbacks:
            os.makedirs(os.path.join(self.ckptdir, "trainstep_checkpoints"), exist_ok=True)
        logger.info("Project config\n%s", OmegaConf.to_yaml(self.config))
        atomic_write_bytes(os.path.join(self.cfgdir, f"{self.now}-project.yaml"),
                           OmegaConf.to_yaml(self.config).encode())
        atomic_write_bytes(os.path.join(self.cfgdir, f"{self.now}-lightning.yaml"),
                           OmegaConf.to_yaml(OmegaConf.create({"lightning": self.lightning_config})).encode())


class ImageLogger(pl.Callback):
    """Writes ``log_images`` grids to ``<logdir>/images/<split>/`` every ``batch_frequency`` batches."""

    def __init__(self, batch_frequency: int, max_images: int, clamp: bool = True,
                 increase_log_steps: bool = True, rescale: bool = True, disabled: bool = False,
                 log_on_batch_idx: bool = False, log_first_step: bool = False,
                 log_images_kwargs: dict | None = None):
        super().__init__()
        if batch_frequency < 1:
            raise ValueError(f"batch_frequency must be >= 1; got {batch_frequency}")
        self.batch_freq = batch_frequency  # log every this many batches (global step or batch index)
        self.max_images = max_images  # at most this many images per grid
        self.clamp = clamp  # clamp images to [-1, 1] before writing
        self.rescale = rescale  # map [-1, 1] to [0, 1] before writing
        self.disabled = disabled  # switch the logger off without removing it from the config
        self.log_on_batch_idx = log_on_batch_idx  # count batches within the epoch instead of global steps
        self.log_first_step = log_first_step  # also log at step 0
        self.log_images_kwargs = dict(log_images_kwargs or {})  # passed on to `log_images`
        # Early logs at 1, 2, 4, ... until the regular frequency, as in the original.
        self.log_steps = [2 ** n for n in range(int(np.log2(self.batch_freq)) + 1)] if increase_log_steps else [self.batch_freq]

    @rank_zero_only
    def log_local(self, save_dir: str, split: str, images: dict[str, torch.Tensor], global_step: int,
                  current_epoch: int, batch_idx: int) -> list[str]:
        root = os.path.join(save_dir, "images", split)
        os.makedirs(root, exist_ok=True)
        written = []
        for k, imgs in images.items():
            grid = torchvision.utils.make_grid(imgs, nrow=4)
            if self.rescale:
                grid = (grid + 1.0) / 2.0  # [-1, 1] -> [0, 1]
            grid = grid.permute(1, 2, 0).squeeze(-1).numpy()
            grid = (grid * 255).clip(0, 255).astype(np.uint8)
            filename = f"{k}_gs-{global_step:06}_e-{current_epoch:06}_b-{batch_idx:06}.png"
            path = os.path.join(root, filename)
            Image.fromarray(grid).save(path)
            written.append(path)
        return written

    def log_img(self, pl_module: pl.LightningModule, batch: Any, batch_idx: int, split: str = "train") -> None:
        check_idx = batch_idx if self.log_on_batch_idx else pl_module.global_step
        if not (self.check_frequency(check_idx) and callable(getattr(pl_module, "log_images", None))
                and self.max_images > 0):
            return
        was_training = pl_module.training
        if was_training:
            pl_module.eval()
        with torch.no_grad():
            images = pl_module.log_images(batch, split=split, **self.log_images_kwargs)
        prepared = {}
        for k, v in images.items():
            if not isinstance(v, torch.Tensor):
                continue
            v = v[: min(v.shape[0], self.max_images)].detach().float().cpu()
            prepared[k] = v.clamp(-1.0, 1.0) if self.clamp else v
        self.log_local(pl_module.logger.save_dir if pl_module.logger else pl_module.trainer.default_root_dir,
                       split, prepared, pl_module.global_step, pl_module.current_epoch, batch_idx)
        if was_training:
            pl_module.train()

    def check_frequency(self, check_idx: int) -> bool:
        if ((check_idx % self.batch_freq) == 0 or (check_idx in self.log_steps)) and (check_idx > 0 or self.log_first_step):
            if self.log_steps and check_idx in self.log_steps:
                self.log_steps.remove(check_idx)
            return True
        return False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.disabled and (pl_module.global_step > 0 or self.log_first_step):
            self.log_img(pl_module, batch, batch_idx, split="train")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not self.disabled and pl_module.global_step > 0:
            self.log_img(pl_module, batch, batch_idx, split="val")


class CUDACallback(pl.Callback):
    """Logs epoch time and peak CUDA memory; does nothing on other accelerators."""

    def _on_cuda(self, trainer: pl.Trainer) -> bool:
        return trainer.strategy.root_device.type == "cuda"

    def on_train_epoch_start(self, trainer, pl_module):
        if self._on_cuda(trainer):
            torch.cuda.reset_peak_memory_stats(trainer.strategy.root_device)
            torch.cuda.synchronize(trainer.strategy.root_device)
        self.start_time = time.time()

    def on_train_epoch_end(self, trainer, pl_module):
        if not self._on_cuda(trainer):
            return
        torch.cuda.synchronize(trainer.strategy.root_device)
        max_memory = torch.cuda.max_memory_allocated(trainer.strategy.root_device) / 2 ** 20
        epoch_time = time.time() - self.start_time
        max_memory = trainer.strategy.reduce(max_memory)
        epoch_time = trainer.strategy.reduce(epoch_time)
        if trainer.global_rank == 0:
            logger.info("Average epoch time: %.2f seconds; average peak memory %.2f MiB", epoch_time, max_memory)


class SignalCheckpoint(pl.Callback):
    """On SIGUSR1, write ``last.ckpt`` at the end of the current batch, then keep training."""

    def __init__(self, ckptdir: str, signum: int = getattr(signal, "SIGUSR1", 10)):
        super().__init__()
        self.ckptdir = ckptdir  # where last.ckpt goes
        self.requested = False
        self.signum = signum  # the signal that asks for a checkpoint

    def setup(self, trainer, pl_module, stage):
        if hasattr(signal, "SIGUSR1"):
            signal.signal(self.signum, self._request)

    def _request(self, *args: Any) -> None:
        self.requested = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.requested:
            self.requested = False
            path = os.path.join(self.ckptdir, "last.ckpt")
            logger.info("Signal received: saving checkpoint to %s", path)
            trainer.save_checkpoint(path)


class RunCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose ``last.ckpt`` also holds the final step of the run.

    Lightning writes ``last.ckpt`` after validation (or at the end of an epoch), so a run whose
    ``max_steps`` is not a multiple of ``val_check_interval`` would end with a ``last.ckpt`` from the
    last validation, and a resume would train the steps after it again.
    """

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        # `_last_global_step_saved` and `_save_last_checkpoint` are ModelCheckpoint's own bookkeeping
        # (pytorch-lightning 2.x); using them keeps `last_model_path` and `save_last="link"` right.
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            progress_logger.info("Saved the final step %d to %s", trainer.global_step, self.last_model_path)


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
