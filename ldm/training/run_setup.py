"""Setting up a training run: `SetupCallback` creates the run directory and writes the merged configs
(rank 0 only)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import OmegaConf

from ldm.checkpoint import atomic_write_bytes, remove_stale_temp_files

logger = logging.getLogger(__name__)


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
        remove_stale_temp_files(self.cfgdir)
        if "callbacks" in self.lightning_config and "metrics_over_trainsteps_checkpoint" in self.lightning_config.callbacks:
            os.makedirs(os.path.join(self.ckptdir, "trainstep_checkpoints"), exist_ok=True)
        logger.info("Project config\n%s", OmegaConf.to_yaml(self.config))
        self._write_config("project", OmegaConf.to_yaml(self.config))
        self._write_config("lightning", OmegaConf.to_yaml(OmegaConf.create({"lightning": self.lightning_config})))

    def _write_config(self, kind: str, text: str) -> None:
        """Write ``<now>-<kind>.yaml`` unless the newest config of that kind (from the run being resumed)
        says the same, so that resuming does not add two files each time."""
        existing = sorted(Path(self.cfgdir).glob(f"*-{kind}.yaml"))
        if existing and existing[-1].read_text() == text:
            return
        atomic_write_bytes(os.path.join(self.cfgdir, f"{self.now}-{kind}.yaml"), text.encode())
