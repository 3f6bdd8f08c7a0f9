"""First-stage losses: parity with the original (LPIPS + PatchGAN with KL or VQ regularizer), the
discriminator losses, the adaptive weight and option validation."""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from conftest import assert_close, load_case
from ldm.modules.losses import LPIPSWithDiscriminator, VQLPIPSWithDiscriminator
from ldm.modules.losses.discriminator import ActNorm, NLayerDiscriminator
from ldm.modules.losses.vqperceptual import adopt_weight, hinge_d_loss, measure_perplexity, vanilla_d_loss
from ldm.util import instantiate_from_config

VGG_PREFIX = "loss.perceptual_loss.net."


def _vgg_fill(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parity cases' stand-in for the VGG16 weights: the i-th net key in sorted order gets
    randn(shape, generator seeded i) * sqrt(2 / fan_in) (fan_in of a bias: its length)."""
    own = model.state_dict()
    filled = {}
    for i, key in enumerate(sorted(k for k in own if k.startswith(VGG_PREFIX))):
        shape = own[key].shape
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
        filled[key] = torch.randn(shape, generator=torch.Generator().manual_seed(i)) * math.sqrt(2 / fan_in)
    return filled


def _build_loss_case(name: str) -> tuple[torch.nn.Module, dict]:
    case = load_case(name)
    assert "sqrt(2 / fan_in)" in case["vgg_fill"]  # the rule _vgg_fill implements
    m = instantiate_from_config(OmegaConf.create(case["config"]))
    result = m.load_state_dict(case["state_dict"], strict=False)
    expected_missing = {k for k in m.state_dict() if k.startswith(VGG_PREFIX)}
    assert len(expected_missing) == 26
    assert set(result.missing_keys) == expected_missing
    assert result.unexpected_keys == []
    assert m.loss.perceptual_loss.pending_pretrained == {"net"}  # the heads came with the state dict
    result = m.load_state_dict(_vgg_fill(m), strict=False)
    assert result.unexpected_keys == [] and not any(k.startswith(VGG_PREFIX) for k in result.missing_keys)
    assert m.loss.perceptual_loss.pending_pretrained == set()  # nothing left to read from files
    m.train()
    m.loss.perceptual_loss.eval()
    return m, case


def _check_outputs(case: dict, aeloss, log_ae, discloss, log_disc) -> None:
    out = case["outputs"]
    assert_close(aeloss, out["aeloss"], "aeloss")
    assert_close(discloss, out["discloss"], "discloss")
    logged = {**log_ae, **log_disc}
    expected_log = {k[len("log/"):] for k in out if k.startswith("log/")}
    assert set(logged) == expected_log, f"log keys differ: {sorted(set(logged) ^ expected_log)}"
    for key in expected_log:
        assert_close(logged[key], out[f"log/{key}"], key)


def test_loss_kl_lpips_disc_parity():
    m, case = _build_loss_case("loss_kl_lpips_disc")
    x, step = case["inputs"]["x"], case["inputs"]["global_step"]
    xrec, post = m(x, sample_posterior=False)
    aeloss, log_ae = m.loss(x, xrec, post, 0, step, last_layer=m.get_last_layer(), split="train")
    discloss, log_disc = m.loss(x, xrec, post, 1, step, last_layer=m.get_last_layer(), split="train")
    _check_outputs(case, aeloss, log_ae, discloss, log_disc)


def test_loss_vq_lpips_disc_parity():
    m, case = _build_loss_case("loss_vq_lpips_disc")
    x, step = case["inputs"]["x"], case["inputs"]["global_step"]
    xrec, qloss = m(x)
    aeloss, log_ae = m.loss(qloss, x, xrec, 0, step, last_layer=m.get_last_layer(), split="train")
    discloss, log_disc = m.loss(qloss, x, xrec, 1, step, last_layer=m.get_last_layer(), split="train")
    _check_outputs(case, aeloss, log_ae, discloss, log_disc)


def _tiny_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    last = torch.nn.Parameter(torch.randn(3, 3, 1, 1, generator=g))
    xrec = torch.nn.functional.conv2d(x, last)  # a "decoder" whose last layer is `last`
    return x, xrec, last


def _lpips_free_vq(**kw) -> VQLPIPSWithDiscriminator:
    kw = {"disc_start": 0, "perceptual_weight": 0.0, "disc_ndf": 8, **kw}
    return VQLPIPSWithDiscriminator(**kw)


def test_discriminator_losses_and_adopt_weight():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.25 + 0.5))
    expected = 0.5 * (torch.nn.functional.softplus(-real).mean() + torch.nn.functional.softplus(fake).mean())
    assert vanilla_d_loss(real, fake).item() == pytest.approx(expected.item())
    assert adopt_weight(1.0, 4, threshold=5) == 0.0 and adopt_weight(1.0, 5, threshold=5) == 1.0
    perplexity, used = measure_perplexity(torch.tensor([0, 1, 2, 3]), 8)
    assert perplexity.item() == pytest.approx(4.0) and used.item() == 4


def test_adaptive_weight_and_gan_switch():
    loss = _lpips_free_vq(disc_weight=0.5)
    x, xrec, last = _tiny_inputs()
    total, log = loss(torch.tensor(0.1), x, xrec, 0, 0, last_layer=last)
    nll = torch.abs(x - xrec).mean()
    g_loss = -loss.discriminator(xrec).mean()
    gn = torch.autograd.grad(nll, last, retain_graph=True)[0].norm()
    gg = torch.autograd.grad(g_loss, last, retain_graph=True)[0].norm()
    assert_close(log["train/d_weight"], (gn / (gg + 1e-4)).clamp(0, 1e4) * 0.5, "d_weight")
    assert_close(total, nll + log["train/d_weight"] * g_loss + 0.1, "total")
    # before disc_start the GAN terms are off
    late = _lpips_free_vq(disc_start=10)
    late.load_state_dict(loss.state_dict())
    total_late, log_late = late(torch.tensor(0.1), x, xrec, 0, 3, last_layer=last)
    assert log_late["train/disc_factor"].item() == 0.0
    assert_close(total_late, nll + 0.1, "total before disc_start")
    d_loss, _ = late(None, x, xrec, 1, 3)
    assert d_loss.item() == 0.0


def test_adaptive_weight_without_graph():
    loss = LPIPSWithDiscriminator(disc_start=0, perceptual_weight=0.0)
    from ldm.modules.distributions.distributions import DiagonalGaussianDistribution

    x, xrec, last = _tiny_inputs()
    post = DiagonalGaussianDistribution(torch.zeros(2, 8, 4, 4))
    loss.eval()
    with torch.no_grad():  # validation: no graph, the adaptive weight is 0
        _, log = loss(x, xrec, post, 0, 0, last_layer=last, split="val")
    assert log["val/d_weight"].item() == 0.0
    assert set(log) == {f"val/{k}" for k in ("total_loss", "logvar", "kl_loss", "nll_loss", "rec_loss", "d_weight",
                                             "disc_factor", "g_loss")}
    loss.train()
    with torch.no_grad(), pytest.raises(RuntimeError):  # in training a missing graph is an error
        loss(x, xrec, post, 0, 0, last_layer=last)


def test_vq_loss_options():
    x, xrec, last = _tiny_inputs()
    l2 = _lpips_free_vq(pixel_loss="l2", disc_factor=0.0)
    total, log = l2(torch.tensor(0.0), x, xrec, 0, 0, last_layer=last)
    assert_close(log["train/rec_loss"], ((x - xrec) ** 2).mean(), "l2 rec_loss")
    with_classes = _lpips_free_vq(n_classes=16)
    _, log = with_classes(torch.tensor(0.0), x, xrec, 0, 0, last_layer=last,
                          predicted_indices=torch.tensor([1, 1, 2, 3]))
    assert "train/perplexity" in log and log["train/cluster_usage"].item() == 3
    for bad, match in ((dict(disc_loss="wgan"), "disc_loss must be one of"),
                       (dict(pixel_loss="l3"), "pixel_loss must be one of"),
                       (dict(perceptual_loss="dists"), "perceptual_loss must be 'lpips'")):
        with pytest.raises(ValueError, match=match):
            _lpips_free_vq(**bad)
    with pytest.raises(ValueError, match="optimizer_idx"):
        with_classes(None, x, xrec, 2, 0)


def test_conditional_discriminator():
    loss = _lpips_free_vq(disc_conditional=True, disc_in_channels=4)
    x, xrec, last = _tiny_inputs()
    cond = torch.zeros(2, 1, 32, 32)
    d_loss, log = loss(None, x, xrec, 1, 0, cond=cond)
    assert set(log) == {"train/disc_loss", "train/logits_real", "train/logits_fake"} and d_loss.item() > 0
    with pytest.raises(ValueError, match="pass cond"):
        loss(None, x, xrec, 1, 0)


def test_patchgan_keys_and_actnorm():
    disc = NLayerDiscriminator(input_nc=3, ndf=8, n_layers=3)
    assert [k for k in disc.state_dict() if k.endswith("weight")] == [
        "main.0.weight", "main.2.weight", "main.3.weight", "main.5.weight", "main.6.weight", "main.8.weight",
        "main.9.weight", "main.11.weight"]
    assert "main.2.bias" not in disc.state_dict()  # no conv bias before BatchNorm
    act = NLayerDiscriminator(input_nc=3, ndf=8, n_layers=2, use_actnorm=True)
    assert "main.2.bias" in act.state_dict() and "main.3.initialized" in act.state_dict()
    norm = ActNorm(4)
    x = torch.randn(8, 4, 5, 5, generator=torch.Generator().manual_seed(0)) * 3 + 2
    y = norm(x)  # data-dependent init on the first training batch
    assert norm.initialized.item() == 1
    assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(4), "ActNorm mean")
    assert_close(norm.reverse(y), x.detach(), "ActNorm reverse")
