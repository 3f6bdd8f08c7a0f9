"""Conditioning encoders of latent diffusion (Rombach et al. 2022, sec. 3.3: the domain-specific tau_theta).

- ``ClassEmbedder``: a learned embedding per class label, one token for cross-attention.
- ``TransformerEmbedder`` / ``BERTEmbedder``: a transformer encoder (Vaswani et al. 2017) over token ids;
  ``BERTEmbedder`` tokenizes text with the BERT WordPiece tokenizer (Devlin et al. 2019) first. This is the
  text encoder of the LAION txt2img-1p4B model.
- ``SpatialRescaler``: resizes a spatial conditioning (e.g. low-resolution image, semantic map).
- ``FrozenCLIPTextEmbedder`` / ``FrozenClipImageEmbedder``: frozen CLIP encoders (Radford et al. 2021), used by
  retrieval-augmented diffusion (Blattmann et al. 2022).

Tokenizers and CLIP weights load lazily, on first use, from a local folder or the Hugging Face cache and never
from the network; building any of these modules reads no file. A missing file raises ``MissingPretrainedFiles``,
which names the files, where they were looked for and how to get them.
"""
from __future__ import annotations

import logging
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from einops import repeat

from ldm.checkpoint.pretrained import MissingPretrainedFiles, load_pretrained  # noqa: F401 (re-exported)
from ldm.modules.x_transformer import Encoder, TransformerWrapper
from ldm.util import resolve_path

logger = logging.getLogger(__name__)

BERT_TOKENIZER_NAME = "bert-base-uncased"
BERT_VOCAB_SIZE = 30522
#: Files that make a complete tokenizer or model, any one group of each list.
BERT_TOKENIZER_FILES = (("tokenizer.json",), ("vocab.txt",))
CLIP_TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))
CLIP_MODEL_FILES = (("config.json", "model.safetensors"), ("config.json", "model.safetensors.index.json"),
                    ("config.json", "pytorch_model.bin"))
INTERPOLATION_MODES = ("nearest", "linear", "bilinear", "trilinear", "bicubic", "area")
#: CLIP names of the openai-clip package and the Hugging Face repositories that hold the same weights.
OPENAI_CLIP_TO_HF = {
    "ViT-B/32": "openai/clip-vit-base-patch32",
    "ViT-B/16": "openai/clip-vit-base-patch16",
    "ViT-L/14": "openai/clip-vit-large-patch14",
    "ViT-L/14@336px": "openai/clip-vit-large-patch14-336",
}
#: CLIP's image normalization (the openai-clip preprocessing constants).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class AbstractEncoder(nn.Module):
    """An encoder of conditioning information with an ``encode`` method."""

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement encode()")


class ClassEmbedder(nn.Module):
    """A learned embedding per class: ``batch[key]`` (B,) -> (B, 1, embed_dim), one cross-attention token."""

    def __init__(
        self,
        embed_dim: int,  # embedding features (the U-Net's context_dim)
        n_classes: int = 1000,  # number of classes
        key: str = "class",  # batch key that holds the labels
    ) -> None:
        super().__init__()
        self.key = key
        self.embedding = nn.Embedding(n_classes, embed_dim)

    def forward(self, batch: dict[str, torch.Tensor], key: str | None = None) -> torch.Tensor:
        if key is None:
            key = self.key
        if key not in batch:
            raise KeyError(f"ClassEmbedder: the batch has no key {key!r}; keys: {sorted(batch)}")
        c = batch[key][:, None]  # (B, 1)
        return self.embedding(c)  # (B, 1, embed_dim)


