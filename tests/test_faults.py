"""Training that survives faults: SIGKILL at random moments, SIGTERM and Ctrl-C, a full disk, and bad or
foreign checkpoints given to --resume (including one written by Lightning 1.x, as the original code did)."""
from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO
from ldm.checkpoint import load_checkpoint

CONFIG = REPO / "tests" / "configs" / "train" / "ldm_uncond_tiny.yaml"
QUIET = ["lightning.trainer.enable_progress_bar=false", "lightning.callbacks.image_logger.params.disabled=true"]
#: Checkpoint every step, keep two top-k files, validate every third step (so top-k files are written).
EVERY_STEP = ["lightning.modelcheckpoint.params.every_n_train_steps=1", "lightning.modelcheckpoint.params.save_top_k=2",
              "lightning.trainer.val_check_interval=3"]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _main_cmd(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "main.py"), *args, "-t", "--no-test", "--accelerator", "cpu", *QUIET]


def _steps(path: Path) -> tuple[int, int]:
    """(global_step, EMA update count) of a checkpoint."""
    state = load_checkpoint(path)
    return state["global_step"], int(state["state_dict"]["model_ema.num_updates"])


def _wait_for_new_checkpoint(root: Path, previous_mtime: int, proc: subprocess.Popen, timeout: float = 600) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = list(root.glob("*/checkpoints/last.ckpt"))
        if found and found[0].stat().st_mtime_ns != previous_mtime:
            return found[0]
        assert proc.poll() is None, f"training exited early with status {proc.returncode}"
        time.sleep(0.05)
    raise AssertionError("no new checkpoint was written")


def _run_main(*args: str) -> None:
    from main import main

    main([*args, "-t", "--no-test", "--accelerator", "cpu", *QUIET])


