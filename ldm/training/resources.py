"""The machine a training run uses: `CUDACallback` logs epoch time and peak CUDA memory when training on
CUDA; `ThreadWatch` revisits the automatic CPU thread count while training."""
from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl
import torch

from ldm.training.progress import progress_logger

logger = logging.getLogger(__name__)


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


class ThreadWatch(pl.Callback):
    """Revisits the automatic CPU thread count (`ldm.threads`) every ``interval`` seconds of training:
    other work that starts during a run would otherwise make one thread per core many times slower,
    and cores it leaves free would stay unused."""

    def __init__(self, interval: float = 30.0, processes: int = 1):
        super().__init__()
        self.interval = interval  # seconds between two looks at the load
        self.processes = processes  # training processes sharing this machine's cores
        self._watch: Any = None
        self._last = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from ldm.threads import LoadWatch

        self._watch, self._last = LoadWatch(), time.monotonic()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._watch is None or time.monotonic() - self._last < self.interval:
            return
        from ldm.threads import available_cores, free_cores

        self._last = time.monotonic()
        busy = self._watch.others_busy()
        if busy is None:
            return
        threads = free_cores(busy, available_cores(), self.processes)
        if threads != torch.get_num_threads():
            progress_logger.info("CPU threads: %d -> %d (%.1f cores busy with other work)",
                                 torch.get_num_threads(), threads, busy)
            torch.set_num_threads(threads)
