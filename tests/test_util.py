"""instantiate_from_config and the small helpers of ldm.util."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from ldm.util import (ConfigError, default, instantiate_from_config, isimage, ismap, log_txt_as_img,
                      mean_flat)


class Point:
    def __init__(self, x: int, y: int = 0):
        if x < 0:
            raise ValueError(f"x must be >= 0; got {x}")
        self.x, self.y = x, y


def test_builds_target_with_params():
    p = instantiate_from_config({"target": "test_util.Point", "params": {"x": 1, "y": 2}})
    assert (p.x, p.y) == (1, 2)


def test_sentinels_build_nothing():
    assert instantiate_from_config("__is_unconditional__") is None
    assert instantiate_from_config("__is_first_stage__") is None


def test_missing_target_names_location():
    cfg = OmegaConf.create({"model": {"params": {"unet_config": {"params": {"x": 1}}}}})
    with pytest.raises(ConfigError, match=r"model\.params\.unet_config: missing key 'target'"):
        instantiate_from_config(cfg.model.params.unet_config)


def test_unknown_class_path_names_value():
    with pytest.raises(ConfigError, match=r"model.*'ldm\.models\.nothing\.Here'.*cannot be imported"):
        instantiate_from_config(OmegaConf.create({"model": {"target": "ldm.models.nothing.Here"}}).model)
    with pytest.raises(ConfigError, match=r"has no attribute 'Nope'"):
        instantiate_from_config({"target": "ldm.util.Nope"})
    with pytest.raises(ConfigError, match=r"dotted class path"):
        instantiate_from_config({"target": "Point"})


def test_unknown_param_lists_allowed_ones():
    with pytest.raises(ConfigError, match=r"<config>\.params: test_util\.Point takes no parameter 'z'; allowed: x, y"):
        instantiate_from_config({"target": "test_util.Point", "params": {"x": 1, "z": 3}})


def test_constructor_error_is_annotated_with_location():
    cfg = OmegaConf.create({"a": {"b": {"target": "test_util.Point", "params": {"x": -1}}}})
    with pytest.raises(ValueError, match=r"a\.b \(test_util\.Point\): x must be >= 0; got -1"):
        instantiate_from_config(cfg.a.b)


def test_taming_targets_resolve_without_taming():
    from ldm.util import TARGET_ALIASES, get_obj_from_str
    for alias in TARGET_ALIASES:
        if alias.startswith("taming.modules.losses.vqperceptual.VQLPIPS"):
            assert get_obj_from_str(alias).__module__ == "ldm.modules.losses.vqperceptual"


def test_small_helpers():
    assert default(None, lambda: 3) == 3 and default(0, 5) == 0
    assert ismap(torch.zeros(1, 5, 2, 2)) and not ismap(torch.zeros(1, 3, 2, 2))
    assert isimage(torch.zeros(1, 3, 2, 2)) and not isimage(torch.zeros(3, 2, 2))
    assert torch.equal(mean_flat(torch.arange(6.0).view(2, 3)), torch.tensor([1.0, 4.0]))


def test_log_txt_as_img_renders_text():
    img = log_txt_as_img((64, 32), ["hello world", ""], size=10)
    assert img.shape == (2, 3, 32, 64)
    assert img.min() >= -1 and img.max() <= 1
    assert (img[0] < 0.9).any(), "text pixels should be darker than the white canvas"
    assert torch.all(img[1] == 1.0), "an empty caption leaves the canvas white"


@pytest.mark.parametrize("key,value", [("conditioning_key", "bogus"), ("parameterization", "v_pred")])
def test_bad_model_option_names_value_and_config_path(key, value):
    from conftest import REPO

    cfg = OmegaConf.load(REPO / "tests" / "configs" / "train" / "ldm_cond_tiny.yaml")
    cfg.model.params[key] = value
    with pytest.raises(ConfigError, match=rf"^model \(ldm\.models\.diffusion\.ddpm\.LatentDiffusion\): {key} must be one of .*got '{value}'"):
        instantiate_from_config(cfg.model)


def test_nested_config_error_names_nested_path():
    from conftest import REPO

    cfg = OmegaConf.load(REPO / "tests" / "configs" / "train" / "ldm_cond_tiny.yaml")
    cfg.model.params.unet_config.params.bogus_option = 1
    with pytest.raises(ConfigError, match=r"^model\.params\.unet_config\.params: .*UNetModel takes no parameter 'bogus_option'"):
        instantiate_from_config(cfg.model)