class TransformerEmbedder(AbstractEncoder):
    """Transformer encoder layers over token ids: (B, N) -> (B, N, n_embed)."""

    def __init__(
        self,
        n_embed: int,  # token features
        n_layer: int,  # transformer blocks
        vocab_size: int,  # number of token ids
        max_seq_len: int = 77,  # longest token sequence
        device: str | torch.device | None = None,  # device of the tokens; None = the module's parameters
    ) -> None:
        super().__init__()
        self.device = device
        self.transformer = TransformerWrapper(num_tokens=vocab_size, max_seq_len=max_seq_len,
                                              attn_layers=Encoder(dim=n_embed, depth=n_layer))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.to(self.device if self.device is not None else self.transformer.token_emb.weight.device)
        return self.transformer(tokens, return_embeddings=True)  # (B, N, n_embed)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)


class BERTTokenizer(AbstractEncoder):
    """The pretrained BERT WordPiece tokenizer (``bert-base-uncased``, 30522 ids), padded to ``max_length``.

    Loaded on first use from ``tokenizer_path`` or the Hugging Face cache, never from the network.
    """

    def __init__(
        self,
        device: str | torch.device | None = None,  # device of the returned ids; None = CPU
        vq_interface: bool = True,  # encode() returns (None, None, [None, None, tokens]) like a VQ model
        max_length: int = 77,  # pad/truncate to this many tokens
        tokenizer_path: str | None = None,  # folder with vocab.txt / tokenizer.json; None = HF cache
    ) -> None:
        super().__init__()
        self.device = device
        self.vq_interface = vq_interface
        self.max_length = max_length
        self.tokenizer_path = tokenizer_path
        self._tokenizer = None

    @property
    def tokenizer(self) -> Any:
        """The ``BertTokenizerFast``, loaded on first access."""
        if self._tokenizer is None:
            from transformers import BertTokenizerFast

            name = resolve_path(self.tokenizer_path) if self.tokenizer_path else BERT_TOKENIZER_NAME
            self._tokenizer = load_pretrained(
                BertTokenizerFast, name, "BERTTokenizer", BERT_TOKENIZER_FILES,
                f"python -c \"from transformers import BertTokenizerFast; "
                f"BertTokenizerFast.from_pretrained('{BERT_TOKENIZER_NAME}')\"",
            )
        return self._tokenizer

    def forward(self, text: str | list[str]) -> torch.Tensor:
        batch_encoding = self.tokenizer(text, truncation=True, max_length=self.max_length, return_length=True,
                                        return_overflowing_tokens=False, padding="max_length", return_tensors="pt")
        tokens = batch_encoding["input_ids"]  # (B, max_length)
        return tokens.to(self.device) if self.device is not None else tokens

    @torch.no_grad()
    def encode(self, text: str | list[str]) -> Any:
        tokens = self(text)
        if not self.vq_interface:
            return tokens
        return None, None, [None, None, tokens]

    def decode(self, text: Any) -> Any:
        return text


class BERTEmbedder(AbstractEncoder):
    """BERT tokenizer followed by transformer encoder layers trained from scratch: text -> (B, N, n_embed)."""

    def __init__(
        self,
        n_embed: int,  # token features (the U-Net's context_dim)
        n_layer: int,  # transformer blocks
        vocab_size: int = BERT_VOCAB_SIZE,  # number of token ids
        max_seq_len: int = 77,  # tokens per caption
        device: str | torch.device | None = None,  # device of the tokens; None = the module's parameters
        use_tokenizer: bool = True,  # tokenize text (False: the input already holds token ids)
        embedding_dropout: float = 0.0,  # dropout on the token embeddings
        tokenizer_path: str | None = None,  # folder with the BERT tokenizer files; None = HF cache
    ) -> None:
        super().__init__()
        self.use_tknz_fn = use_tokenizer
        if self.use_tknz_fn:
            self.tknz_fn = BERTTokenizer(vq_interface=False, max_length=max_seq_len, tokenizer_path=tokenizer_path)
        self.device = device
        self.transformer = TransformerWrapper(num_tokens=vocab_size, max_seq_len=max_seq_len,
                                              attn_layers=Encoder(dim=n_embed, depth=n_layer),
                                              emb_dropout=embedding_dropout)

    def forward(self, text: Any) -> torch.Tensor:
        tokens = self.tknz_fn(text) if self.use_tknz_fn else text  # (B, N)
        tokens = tokens.to(self.device if self.device is not None else self.transformer.token_emb.weight.device)
        return self.transformer(tokens, return_embeddings=True)  # (B, N, n_embed)

    def encode(self, text: Any) -> torch.Tensor:
        return self(text)


