"""Import path of the diffusion models named by the configs (``ldm.models.diffusion.ddpm.*``).

DDPM (Ho et al., NeurIPS 2020) in pixel space and latent diffusion (Rombach et al., CVPR 2022). The
implementation is split by responsibility across this package; this module re-exports every class
and helper the original ``ddpm.py`` defined, so configs and checkpoints keep resolving:

- `gaussian_diffusion`: the process (schedule, noising, training loss, denoiser), which takes the network as
  an argument and imports no Lightning;
- `wrapper`: `DiffusionWrapper`, routing the conditioning into the network;
- `ddpm_module`: `DDPM`, the Lightning module (network, EMA, schedule buffers, hooks, optimisers);
- `latent_diffusion`: `LatentDiffusion`, with the functions of `first_stage`, `conditioning` and `patches`;
- `entry_points`, `image_logging`: the original sampling methods and ``log_images``, as functions of a model;
- `layout`: `Layout2ImgDiffusion`.
"""
from ldm.models.diffusion.ddpm_module import DDPM, uniform_on_device
from ldm.models.diffusion.first_stage import disabled_train
from ldm.models.diffusion.latent_diffusion import LatentDiffusion
from ldm.models.diffusion.layout import Layout2ImgDiffusion
from ldm.models.diffusion.wrapper import CONDITIONING_KEYS, DiffusionWrapper

__all__ = [
    "CONDITIONING_KEYS",
    "DDPM",
    "DiffusionWrapper",
    "LatentDiffusion",
    "Layout2ImgDiffusion",
    "disabled_train",
    "uniform_on_device",
]
