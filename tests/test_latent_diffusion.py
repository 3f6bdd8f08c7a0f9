"""LatentDiffusion: parity with the original on the two small cases (get_input, p_losses, DDIM eta 0/1,
PLMS, guidance, decode, buffers), classifier-free-guidance training, std rescaling (also under a
two-process gloo group), patch-wise processing, image logs and a short Lightning fit."""
from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import assert_close, load_case_model
from helpers.models import CONTEXT_DIM, N_CLASSES, split_params, tiny_ldm
from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.plms import PLMSSampler


pytestmark = pytest.mark.usefixtures("one_thread")


def batch_of(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(n, 8, 8, 3, generator=g) * 2 - 1, "class_label": torch.arange(n) % (N_CLASSES - 1),
            "caption": [f"caption {i}" for i in range(n)], "human_label": [f"class {i}" for i in range(n)]}


# ---------------------------------------------------------------- parity with the original
@pytest.mark.parametrize("name", ["ldm_uncond_vq", "ldm_class_crossattn_kl"])
def test_parity(name):
    m, case = load_case_model(name)
    inputs, outputs = case["inputs"], case["outputs"]
    with torch.no_grad():
        torch.manual_seed(inputs["get_input_seed"])
        z, c = m.get_input(inputs["batch"], m.first_stage_key)
        assert_close(z, outputs["z"], "z")
        if m.model.conditioning_key is not None and m.cond_stage_trainable:
            c = m.get_learned_conditioning(c)
        if "c" in outputs:
            assert_close(c, outputs["c"], "c")
        loss, loss_dict = m.p_losses(z, c, inputs["t"], noise=inputs["noise"])
        assert_close(loss, outputs["loss"], "loss")
        assert set(loss_dict) == {k.split("/", 1)[1] for k in outputs if k.startswith("loss_dict/")}
        for key, value in loss_dict.items():
            assert_close(value, outputs[f"loss_dict/{key}"], key)

        kwargs = dict(S=inputs["steps"], batch_size=z.shape[0], shape=z.shape[1:], conditioning=c,
                      x_T=inputs["x_T"], verbose=False)
        if "uncond" in inputs:
            kwargs.update(unconditional_guidance_scale=inputs["guidance_scale"],
                          unconditional_conditioning=m.get_learned_conditioning(inputs["uncond"]))
        ddim_eta0, _ = DDIMSampler(m).sample(eta=0, **kwargs)
        assert_close(ddim_eta0, outputs["ddim_eta0"], "ddim_eta0")
        assert_close(m.decode_first_stage(ddim_eta0), outputs["ddim_eta0_decoded"], "ddim_eta0_decoded")
        torch.manual_seed(1234)
        ddim_eta1, _ = DDIMSampler(m).sample(eta=1, **kwargs)
        assert_close(ddim_eta1, outputs["ddim_eta1_seed1234"], "ddim_eta1_seed1234")
        plms, _ = PLMSSampler(m).sample(eta=0, **kwargs)
        assert_close(plms, outputs["plms"], "plms")
        for key in outputs:
            if key.startswith("buffer/"):
                assert_close(getattr(m, key[len("buffer/"):]), outputs[key], key)


# ---------------------------------------------------------------- construction
def test_conditioning_key_defaults_and_sentinels():
    assert tiny_ldm("uncond").model.conditioning_key is None
    m = tiny_ldm("concat")
    assert m.cond_stage_model is m.first_stage_model
    assert not any(p.requires_grad for p in m.first_stage_model.parameters())
    m.train()
    assert not m.first_stage_model.training  # frozen in eval mode for good
    assert "scale_factor" not in m.state_dict() and m.scale_factor == 1.0
    assert "scale_factor" in tiny_ldm("uncond", scale_by_std=True).state_dict()


@pytest.mark.parametrize("kwargs, message", [
    ({"conditioning_key": "sideways"}, "'sideways'"),
    ({"parameterization": "v"}, "'v'"),
    ({"ucg_rate": 1.5}, "1.5"),
    ({"num_timesteps_cond": 50}, "50"),
])
def test_bad_options_raise_naming_the_value(kwargs, message):
    with pytest.raises(ValueError) as err:
        tiny_ldm("class", **kwargs)
    assert message in str(err.value)


def test_ucg_needs_a_conditioned_model():
    with pytest.raises(ValueError, match="ucg_rate"):
        tiny_ldm("uncond", ucg_rate=0.5)


# ---------------------------------------------------------------- classifier-free guidance training
def test_ucg_rate_one_gives_the_unconditional_class():
    m = tiny_ldm("class", ucg_rate=1.0)
    m.train()
    batch = batch_of(3)
    labels = batch["class_label"].clone()
    _, c = m.get_input(batch, "image")
    assert torch.equal(c["class_label"], torch.full((3,), N_CLASSES - 1))  # default: the last class index
    assert torch.equal(batch["class_label"], labels)  # the caller's batch is left alone
    uc = m.get_unconditional_conditioning(3)
    assert torch.equal(m.get_learned_conditioning(c), uc)
    m.eval()
    _, c_eval = m.get_input(batch, "image")
    assert torch.equal(c_eval["class_label"], labels)  # only during training


