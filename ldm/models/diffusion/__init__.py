"""Diffusion models and samplers of latent diffusion (Rombach et al., CVPR 2022).

Configs name the models by ``ldm.models.diffusion.ddpm.<Class>``; samplers live in ``ddim`` (DDIM,
Song et al., ICLR 2021) and ``plms`` (PLMS, Liu et al., ICLR 2022).
"""
