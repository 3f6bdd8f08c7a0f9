"""NoisyLatentImageClassifier: built from a diffusion run's log folder, trained on noisy latents."""
from __future__ import annotations

import pytest
import torch
import yaml

from ldm.models.diffusion.classifier import NoisyLatentImageClassifier

N_CLASSES = 4

DIFFUSION = {
    "model": {
        "base_learning_rate": 1.0e-4,
        "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
        "params": {
            "timesteps": 20, "log_every_t": 10, "first_stage_key": "image", "cond_stage_key": "class_label",
            "image_size": 8, "channels": 4, "conditioning_key": "crossattn", "cond_stage_trainable": True,
            "use_ema": False,
            "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                            "params": {"image_size": 8, "in_channels": 4, "out_channels": 4, "model_channels": 32,
                                       "attention_resolutions": [1], "num_res_blocks": 1, "channel_mult": [1],
                                       "num_heads": 1, "use_spatial_transformer": True, "context_dim": 8}},
            "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL",
                                   "params": {"embed_dim": 4, "lossconfig": {"target": "torch.nn.Identity"},
                                              "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 16,
                                                           "in_channels": 3, "out_ch": 3, "ch": 32,
                                                           "ch_mult": [1, 2], "num_res_blocks": 1,
                                                           "attn_resolutions": [], "dropout": 0.0}}},
            "cond_stage_config": {"target": "ldm.modules.encoders.modules.ClassEmbedder",
                                  "params": {"embed_dim": 8, "n_classes": N_CLASSES, "key": "class_label"}},
        },
    }
}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_classifier_from_a_diffusion_log_folder(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "2022-01-01T00-00-00-project.yaml").write_text("model: {}\n")  # older run
    (tmp_path / "configs" / "2022-01-10T00-00-00-project.yaml").write_text(yaml.safe_dump(DIFFUSION))
    clf = NoisyLatentImageClassifier(diffusion_path=str(tmp_path), num_classes=N_CLASSES, pool="adaptive",
                                     log_steps=2)
    assert clf.label_key == "class_label" and clf.numd == 1
    assert not any(p.requires_grad for p in clf.diffusion_model.parameters())
    clf.eval()
    batch = {"image": torch.rand(2, 16, 16, 3) * 2 - 1, "class_label": torch.tensor([0, 3])}
    with torch.no_grad():
        loss, logits, x_noisy, targets = clf.shared_step(batch, t=5)
    assert logits.shape == (2, N_CLASSES) and x_noisy.shape == (2, 4, 8, 8)
    assert torch.isfinite(loss) and torch.equal(targets, batch["class_label"])
    assert clf.compute_top_k(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1]), k=1) == 0.5
    clf.learning_rate = 1e-3
    assert isinstance(clf.configure_optimizers(), torch.optim.AdamW)


def test_missing_config_names_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="project.yaml"):
        NoisyLatentImageClassifier(diffusion_path=str(tmp_path), num_classes=3)