def _kill_resume_cycles(tmp_path: Path, cycles: int, seed: int) -> None:
    rng = random.Random(seed)
    logdir = None
    for _ in range(cycles):
        args = ["-b", str(CONFIG), "-l", str(tmp_path)] if logdir is None else ["-r", str(logdir)]
        before = (logdir / "checkpoints" / "last.ckpt").stat().st_mtime_ns if logdir else 0
        proc = subprocess.Popen(_main_cmd(*args, "lightning.trainer.max_steps=100000", *EVERY_STEP), cwd=tmp_path,
                                env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            last = _wait_for_new_checkpoint(tmp_path, before, proc)
            time.sleep(rng.uniform(0.0, 1.0))  # a random moment: often during the next save
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        logdir = last.parent.parent
        step, ema = _steps(last)  # a truncated file would fail here
        assert step == ema, f"after a SIGKILL: global_step {step}, EMA updates {ema}"

    step, _ = _steps(logdir / "checkpoints" / "last.ckpt")
    assert len(list((logdir / "configs").iterdir())) == 2, "resuming with the same configs added config files"
    _run_main("-r", str(logdir), f"lightning.trainer.max_steps={step + 3}", *EVERY_STEP)
    ckptdir = logdir / "checkpoints"
    assert _steps(ckptdir / "last.ckpt") == (step + 3, step + 3)
    assert not [p.name for p in ckptdir.iterdir() if p.name.endswith(".tmp")], "temporary files were left"
    topk = sorted(p.name for p in ckptdir.glob("epoch=*.ckpt"))
    assert len(topk) <= 2, f"save_top_k=2 but {topk}"
    assert len(list((logdir / "configs").glob("*-project.yaml"))) == 1, "an unchanged project config was written again"


def test_kill_resume_cycles_keep_ema_count_and_folder(tmp_path):
    _kill_resume_cycles(tmp_path, cycles=2, seed=0)


@pytest.mark.slow
def test_ten_kill_resume_cycles(tmp_path):
    _kill_resume_cycles(tmp_path, cycles=10, seed=1)


def _stop_with_signal(tmp_path: Path, signum: int) -> tuple[Path, int, str]:
    """Start training, send ``signum`` once it has checkpointed; returns (last.ckpt, exit status, output)."""
    proc = subprocess.Popen(_main_cmd("-b", str(CONFIG), "-l", str(tmp_path), "lightning.trainer.max_steps=100000",
                                      "lightning.modelcheckpoint.params.every_n_train_steps=5"),
                            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        last = _wait_for_new_checkpoint(tmp_path, 0, proc)
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return last, proc.returncode, out


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
                         ids=["SIGTERM", "SIGINT"])
def test_signal_writes_checkpoint_exits_nonzero_and_resumes(tmp_path, signum):
    last, status, out = _stop_with_signal(tmp_path, signum)
    assert status == 128 + signum, out[-2000:]
    name = signal.Signals(signum).name
    assert f"Stopped by {name} at step" in out
    step, ema = _steps(last)
    assert step == ema and step > 0
    assert f"Stopped by {name} at step {step};" in out, "the checkpoint is not the state at the signal"
    _run_main("-r", str(last.parent.parent), f"lightning.trainer.max_steps={step + 2}")
    assert _steps(last) == (step + 2, step + 2)


# A full disk: first a real one (a 48 MiB tmpfs, where the system lets tests mount one), then a simulated
# one (the checkpoint writer patched to fail with ENOSPC half-way), which runs everywhere.

def _train_then_resume_on_full_disk(logroot: Path, fill) -> tuple[str, Path]:
    _run_main("-b", str(CONFIG), "-l", str(logroot))
    (logdir,) = [p for p in logroot.iterdir() if p.is_dir()]
    last = logdir / "checkpoints" / "last.ckpt"
    assert _steps(last) == (4, 4)
    fill(last)
    with pytest.raises(SystemExit) as info:
        _run_main("-r", str(logdir), "lightning.trainer.max_steps=6")
    return str(info.value), last


def _assert_disk_full_outcome(message: str, last: Path) -> None:
    assert "\n" not in message
    assert f"no space left in {last.parent}" in message and "MiB" in message and "needs about" in message, message
    assert _steps(last) == (4, 4), "the previous checkpoint did not survive"
    assert not [p for p in last.parent.iterdir() if p.name.endswith(".tmp")]


def test_disk_full_on_a_small_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here (the simulated variant below still runs)")
    try:
        def fill(last: Path) -> None:  # leave half a checkpoint's worth of space
            free = shutil.disk_usage(mnt).free
            (mnt / "filler").write_bytes(b"\0" * max(0, free - last.stat().st_size // 2))

        message, last = _train_then_resume_on_full_disk(mnt, fill)
        _assert_disk_full_outcome(message, last)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_simulated_enospc(tmp_path, monkeypatch):
    from pytorch_lightning.plugins.io import TorchCheckpointIO

    def fill(last: Path) -> None:
        real_save = TorchCheckpointIO.save_checkpoint

        def failing_save(self, checkpoint, path, storage_options=None):
            real_save(self, checkpoint, path, storage_options)
            data = Path(path).read_bytes()
            Path(path).write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", failing_save)

    message, last = _train_then_resume_on_full_disk(tmp_path, fill)
    _assert_disk_full_outcome(message, last)


# --resume: every checkpoint goes through the safe loader

def _evil_checkpoint(path: Path, marker: Path) -> None:
    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"state_dict": {}, "global_step": 1, "x": Evil()}, path)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trained")
    _run_main("-b", str(CONFIG), "-l", str(root))
    (logdir,) = [p for p in root.iterdir() if p.is_dir()]
    return logdir


def _copy_run(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / run.name
    shutil.copytree(run, dst)
    return dst


@pytest.mark.parametrize("damage", ["malicious", "truncated", "empty", "not_a_training_checkpoint", "wrong_shape",
                                    "directory"])
def test_resume_refuses_bad_checkpoints_in_one_line(trained_run, tmp_path, damage):
    logdir = _copy_run(trained_run, tmp_path)
    last = logdir / "checkpoints" / "last.ckpt"
    marker = tmp_path / "pwned"
    expected = {"malicious": "refused to load 'posix.system'", "truncated": "the file may be truncated or corrupt",
                "empty": "is empty (0 bytes)", "not_a_training_checkpoint": "is not a Lightning training checkpoint",
                "wrong_shape": "its weights do not fit the model", "directory": "is a directory, not a checkpoint file"}[damage]
    if damage == "malicious":
        _evil_checkpoint(last, marker)
    elif damage == "truncated":
        last.write_bytes(last.read_bytes()[:5000])
    elif damage == "empty":
        last.write_bytes(b"")
    elif damage == "not_a_training_checkpoint":
        torch.save(load_checkpoint(last)["state_dict"], last)
    elif damage == "wrong_shape":
        state = load_checkpoint(last)
        key = next(k for k in state["state_dict"] if k.endswith("input_blocks.0.0.weight"))
        state["state_dict"][key] = torch.zeros(3, 3)
        torch.save(state, last)
    else:
        last.unlink()
        last.mkdir()
    with pytest.raises(SystemExit) as info:
        _run_main("-r", str(logdir), "lightning.trainer.max_steps=6")
    message = str(info.value)
    assert message.startswith("main.py: error: ") and "\n" not in message, message
    assert expected in message, message
    assert not marker.exists()


def test_resume_a_lightning_1x_checkpoint(trained_run, tmp_path):
    """The original code saved with Lightning 1.4: no loop state, callback states keyed by class."""
    from lightning_fabric.utilities.data import AttributeDict
    from pytorch_lightning.callbacks import ModelCheckpoint

    logdir = _copy_run(trained_run, tmp_path)
    last = logdir / "checkpoints" / "last.ckpt"
    new = torch.load(last, weights_only=False)
    (mc_state,) = [v for k, v in new["callbacks"].items() if k.startswith("ModelCheckpoint")]
    legacy = {"epoch": new["epoch"], "global_step": new["global_step"], "pytorch-lightning_version": "1.4.2",
              "state_dict": new["state_dict"], "optimizer_states": new["optimizer_states"],
              "lr_schedulers": new["lr_schedulers"], "hparams_name": "kwargs",
              "hyper_parameters": AttributeDict(base_learning_rate=1e-4),
              "callbacks": {ModelCheckpoint: {k: mc_state[k] for k in ("monitor", "best_model_score",
                                                                       "best_model_path", "current_score",
                                                                       "dirpath")}}}
    torch.save(legacy, last)
    assert "pytorch_lightning.callbacks.model_checkpoint\nModelCheckpoint" in _data_pickle(last)
    _run_main("-r", str(logdir), "lightning.trainer.max_steps=6")
    resumed = load_checkpoint(last)
    assert (resumed["global_step"], int(resumed["state_dict"]["model_ema.num_updates"])) == (6, 6)
    adam = resumed["optimizer_states"][0]["state"][0]
    assert int(adam["step"]) == 6, "the optimizer state was not resumed"
    assert not (logdir / "checkpoints" / "last-v1.ckpt").exists()


def _data_pickle(path: Path) -> str:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        return archive.read(name).decode("latin-1")


# ckpt_path: weights of another model, or of the wrong shape, stop the run before training

@pytest.mark.parametrize("case", ["other_model", "wrong_shape"])
def test_first_stage_ckpt_path_must_fit(tmp_path, case):
    from ldm.models.autoencoder import AutoencoderKL

    ddconfig = {"double_z": True, "z_channels": 2, "resolution": 16, "in_channels": 3, "out_ch": 3, "ch": 32,
                "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    path = tmp_path / "first_stage.ckpt"
    if case == "other_model":
        torch.save({"state_dict": torch.nn.Linear(3, 3).state_dict()}, path)
        expected = "holds no weights of this AutoencoderKL"
    else:
        wide = AutoencoderKL(ddconfig={**ddconfig, "ch": 64}, lossconfig={"target": "torch.nn.Identity"}, embed_dim=2)
        torch.save({"state_dict": wide.state_dict()}, path)
        expected = "tensors have the wrong shape, such as"
    with pytest.raises(SystemExit) as info:
        _run_main("-b", str(CONFIG), "-l", str(tmp_path / "logs"),
                  f"model.params.first_stage_config.params.ckpt_path={path}")
    message = str(info.value)
    assert message.startswith("main.py: error: a checkpoint named in") and expected in message, message
    assert "\n" not in message
    assert not (tmp_path / "logs").exists() or not list((tmp_path / "logs").rglob("*.ckpt"))


def test_slurm_auto_requeue_keeps_lightnings_sigusr1_handling():
    """Under SLURM with auto-requeue, SIGUSR1 is Lightning's (checkpoint and requeue); elsewhere it is ours."""
    import types

    from lightning_fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

    from ldm.callbacks import SignalCheckpoint

    def trainer_in(environment):
        return types.SimpleNamespace(_accelerator_connector=types.SimpleNamespace(cluster_environment=environment))

    callback = SignalCheckpoint(ckptdir="unused")
    slurm = callback._handled_signals(trainer_in(SLURMEnvironment(auto_requeue=True)))
    assert signal.SIGUSR1 not in slurm and {signal.SIGTERM, signal.SIGINT} <= set(slurm)
    assert signal.SIGUSR1 in callback._handled_signals(trainer_in(SLURMEnvironment(auto_requeue=False)))
    assert signal.SIGUSR1 in callback._handled_signals(trainer_in(LightningEnvironment()))


def test_a_signal_while_the_final_step_is_saved_waits_for_the_save(monkeypatch):
    """Lightning runs the checkpoint callbacks' on_train_end (where the final step is written) after the signal
    handler's: a SIGTERM in between is recorded, not a kill in the middle of that write."""
    from ldm.callbacks import SignalCheckpoint

    kills = []
    monkeypatch.setattr(os, "kill", lambda pid, signum: kills.append(signum))
    callback = SignalCheckpoint(ckptdir="unused")
    callback.on_train_start(None, None)
    callback.on_train_end(None, None)
    callback._on_signal(signal.SIGTERM, None)
    assert kills == [] and callback.stop_signal == signal.SIGTERM
    previous = signal.getsignal(signal.SIGTERM)
    callback.teardown(None, None, "fit")  # training over: a later signal has its default effect again
    assert signal.getsignal(signal.SIGTERM) == previous
    callback._on_signal(signal.SIGTERM, None)
    assert kills == [signal.SIGTERM]
    signal.signal(signal.SIGTERM, previous)


def test_unknown_topk_files_are_removed_only_when_resuming_last(trained_run, tmp_path):
    logdir = _copy_run(trained_run, tmp_path)
    ckptdir = logdir / "checkpoints"
    orphan = ckptdir / "epoch=000009.ckpt"  # a top-k file written after last.ckpt by a run killed since
    shutil.copy(ckptdir / "last.ckpt", orphan)
    shutil.copy(ckptdir / "last.ckpt", ckptdir / "epoch=000000.ckpt")  # an older top-k file to resume from
    _run_main("-r", str(ckptdir / "epoch=000000.ckpt"), "lightning.trainer.max_steps=5")
    assert orphan.exists(), "resuming an older checkpoint removed a newer one"
    _run_main("-r", str(logdir), "lightning.trainer.max_steps=6")
    assert not orphan.exists()
    assert _steps(ckptdir / "last.ckpt") == (6, 6)
