"""First-stage autoencoders: parity with the original on small models, building blocks, and a short
Lightning training run of both optimizer phases on CPU."""
from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from conftest import assert_close, load_case, load_case_model
from ldm.models.autoencoder import AutoencoderKL, IdentityFirstStage, VQModel, VQModelInterface
from ldm.modules.diffusionmodules import model as blocks
from ldm.util import instantiate_from_config


def _kl_outputs(m: AutoencoderKL, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the ``autoencoder_kl`` case stores for the input ``x``."""
    post = m.encode(x)
    return {"mean": post.mean, "std": post.std, "dec_of_mode": m.decode(post.mode()),
            "forward_no_sample": m(x, sample_posterior=False)[0], "kl": post.kl()}


def _vq_outputs(m: VQModel, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the ``autoencoder_vq`` case stores for the input ``x`` (``indices`` are integers: must be equal)."""
    quant, emb_loss, (_, _, indices) = m.encode(x)
    dec = m.decode(quant)
    forward_dec, forward_diff = m(x)
    return {"indices": indices, "quant": quant, "emb_loss": emb_loss, "dec": dec, "forward_dec": forward_dec,
            "forward_diff": forward_diff}


@pytest.mark.parametrize("name, outputs_of", [("autoencoder_kl", _kl_outputs), ("autoencoder_vq", _vq_outputs)])
def test_autoencoder_parity(name, outputs_of):
    m, case = load_case_model(name)
    with torch.no_grad():
        ours = outputs_of(m, case["inputs"]["x"])
    for key, value in ours.items():
        assert_close(value, case["outputs"][key], key)


def test_vq_interface_quantizes_in_decode_and_decode_code_matches():
    case = load_case("autoencoder_vq")
    cfg = dict(case["config"], target="ldm.models.autoencoder.VQModelInterface")
    m = instantiate_from_config(OmegaConf.create(cfg))
    assert isinstance(m, VQModelInterface)
    m.load_state_dict(case["state_dict"], strict=True)
    m.eval()
    x = case["inputs"]["x"]
    with torch.no_grad():
        h = m.encode(x)  # pre-quantization latents
        assert h.shape == (2, 4, 8, 8)
        assert_close(m.decode(h), case["outputs"]["dec"], "decode(quantize(h))")
        assert not torch.allclose(m.decode(h, force_not_quantize=True), m.decode(h))
        codes = case["outputs"]["indices"].reshape(2, 8, 8)
        assert_close(VQModel.decode_code(m, codes), case["outputs"]["dec"], "decode_code")


def test_identity_first_stage():
    x = torch.randn(2, 3, 4, 4)
    ident = IdentityFirstStage(vq_interface=True)
    assert ident.encode(x) is x and ident.decode(x) is x and ident(x) is x
    assert ident.quantize(x)[0] is x
    assert IdentityFirstStage().quantize(x) is x


def test_blocks_shapes_and_errors():
    down = blocks.Downsample(32, with_conv=True)
    assert down(torch.randn(1, 32, 9, 9)).shape == (1, 32, 4, 4)  # right/bottom padding: floor((9+1-3)/2)+1
    assert blocks.Downsample(32, with_conv=False)(torch.randn(1, 32, 8, 8)).shape == (1, 32, 4, 4)
    assert blocks.Upsample(32, with_conv=True)(torch.randn(1, 32, 4, 4)).shape == (1, 32, 8, 8)
    with pytest.raises(ValueError, match="attn_type must be one of"):
        blocks.make_attn(32, attn_type="flash")
    lin = blocks.make_attn(32, attn_type="linear")
    assert isinstance(lin, blocks.LinAttnBlock)
    assert sorted(lin.state_dict()) == ["to_out.bias", "to_out.weight", "to_qkv.weight"]
    assert isinstance(blocks.make_attn(32, attn_type="none"), torch.nn.Identity)
    dec = blocks.Decoder(ch=32, out_ch=3, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), in_channels=3,
                         resolution=16, z_channels=4, give_pre_end=True)
    assert dec(torch.randn(1, 4, 8, 8)).shape == (1, 32, 16, 16)


def test_attention_block_matches_explicit_softmax():
    torch.manual_seed(0)
    block = blocks.AttnBlock(32).eval()
    x = torch.randn(2, 32, 5, 3)
    h = block.norm(x)
    q, k, v = (conv(h).reshape(2, 32, 15) for conv in (block.q, block.k, block.v))
    w = torch.softmax(torch.bmm(q.permute(0, 2, 1), k) / math.sqrt(32), dim=2)  # (B, HW_q, HW_k)
    ref = x + block.proj_out(torch.bmm(v, w.permute(0, 2, 1)).reshape(2, 32, 5, 3))
    assert_close(block(x), ref.detach(), "AttnBlock")


