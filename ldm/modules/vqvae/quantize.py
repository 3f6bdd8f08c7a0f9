"""The vector quantizer of the VQ-regularized first stages.

VQ-VAE quantization (van den Oord et al., "Neural Discrete Representation Learning", NeurIPS 2017) with
the codebook/commitment loss and straight-through gradient, in the form VQGAN uses it (Esser et al.,
"Taming Transformers for High-Resolution Image Synthesis", CVPR 2021), plus optional remapping of the
indices to a subset of used codes. The latent diffusion VQ first stages (Rombach et al., CVPR 2022)
are built from it; the original imported it from taming-transformers as ``VectorQuantizer2``.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch
from einops import rearrange
from torch import nn

logger = logging.getLogger(__name__)

UNKNOWN_INDEX_MODES = ("random", "extra")


def _per_batch(inds: torch.Tensor, method: str) -> torch.Tensor:
    """Indices ``(B, ...)`` flattened to ``(B, N)``; ``method`` names the caller in the error without a batch axis."""
    if inds.ndim < 2:
        raise ValueError(f"{method} expects indices with a batch axis, (B, ...); got shape {tuple(inds.shape)}")
    return inds.reshape(inds.shape[0], -1)


class VectorQuantizer2(nn.Module):
    """Nearest-codebook-entry quantization with straight-through gradients.

    ``forward`` returns ``(z_q, loss, (perplexity, min_encodings, indices))``; the first two entries of the
    tuple are always None (kept for interface compatibility with the original).
    """

    def __init__(self,
                 n_e: int,  # number of codebook entries
                 e_dim: int,  # dimension of each entry (the latent channels)
                 beta: float,  # commitment weight
                 remap: str | os.PathLike | None = None,  # .npy file of the used code indices; None keeps all
                 unknown_index: str | int = "random",  # remapped index of unused codes: "random", "extra" or int
                 sane_index_shape: bool = False,  # return indices as (B, H, W) instead of flat
                 legacy: bool = True,  # the original's loss with beta on the codebook term (see forward)
                 ):
        super().__init__()
        self.n_e = n_e
        self.e_dim = e_dim
        self.beta = beta
        self.legacy = legacy

        self.embedding = nn.Embedding(self.n_e, self.e_dim)
        self.embedding.weight.data.uniform_(-1.0 / self.n_e, 1.0 / self.n_e)

        self.remap = remap
        if self.remap is not None:
            if not (unknown_index in UNKNOWN_INDEX_MODES or isinstance(unknown_index, int)):
                raise ValueError(f"unknown_index must be 'random', 'extra' or an integer; got {unknown_index!r}")
            self.register_buffer("used", torch.tensor(np.load(self.remap)))
            self.re_embed = self.used.shape[0]
            self.unknown_index = unknown_index
            if self.unknown_index == "extra":
                self.unknown_index = self.re_embed
                self.re_embed = self.re_embed + 1
            logger.info("Remapping %d indices to %d indices. Using %s for unknown indices.",
                        self.n_e, self.re_embed, self.unknown_index)
        else:
            self.re_embed = n_e

        self.sane_index_shape = sane_index_shape

    def remap_to_used(self, inds: torch.Tensor) -> torch.Tensor:
        """Map codebook indices ``(B, ...)`` to positions in ``used``; codes not in ``used`` get unknown_index."""
        ishape = inds.shape
        inds = _per_batch(inds, "remap_to_used")  # (B, N)
        used = self.used.to(inds)
        match = (inds[:, :, None] == used[None, None, ...]).long()  # (B, N, U)
        new = match.argmax(-1)  # (B, N)
        unknown = match.sum(2) < 1
        if self.unknown_index == "random":
            new[unknown] = torch.randint(0, self.re_embed, size=new[unknown].shape).to(device=new.device)
        else:
            new[unknown] = self.unknown_index
        return new.reshape(ishape)

    def unmap_to_all(self, inds: torch.Tensor) -> torch.Tensor:
        """Inverse of `remap_to_used`: positions in ``used`` ``(B, ...)`` back to codebook indices."""
        ishape = inds.shape
        inds = _per_batch(inds, "unmap_to_all")  # (B, N)
        used = self.used.to(inds)
        if self.re_embed > self.used.shape[0]:  # the "extra" token maps back to code 0
            inds[inds >= self.used.shape[0]] = 0
        back = torch.gather(used[None, :][inds.shape[0] * [0], :], 1, inds)  # (B, N)
        return back.reshape(ishape)

    def forward(self, z: torch.Tensor, temp: float | None = None, rescale_logits: bool = False,
                return_logits: bool = False) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        # temp / rescale_logits / return_logits exist for interface compatibility with a Gumbel quantizer
        if not (temp is None or temp == 1.0) or rescale_logits or return_logits:
            raise ValueError("VectorQuantizer2 takes temp=None/1.0, rescale_logits=False, return_logits=False "
                             f"(Gumbel-quantizer options); got temp={temp!r}, rescale_logits={rescale_logits!r}, "
                             f"return_logits={return_logits!r}")
        z = rearrange(z, "b c h w -> b h w c").contiguous()  # (B, H, W, C)
        z_flattened = z.view(-1, self.e_dim)  # (BHW, C)
        # squared distances |z - e|^2 = |z|^2 + |e|^2 - 2 z.e, computed in this order as the original does,
        # so that the argmin (the code indices) is the same
        d = torch.sum(z_flattened ** 2, dim=1, keepdim=True) + \
            torch.sum(self.embedding.weight ** 2, dim=1) - 2 * \
            torch.einsum("bd,dn->bn", z_flattened, rearrange(self.embedding.weight, "n d -> d n"))  # (BHW, n_e)

        min_encoding_indices = torch.argmin(d, dim=1)  # (BHW,)
        z_q = self.embedding(min_encoding_indices).view(z.shape)  # (B, H, W, C)
        perplexity = None
        min_encodings = None

        # codebook term pulls the codes to the encoder outputs, commitment term (beta) the other way;
        # legacy=True puts beta on the codebook term, as every released model was trained
        if not self.legacy:
            loss = self.beta * torch.mean((z_q.detach() - z) ** 2) + torch.mean((z_q - z.detach()) ** 2)
        else:
            loss = torch.mean((z_q.detach() - z) ** 2) + self.beta * torch.mean((z_q - z.detach()) ** 2)

        z_q = z + (z_q - z).detach()  # straight-through estimator: the gradient of z_q flows to z
        z_q = rearrange(z_q, "b h w c -> b c h w").contiguous()  # (B, C, H, W)

        if self.remap is not None:
            min_encoding_indices = min_encoding_indices.reshape(z.shape[0], -1)  # (B, HW)
            min_encoding_indices = self.remap_to_used(min_encoding_indices)
            min_encoding_indices = min_encoding_indices.reshape(-1, 1)  # (BHW, 1)

        if self.sane_index_shape:
            min_encoding_indices = min_encoding_indices.reshape(z_q.shape[0], z_q.shape[2], z_q.shape[3])  # (B, H, W)

        return z_q, loss, (perplexity, min_encodings, min_encoding_indices)

    def get_codebook_entry(self, indices: torch.Tensor, shape: tuple[int, int, int, int] | None) -> torch.Tensor:
        """Codebook vectors of ``indices``; with ``shape = (B, H, W, C)`` returned as a ``(B, C, H, W)`` map."""
        if self.remap is not None:
            indices = indices.reshape(shape[0], -1)  # (B, HW)
            indices = self.unmap_to_all(indices)
            indices = indices.reshape(-1)  # (BHW,)
        z_q = self.embedding(indices)  # (N, C)
        if shape is not None:
            z_q = z_q.view(shape)  # (B, H, W, C)
            z_q = z_q.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)
        return z_q


VectorQuantizer = VectorQuantizer2
