"""`Layout2ImgDiffusion`: latent diffusion conditioned on tokenised bounding-box layouts.

The layout-to-image model of Rombach et al., CVPR 2022 (sec. 4.3.1, OpenImages / COCO layouts):
a `LatentDiffusion` whose conditioning key is ``coordinates_bbox`` and whose image logs also draw the
layout.
"""
from __future__ import annotations

from typing import Any

import torch

from ldm.models.diffusion.latent_diffusion import LatentDiffusion

#: The only conditioning key this model accepts.
LAYOUT_COND_KEY = "coordinates_bbox"

#: Size of the rendered layout images in the logs.
LAYOUT_PLOT_SIZE = (256, 256)


class Layout2ImgDiffusion(LatentDiffusion):
    """Latent diffusion from bounding-box layouts (cond_stage_key must be "coordinates_bbox")."""

    def __init__(
        self,
        cond_stage_key: str,  # must be "coordinates_bbox"
        **kwargs: Any,  # the LatentDiffusion parameters
    ) -> None:
        if cond_stage_key != LAYOUT_COND_KEY:
            raise ValueError(f"Layout2ImgDiffusion needs cond_stage_key {LAYOUT_COND_KEY!r}; got {cond_stage_key!r}")
        super().__init__(cond_stage_key=cond_stage_key, **kwargs)

    def log_images(self, batch, N: int = 8, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """The `LatentDiffusion` logs plus ``bbox_image``: the layouts drawn by the dataset's builder."""
        logs = super().log_images(batch, N, *args, **kwargs)
        key = "train" if self.training else "validation"
        dset = self.trainer.datamodule.datasets[key]
        mapper = dset.conditional_builders[self.cond_stage_key]

        def label_of(catno):
            return dset.get_textual_label(dset.get_category_id(catno))

        bbox_imgs = [mapper.plot(tknzd_bbox.detach().cpu(), label_of, LAYOUT_PLOT_SIZE)
                     for tknzd_bbox in batch[self.cond_stage_key][:N]]
        logs["bbox_image"] = torch.stack(bbox_imgs, dim=0)
        return logs