def test_pixel_unet_model_with_timesteps():
    net = blocks.Model(ch=32, out_ch=3, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), in_channels=3,
                       resolution=16)
    out = net(torch.randn(2, 3, 16, 16), t=torch.tensor([1, 500]))
    assert out.shape == (2, 3, 16, 16)
    assert net.get_last_layer() is net.conv_out.weight
    with pytest.raises(ValueError, match="pass t"):
        net(torch.randn(2, 3, 16, 16))
    emb = blocks.get_timestep_embedding(torch.tensor([0, 3]), 7)
    assert emb.shape == (2, 7) and torch.all(emb[:, -1] == 0) and torch.all(emb[0, :3] == 0)


# ---------------------------------------------------------------------------------------------- training

DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
            "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}


class _Images(torch.utils.data.Dataset):
    def __init__(self, n: int = 4):
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 32, 32, 3, generator=g) * 2 - 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i]}


def _fill_lpips(lpips: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(v.shape, generator=g).abs() * 0.05 for k, v in lpips.state_dict().items()}
    lpips.load_state_dict(sd)  # supplies every weight, so nothing is read from files


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _changed(before: dict, module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v.detach()) for k, v in module.named_parameters())


def _fit(model: pl.LightningModule, batches: int = 1) -> pl.Trainer:
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=2, limit_train_batches=batches, limit_val_batches=1,
                         num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    loader = DataLoader(_Images(), batch_size=2)
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=DataLoader(_Images(2), batch_size=2))
    return trainer


def test_vq_model_ema_updates_once_per_optimizer_step():
    """With gradients summed over 2 batches, 4 batches are 2 optimizer steps and 2 EMA updates."""
    torch.manual_seed(0)
    lossconfig = {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                  "params": {"disc_start": 0, "perceptual_weight": 0.0, "disc_num_layers": 2, "disc_ndf": 16}}
    model = VQModel(ddconfig=dict(DDCONFIG, double_z=False), lossconfig=lossconfig, n_embed=16, embed_dim=4,
                    use_ema=True, learning_rate=1e-3, accumulate_grad_batches=2)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=4, limit_val_batches=0,
                         num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, train_dataloaders=DataLoader(_Images(8), batch_size=2))
    assert int(model.model_ema.num_updates) == 2


