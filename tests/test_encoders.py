"""Conditioning encoders: BERTEmbedder parity with the original, the vendored x-transformers, ClassEmbedder,
SpatialRescaler, and the local-only loading of the BERT tokenizer and CLIP (on tiny files made here)."""
from __future__ import annotations

import logging

import kornia
import pytest
import torch

from conftest import assert_close, load_case
from helpers.checkpoints import write_letter_clip
from ldm.modules.encoders.modules import (
    CLIP_MEAN,
    CLIP_STD,
    BERTEmbedder,
    BERTTokenizer,
    ClassEmbedder,
    FrozenClipImageEmbedder,
    FrozenCLIPTextEmbedder,
    MissingPretrainedFiles,
    SpatialRescaler,
    TransformerEmbedder,
)
from ldm.modules.x_transformer import Encoder, TransformerWrapper
from ldm.util import instantiate_from_config

BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "cat", "dog", "##s"]


def test_bert_embedder_parity():
    case = load_case("bert_embedder")
    m = instantiate_from_config(case["config"])
    m.load_state_dict(case["state_dict"], strict=True)
    m.eval()
    with torch.no_grad():
        z = m(case["inputs"]["tokens"])
        # the explicit (non-fused) attention path, taken when attention maps are requested, agrees too
        z_explicit, attn = m.transformer(case["inputs"]["tokens"], return_embeddings=True, return_attn=True)
    assert_close(z, case["outputs"]["z"], "z")
    assert_close(z_explicit, case["outputs"]["z"], "z (explicit attention)")
    assert len(attn) == case["config"]["params"]["n_layer"]
    assert torch.allclose(attn[0].sum(-1), torch.ones(()))


@pytest.mark.parametrize("options", [
    {},
    {"attn_dropout": 0.1, "ff_dropout": 0.1},
    {"ff_glu": True, "ff_mult": 2},
])
def test_x_transformer_options_run(options):
    torch.manual_seed(0)
    layers = Encoder(dim=16, depth=2, heads=2, attn_dim_head=8, **options)
    model = TransformerWrapper(num_tokens=20, max_seq_len=6, attn_layers=layers).eval()
    tokens = torch.randint(0, 20, (2, 6))
    with torch.no_grad():
        logits = model(tokens)
        emb = model(tokens, return_embeddings=True)
    assert logits.shape == (2, 6, 20) and emb.shape == (2, 6, 16)
    assert torch.isfinite(logits).all()


def test_x_transformer_masks_agree_between_fused_and_explicit_attention():
    torch.manual_seed(0)
    model = TransformerWrapper(num_tokens=20, max_seq_len=6, attn_layers=Encoder(dim=16, depth=2, heads=2)).eval()
    tokens = torch.randint(0, 20, (2, 6))
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    with torch.no_grad():
        fused = model(tokens, mask=mask, return_embeddings=True)
        explicit, _ = model(tokens, mask=mask, return_embeddings=True, return_attn=True)
    assert_close(fused, explicit, "masked")
    with pytest.raises(TypeError, match="causal"):
        Encoder(dim=16, depth=1, causal=True)
    with pytest.raises(TypeError, match="attn_"):
        Encoder(dim=16, depth=1, dim_head=8)


def test_transformer_embedder_and_too_long_input():
    m = TransformerEmbedder(n_embed=16, n_layer=1, vocab_size=30, max_seq_len=5)
    assert m.encode(torch.randint(0, 30, (3, 5))).shape == (3, 5, 16)
    with pytest.raises(ValueError, match="max_seq_len 5"):
        m(torch.randint(0, 30, (1, 6)))


def test_class_embedder():
    m = ClassEmbedder(embed_dim=8, n_classes=10, key="class_label")
    batch = {"class_label": torch.tensor([3, 7]), "other": torch.tensor([1, 1])}
    c = m(batch)
    assert c.shape == (2, 1, 8)
    assert torch.equal(c[:, 0], m.embedding.weight[[3, 7]])
    assert torch.equal(m(batch, key="other")[:, 0], m.embedding.weight[[1, 1]])
    assert list(m.state_dict()) == ["embedding.weight"]
    with pytest.raises(KeyError, match="class_label"):
        m({"label": torch.tensor([0])})


def test_spatial_rescaler(caplog):
    plain = SpatialRescaler(n_stages=2, method="bilinear", multiplier=0.5)
    assert plain(torch.randn(1, 3, 16, 16)).shape == (1, 3, 4, 4) and not list(plain.parameters())
    with caplog.at_level(logging.INFO):
        remap = SpatialRescaler(n_stages=1, method="nearest", multiplier=0.25, in_channels=182, out_channels=3)
    assert "182 to 3" in caplog.text
    assert remap.encode(torch.randn(1, 182, 16, 16)).shape == (1, 3, 4, 4)
    assert list(remap.state_dict()) == ["channel_mapper.weight"]
    with pytest.raises(ValueError, match="'cubic'"):
        SpatialRescaler(method="cubic")


def _write_bert_vocab(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(BERT_VOCAB) + "\n")
    return folder


