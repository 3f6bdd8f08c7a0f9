"""Checkpoints and pretrained folders made here: a tiny model of tests/configs/ with perturbed weights saved
as config.yaml + model.ckpt, a WordPiece BERT tokenizer, and two random CLIPs with their tokenizers."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from helpers import REPO
from ldm.util import instantiate_from_config

CONFIGS = REPO / "tests" / "configs"
STEP = 1234  # global_step stored in the test checkpoints


def build_checkpoint(config_name: str, folder: Path, overrides: dict | None = None) -> tuple[Path, Path]:
    """Build the tiny model of tests/configs/<config_name>, perturb its weights, save config.yaml + model.ckpt."""
    config = OmegaConf.load(CONFIGS / config_name)
    for key, value in (overrides or {}).items():
        OmegaConf.update(config, key, value)
    torch.manual_seed(0)
    model = instantiate_from_config(config.model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():  # zero-initialized output convolutions would make every sample trivial
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        ema = getattr(model, "model_ema", None)
        if ema is not None:  # EMA weights that differ from the raw ones: sampling must use them
            for name, p in model.model.named_parameters():
                getattr(ema, ema.m_name2s_name[name]).copy_(p + 0.05 * torch.randn(p.shape, generator=gen))
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, folder / "config.yaml")
    torch.save({"state_dict": model.state_dict(), "global_step": STEP, "epoch": 3}, folder / "model.ckpt")
    return folder / "config.yaml", folder / "model.ckpt"


def write_bert_tokenizer(folder: Path) -> Path:
    """A tiny WordPiece vocabulary saved as a BERT tokenizer folder."""
    from transformers import BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "circle", "square", "on", "the",
             "left", "right", "painting", "of", "virus", "monster", "playing", "guitar"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(str(folder))
    return folder


def _bytes_to_unicode() -> list[str]:
    """The 256 symbols of CLIP's byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return [chr(c) for c in cs]


def write_tiny_clip(folder: Path, dim: int = 16) -> Path:
    """A random CLIP (projection dim ``dim``) and a byte-level tokenizer, saved with save_pretrained."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = _bytes_to_unicode()
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    text = dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=16)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=dim)).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def write_letter_clip(folder: Path) -> Path:
    """A random 1-layer CLIP (projection dim 8) and its BPE tokenizer files (the letters, "ca" and "cat"),
    saved like a Hugging Face repository."""
    from transformers import CLIPConfig, CLIPModel

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for ch in letters:
            vocab[ch + suffix] = len(vocab)
    vocab["ca"] = len(vocab)
    vocab["cat</w>"] = len(vocab)
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\n")
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    return folder