def test_autoencoder_kl_trains_both_phases():
    torch.manual_seed(0)
    lossconfig = {"target": "ldm.modules.losses.LPIPSWithDiscriminator",
                  "params": {"disc_start": 0, "kl_weight": 1e-6, "disc_weight": 0.5, "perceptual_weight": 0.0}}
    model = AutoencoderKL(ddconfig=DDCONFIG, lossconfig=lossconfig, embed_dim=4, monitor="val/rec_loss",
                          learning_rate=1e-3, accumulate_grad_batches=2)
    assert model.automatic_optimization is False
    enc, disc, logvar = _snapshot(model.encoder), _snapshot(model.loss.discriminator), model.loss.logvar.clone()
    trainer = _fit(model, batches=2)  # gradients of 2 batches, then one step of each optimizer
    assert trainer.global_step == 2  # Lightning counts both optimizer steps
    assert model.batch_step == 1
    assert _changed(enc, model.encoder), "the autoencoder was not updated"
    assert _changed(disc, model.loss.discriminator), "the discriminator was not updated"
    assert torch.equal(model.loss.logvar.detach(), logvar)  # as in the original, logvar is in no optimizer
    metrics = trainer.callback_metrics
    for key in ("aeloss", "discloss", "train/rec_loss", "train/disc_loss", "val/rec_loss", "val/logits_fake"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert all(p.requires_grad for p in model.encoder.parameters())  # untoggled after the step


def test_vq_model_trains_both_phases_with_lpips_and_ema():
    torch.manual_seed(0)
    ddconfig = dict(DDCONFIG, double_z=False)
    lossconfig = {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                  "params": {"disc_start": 0, "disc_weight": 0.75, "codebook_weight": 1.0, "disc_num_layers": 2,
                             "disc_ndf": 16}}
    model = VQModel(ddconfig=ddconfig, lossconfig=lossconfig, n_embed=16, embed_dim=4, use_ema=True,
                    learning_rate=1e-3, monitor="val/rec_loss")
    _fill_lpips(model.loss.perceptual_loss)
    dec, disc, ema = _snapshot(model.decoder), _snapshot(model.loss.discriminator), model.model_ema.state_dict()
    ema = {k: v.clone() for k, v in ema.items()}
    trainer = _fit(model)
    assert _changed(dec, model.decoder), "the autoencoder was not updated"
    assert _changed(disc, model.loss.discriminator), "the discriminator was not updated"
    assert any(not torch.equal(ema[k], v) for k, v in model.model_ema.state_dict().items()), "EMA not updated"
    metrics = trainer.callback_metrics
    for key in ("train/p_loss", "train/quant_loss", "train/disc_loss", "val/rec_loss", "val/aeloss",
                "val_ema/rec_loss", "val_ema/aeloss"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert metrics["train/p_loss"] > 0


def test_vq_model_scheduler_and_lr_factor():
    lossconfig = {"target": "torch.nn.Identity"}
    model = VQModel(ddconfig=dict(DDCONFIG, double_z=False), lossconfig=lossconfig, n_embed=8, embed_dim=4,
                    lr_g_factor=2.0, learning_rate=1e-4,
                    scheduler_config={"target": "ldm.lr_scheduler.LambdaLinearScheduler",
                                      "params": {"warm_up_steps": [10], "cycle_lengths": [100], "f_start": [0.1],
                                                 "f_max": [1.0], "f_min": [1.0]}})
    model.loss = torch.nn.Module()  # configure_optimizers only needs loss.discriminator
    model.loss.discriminator = torch.nn.Conv2d(3, 1, 1)
    (opt_ae, opt_disc), schedulers = model.configure_optimizers()
    assert opt_ae.defaults["lr"] == pytest.approx(2e-4) and opt_disc.defaults["lr"] == pytest.approx(1e-4)
    assert opt_ae.defaults["betas"] == (0.5, 0.9)
    assert [s["interval"] for s in schedulers] == ["step", "step"]
    assert opt_ae.param_groups[0]["lr"] == pytest.approx(2e-5)  # warm-up starts at f_start


def test_get_input_and_errors():
    model = AutoencoderKL(ddconfig=DDCONFIG, lossconfig={"target": "torch.nn.Identity"}, embed_dim=4)
    assert model.learning_rate == 4.5e-6 and model.monitor is None
    x = model.get_input({"image": torch.rand(2, 8, 6, 3)}, "image")
    assert x.shape == (2, 3, 8, 6) and x.is_contiguous() and x.dtype == torch.float32
    assert model.get_input({"image": torch.rand(2, 8, 6)}, "image").shape == (2, 1, 8, 6)
    with pytest.raises(ValueError, match="double_z"):
        AutoencoderKL(ddconfig=dict(DDCONFIG, double_z=False), lossconfig={"target": "torch.nn.Identity"},
                      embed_dim=4)
    with pytest.raises(ValueError, match="segmentation"):
        model.to_rgb(torch.rand(1, 5, 4, 4))


def test_init_from_ckpt_ignore_keys(tmp_path):
    case = load_case("autoencoder_kl")
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": case["state_dict"], "global_step": 7}, path)
    cfg = OmegaConf.create(case["config"])
    cfg.params.ckpt_path = str(path)
    cfg.params.ignore_keys = ["decoder."]
    m = instantiate_from_config(cfg)
    assert torch.equal(m.encoder.conv_in.weight, case["state_dict"]["encoder.conv_in.weight"])
    assert not torch.equal(m.decoder.conv_in.weight, case["state_dict"]["decoder.conv_in.weight"])


def test_quantizer_remap_shapes_and_straight_through(tmp_path):
    import numpy as np

    from ldm.modules.vqvae.quantize import VectorQuantizer2

    torch.manual_seed(0)
    vq = VectorQuantizer2(8, 4, beta=0.25, sane_index_shape=True)
    z = torch.randn(2, 4, 3, 5, requires_grad=True)
    z_q, loss, (_, _, ind) = vq(z)
    assert ind.shape == (2, 3, 5) and z_q.shape == z.shape
    ref = torch.cdist(z.detach().permute(0, 2, 3, 1).reshape(-1, 4), vq.embedding.weight.detach()).argmin(1)
    assert torch.equal(ind.reshape(-1), ref)
    assert_close(vq.get_codebook_entry(ind.reshape(-1), (2, 3, 5, 4)), z_q.detach(), "get_codebook_entry")
    z_q.sum().backward()  # straight-through: d z_q / d z is the identity
    assert torch.equal(z.grad, torch.ones_like(z))
    commit = torch.mean((z_q.detach() - z.detach()) ** 2)
    assert_close(loss, commit * 1.25, "legacy loss = (1 + beta) * mse in value")

    np.save(tmp_path / "used.npy", np.array([2, 5, 7]))
    extra = VectorQuantizer2(8, 4, beta=0.25, remap=str(tmp_path / "used.npy"), unknown_index="extra")
    assert extra.re_embed == 4 and extra.used.tolist() == [2, 5, 7]
    inds = torch.tensor([[2, 7, 3], [5, 0, 2]])
    mapped = extra.remap_to_used(inds)
    assert mapped.tolist() == [[0, 2, 3], [1, 3, 0]]  # unknown codes -> the extra index 3
    assert extra.unmap_to_all(mapped.clone()).tolist() == [[2, 7, 2], [5, 2, 2]]  # extra maps back to used[0]
    fixed = VectorQuantizer2(8, 4, beta=0.25, remap=str(tmp_path / "used.npy"), unknown_index=1)
    assert fixed.remap_to_used(inds).tolist() == [[0, 2, 1], [1, 1, 0]]
    with pytest.raises(ValueError, match="unknown_index"):
        VectorQuantizer2(8, 4, beta=0.25, remap=str(tmp_path / "used.npy"), unknown_index="nearest")
    with pytest.raises(ValueError, match="Gumbel"):
        vq(z, temp=0.5)
