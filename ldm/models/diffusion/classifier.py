"""`NoisyLatentImageClassifier`: a classifier on noisy latents of a trained latent diffusion model.

The noise-aware classifier of classifier guidance ("Diffusion Models Beat GANs on Image Synthesis",
Dhariwal & Nichol, NeurIPS 2021, sec. 4), trained in the latent space of latent diffusion (Rombach
et al., CVPR 2022): latents of the frozen diffusion model's first stage are noised to a random step t
with its schedule, and an encoder UNet (class labels) or a UNet (segmentation maps) predicts the label.
"""
from __future__ import annotations

import copy
import logging
import os
import re
from glob import glob
from typing import Any, Mapping

import pytorch_lightning as pl
import torch
from einops import rearrange
from omegaconf import OmegaConf
from torch.nn import functional as F
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR

from ldm.checkpoint import restore_weights
from ldm.models.diffusion.ddpm_module import DEFAULT_LEARNING_RATE
from ldm.models.diffusion.first_stage import freeze
from ldm.modules.diffusionmodules.openaimodel import EncoderUNetModel, UNetModel
from ldm.util import channels_first, instantiate_from_config, ismap, log_txt_as_img

logger = logging.getLogger(__name__)

#: The classifier network for each kind of label.
CLASSIFIER_MODELS = {"class_label": EncoderUNetModel, "segmentation": UNetModel}