def test_ucg_class_option_and_rate_zero():
    m = tiny_ldm("class", ucg_rate=1.0, ucg_class=0)
    m.train()
    _, c = m.get_input(batch_of(2), "image")
    assert torch.equal(c["class_label"], torch.zeros(2, dtype=torch.long))
    plain = tiny_ldm("class")
    plain.train()
    batch = batch_of(2)
    _, c = plain.get_input(batch, "image")
    assert torch.equal(c["class_label"], batch["class_label"])
    assert plain.ucg_rate == 0.0


def test_ucg_with_captions_uses_the_empty_string():
    m = tiny_ldm("caption", ucg_rate=1.0)
    m.train()
    _, c, _, _, xc = m.get_input(batch_of(2), "image", return_first_stage_outputs=True, return_original_cond=True)
    assert list(xc) == ["", ""]
    assert torch.equal(c, m.get_unconditional_conditioning(2))
    assert torch.equal(c, torch.zeros(2, 1, CONTEXT_DIM))
    half = tiny_ldm("caption", ucg_rate=0.5)
    half.train()
    torch.manual_seed(0)
    dropped = sum(x == "" for _ in range(20) for x in half.drop_conditioning([f"c{i}" for i in range(10)]))
    assert 60 < dropped < 140  # about half of 200


# ---------------------------------------------------------------- first stage, scaling, patches
def test_scale_by_std_sets_the_buffer_once():
    m = tiny_ldm("uncond", scale_by_std=True)
    batch = batch_of(4)
    m.on_train_batch_start(batch, 0)
    assert_close(m.scale_factor, 1.0 / batch["image"].flatten().std(), "scale_factor")  # identity first stage
    assert_close(m.get_input(batch, "image")[0].flatten().std(), torch.tensor(1.0), "rescaled std")
    with pytest.raises(ValueError, match="scale_factor"):
        tiny_ldm("uncond", scale_by_std=True, scale_factor=0.5).on_train_batch_start(batch, 0)


def _scale_worker(rank: int, world_size: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        m = tiny_ldm("uncond", scale_by_std=True)
        m.on_train_batch_start(batch_of(2, seed=rank), 0)  # every rank sees a different batch
        torch.save({"scale": m.scale_factor.clone()}, f"{out_file}.{rank}")
    finally:
        dist.destroy_process_group()


def test_scale_by_std_is_identical_on_every_rank(tmp_path):
    out = str(tmp_path / "scale")
    # fork: the workers inherit the imported modules instead of importing torch again
    mp.start_processes(_scale_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True,
                       start_method="fork")
    scales = [torch.load(f"{out}.{r}", weights_only=True)["scale"] for r in range(2)]
    assert torch.equal(scales[0], scales[1])
    rank0 = batch_of(2, seed=0)["image"]
    assert_close(scales[0], 1.0 / rank0.flatten().std(), "rank 0's value")


def test_decode_is_one_implementation_with_and_without_grad():
    m = tiny_ldm("uncond", scale_by_std=True)
    m.scale_factor.fill_(0.5)
    z = torch.randn(1, 3, 8, 8, requires_grad=True)
    assert not m.decode_first_stage(z).requires_grad
    out = m.differentiable_decode_first_stage(z)
    out.sum().backward()
    assert torch.allclose(z.grad, torch.full_like(z, 2.0))  # identity decoder after z / 0.5
    assert torch.equal(out.detach(), m.decode_first_stage(z))


def test_patchwise_decode_encode_blend_back_exactly():
    m = tiny_ldm("uncond")
    assert m.split_input_params is None
    z = torch.randn(2, 3, 8, 8)
    m.split_input_params = split_params((4, 4), (2, 2))  # 9 overlapping crops
    assert torch.allclose(m.decode_first_stage(z), z, atol=1e-6)  # identity first stage: blending is exact
    assert torch.allclose(m.encode_first_stage(z), z, atol=1e-6)
    assert tuple(m.split_input_params["original_image_size"]) == (8, 8)
    fold, unfold, normalization, weighting = m.get_fold_unfold(z, (4, 4), (2, 2), uf=2)
    assert normalization.shape == (1, 1, 16, 16) and weighting.shape == (1, 1, 8, 8, 9)
    with pytest.raises(ValueError, match="uf"):
        m.get_fold_unfold(z, (4, 4), (2, 2), uf=2, df=2)


@pytest.mark.parametrize("kind", ["class", "concat"])
def test_patchwise_apply_model_with_one_full_crop_matches(kind):
    m = tiny_ldm(kind).eval()
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([3, 9])
    with torch.no_grad():
        _, c = m.get_input(batch_of(2), "image", force_c_encode=True)
        direct = m.apply_model(x, t, c)
        m.split_input_params = split_params((8, 8), (8, 8))
        patched = m.apply_model(x, t, c)
    assert torch.allclose(direct, patched, atol=1e-5)


def test_patchwise_weighting_is_highest_in_the_middle():
    m = tiny_ldm("uncond")
    m.split_input_params = split_params((4, 4), (2, 2))
    border = m.delta_border(5, 5)
    assert border[2, 2] == pytest.approx(0.5) and border[0, 3] == 0.0
    assert m.get_weighting(4, 4, 3, 3, torch.device("cpu")).shape == (1, 16, 9)


# ---------------------------------------------------------------- losses, sampling, logging, training
def test_learned_logvar_loss_keys():
    m = tiny_ldm("class", learn_logvar=True)
    m.train()
    x, c = m.get_input(batch_of(2), "image")
    loss, loss_dict = m(x, c)
    assert set(loss_dict) == {"train/loss_simple", "train/loss_gamma", "logvar", "train/loss_vlb", "train/loss"}
    loss.backward()
    assert m.logvar.grad is not None
    params = m.configure_optimizers().param_groups[0]["params"]
    assert any(p is m.logvar for p in params)
    assert any(p is m.cond_stage_model.embedding.weight for p in params)


def test_shortened_cond_schedule():
    m = tiny_ldm("concat", num_timesteps_cond=4)
    assert m.shorten_cond_schedule
    assert m.cond_ids.tolist()[:4] == [0, 6, 13, 19] and set(m.cond_ids.tolist()[4:]) == {19}
    loss, _ = m.shared_step(batch_of(2))
    assert torch.isfinite(loss)


def test_ancestral_sampling_with_mask_keeps_the_known_region():
    m = tiny_ldm("class").eval()
    c = m.get_learned_conditioning({"class_label": torch.tensor([1, 2])})
    x0 = torch.full((2, 3, 8, 8), 0.7)
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :4] = 1.0
    calls = []
    torch.manual_seed(0)
    img, inter = m.sample(c, batch_size=2, return_intermediates=True, mask=mask, x0=x0, verbose=False)
    assert img.shape == (2, 3, 8, 8) and len(inter) == 6
    img, x0_row = m.progressive_denoising(c, (3, 8, 8), batch_size=2, verbose=False, callback=calls.append)
    assert calls == list(reversed(range(20))) and len(x0_row) == 5


