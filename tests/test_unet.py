"""The diffusion U-Net: parity with the original, the attention kernels against the original's einsum formulas,
gradient checkpointing (same gradients, fewer saved activations), and the constructor options."""
from __future__ import annotations

import math

import pytest
import torch
from einops import rearrange, repeat

from conftest import assert_close, load_case
from ldm.modules.attention import CrossAttention, SpatialSelfAttention, SpatialTransformer
from ldm.modules.diffusionmodules.openaimodel import (
    AttentionBlock,
    EncoderUNetModel,
    QKVAttention,
    QKVAttentionLegacy,
    ResBlock,
    UNetModel,
)
from ldm.util import instantiate_from_config

TINY = dict(image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[2, 1],
            num_res_blocks=1, channel_mult=[1, 2])


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter nonzero random values (fresh U-Nets have zero output layers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.mark.parametrize("name", ["unet_crossattn", "unet_adm_scale_shift"])
def test_unet_parity(name):
    case = load_case(name)
    m = instantiate_from_config(case["config"])
    m.load_state_dict(case["state_dict"], strict=True)
    m.train()
    inputs = case["inputs"]
    x = inputs["x"].clone().requires_grad_(True)
    extra = {k: inputs[k] for k in ("context", "y") if k in inputs}
    out = m(x, timesteps=inputs["timesteps"], **extra)
    (grad_x,) = torch.autograd.grad(out.square().sum(), x)
    assert_close(out, case["outputs"]["out"], f"{name}/out")
    assert_close(grad_x, case["outputs"]["grad_x"], f"{name}/grad_x")


def _legacy_qkv(qkv, n_heads):
    bs, width, length = qkv.shape
    ch = width // (3 * n_heads)
    q, k, v = qkv.reshape(bs * n_heads, ch * 3, length).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    return torch.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)


def _new_qkv(qkv, n_heads):
    bs, width, length = qkv.shape
    ch = width // (3 * n_heads)
    q, k, v = qkv.chunk(3, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", (q * scale).reshape(bs * n_heads, ch, length),
                          (k * scale).reshape(bs * n_heads, ch, length))
    weight = torch.softmax(weight, dim=-1)
    return torch.einsum("bts,bcs->bct", weight, v.reshape(bs * n_heads, ch, length)).reshape(bs, -1, length)


def test_qkv_attention_matches_einsum_formulas():
    torch.manual_seed(0)
    qkv = torch.randn(2, 3 * 4 * 8, 10)
    assert_close(QKVAttentionLegacy(4)(qkv), _legacy_qkv(qkv, 4), "legacy")
    assert_close(QKVAttention(4)(qkv), _new_qkv(qkv, 4), "new order")
    assert not torch.allclose(_legacy_qkv(qkv, 4), _new_qkv(qkv, 4))  # the two orders differ
    with pytest.raises(ValueError, match="not divisible"):
        QKVAttention(5)(qkv)


def _cross_attention_reference(m, x, context, mask=None):
    h = m.heads
    q, k, v = m.to_q(x), m.to_k(context), m.to_v(context)
    q, k, v = (rearrange(t, "b n (h d) -> (b h) n d", h=h) for t in (q, k, v))
    sim = torch.einsum("b i d, b j d -> b i j", q, k) * m.scale
    if mask is not None:
        mask = repeat(mask, "b j -> (b h) () j", h=h)
        sim.masked_fill_(~mask, -torch.finfo(sim.dtype).max)
    out = torch.einsum("b i j, b j d -> b i d", sim.softmax(dim=-1), v)
    return m.to_out(rearrange(out, "(b h) n d -> b n (h d)", h=h))


