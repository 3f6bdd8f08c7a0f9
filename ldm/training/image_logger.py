"""Image logging during training: `ImageLogger` calls the model's ``log_images`` every N batches and writes
image grids to ``<logdir>/images/<split>/``."""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torchvision
from PIL import Image
from pytorch_lightning.utilities import rank_zero_only


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