class SpatialRescaler(nn.Module):
    """Resize a spatial conditioning ``n_stages`` times by ``multiplier``, optionally remap its channels (1x1 conv)."""

    def __init__(
        self,
        n_stages: int = 1,  # number of resizing steps
        method: str = "bilinear",  # interpolation mode of torch.nn.functional.interpolate
        multiplier: float = 0.5,  # scale factor of each step
        in_channels: int = 3,  # channels of the input
        out_channels: int | None = None,  # channels after remapping; None = no remapping
        bias: bool = False,  # bias of the remapping convolution
    ) -> None:
        super().__init__()
        if n_stages < 0:
            raise ValueError(f"n_stages must be >= 0; got {n_stages}")
        if method not in INTERPOLATION_MODES:
            raise ValueError(f"method must be one of {', '.join(INTERPOLATION_MODES)}; got {method!r}")
        self.n_stages = n_stages
        self.multiplier = multiplier
        self.interpolator = partial(torch.nn.functional.interpolate, mode=method)
        self.remap_output = out_channels is not None
        if self.remap_output:
            logger.info("Spatial Rescaler mapping from %d to %d channels after resizing.", in_channels, out_channels)
            self.channel_mapper = nn.Conv2d(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.n_stages):
            x = self.interpolator(x, scale_factor=self.multiplier)  # (B, C, H * m, W * m)
        if self.remap_output:
            x = self.channel_mapper(x)  # (B, out_channels, H', W')
        return x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)


def _clip_name_or_path(version: str) -> str:
    """The Hugging Face name (or local folder) of a CLIP given by its openai-clip name, HF name or folder."""
    return OPENAI_CLIP_TO_HF.get(version, version)


def _clip_hint(name: str) -> str:
    return f"python -c \"from transformers import CLIPModel, CLIPTokenizer; CLIPModel.from_pretrained('{name}'); " \
           f"CLIPTokenizer.from_pretrained('{name}')\""


class _FrozenCLIP(nn.Module):
    """Shared loading of a frozen ``transformers.CLIPModel``; the model lands on the module's device."""

    def _anchor_device(self) -> torch.device:
        raise NotImplementedError(f"{type(self).__name__} must say where its CLIP model goes")

    def _load_clip(self, name_or_path: str, what: str) -> nn.Module:
        from transformers import CLIPModel

        model = load_pretrained(CLIPModel, name_or_path, what, CLIP_MODEL_FILES, _clip_hint(name_or_path))
        model = model.to(self._anchor_device()).eval()
        model.requires_grad_(False)
        return model

    def freeze(self) -> None:
        """Evaluation mode and no gradients (the CLIP weights are always frozen)."""
        self.eval()
        for param in self.parameters():
            param.requires_grad = False

    def train(self, mode: bool = True) -> "_FrozenCLIP":
        super().train(mode)
        model = self._modules.get("model")
        if model is not None:
            model.eval()  # frozen: dropout stays off
        return self


