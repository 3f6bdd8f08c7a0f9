"""main.py end to end: tiny configs trained for a few steps on the CPU, the run directory, resuming,
DDP with two CPU processes, a run killed with SIGKILL, and the errors for bad input."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO
from helpers.training import CONFIGS, QUIET, ckpt_state, config_with_image_folder, run_main


def assert_run_layout(logdir: Path) -> None:
    assert (logdir / "checkpoints" / "last.ckpt").is_file()
    names = sorted(p.name for p in (logdir / "configs").iterdir())
    assert len(names) == 2 and names[0].endswith("-lightning.yaml") and names[1].endswith("-project.yaml"), names
    images = list((logdir / "images" / "train").glob("*.png"))
    assert images, "the image logger wrote no training grids"
    assert all(p.stat().st_size > 0 for p in images)


def test_autoencoder_trains_with_discriminator_and_resumes(tmp_path):
    logdir = run_main(tmp_path, "-b", str(CONFIGS / "autoencoder_kl_tiny.yaml"), "-t", "--no-test")
    assert logdir.name.endswith("_autoencoder_kl_tiny")
    assert_run_layout(logdir)
    first = ckpt_state(logdir / "checkpoints" / "last.ckpt")
    assert first["global_step"] == 4
    sd = first["state_dict"]
    assert any(k.startswith("loss.discriminator.") for k in sd)
    # Both optimizers stepped: Adam state exists for the autoencoder and the discriminator.
    assert len(first["optimizer_states"]) == 2
    assert all(len(o["state"]) > 0 for o in first["optimizer_states"])

    run_main(tmp_path, "-r", str(logdir), "-t", "--no-test", "lightning.trainer.max_steps=8")
    second = ckpt_state(logdir / "checkpoints" / "last.ckpt")
    assert second["global_step"] == 8
    changed = [k for k in sd if k.startswith("decoder.") and not torch.equal(sd[k], second["state_dict"][k])]
    assert changed, "resumed training did not update the decoder"


@pytest.mark.parametrize("config", ["ldm_uncond_tiny", "ldm_cond_tiny", "ldm_txt_tiny"])
def test_ldm_trains_and_resumes_with_step_and_ema(tmp_path, config):
    logdir = run_main(tmp_path, "-b", str(CONFIGS / f"{config}.yaml"), "-t", "--no-test")
    assert_run_layout(logdir)
    first = ckpt_state(logdir / "checkpoints" / "last.ckpt")
    assert first["global_step"] == 4
    sd = first["state_dict"]
    assert int(sd["model_ema.num_updates"]) == 4
    scale = float(sd["scale_factor"])
    assert scale != 1.0, "scale_by_std should have replaced the initial scale factor"

    run_main(tmp_path, "-r", str(logdir / "checkpoints" / "last.ckpt"), "-t", "--no-test",
             "lightning.trainer.max_steps=6")
    second = ckpt_state(logdir / "checkpoints" / "last.ckpt")
    assert second["global_step"] == 6
    assert int(second["state_dict"]["model_ema.num_updates"]) == 6, "EMA restarted instead of continuing"
    assert float(second["state_dict"]["scale_factor"]) == scale, "scale_factor must be computed only once"
    ema_keys = [k for k in sd if k.startswith("model_ema.") and k not in ("model_ema.decay", "model_ema.num_updates")]
    assert any(not torch.equal(sd[k], second["state_dict"][k]) for k in ema_keys)


def test_learning_rate_is_scaled(tmp_path, caplog):
    caplog.set_level("INFO")
    run_main(tmp_path, "-b", str(CONFIGS / "ldm_uncond_tiny.yaml"), "-t", "--no-test", "lightning.trainer.max_steps=1",
             "lightning.trainer.accumulate_grad_batches=3")
    assert "Setting learning rate to 6.00e-04 = 3 (accumulate_grad_batches) * 1 (num_devices)" in caplog.text


def _subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_ddp_two_cpu_processes_and_resume(tmp_path):
    cmd = [sys.executable, str(REPO / "main.py"), "-b", str(CONFIGS / "ldm_cond_tiny.yaml"), "-t", "--no-test",
           "-l", str(tmp_path), "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", *QUIET,
           "lightning.trainer.max_steps=2"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed_backend=gloo" in proc.stderr + proc.stdout
    (logdir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    state = ckpt_state(logdir / "checkpoints" / "last.ckpt")
    assert state["global_step"] == 2

    cmd = [sys.executable, str(REPO / "main.py"), "-r", str(logdir), "-t", "--no-test", "--accelerator", "cpu",
           "--devices", "2", "--strategy", "ddp", *QUIET, "lightning.trainer.max_steps=4"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = ckpt_state(logdir / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 4
    assert int(resumed["state_dict"]["model_ema.num_updates"]) == 4


def test_sigkill_leaves_a_loadable_checkpoint_and_run_resumes(tmp_path):
    cmd = [sys.executable, str(REPO / "main.py"), "-b", str(CONFIGS / "ldm_uncond_tiny.yaml"), "-t", "--no-test",
           "-l", str(tmp_path), "--accelerator", "cpu", *QUIET, "lightning.trainer.max_steps=100000",
           "lightning.modelcheckpoint.params.every_n_train_steps=1",
           "lightning.callbacks.image_logger.params.disabled=true"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        last = None
        while time.time() < deadline:
            found = list(tmp_path.glob("*/checkpoints/last.ckpt"))
            if found:
                last = found[0]
                break
            time.sleep(0.2)
        assert last is not None, "no checkpoint was written"
        time.sleep(random.uniform(0.0, 1.5))  # a random moment, likely during the next save
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = ckpt_state(last)  # a truncated file would fail here
    step = state["global_step"]
    assert step >= 1
    logdir = last.parent.parent
    from main import main

    main(["-r", str(logdir), "-t", "--no-test", "--accelerator", "cpu", *QUIET,
          f"lightning.trainer.max_steps={step + 2}", "lightning.callbacks.image_logger.params.disabled=true"])
    assert ckpt_state(logdir / "checkpoints" / "last.ckpt")["global_step"] == step + 2


# Bad input: each fails before training, with a message naming the problem.

def test_missing_data_path(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(SystemExit, match=f"data config in .*{missing}.* not found"):
        run_main(tmp_path / "logs", "-b", str(config_with_image_folder(tmp_path, missing)), "-t")
    assert not list(tmp_path.glob("logs/*/checkpoints/*.ckpt"))


def test_no_data_section(tmp_path):
    cfg = tmp_path / "nodata.yaml"
    text = (CONFIGS / "autoencoder_kl_tiny.yaml").read_text().split("\ndata:")[0]
    cfg.write_text(text)
    with pytest.raises(SystemExit, match="has no 'data' section"):
        run_main(tmp_path / "logs", "-b", str(cfg), "-t")


def test_unknown_trainer_flag(tmp_path):
    with pytest.raises(SystemExit, match="unknown trainer option.*'max_stepz'"):
        run_main(tmp_path / "logs", "-b", str(CONFIGS / "autoencoder_kl_tiny.yaml"), "-t",
                 "lightning.trainer.max_stepz=3")
    with pytest.raises(SystemExit, match="unknown option '--max_stepz'"):
        run_main(tmp_path / "logs", "-b", str(CONFIGS / "autoencoder_kl_tiny.yaml"), "-t", "--max_stepz", "3")


def test_bad_config_target_names_file_and_location(tmp_path):
    with pytest.raises(SystemExit, match=r"autoencoder_kl_tiny\.yaml.*model.*ldm\.models\.autoencoder\.Nope"):
        run_main(tmp_path / "logs", "-b", str(CONFIGS / "autoencoder_kl_tiny.yaml"), "-t",
                 "model.target=ldm.models.autoencoder.Nope")


def test_corrupt_image_is_named_before_training(tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(folder / f"ok_{i}.png")
    bad = folder / "broken.png"
    bad.write_bytes((folder / "ok_0.png").read_bytes()[:40])
    with pytest.raises(SystemExit, match="broken.png"):
        run_main(tmp_path / "logs", "-b", str(config_with_image_folder(tmp_path, folder)), "-t")
    assert not list(tmp_path.glob("logs/*/checkpoints/*.ckpt"))
