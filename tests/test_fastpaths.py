"""The CPU fast paths (`ldm.modules.fastpaths`): the `LDM_FAST_PATHS` switch, the self-test of the internal oneDNN
op with its one warning and plain fallback, and the memory format the switch chooses."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules import attention, fastpaths
from ldm.modules.diffusionmodules.openaimodel import UNetModel


@pytest.fixture
def fresh_self_test():
    """The internal op is looked up and self-tested again on its next use, and again after the test."""
    fastpaths.onednn_linear.cache_clear()
    yield
    fastpaths.onednn_linear.cache_clear()


@pytest.fixture
def every_convolution_as_gemm(monkeypatch):
    """Every 2-D convolution qualifies for the GEMM path, whatever its size."""
    monkeypatch.setattr(fastpaths, "GEMM_CONV_MIN_WEIGHT", 0)
    monkeypatch.setattr(fastpaths, "GEMM_CONV_MAX_POSITIONS", 1 << 30)


def _tiny_unet() -> UNetModel:
    torch.manual_seed(0)
    m = UNetModel(image_size=8, in_channels=4, model_channels=32, out_channels=4, num_res_blocks=1,
                  attention_resolutions=[2], channel_mult=[1, 2], num_heads=2, use_spatial_transformer=True,
                  context_dim=16, legacy=False).eval()
    with torch.no_grad():
        for p in m.parameters():  # random, so that the zero-initialized output layers pass something on
            p.normal_(0.0, 0.1)
    return m


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([3, 700]), torch.randn(2, 5, 16,
                                                                                              generator=generator)


def _plain_output(m: UNetModel, monkeypatch) -> torch.Tensor:
    """The output of a copy of ``m`` whose layers are ``nn.Conv2d``/``nn.Linear`` and whose 1x1 token
    projections are ``F.linear``."""
    plain = copy.deepcopy(m)
    for module in plain.modules():
        if isinstance(module, fastpaths.Conv2d):
            module.__class__ = nn.Conv2d
        elif isinstance(module, fastpaths.Linear):
            module.__class__ = nn.Linear
    x, t, context = _inputs()
    with monkeypatch.context() as patch, torch.no_grad():
        patch.setattr(attention, "dense", F.linear)
        return plain(x, timesteps=t, context=context)


def test_switch_off_gives_the_outputs_of_plain_linear_and_conv2d(monkeypatch, every_convolution_as_gemm):
    def forbidden(*args):
        raise AssertionError("a fast path ran with LDM_FAST_PATHS=0")

    monkeypatch.setenv(fastpaths.SWITCH, "0")
    monkeypatch.setattr(fastpaths, "conv2d_as_gemm", forbidden)
    monkeypatch.setattr(fastpaths, "onednn_linear", forbidden)
    m = _tiny_unet()
    assert m.channels_last and all(p.is_contiguous() for p in m.parameters())  # asked for, but off
    x, t, context = _inputs()
    with torch.no_grad():
        out = m(x, timesteps=t, context=context)
    ref = _plain_output(m, monkeypatch)
    assert out.abs().max() > 0 and torch.equal(out, ref)


def test_switch_on_takes_the_fast_paths_with_the_same_numbers(monkeypatch, every_convolution_as_gemm):
    monkeypatch.setenv(fastpaths.SWITCH, "1")
    gemm_calls, onednn_calls = [], []
    as_gemm, op = fastpaths.conv2d_as_gemm, fastpaths.onednn_linear()
    monkeypatch.setattr(fastpaths, "conv2d_as_gemm", lambda *a: gemm_calls.append(1) or as_gemm(*a))
    if op is not None:
        monkeypatch.setattr(fastpaths, "onednn_linear", lambda: lambda *a: onednn_calls.append(1) or op(*a))
    m = _tiny_unet()
    assert m.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    x, t, context = _inputs()
    with torch.no_grad():
        out = m(x, timesteps=t, context=context)
    assert len(gemm_calls) > 0 and (op is None or len(onednn_calls) > 0)
    torch.testing.assert_close(out, _plain_output(m, monkeypatch), rtol=1e-5, atol=1e-5)


def _lost_its_fusion_arguments(x, weight, bias):
    return F.linear(x, weight, bias)


def _other_numbers(x, weight, bias, attr, scalars, algorithm):
    return F.linear(x, weight, bias) * 1.01


def _raises(*args):
    raise RuntimeError("mkldnn::_linear_pointwise() is not implemented for these arguments")


@pytest.mark.parametrize("op,reason", [(None, "missing"), (_lost_its_fusion_arguments, "raised TypeError"),
                                       (_other_numbers, "differs from F.linear"), (_raises, "raised RuntimeError")])
def test_a_changed_internal_op_warns_once_and_leaves_f_linear(op, reason, monkeypatch, fresh_self_test):
    monkeypatch.setenv(fastpaths.SWITCH, "1")
    monkeypatch.setattr(fastpaths, "_lookup_onednn_linear", lambda: op)
    torch.manual_seed(0)
    layer = fastpaths.Linear(8, 6)
    x = torch.randn(4, 3, 8)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        outs = [layer(x) for _ in range(3)]
        out_no_bias = fastpaths.dense(x, layer.weight)
    assert len(caught) == 1 and caught[0].category is RuntimeWarning
    assert fastpaths.ONEDNN_LINEAR in str(caught[0].message) and reason in str(caught[0].message)
    ref = F.linear(x, layer.weight, layer.bias)
    assert all(torch.equal(out, ref) for out in outs)
    assert torch.equal(out_no_bias, F.linear(x, layer.weight))


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
def test_the_internal_op_of_this_torch_passes_its_self_test_and_keeps_the_random_state(fresh_self_test):
    state = torch.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert fastpaths.onednn_linear() is not None
    assert torch.equal(torch.get_rng_state(), state)


def test_the_switch_is_read_at_each_call_and_its_value_checked(monkeypatch):
    lookups = []
    op = _other_numbers  # any op with the signature: the lookups are what is counted
    monkeypatch.setattr(fastpaths, "onednn_linear", lambda: lookups.append(1) or op)
    layer, x = fastpaths.Linear(8, 6), torch.randn(4, 8)
    with torch.no_grad():
        for value in ("1", "0", None):
            if value is None:
                monkeypatch.delenv(fastpaths.SWITCH, raising=False)
            else:
                monkeypatch.setenv(fastpaths.SWITCH, value)
            layer(x)
    assert len(lookups) == 2  # on, off, on by default
    assert fastpaths.memory_format(True) is torch.channels_last
    assert fastpaths.memory_format(False) is torch.contiguous_format
    monkeypatch.setenv(fastpaths.SWITCH, "off")
    with pytest.raises(ValueError, match="LDM_FAST_PATHS must be one of 0, 1; got 'off'"):
        fastpaths.enabled()