class FrozenCLIPTextEmbedder(_FrozenCLIP):
    """The frozen CLIP text encoder: text -> normalized projected embeddings, (B, n_repeat, D) from ``encode``.

    ``version`` is an openai-clip name (``ViT-L/14``), a Hugging Face repository id or a local folder saved with
    ``save_pretrained``; it is loaded on first use, without network access.
    """

    def __init__(
        self,
        version: str = "ViT-L/14",  # which CLIP: openai-clip name, HF repository id or local folder
        device: str | torch.device | None = None,  # where the model goes; None = follow the module (CPU at first)
        max_length: int = 77,  # tokens per caption
        n_repeat: int = 1,  # copies of the embedding that encode() returns per caption
        normalize: bool = True,  # L2-normalize the embeddings
    ) -> None:
        super().__init__()
        self.version = version
        self.device = device
        self.max_length = max_length
        self.n_repeat = n_repeat
        self.normalize = normalize
        self.register_buffer("_device_anchor", torch.empty(0, device=device), persistent=False)
        self.tokenizer = None

    def _anchor_device(self) -> torch.device:
        return self._device_anchor.device

    def load(self) -> None:
        """Load the tokenizer and the model now (otherwise the first call does)."""
        if self.tokenizer is not None and "model" in self._modules:
            return
        from transformers import CLIPTokenizer

        name = _clip_name_or_path(self.version)
        self.tokenizer = load_pretrained(CLIPTokenizer, name, "FrozenCLIPTextEmbedder", CLIP_TOKENIZER_FILES,
                                          _clip_hint(name))
        self.model = self._load_clip(name, "FrozenCLIPTextEmbedder")

    def forward(self, text: str | list[str]) -> torch.Tensor:
        self.load()
        tokens = self.tokenizer(text, truncation=True, max_length=self.max_length, padding="max_length",
                                return_tensors="pt")["input_ids"]
        tokens = tokens.to(self.model.text_projection.weight.device)  # (B, max_length)
        pooled = self.model.text_model(input_ids=tokens).pooler_output  # (B, width), the end-of-text token
        z = self.model.text_projection(pooled)  # (B, D)
        if self.normalize:
            z = z / torch.linalg.norm(z, dim=1, keepdim=True)
        return z

    def encode(self, text: str | list[str]) -> torch.Tensor:
        z = self(text)
        if z.ndim == 2:
            z = z[:, None, :]  # (B, 1, D)
        return repeat(z, "b 1 d -> b k d", k=self.n_repeat)  # (B, n_repeat, D)


class FrozenClipImageEmbedder(_FrozenCLIP):
    """The frozen CLIP image encoder: images in [-1, 1] -> projected embeddings (B, D).

    Images are resized (bicubic) to CLIP's input size and normalized with CLIP's mean and std, as in the original.
    """

    def __init__(
        self,
        model: str,  # which CLIP: openai-clip name (ViT-L/14), HF repository id or local folder
        jit: bool = False,  # TorchScript model of openai-clip; not available through transformers
        device: str | torch.device | None = None,  # where the model goes; None = follow the module (CPU at first)
        antialias: bool = False,  # antialias when resizing
    ) -> None:
        super().__init__()
        if jit:
            raise ValueError("jit=True asks for openai-clip's TorchScript model; this project loads CLIP through "
                             "transformers, use jit=False")
        self.version = model
        self.antialias = antialias
        self.register_buffer("mean", torch.tensor(CLIP_MEAN, device=device), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD, device=device), persistent=False)

    def _anchor_device(self) -> torch.device:
        return self.mean.device

    def load(self) -> None:
        """Load the model now (otherwise the first call does)."""
        if "model" not in self._modules:
            self.model = self._load_clip(_clip_name_or_path(self.version), "FrozenClipImageEmbedder")

    @property
    def input_size(self) -> int:
        """Side of CLIP's input images (224 for the openai ViT models but the @336px one)."""
        self.load()
        return int(self.model.config.vision_config.image_size)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 3, S, S) normalized as CLIP expects."""
        import kornia  # imported here: only the CLIP image embedder uses it, and it adds to every start-up

        size = self.input_size
        x = kornia.geometry.resize(x, (size, size), interpolation="bicubic", align_corners=True,
                                   antialias=self.antialias)
        x = (x + 1.0) / 2.0  # [0, 1]
        return kornia.enhance.normalize(x, self.mean, self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(x).to(self.model.visual_projection.weight.device)  # (B, 3, S, S)
        pooled = self.model.vision_model(pixel_values=x).pooler_output  # (B, width)
        return self.model.visual_projection(pooled)  # (B, D)
