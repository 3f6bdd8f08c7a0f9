"""Diffusion models and samplers of latent diffusion (Rombach et al., CVPR 2022).

Configs name the models by ``ldm.models.diffusion.ddpm.<Class>``. The process (schedule, noising, loss,
denoiser) is ``gaussian_diffusion``; the samplers are step functions in ``sampling`` over its denoiser, named in
``ldm.sampler_registry``; ``ddim``, ``plms`` and ``dpm_solver`` keep the original sampler classes.
"""