def test_cross_attention_matches_einsum_formula():
    torch.manual_seed(0)
    m = CrossAttention(query_dim=12, context_dim=6, heads=3, dim_head=5).eval()
    x, context = torch.randn(2, 7, 12), torch.randn(2, 4, 6)
    assert_close(m(x, context), _cross_attention_reference(m, x, context), "cross")
    mask = torch.tensor([[True, True, False, True], [True, False, False, False]])
    assert_close(m(x, context, mask=mask), _cross_attention_reference(m, x, context, mask), "masked")
    selfattn = CrossAttention(query_dim=12, heads=2, dim_head=4).eval()
    assert_close(selfattn(x), _cross_attention_reference(selfattn, x, x), "self")


def test_spatial_self_attention_matches_einsum_formula():
    torch.manual_seed(0)
    m = SpatialSelfAttention(32).eval()
    _randomize(m)
    x = torch.randn(2, 32, 3, 5)
    h_ = m.norm(x)
    q, k, v = m.q(h_), m.k(h_), m.v(h_)
    b, c, h, w = q.shape
    w_ = torch.einsum("bij,bjk->bik", rearrange(q, "b c h w -> b (h w) c"), rearrange(k, "b c h w -> b c (h w)"))
    w_ = torch.softmax(w_ * c ** -0.5, dim=2)
    ref = torch.einsum("bij,bjk->bik", rearrange(v, "b c h w -> b c (h w)"), rearrange(w_, "b i j -> b j i"))
    ref = x + m.proj_out(rearrange(ref, "b c (h w) -> b c h w", h=h))
    assert_close(m(x), ref, "spatial self-attention")


def test_spatial_transformer_normalizes_with_eps_1e6_and_keeps_conv_projections():
    m = SpatialTransformer(32, n_heads=2, d_head=8, context_dim=6)
    assert m.norm.eps == 1e-6 and m.norm.num_groups == 32
    assert isinstance(m.proj_in, torch.nn.Conv2d) and m.proj_in.weight.shape == (16, 32, 1, 1)
    assert torch.count_nonzero(m.proj_out.weight) == 0  # zero-initialized: the block starts as the identity
    x = torch.randn(2, 32, 4, 4)
    assert torch.equal(m(x, torch.randn(2, 3, 6)), x)


def _unet_with_random_weights(**overrides):
    torch.manual_seed(0)
    params = {**TINY, "num_heads": 2, "use_spatial_transformer": True, "context_dim": 16, "legacy": False,
              "dropout": 0.0, **overrides}
    m = UNetModel(**params)
    _randomize(m)
    return m


def _forward_and_grads(m, x, t, context):
    x = x.clone().requires_grad_(True)
    out = m(x, timesteps=t, context=context)
    grads = torch.autograd.grad(out.square().mean(), [x, *m.parameters()])
    return out.detach(), grads


def test_gradient_checkpointing_gives_the_same_output_and_gradients():
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.randn(2, 5, 16)
    plain = _unet_with_random_weights(use_checkpoint=False).train()
    ckpt = _unet_with_random_weights(use_checkpoint=True).train()
    out_p, grads_p = _forward_and_grads(plain, x, t, context)
    out_c, grads_c = _forward_and_grads(ckpt, x, t, context)
    assert out_p.abs().max() > 0
    assert_close(out_c, out_p, "out")
    for (name, _), gc, gp in zip(ckpt.named_parameters(), grads_c[1:], grads_p[1:]):
        assert_close(gc, gp, name)
    assert_close(grads_c[0], grads_p[0], "grad_x")


