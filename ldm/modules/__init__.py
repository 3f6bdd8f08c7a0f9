"""Network building blocks: attention, the diffusion U-Net, encoders, distributions, EMA."""
