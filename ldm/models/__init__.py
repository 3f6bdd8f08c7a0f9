"""Lightning models: the first-stage autoencoders and the diffusion models."""