def test_bert_tokenizer_from_a_local_folder(tmp_path):
    folder = _write_bert_vocab(tmp_path / "bert")
    tok = BERTTokenizer(vq_interface=False, max_length=8, tokenizer_path=str(folder))
    tokens = tok.encode(["a photo of cats", "dog"])
    ids = {w: i for i, w in enumerate(BERT_VOCAB)}
    assert tokens.tolist() == [
        [ids["[CLS]"], ids["a"], ids["photo"], ids["of"], ids["cat"], ids["##s"], ids["[SEP]"], ids["[PAD]"]],
        [ids["[CLS]"], ids["dog"], ids["[SEP]"]] + [ids["[PAD]"]] * 5,
    ]
    _, _, (_, _, vq_tokens) = BERTTokenizer(max_length=8, tokenizer_path=str(folder)).encode("dog")
    assert vq_tokens.shape == (1, 8)


def test_bert_embedder_tokenizes_text_lazily(tmp_path):
    folder = tmp_path / "bert"
    m = BERTEmbedder(n_embed=16, n_layer=1, vocab_size=len(BERT_VOCAB), max_seq_len=8, tokenizer_path=str(folder))
    assert m.tknz_fn._tokenizer is None  # building reads no file
    assert not any(k.startswith("tknz_fn") for k in m.state_dict())
    _write_bert_vocab(folder)
    z = m.encode(["a cat", "a photo of dogs"])
    assert z.shape == (2, 8, 16)
    assert z.device == m.transformer.token_emb.weight.device


def test_bert_tokenizer_from_the_hf_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    repo = cache / "models--bert-base-uncased"
    _write_bert_vocab(repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    tokens = BERTTokenizer(vq_interface=False, max_length=4).encode("cat")
    assert tokens.tolist() == [[2, 8, 3, 0]]


@pytest.mark.parametrize("where", ["empty_folder", "cache"])
def test_bert_tokenizer_says_what_is_missing(tmp_path, monkeypatch, where):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    path = None
    if where == "empty_folder":
        path = tmp_path / "no_tokenizer_here"
        path.mkdir()
    tok = BERTTokenizer(tokenizer_path=None if path is None else str(path))
    with pytest.raises(MissingPretrainedFiles) as err:
        tok("a cat")
    msg = str(err.value)
    assert "vocab.txt" in msg and "from_pretrained('bert-base-uncased')" in msg
    assert (str(path) if path else str(tmp_path / "empty_cache")) in msg


def test_frozen_clip_text_embedder(tmp_path):
    folder = write_letter_clip(tmp_path / "clip")
    m = FrozenCLIPTextEmbedder(version=str(folder), max_length=16, n_repeat=3)
    assert "model" not in m._modules and not list(m.parameters())  # building reads no file
    z = m.encode(["a cat", "dog"])
    assert z.shape == (2, 3, 8)
    assert torch.allclose(z.norm(dim=-1), torch.ones(2, 3), atol=1e-6)
    assert all(not p.requires_grad for p in m.parameters())
    # the embedding is the projected final state at the end-of-text token: independent of the padding length
    short = FrozenCLIPTextEmbedder(version=str(folder), max_length=8)
    assert_close(short(["a cat", "dog"]), z[:, 0], "padding")
    tokens = m.tokenizer(["dog"], return_tensors="pt")["input_ids"]
    hidden = m.model.text_model(input_ids=tokens).last_hidden_state[0, -1]
    expected = m.model.text_projection(hidden)
    assert_close(m(["dog"])[0], expected / expected.norm(), "end-of-text state")
    m.train()
    assert m.training and not m.model.training  # frozen: the CLIP stays in eval mode


def test_frozen_clip_image_embedder(tmp_path):
    folder = write_letter_clip(tmp_path / "clip")
    m = FrozenClipImageEmbedder(model=str(folder))
    assert torch.allclose(m.mean, torch.tensor(CLIP_MEAN)) and torch.allclose(m.std, torch.tensor(CLIP_STD))
    assert m.state_dict() == {}  # the normalization buffers are not saved, as in the original
    x = torch.rand(2, 3, 40, 40) * 2 - 1
    with torch.no_grad():
        out = m(x)
        resized = kornia.geometry.resize(x, (32, 32), interpolation="bicubic", align_corners=True, antialias=False)
        pixels = (((resized + 1) / 2) - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
        expected = m.model.visual_projection(m.model.vision_model(pixel_values=pixels).pooler_output)
    assert out.shape == (2, 8)
    assert_close(out, expected, "image features")
    with pytest.raises(ValueError, match="jit"):
        FrozenClipImageEmbedder(model=str(folder), jit=True)


def test_frozen_clip_says_what_is_missing(tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(MissingPretrainedFiles) as err:
        FrozenClipImageEmbedder(model=str(folder))(torch.zeros(1, 3, 8, 8))
    assert "model.safetensors" in str(err.value) and str(folder) in str(err.value)
    with pytest.raises(MissingPretrainedFiles, match="merges.txt"):
        FrozenCLIPTextEmbedder(version=str(folder))("a cat")
