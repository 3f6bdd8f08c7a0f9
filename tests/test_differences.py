"""Where the project deliberately behaves otherwise than the original code: one test per row of the README's
"Differences from the original" table that no other test file pins (the table names those that do)."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from helpers.models import split_params, tiny_ddpm, tiny_ldm
from helpers.oracles import SHAPE, STEPS, StubDiffusion, oracle
from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.plms import PLMSSampler

pytestmark = pytest.mark.usefixtures("one_thread")


class X0Oracle(StubDiffusion):
    """An x0-parameterized network that predicts the data point exactly."""

    def __init__(self, x_data: torch.Tensor) -> None:
        super().__init__("oracle", x_data)
        self.parameterization = "x0"

    def apply_model(self, x, t, c):
        return self.x_data.expand_as(x)


@pytest.mark.parametrize("sampler_cls, eta", [(DDIMSampler, 0.0), (DDIMSampler, 1.0), (PLMSSampler, 0.0)])
def test_ddim_and_plms_convert_an_x0_prediction(sampler_cls, eta):
    """The original takes an x0 model's output for the noise; here it is the x0 estimate, so an exact x0
    model samples as the exact noise model does, and every x0 estimate is the data point."""
    eps_model = oracle()
    x0_model = X0Oracle(eps_model.x_data)
    runs = []
    for model in (eps_model, x0_model):
        pred_x0s = []
        torch.manual_seed(0)
        samples, _ = sampler_cls(model).sample(STEPS, 2, SHAPE, eta=eta, verbose=False,
                                               img_callback=lambda pred_x0, i: pred_x0s.append(pred_x0))
        runs.append((samples, pred_x0s))
    (eps_samples, _), (x0_samples, x0_preds) = runs
    assert all(torch.allclose(p, x0_model.x_data, atol=1e-4) for p in x0_preds)
    assert torch.allclose(x0_samples, eps_samples, atol=1e-4)


class _Images(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": torch.rand(8, 8, 3, generator=torch.Generator().manual_seed(i)) * 2 - 1}


def test_ddpm_ema_updates_once_per_optimizer_step(tmp_path):
    """With gradients summed over 2 batches, 4 batches are 2 optimizer steps and 2 EMA updates (the
    original updated after every batch: 4)."""
    torch.manual_seed(0)
    model = tiny_ddpm(use_ema=True)
    model.learning_rate = 1e-3
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=4, limit_val_batches=0,
                         accumulate_grad_batches=2, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(_Images(), batch_size=2))
    assert trainer.global_step == 2
    assert int(model.model_ema.num_updates) == 2


def test_delta_border_on_a_length_one_axis_is_all_border():
    """The original divides by zero there (NaN weights, NaN output when a crop grid has one row)."""
    m = tiny_ldm("uncond")
    assert torch.equal(m.delta_border(1, 5), torch.zeros(1, 5))
    assert torch.equal(m.delta_border(4, 1), torch.zeros(4, 1))
    m.split_input_params = split_params((8, 4), (8, 2))  # one crop high, three wide
    with torch.no_grad():
        out = m.apply_model(torch.randn(2, 3, 8, 8), torch.tensor([3, 9]), None)
    assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all()


def test_use_positional_encodings_is_refused_at_construction():
    """The original accepted it and failed at the first batch: its latent shifts were never implemented."""
    with pytest.raises(ValueError, match="use_positional_encodings=True is not supported"):
        tiny_ldm("uncond", use_positional_encodings=True)


@pytest.mark.parametrize("gpus, devices, strategy", [("0,", [0], None), ("0,1", [0, 1], "ddp")])
def test_gpus_flag_maps_to_lightning_devices(monkeypatch, gpus, devices, strategy):
    """``--gpus`` names CUDA devices as in the original, but one device trains without DDP (the original
    always used DDP), and without ``--gpus`` Lightning picks the accelerator (the original used the CPU)."""
    from main import build_trainer_config, get_parser

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    opt, _ = get_parser().parse_known_args(["--gpus", gpus])
    config, n_devices = build_trainer_config(opt, OmegaConf.create({"trainer": {}}))
    assert (config["accelerator"], list(config["devices"]), n_devices) == ("gpu", devices, len(devices))
    assert config.get("strategy") == strategy
    opt, _ = get_parser().parse_known_args([])
    config, n_devices = build_trainer_config(opt, OmegaConf.create({"trainer": {}}))
    assert config["accelerator"] == "auto" and "devices" not in config
