"""Latent diffusion models (Rombach et al., CVPR 2022), rebuilt on today's PyTorch stack."""
