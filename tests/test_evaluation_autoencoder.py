"""scripts/evaluate_autoencoder.py on a tiny KL autoencoder made here: PSNR and SSIM equal a direct
computation on its reconstructions, LPIPS and rFID come out, missing weights fail before any image."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO
from helpers.evaluation import TinyFeatures, shapes_images, write_folder, write_standin_inception
from helpers.scripts import load_script
from ldm.evaluation import inception
from ldm.evaluation import metrics as M
from ldm.evaluation.reconstruction import load_square
from ldm.modules.losses import lpips as lp
from ldm.util import instantiate_from_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ae")
    first = OmegaConf.load(REPO / "tests" / "configs" / "tiny-uncond.yaml").model.params.first_stage_config
    config = OmegaConf.create({"model": first})
    torch.manual_seed(0)
    model = instantiate_from_config(config.model)
    OmegaConf.save(config, root / "config.yaml")
    torch.save({"state_dict": model.state_dict()}, root / "model.ckpt")
    g = torch.Generator().manual_seed(0)
    vgg = {f"features.{k}": torch.randn(v.shape, generator=g) * 0.05 for k, v in lp._vgg16_features().state_dict().items()}
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate(lp.LPIPS_CHANNELS)}
    torch.save(vgg, root / lp.VGG16_FILENAME)
    torch.save(heads, root / "vgg.pth")
    images = write_folder(root / "images", shapes_images(5, "validation", 0, size=24))
    weights = write_standin_inception(root / inception.INCEPTION_FILENAME)
    return root, images, weights


def test_autoencoder_metrics(setup, tmp_path, monkeypatch):
    root, images, weights = setup
    monkeypatch.setattr(inception.InceptionFeatures, "model", property(lambda self: TinyFeatures()))
    out = tmp_path / "ae.json"
    load_script("evaluate_autoencoder").main([
        "--config", str(root / "config.yaml"), "--ckpt", str(root / "model.ckpt"), "--images", str(images),
        "--size", "16", "--batch_size", "2", "--inception_weights", str(weights), "--vgg_path",
        str(root / lp.VGG16_FILENAME), "--lpips_path", str(root / "vgg.pth"), "--out", str(out), "--device", "cpu",
        "--no_progress"])
    result = json.loads(out.read_text())
    # independent: reconstruct each image with the posterior mode, quantize, PSNR over 8-bit values
    config = OmegaConf.load(root / "config.yaml")
    model = instantiate_from_config(config.model)
    model.load_state_dict(torch.load(root / "model.ckpt", weights_only=True)["state_dict"])
    model.eval()
    files = sorted(images.glob("*.png"))
    x8 = torch.from_numpy(np.stack([load_square(str(f), 16) for f in files])).permute(0, 3, 1, 2)
    with torch.no_grad():
        rec = model.decode(model.encode(x8.float() / 127.5 - 1).mode())
    rec8 = ((rec.clamp(-1, 1) + 1) * 127.5).round()
    mse = ((x8.double() - rec8.double()) ** 2).flatten(1).mean(1)
    psnr = 10 * torch.log10(255.0 ** 2 / mse)
    assert result["psnr"] == pytest.approx(float(psnr.mean()), rel=1e-6)
    assert result["psnr_std"] == pytest.approx(float(psnr.std(unbiased=False)), rel=1e-5)
    assert result["ssim"] == pytest.approx(float(M.ssim(x8.float() / 255, rec8.float() / 255).mean()), rel=1e-6)
    assert result["lpips"] is not None and result["lpips"] > 0
    assert result["rfid"] is not None and result["num_images"] == 5
    assert any("not a valid FID" in w for w in result["warnings"])


def test_missing_lpips_weights_fail_before_any_image(setup, tmp_path, monkeypatch):
    root, images, weights = setup
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(lp.VGG16_ENV, raising=False)
    import ldm.evaluation.reconstruction as ae

    monkeypatch.setattr(ae, "reconstruct", lambda *a: pytest.fail("reconstructed before the error"))
    with pytest.raises(FileNotFoundError, match=lp.VGG16_FILENAME):
        load_script("evaluate_autoencoder").main([
            "--config", str(root / "config.yaml"), "--ckpt", str(root / "model.ckpt"), "--images", str(images),
            "--size", "16", "--no_rfid", "--lpips_path", str(root / "vgg.pth"), "--device", "cpu"])
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_script("evaluate_autoencoder").main([
            "--config", str(root / "config.yaml"), "--ckpt", str(root / "model.ckpt"), "--images",
            str(tmp_path / "none"), "--no_rfid", "--no_lpips"])
    with pytest.raises(ValueError, match="give --row, or both"):
        load_script("evaluate_autoencoder").main(["--images", str(images)])