def _natural_key(path: str) -> list:
    """Sort key that orders embedded numbers numerically ("2" before "10")."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


class NoisyLatentImageClassifier(pl.LightningModule):
    """Predict class labels or segmentation maps from noisy latents x_t of a frozen `LatentDiffusion`."""

    def __init__(
        self,
        diffusion_path: str,  # log folder of the diffusion run; its newest configs/*-project.yaml is used
        num_classes: int,  # number of classes predicted
        ckpt_path: str | None = None,  # checkpoint of the classifier network to start from
        pool: str = "attention",  # pooling of the EncoderUNetModel head (class labels)
        label_key: str | None = None,  # batch key of the labels, when the diffusion model has no cond_stage_key
        diffusion_ckpt_path: str | None = None,  # checkpoint of the diffusion model
        scheduler_config: Mapping[str, Any] | None = None,  # {target, params} of an ldm.lr_scheduler object
        weight_decay: float = 1.0e-2,  # AdamW weight decay
        log_steps: int = 10,  # number of noise levels shown by log_images
        monitor: str = "val/loss",  # metric name for checkpointing callbacks
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        configs = sorted(glob(os.path.join(diffusion_path, "configs", "*-project.yaml")), key=_natural_key)
        if not configs:
            raise FileNotFoundError(f"no diffusion config found: looked for {diffusion_path}/configs/*-project.yaml "
                                    f"(the log folder main.py writes for a diffusion run)")
        diffusion_config = OmegaConf.to_container(OmegaConf.load(configs[-1]).model, resolve=True)
        diffusion_config.setdefault("params", {})["ckpt_path"] = diffusion_ckpt_path
        self.diffusion_config = diffusion_config
        self.load_diffusion()

        self.monitor = monitor
        self.numd = self.diffusion_model.first_stage_model.encoder.num_resolutions - 1
        self.log_time_interval = self.diffusion_model.num_timesteps // log_steps
        self.log_steps = log_steps
        self.learning_rate = DEFAULT_LEARNING_RATE

        self.label_key = getattr(self.diffusion_model, "cond_stage_key", None) or label_key
        if self.label_key not in CLASSIFIER_MODELS:
            raise ValueError(f"label_key must be one of {', '.join(CLASSIFIER_MODELS)} (taken from the diffusion "
                             f"model's cond_stage_key, else from label_key); got {self.label_key!r}")
        self.load_classifier(ckpt_path, pool)

        self.scheduler_config = scheduler_config
        self.use_scheduler = self.scheduler_config is not None
        self.weight_decay = weight_decay
        self.noisy_acc: dict[int, dict[str, list[float]]] = {}

    def init_from_ckpt(self, path: str, ignore_keys: tuple[str, ...] | None = None, only_model: bool = False) -> None:
        """Load a checkpoint non-strictly (after dropping ``ignore_keys`` prefixes) and log what was missing."""
        restore_weights(self.model if only_model else self, path, ignore_keys)

    def load_diffusion(self) -> None:
        self.diffusion_model = freeze(instantiate_from_config(self.diffusion_config,
                                                              where="model.params.diffusion_path config"))

    def load_classifier(self, ckpt_path: str | None, pool: str) -> None:
        unet_params = self.diffusion_config["params"]["unet_config"]["params"]
        model_config = copy.deepcopy(unet_params)
        model_config["in_channels"] = unet_params["out_channels"]
        model_config["out_channels"] = self.num_classes
        if self.label_key == "class_label":
            model_config["pool"] = pool
        self.model = CLASSIFIER_MODELS[self.label_key](**model_config)
        if ckpt_path is not None:
            logger.info('load from ckpt "%s"', ckpt_path)
            self.init_from_ckpt(ckpt_path)

    @torch.no_grad()
    def get_x_noisy(self, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) with the diffusion model's schedule."""
        return self.diffusion_model.q_sample(x_start=x, t=t, noise=noise)

    def forward(self, x_noisy: torch.Tensor, t: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.model(x_noisy, t)

    @torch.no_grad()
    def get_input(self, batch: Mapping[str, Any], k: str) -> torch.Tensor:
        """``batch[k]`` as a float (B, C, H, W) tensor; the data loaders deliver (B, H, W[, C])."""
        return channels_first(batch[k])

    @torch.no_grad()
    def get_conditioning(self, batch: Mapping[str, Any], k: str | None = None) -> torch.Tensor:
        """The targets: class indices, or segmentation maps down-sampled to the latent size."""
        k = self.label_key if k is None else k
        targets = batch[k].to(self.device)
        if self.label_key == "segmentation":
            targets = rearrange(targets, "b h w c -> b c h w")
            for _ in range(self.numd):
                h, w = targets.shape[-2:]
                targets = F.interpolate(targets, size=(h // 2, w // 2), mode="nearest")
        return targets

    def compute_top_k(self, logits: torch.Tensor, labels: torch.Tensor, k: int, reduction: str = "mean"):
        """Top-k accuracy: a float for reduction "mean", per-sample hits for "none"."""
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none'; got {reduction!r}")
        _, top_ks = torch.topk(logits, k, dim=1)
        hits = (top_ks == labels[:, None]).float().sum(dim=-1)
        return hits.mean().item() if reduction == "mean" else hits

    def on_train_epoch_start(self) -> None:
        # only the first stage and the schedule are used: keep the diffusion network off the accelerator
        self.diffusion_model.model.to("cpu")

    @torch.no_grad()
    def write_logs(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        log_prefix = "train" if self.training else "val"
        bs = int(logits.shape[0])
        log = {
            f"{log_prefix}/loss": loss.mean(),
            f"{log_prefix}/acc@1": self.compute_top_k(logits, targets, k=1, reduction="mean"),
            f"{log_prefix}/acc@5": self.compute_top_k(logits, targets, k=min(5, logits.shape[1]), reduction="mean"),
        }
        self.log_dict(log, prog_bar=False, logger=True, on_step=self.training, on_epoch=True, batch_size=bs)
        self.log("loss", log[f"{log_prefix}/loss"], prog_bar=True, logger=False, batch_size=bs)
        self.log("global_step", float(self.global_step), logger=False, on_epoch=False, prog_bar=True, batch_size=bs)
        if self.training:
            lr = self.optimizers().param_groups[0]["lr"]
            self.log("lr_abs", lr, on_step=True, logger=True, on_epoch=False, prog_bar=True, batch_size=bs)

    def shared_step(self, batch: Mapping[str, Any], t: int | None = None):
        """Cross-entropy at random (or the given) noise level; returns (loss, logits, x_noisy, targets)."""
        x = self.diffusion_model.encode_batch(batch).z
        targets = self.get_conditioning(batch)
        if targets.dim() == 4:
            targets = targets.argmax(dim=1)
        if t is None:
            t = torch.randint(0, self.diffusion_model.num_timesteps, (x.shape[0],), device=self.device).long()
        else:
            t = torch.full(size=(x.shape[0],), fill_value=t, device=self.device).long()
        x_noisy = self.get_x_noisy(x, t)
        logits = self(x_noisy, t)
        loss = F.cross_entropy(logits, targets, reduction="none")
        self.write_logs(loss.detach(), logits.detach(), targets.detach())
        return loss.mean(), logits, x_noisy, targets

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss, *_ = self.shared_step(batch)
        return loss

    def reset_noise_accs(self) -> None:
        self.noisy_acc = {t: {"acc@1": [], "acc@5": []}
                          for t in range(0, self.diffusion_model.num_timesteps, self.diffusion_model.log_every_t)}

    def on_validation_start(self) -> None:
        self.reset_noise_accs()

    @torch.no_grad()
    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        """The loss, plus top-1/top-5 accuracy at every logged noise level (collected in ``noisy_acc``)."""
        loss, *_ = self.shared_step(batch)
        for t in self.noisy_acc:
            _, logits, _, targets = self.shared_step(batch, t)
            self.noisy_acc[t]["acc@1"].append(self.compute_top_k(logits, targets, k=1, reduction="mean"))
            self.noisy_acc[t]["acc@5"].append(
                self.compute_top_k(logits, targets, k=min(5, logits.shape[1]), reduction="mean"))
        return loss

    def configure_optimizers(self):
        optimizer = AdamW(self.model.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        if not self.use_scheduler:
            return optimizer
        schedule = instantiate_from_config(self.scheduler_config, where="model.params.scheduler_config")
        logger.info("Setting up LambdaLR scheduler...")
        scheduler = [{"scheduler": LambdaLR(optimizer, lr_lambda=schedule.schedule), "interval": "step",
                      "frequency": 1}]
        return [optimizer], scheduler

    @torch.no_grad()
    def log_images(self, batch: Mapping[str, Any], N: int = 8, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        log = {}
        x = self.get_input(batch, self.diffusion_model.first_stage_key)
        log["inputs"] = x
        y = self.get_conditioning(batch)
        if self.label_key == "class_label" and "human_label" in batch:
            log["labels"] = log_txt_as_img((x.shape[2], x.shape[3]), batch["human_label"])
        if ismap(y):
            log["labels"] = self.diffusion_model.to_rgb(y)
            for step in range(self.log_steps):
                current_time = step * self.log_time_interval
                _, logits, x_noisy, _ = self.shared_step(batch, t=current_time)
                log[f"inputs@t{current_time}"] = x_noisy
                pred = F.one_hot(logits.argmax(dim=1), num_classes=self.num_classes)
                pred = rearrange(pred, "b h w c -> b c h w")
                log[f"pred@t{current_time}"] = self.diffusion_model.to_rgb(pred)
        return {key: value[:N] for key, value in log.items()}