def _saved_bytes(m, x, t, context):
    """Bytes autograd keeps for the backward pass of one forward."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = m(x, timesteps=t, context=context)
    return total, out


def test_gradient_checkpointing_saves_fewer_activations():
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.randn(2, 5, 16)
    plain = _unet_with_random_weights(use_checkpoint=False).train()
    ckpt = _unet_with_random_weights(use_checkpoint=True).train()
    bytes_plain, _ = _saved_bytes(plain, x, t, context)
    bytes_ckpt, out = _saved_bytes(ckpt, x, t, context)
    assert bytes_ckpt < bytes_plain / 3, (bytes_ckpt, bytes_plain)
    out.square().mean().backward()  # the recomputation still yields gradients
    assert all(p.grad is not None for p in ckpt.parameters())
    # in eval mode the flag is a no-op: no recomputation machinery, same numbers
    ckpt.eval()
    plain.eval()
    with torch.no_grad():
        assert_close(ckpt(x, timesteps=t, context=context), plain(x, timesteps=t, context=context), "eval")


def test_resblock_checkpoint_keeps_only_its_inputs():
    torch.manual_seed(0)
    block = ResBlock(32, 64, dropout=0.0, out_channels=32, use_checkpoint=True).train()
    x, emb = torch.randn(2, 32, 8, 8, requires_grad=True), torch.randn(2, 64)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda tensor: saved.append(tensor) or tensor, lambda tensor: tensor):
        block(x, emb)
    # only the block's inputs are kept; every activation inside it is recomputed in the backward pass
    assert sorted(t.data_ptr() for t in saved) == sorted([x.data_ptr(), emb.data_ptr()])
    saved.clear()
    block.use_checkpoint = False
    with torch.autograd.graph.saved_tensors_hooks(lambda tensor: saved.append(tensor) or tensor, lambda tensor: tensor):
        block(x, emb)
    assert len(saved) > 5


def test_adm_unet_with_labels_scale_shift_and_resblock_updown():
    torch.manual_seed(0)
    m = UNetModel(image_size=8, in_channels=3, out_channels=6, model_channels=32, attention_resolutions=[2],
                  num_res_blocks=1, channel_mult=[1, 2, 2], num_heads=-1, num_head_channels=8,
                  use_scale_shift_norm=True, resblock_updown=True, num_classes=10, use_checkpoint=True)
    _randomize(m)
    attn = [mod for mod in m.modules() if isinstance(mod, AttentionBlock)]
    assert attn and all(a.num_heads == a.channels // 8 for a in attn)
    assert isinstance(m.input_blocks[2][0], ResBlock) and m.input_blocks[2][0].updown
    x = torch.randn(2, 3, 8, 8)
    out = m(x, timesteps=torch.tensor([1, 2]), y=torch.tensor([3, 4]))
    assert out.shape == (2, 6, 8, 8)
    other = m(x, timesteps=torch.tensor([1, 2]), y=torch.tensor([5, 4]))
    assert not torch.allclose(out[0], other[0]) and torch.allclose(out[1], other[1])
    with pytest.raises(ValueError, match="class-conditional"):
        m(x, timesteps=torch.tensor([1, 2]))


def test_legacy_head_rule_and_new_attention_order():
    legacy = UNetModel(**TINY, num_heads=4, legacy=True)
    heads = [mod.num_heads for mod in legacy.modules() if isinstance(mod, AttentionBlock)]
    assert heads and set(heads) == {4}
    new = UNetModel(**TINY, num_heads=4, legacy=False, use_new_attention_order=True)
    assert all(isinstance(mod.attention, QKVAttention) for mod in new.modules() if isinstance(mod, AttentionBlock))
    # legacy with a spatial transformer: d_head = ch // heads
    st = UNetModel(**TINY, num_head_channels=8, use_spatial_transformer=True, context_dim=16, legacy=True)
    blocks = [mod.transformer_blocks[0] for mod in st.modules() if isinstance(mod, SpatialTransformer)]
    assert all(b.attn1.heads * 8 == b.norm1.normalized_shape[0] for b in blocks)


def test_codebook_prediction_and_constructor_errors():
    m = UNetModel(**TINY, num_heads=2, n_embed=7)
    out = m(torch.randn(1, 4, 8, 8), timesteps=torch.tensor([5]))
    assert out.shape == (1, 7, 8, 8)
    with pytest.raises(ValueError, match="context_dim"):
        UNetModel(**TINY, num_heads=2, use_spatial_transformer=True)
    with pytest.raises(ValueError, match="use_spatial_transformer"):
        UNetModel(**TINY, num_heads=2, context_dim=16)
    with pytest.raises(ValueError, match="num_heads or num_head_channels"):
        UNetModel(**TINY)


def test_unet_1d_and_3d_and_fp16():
    m1 = UNetModel(image_size=8, in_channels=2, out_channels=2, model_channels=32, attention_resolutions=[2],
                   num_res_blocks=1, channel_mult=[1, 2], num_heads=2, dims=1)
    assert m1(torch.randn(2, 2, 8), timesteps=torch.tensor([0, 1])).shape == (2, 2, 8)
    m3 = UNetModel(image_size=8, in_channels=2, out_channels=2, model_channels=32, attention_resolutions=[],
                   num_res_blocks=1, channel_mult=[1, 2], num_heads=2, dims=3)
    assert m3(torch.randn(1, 2, 2, 8, 8), timesteps=torch.tensor([0])).shape == (1, 2, 2, 8, 8)
    half = UNetModel(**TINY, num_heads=2, use_fp16=True)
    assert half.input_blocks[0][0].weight.dtype == torch.float16 and half.time_embed[0].weight.dtype == torch.float32
    half.convert_to_fp32()
    assert half.dtype == torch.float32 and half.input_blocks[0][0].weight.dtype == torch.float32


@pytest.mark.parametrize("pool", ["adaptive", "attention", "spatial", "spatial_v2"])
def test_encoder_unet_pools(pool):
    torch.manual_seed(0)
    m = EncoderUNetModel(image_size=8, in_channels=3, model_channels=32, out_channels=5, num_res_blocks=1,
                         attention_resolutions=[2], channel_mult=[1, 2], num_head_channels=16, pool=pool)
    _randomize(m)
    out = m(torch.randn(2, 3, 8, 8), timesteps=torch.tensor([1, 900]))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_encoder_unet_rejects_unknown_pool():
    with pytest.raises(ValueError, match="pool must be one of"):
        EncoderUNetModel(image_size=8, in_channels=3, model_channels=32, out_channels=5, num_res_blocks=1,
                         attention_resolutions=[2], pool="max")


MANIFEST_SUBMODULES = [
    ("configs__latent-diffusion__cin256-v2", "unet_config", "model.diffusion_model."),
    ("configs__latent-diffusion__txt2img-1p4B-eval", "unet_config", "model.diffusion_model."),
    ("configs__latent-diffusion__txt2img-1p4B-eval", "cond_stage_config", "cond_stage_model."),
    ("configs__retrieval-augmented-diffusion__768x768", "unet_config", "model.diffusion_model."),
    ("models__ldm__bsr_sr__config", "unet_config", "model.diffusion_model."),
    ("models__ldm__cin256__config", "unet_config", "model.diffusion_model."),
    ("models__ldm__cin256__config", "cond_stage_config", "cond_stage_model."),
    ("models__ldm__semantic_synthesis256__config", "cond_stage_config", "cond_stage_model."),
]


@pytest.mark.parametrize("manifest,sub,prefix", MANIFEST_SUBMODULES, ids=[f"{m}-{s}" for m, s, _ in MANIFEST_SUBMODULES])
def test_submodule_keys_match_manifest(manifest, sub, prefix):
    """The U-Net / cond-stage of full-size original configs, built on the meta device, has the checkpoint's keys."""
    import json

    from omegaconf import OmegaConf

    from conftest import REPO, require_parity

    expected = json.loads((require_parity() / "manifests" / f"{manifest}.json").read_text())
    config = OmegaConf.load(REPO / expected["config"]).model.params[sub]
    with torch.device("meta"):
        module = instantiate_from_config(config)
    ours = {k: list(v.shape) for k, v in module.state_dict().items()}
    ref = {k[len(prefix):]: v for k, v in expected["keys"].items() if k.startswith(prefix)}
    assert sorted(set(ref) - set(ours)) == [] and sorted(set(ours) - set(ref)) == []
    assert ours == ref


