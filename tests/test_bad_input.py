"""main.py with bad input: each case stops before anything is built or trained, with one line that names
the value, where it came from and what was expected."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import REPO
from helpers.training import config_with_image_folder

CONFIG = REPO / "tests" / "configs" / "train" / "ldm_uncond_tiny.yaml"


def _main_error(tmp_path: Path, *args: str) -> str:
    from main import main

    with pytest.raises(SystemExit) as info:
        main(["-l", str(tmp_path / "logs"), "-t", "--no-test", "--accelerator", "cpu", *args])
    message = str(info.value)
    assert message.startswith("main.py: error: ") and "\n" not in message, message
    assert not list((tmp_path / "logs").rglob("*.ckpt")) if (tmp_path / "logs").exists() else True
    return message


@pytest.mark.parametrize("override,expected", [
    ("lightning.trainer.max_steps=abc",
     "lightning.trainer.max_steps='abc' (from the command line): expected an integer >= -1"),
    ("lightning.trainer.max_steps=-5", "lightning.trainer.max_steps=-5 (from the command line): expected an integer >= -1"),
    ("lightning.trainer.accumulate_grad_batches=0", "accumulate_grad_batches=0 (from the command line)"),
    ("model.base_learning_rate=fast",
     "model.base_learning_rate='fast' (from the command line): expected a positive number"),
    ("model.base_learning_rate=-1e-4", "model.base_learning_rate=-0.0001 (from the command line)"),
    ("model.params.image_size=0", "model.params.image_size=0 (from the command line): expected a positive integer"),
    ("model.params.unet_config.params.model_channels=-32",
     "model.params.unet_config.params.model_channels=-32 (from the command line): expected a positive integer"),
    ("data.params.batch_size=two", "data.params.batch_size='two' (from the command line): expected a positive integer"),
    ("data.params.num_workers=-1", "data.params.num_workers=-1 (from the command line): expected an integer >= 0"),
    ("modle.params.embed_dim=3", "override 'modle.params.embed_dim' from the command line: the top level has no "
                                 "key 'modle'"),
    ("model.params.first_stage_config.parms.embed_dim=3", "model.params.first_stage_config has no key 'parms'"),
    ("lightning.trainr.max_steps=3", "lightning has no section 'trainr'"),
    ("=5", "override '=5' from the command line has an empty key"),
    ("model..params=5", "has an empty key"),
])
def test_bad_overrides(tmp_path, override, expected):
    message = _main_error(tmp_path, "-b", str(CONFIG), override)
    assert expected in message, message


def test_new_constructor_arguments_and_trainer_options_are_still_accepted(tmp_path):
    """Keys the configs leave out but that mean something pass the key check (the constructor's own
    signature then checks them): a misspelt one is still named."""
    message = _main_error(tmp_path, "-b", str(CONFIG), "model.params.unet_config.params.use_chekpoint=true")
    assert "takes no parameter 'use_chekpoint'" in message
    message = _main_error(tmp_path, "-b", str(CONFIG), "lightning.trainer.max_step=3")
    assert "unknown trainer option(s) 'max_step'" in message


def test_bad_values_in_config_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.read_text().replace("image_size: 8\n", "image_size: 0\n", 1))
    message = _main_error(tmp_path, "-b", str(bad))
    assert f"model.params.image_size=0 (from the config ({bad}))" in message


@pytest.mark.parametrize("flags,expected", [
    (["--devices", "0"], "devices must be a count >= 1, -1 or 'auto' for all, or ids like '0,'; got 0"),
    (["--devices", "-3"], "got -3"),
    (["--devices", ","], "devices must list device ids >= 0"),
])
def test_bad_device_counts(tmp_path, flags, expected):
    assert expected in _main_error(tmp_path, "-b", str(CONFIG), *flags)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_accelerator_without_cuda(tmp_path):
    from main import main

    with pytest.raises(SystemExit) as info:
        main(["-l", str(tmp_path), "-t", "--no-test", "-b", str(CONFIG), "--accelerator", "gpu"])
    assert "accelerator 'gpu' asks for CUDA, but no CUDA device is available here" in str(info.value)


def test_yaml_whose_top_level_is_a_list(tmp_path):
    listed = tmp_path / "list.yaml"
    listed.write_text("- model\n- data\n")
    message = _main_error(tmp_path, "-b", str(listed))
    assert f"config file '{listed}' holds a ListConfig at the top level; expected a mapping" in message


def test_empty_image_folder(tmp_path):
    empty = tmp_path / "images"
    empty.mkdir()
    message = _main_error(tmp_path, "-b", str(config_with_image_folder(tmp_path, empty, CONFIG)))
    assert f"no images found in folder '{empty}'" in message and "data config in" in message


def test_file_list_naming_missing_files(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("missing_one.png\n")
    message = _main_error(tmp_path, "-b", str(config_with_image_folder(tmp_path, listing, CONFIG)))
    assert "missing_one.png" in message and "data config in" in message
