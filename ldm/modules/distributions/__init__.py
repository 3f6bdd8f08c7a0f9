"""Probability distributions of the autoencoders' latent spaces (Kingma & Welling 2014)."""