def test_log_images_keys():
    m = tiny_ldm("class", ucg_rate=0.5).eval()
    log = m.log_images(batch_of(2), N=2, n_row=2, ddim_steps=2)
    expected = {"inputs", "reconstruction", "conditioning", "diffusion_row", "samples", "samples_inpainting", "mask",
                "samples_outpainting", "progressive_row"}
    assert set(log) == expected  # no quantised samples: the identity first stage has no codebook
    assert log["samples"].shape == (2, 3, 8, 8) and log["conditioning"].shape == (2, 3, 8, 8)
    assert set(m.log_images(batch_of(2), N=2, ddim_steps=2, return_keys=["samples"], inpaint=False,
                            plot_progressive_rows=False)) == {"samples"}


@pytest.mark.parametrize("ddim_steps", [2, None])
def test_log_images_denoise_row(ddim_steps):
    """The decoded states x_t of DDIM (its x_inter) or of the ancestral chain: a grid with one row per sample."""
    m = tiny_ldm("class").eval()
    log = m.log_images(batch_of(2), N=2, n_row=2, ddim_steps=ddim_steps, plot_denoise_rows=True, inpaint=False,
                       plot_progressive_rows=False, plot_diffusion_rows=False, return_keys=["denoise_row"])
    if ddim_steps:
        states = 3  # x_T, after the first step, after the last
    else:
        c = m.get_learned_conditioning({"class_label": torch.tensor([1, 2])})
        states = len(m.sample(c, batch_size=2, return_intermediates=True, verbose=False)[1])
        assert states > 3
    assert log["denoise_row"].shape == (3, 2 + 2 * (8 + 2), 2 + states * (8 + 2))  # make_grid pads by 2


class _Batches(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        b = batch_of(1, seed=i)
        return {"image": b["image"][0], "class_label": int(i % (N_CLASSES - 1))}


def test_short_lightning_fit(tmp_path):
    m = tiny_ldm("class", ucg_rate=0.2, use_ema=True, scale_by_std=True)
    m.learning_rate = 1e-3
    loader = torch.utils.data.DataLoader(_Batches(), batch_size=2)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                         default_root_dir=str(tmp_path))
    before = copy.deepcopy(m.model.state_dict())
    trainer.fit(m, loader, loader)
    assert trainer.global_step == 2
    assert int(m.model_ema.num_updates) == 2
    assert any(not torch.equal(before[k], v) for k, v in m.model.state_dict().items())
    assert "val/loss_simple_ema" in trainer.callback_metrics
    first = torch.stack([_Batches()[i]["image"] for i in range(2)])
    assert_close(m.scale_factor, 1.0 / first.flatten().std(), "scale_factor from the first batch only")