def _ops_run(fn):
    """Names of the aten ops that ``fn()`` runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {event.name for event in prof.events()}


@pytest.mark.parametrize("legacy_order", [True, False])
def test_attention_blocks_use_a_fused_kernel_not_the_math_fallback(legacy_order):
    """The fused kernels never build the (tokens x tokens) matrix; the math fallback does."""
    torch.manual_seed(0)
    block = AttentionBlock(64, num_head_channels=16, use_new_attention_order=not legacy_order).eval()
    transformer = SpatialTransformer(32, n_heads=2, d_head=16, context_dim=8).eval()
    x, x2, context = torch.randn(2, 64, 8, 8), torch.randn(2, 32, 8, 8), torch.randn(2, 5, 8)
    with torch.no_grad():
        ops = _ops_run(lambda: (block(x), transformer(x2, context)))
    assert not any("attention_math" in name for name in ops), sorted(ops)
    assert any("flash_attention" in name or "efficient_attention" in name for name in ops), sorted(ops)


def test_channels_last_gives_the_same_numbers_and_keeps_through_assign_loading():
    m = _unet_with_random_weights().eval()
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.randn(2, 5, 16)
    assert m.channels_last and m.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out_cl = m(x, timesteps=t, context=context)
        m.use_channels_last(False)
        assert m.input_blocks[0][0].weight.is_contiguous()
        out_plain = m(x, timesteps=t, context=context)
    assert out_cl.is_contiguous() and out_plain.abs().max() > 0
    assert_close(out_cl, out_plain, "channels-last vs contiguous")
    # weights assigned from a (contiguous) state dict are put back in the model's format
    m.use_channels_last(True)
    state = {k: v.contiguous() for k, v in m.state_dict().items()}
    m.load_state_dict(state, assign=True)
    assert m.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)


def test_feed_forward_in_chunks_at_inference_gives_the_same_tokens(monkeypatch):
    """Under no_grad a long token sequence runs through the feed-forward layer in chunks: same outputs."""
    import ldm.modules.attention as attention_module
    from ldm.modules.attention import FeedForward

    torch.manual_seed(0)
    ff = FeedForward(16, glu=True).eval()
    x = torch.randn(2, 50, 16)
    with torch.no_grad():
        whole = ff(x)
        monkeypatch.setattr(attention_module, "FEED_FORWARD_CHUNK", 7)  # 100 tokens in 15 chunks
        chunked = ff(x)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-7)
    assert chunked.shape == whole.shape == (2, 50, 16)
    y = ff(x)  # with gradients: one pass, so that backward sees the usual graph
    assert y.grad_fn is not None and y.grad_fn.name() != "CatBackward0"


@pytest.mark.parametrize("kernel,stride,padding,bias", [(3, 1, 1, True), (3, 2, 1, True), (3, 1, 0, False),
                                                         (1, 1, 0, True), ((3, 1), (2, 1), (1, 0), True)])
def test_conv2d_as_gemm_matches_the_convolution_forward_and_backward(kernel, stride, padding, bias):
    from ldm.modules.fastpaths import conv2d_as_gemm

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, kernel, stride=stride, padding=padding, bias=bias).to(memory_format=torch.channels_last)
    x = torch.randn(2, 6, 7, 5).contiguous(memory_format=torch.channels_last)
    grads = []
    for fn in (conv, lambda t: conv2d_as_gemm(t, conv.weight, conv.bias, conv.stride, conv.padding)):
        xi = x.clone().requires_grad_(True)
        out = fn(xi)
        params = [xi, *conv.parameters()]
        grads.append((out, torch.autograd.grad(out.square().sum(), params)))
    (ref, ref_grads), (out, out_grads) = grads
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for g, r in zip(out_grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


def test_conv2d_runs_as_gemm_only_for_large_weights_on_small_float32_maps():
    from ldm.modules.fastpaths import Conv2d

    with torch.device("meta"):  # the decision needs shapes only
        big = Conv2d(1280, 1280, 3, padding=1).to(memory_format=torch.channels_last)
        down = Conv2d(1280, 1280, 3, stride=2, padding=1).to(memory_format=torch.channels_last)
        small = Conv2d(640, 640, 3, padding=1).to(memory_format=torch.channels_last)
        plain = Conv2d(1280, 1280, 3, padding=1)
    assert big._as_gemm(torch.empty(2, 1280, 8, 8)) and big._as_gemm(torch.empty(2, 1280, 4, 4))
    assert not big._as_gemm(torch.empty(2, 1280, 16, 16))  # 512 positions: oneDNN
    assert down._as_gemm(torch.empty(2, 1280, 16, 16))  # 128 output positions
    assert not small._as_gemm(torch.empty(2, 640, 8, 8))
    assert not plain._as_gemm(torch.empty(2, 1280, 8, 8))  # a contiguous-format weight would be copied
    assert not big._as_gemm(torch.empty(2, 1280, 8, 8, dtype=torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not big._as_gemm(torch.empty(2, 1280, 8, 8))


@pytest.fixture
def every_convolution_as_gemm(monkeypatch):
    """Every 2-D convolution of the U-Net runs as one GEMM; returns the list that counts those calls."""
    from ldm.modules import fastpaths

    monkeypatch.setattr(fastpaths, "GEMM_CONV_MIN_WEIGHT", 0)
    monkeypatch.setattr(fastpaths, "GEMM_CONV_MAX_POSITIONS", 1 << 30)
    calls = []
    as_gemm = fastpaths.conv2d_as_gemm
    monkeypatch.setattr(fastpaths, "conv2d_as_gemm", lambda *a: calls.append(1) or as_gemm(*a))
    return calls


@pytest.mark.parametrize("name", ["unet_crossattn", "unet_adm_scale_shift"])
def test_unet_parity_with_every_convolution_as_gemm(name, every_convolution_as_gemm):
    """The golden outputs and input gradients of the original hold when every 2-D convolution is one GEMM."""
    test_unet_parity(name)
    assert len(every_convolution_as_gemm) > 0


def test_dense_matches_linear_at_inference_and_keeps_gradients():
    from ldm.modules import fastpaths

    torch.manual_seed(0)
    layer = fastpaths.Linear(24, 40)
    x = torch.randn(3, 7, 24)
    ref = torch.nn.functional.linear(x, layer.weight, layer.bias)
    with torch.no_grad():
        out = layer(x)
        out_t = fastpaths.dense(torch.randn(3, 24, 7).transpose(1, 2), layer.weight)  # a strided input, no bias
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert out.shape == (3, 7, 40) and out_t.shape == (3, 7, 40)
    y = layer(x)  # with gradients: F.linear, whose backward runs
    assert torch.equal(y, ref)
    y.square().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert list(layer.state_dict()) == ["weight", "bias"]


@pytest.mark.parametrize("name", ["unet_crossattn", "unet_adm_scale_shift"])
def test_unet_parity_at_inference_with_the_fast_paths(name, monkeypatch, every_convolution_as_gemm):
    """Under no_grad (oneDNN matrix products, every 2-D convolution a GEMM) the golden outputs hold."""
    from ldm.modules import fastpaths

    calls = []
    fast = fastpaths.onednn_linear()
    if fast is not None:
        monkeypatch.setattr(fastpaths, "onednn_linear", lambda: lambda *a: calls.append(1) or fast(*a))
    case = load_case(name)
    m = instantiate_from_config(case["config"])
    m.load_state_dict(case["state_dict"], strict=True)
    m.eval()
    inputs = case["inputs"]
    extra = {k: inputs[k] for k in ("context", "y") if k in inputs}
    with torch.no_grad():
        out = m(inputs["x"], timesteps=inputs["timesteps"], **extra)
    assert_close(out, case["outputs"]["out"], f"{name}/out")
    assert (fast is None or len(calls) > 0) and len(every_convolution_as_gemm) > 0
