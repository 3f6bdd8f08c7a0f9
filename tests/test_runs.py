"""Runs a researcher can follow: ``last.ckpt`` at the final step, resumes that never train a step twice
(checked on the logged step sequence), progress lines for output that is not a terminal, the step bar,
and the CPU thread choice."""
from __future__ import annotations

import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from ldm.checkpoint import load_checkpoint

CONFIG = REPO / "tests" / "configs" / "train" / "ldm_uncond_tiny.yaml"
AE_CONFIG = REPO / "tests" / "configs" / "train" / "autoencoder_kl_tiny.yaml"
# Validation (and with it Lightning's own last.ckpt) every 3 batches; progress logged after every step.
EVERY_STEP = ["lightning.trainer.val_check_interval=3", "lightning.trainer.check_val_every_n_epoch=null",
              "lightning.callbacks.progress_log.params.interval=0",
              "lightning.callbacks.image_logger.params.disabled=true"]
STEP_LINE = re.compile(r"step (\d+)/(\d+) \(")


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch):
    """main() sets torch's thread count and OMP_NUM_THREADS for the process; undo both afterwards."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", ""))
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def logged_steps(text: str) -> list[int]:
    return [int(m.group(1)) for m in STEP_LINE.finditer(text)]


def global_step(path: Path) -> int:
    return int(load_checkpoint(path)["global_step"])


def test_last_ckpt_holds_the_final_step_and_resume_alone_continues(tmp_path, caplog):
    from main import main

    caplog.set_level(logging.INFO)
    main(["-b", str(CONFIG), "-t", "--no-test", "-l", str(tmp_path), "--accelerator", "cpu",
          "lightning.trainer.max_steps=7", *EVERY_STEP])
    (logdir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    last = logdir / "checkpoints" / "last.ckpt"
    assert global_step(last) == 7, "last.ckpt must hold the final step, not the last validation's (6)"
    assert logged_steps(caplog.text) == list(range(1, 8))
    assert "Saved the final step 7" in caplog.text

    caplog.clear()
    main(["-r", str(logdir), "--accelerator", "cpu", "lightning.trainer.max_steps=11", *EVERY_STEP])
    assert "Resuming training from" in caplog.text
    assert logged_steps(caplog.text) == [8, 9, 10, 11], "a resume must start after the checkpoint's step"
    assert global_step(last) == 11


def test_resume_without_training_or_test_split_says_so(tmp_path):
    from main import UsageError, main

    main(["-b", str(CONFIG), "-t", "--no-test", "-l", str(tmp_path), "--accelerator", "cpu",
          "lightning.trainer.max_steps=1", *EVERY_STEP])
    (logdir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    with pytest.raises(UsageError, match="nothing to do: training is off"):
        main(["-r", str(logdir), "-t", "false", "--accelerator", "cpu"])


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_kill_anywhere_and_resume_trains_every_step_once(tmp_path, signum):
    """A signal at a random moment: the resumed run starts right after the step in last.ckpt, and the
    steps up to that checkpoint plus the resumed run's steps are 1..max_steps, each exactly once. On
    SIGTERM and Ctrl-C, last.ckpt holds the newest step, so no trained step is lost either."""
    max_steps = 31
    cmd = [sys.executable, str(REPO / "main.py"), "-b", str(CONFIG), "-t", "--no-test", "-l", str(tmp_path),
           "--accelerator", "cpu", f"lightning.trainer.max_steps={max_steps}", *EVERY_STEP]
    log1 = tmp_path / "first.log"
    with open(log1, "w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 300
            while time.time() < deadline and not logged_steps(log1.read_text()):
                time.sleep(0.05)
            assert logged_steps(log1.read_text()), "the run logged no step:\n" + log1.read_text()[-3000:]
            time.sleep(random.uniform(0.0, 2.0))
        finally:
            proc.send_signal(signum)
            proc.wait(timeout=300)
    (logdir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    last = logdir / "checkpoints" / "last.ckpt"
    first_steps = logged_steps(log1.read_text())
    if not last.exists():  # killed before the first validation: nothing to resume, start again
        saved = 0
        resume = ["-b", str(CONFIG), "-t", "--no-test", "-l", str(tmp_path / "again")]
    else:
        saved = global_step(last)
        resume = ["-r", str(logdir)]
    assert first_steps == list(range(1, first_steps[-1] + 1))
    assert saved <= first_steps[-1]
    if signum != signal.SIGKILL and proc.returncode != 0:  # stopped (not finished before the signal came)
        assert saved == first_steps[-1], f"{signum.name}: last.ckpt at {saved}, the run reached {first_steps[-1]}"

    proc = subprocess.run([sys.executable, str(REPO / "main.py"), *resume, "--accelerator", "cpu",
                           f"lightning.trainer.max_steps={max_steps}", *EVERY_STEP],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    second_steps = logged_steps(proc.stderr)
    assert first_steps[:saved] + second_steps == list(range(1, max_steps + 1)), (first_steps, saved, second_steps)
    final = last if saved else next((tmp_path / "again").glob("*/checkpoints/last.ckpt"))
    assert global_step(final) == max_steps


def test_autoencoder_counts_optimizer_steps_in_progress_and_checkpoint(tmp_path, caplog):
    """The autoencoder steps two optimizers per batch: progress, max_steps and last.ckpt all count
    optimizer steps (Lightning's global_step)."""
    from main import main

    caplog.set_level(logging.INFO)
    main(["-b", str(AE_CONFIG), "-t", "--no-test", "-l", str(tmp_path), "--accelerator", "cpu",
          "lightning.trainer.max_steps=10", *EVERY_STEP])
    (logdir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert logged_steps(caplog.text) == [2, 4, 6, 8, 10]
    assert all(m.group(2) == "10" for m in STEP_LINE.finditer(caplog.text))
    assert global_step(logdir / "checkpoints" / "last.ckpt") == 10


# --------------------------------------------------------------------------------------------------
# The progress line and the bar, on a stub trainer
# --------------------------------------------------------------------------------------------------


class StubTrainer:
    def __init__(self, global_step=0, max_steps=100, max_epochs=-1):
        self.global_step, self.max_steps, self.max_epochs = global_step, max_steps, max_epochs
        self.current_epoch = 0
        self.is_global_zero = True
        self.callback_metrics = {}


def test_progress_line_has_step_loss_speed_and_eta(monkeypatch, caplog):
    import torch

    from ldm import callbacks
    from ldm.training import progress

    clock = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    caplog.set_level(logging.INFO, logger="ldm.callbacks")
    trainer = StubTrainer(global_step=20, max_steps=220)
    log = callbacks.ProgressLog(interval=30)
    log.on_train_start(trainer, None)
    assert "training from step 20 to step 220" in caplog.text
    for step in range(21, 121):  # 100 steps in 50 seconds: 2 it/s
        clock[0] += 0.5
        trainer.global_step = step
        log.on_train_batch_end(trainer, None, {"loss": torch.tensor(0.25)}, None, step)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    # the first step, then one line per 30 seconds
    assert [int(line.split()[1].split("/")[0]) for line in lines] == [21, 81]
    assert lines[1] == "step 81/220 (36.8%) epoch 0 | loss 0.25 | 2.00 it/s | elapsed 30s | ETA 1m10s"


def test_progress_line_without_returned_loss_uses_the_logged_step_loss():
    import torch

    from ldm.training.progress import _loss_value

    metrics = {"aeloss_epoch": torch.tensor(3.0), "val/rec_loss": torch.tensor(1.0), "aeloss_step": torch.tensor(2.0),
               "discloss_step": torch.tensor(0.5)}
    assert _loss_value(None, metrics) == ("aeloss_step", 2.0)
    assert _loss_value(None, {}) is None


def test_progress_log_rejects_negative_interval():
    from ldm.callbacks import ProgressLog

    with pytest.raises(ValueError, match="interval must be >= 0 seconds.*got -1"):
        ProgressLog(interval=-1)


def test_step_bar_counts_global_steps_towards_max_steps():
    from ldm.callbacks import StepProgressBar

    bar = StepProgressBar()
    trainer = StubTrainer(global_step=40, max_steps=100)
    bar._trainer = trainer  # what Lightning's setup does
    assert bar.total_train_batches == 100
    trainer.max_steps, trainer.max_epochs = -1, 5
    trainer.num_training_batches = 12
    assert bar.total_train_batches == 12  # epoch-limited runs keep the per-epoch bar


# --------------------------------------------------------------------------------------------------
# CPU threads
# --------------------------------------------------------------------------------------------------


def test_thread_choice_precedence(monkeypatch):
    from ldm import threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.setattr(threads, "busy_cores", lambda sample_s: 2.6)
    assert threads.choose_threads() == threads.ThreadChoice(5, "8 cores, 2.6 busy with other work", automatic=True)
    assert threads.choose_threads(processes=2).threads == 2
    monkeypatch.setattr(threads, "busy_cores", lambda sample_s: 11.0)
    assert threads.choose_threads().threads == 1  # always at least one
    monkeypatch.setenv("MKL_NUM_THREADS", "3")
    assert threads.choose_threads() == threads.ThreadChoice(3, "from MKL_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.choose_threads() == threads.ThreadChoice(2, "from OMP_NUM_THREADS")
    assert threads.choose_threads("4") == threads.ThreadChoice(4, "from --threads")
    assert threads.choose_threads("auto").reason == "from OMP_NUM_THREADS"


def test_the_cpu_is_watched_only_when_it_could_allow_more_than_one_thread(monkeypatch):
    from ldm import threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_automatic_env", None)
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    watched = []
    monkeypatch.setattr(threads, "busy_cores", lambda sample_s: watched.append(sample_s) or threads.load_average())
    monkeypatch.setattr(threads, "load_average", lambda: 1.6)  # already one thread whatever the CPU shows
    assert threads.choose_threads().threads == 1 and watched == [0.0]
    monkeypatch.setattr(threads, "load_average", lambda: 0.2)
    assert threads.choose_threads().threads == 2 and watched == [0.0, threads.LOAD_SAMPLE_S]


def test_an_automatic_choice_stays_automatic_in_the_same_process(monkeypatch):
    """apply_threads exports OMP_NUM_THREADS (for the processes DDP starts); the demo's next stage in the
    same process still chooses from the load, while a user's OMP_NUM_THREADS is honoured."""
    from ldm import threads

    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    monkeypatch.setattr(threads, "busy_cores", lambda sample_s: 1.0)
    monkeypatch.setattr(threads, "_automatic_env", None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    first = threads.apply_threads(threads.choose_threads())
    assert first.automatic and os.environ["OMP_NUM_THREADS"] == "3"
    monkeypatch.setattr(threads, "busy_cores", lambda sample_s: 3.0)
    assert threads.choose_threads() == threads.ThreadChoice(1, "4 cores, 3.0 busy with other work", automatic=True)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's
    assert threads.choose_threads() == threads.ThreadChoice(2, "from OMP_NUM_THREADS")


def test_thread_watch_follows_other_work(monkeypatch, caplog):
    """Other work that starts during training lowers the thread count; when it stops, it rises again."""
    import torch

    from ldm import callbacks, threads
    from ldm.training import resources

    clock = [0.0]
    busy_jiffies = [0]
    own = [0.0]
    hz = os.sysconf("SC_CLK_TCK")
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(resources.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(threads, "_cpu_times", lambda: (busy_jiffies[0], 0))
    monkeypatch.setattr(threads.os, "times", lambda: os.times_result((own[0], 0.0, 0.0, 0.0, 0.0)))
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    caplog.set_level(logging.INFO, logger="ldm.callbacks.progress")
    torch.set_num_threads(2)
    watch = callbacks.ThreadWatch(interval=30)
    watch.on_train_start(None, None)

    def run_for(seconds: float, own_cores: float, other_cores: float) -> None:
        clock[0] += seconds
        own[0] += own_cores * seconds
        busy_jiffies[0] += int((own_cores + other_cores) * seconds * hz)
        watch.on_train_batch_end(None, None, None, None, 0)

    run_for(10, own_cores=2, other_cores=1)  # before the interval: no look yet
    assert torch.get_num_threads() == 2
    run_for(25, own_cores=2, other_cores=1)  # a process keeps one core busy
    assert torch.get_num_threads() == 1
    assert "CPU threads: 2 -> 1 (1.0 cores busy with other work)" in caplog.text
    run_for(31, own_cores=1, other_cores=0)  # it stopped
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("value", ["-2", "two", "1.5"])
def test_bad_thread_counts_are_refused(monkeypatch, value):
    from ldm import threads

    with pytest.raises(ValueError, match=f"--threads must be a positive number of threads.*got '{re.escape(value)}'"):
        threads.choose_threads(value)
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    with pytest.raises(ValueError, match="OMP_NUM_THREADS must be"):
        threads.choose_threads()


def test_busy_cores_sees_a_busy_process():
    from ldm import threads

    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert threads.busy_cores(sample_s=0.5) >= 0.7
    finally:
        spin.kill()
        spin.wait()


def test_main_reports_and_applies_the_thread_count(tmp_path, caplog):
    import torch

    from main import main

    caplog.set_level(logging.INFO)
    main(["-b", str(CONFIG), "-t", "--no-test", "-l", str(tmp_path), "--accelerator", "cpu", "--threads", "1",
          "lightning.trainer.max_steps=1", *EVERY_STEP])
    assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    assert "CPU threads: 1 (from --threads" in caplog.text


# --------------------------------------------------------------------------------------------------
# Log noise
# --------------------------------------------------------------------------------------------------


def test_no_lpips_network_without_a_perceptual_term_and_its_weights_are_skipped():
    from ldm.modules.losses import LPIPSWithDiscriminator

    with_lpips = LPIPSWithDiscriminator(disc_start=0, perceptual_weight=1.0, disc_num_layers=1)
    without = LPIPSWithDiscriminator(disc_start=0, perceptual_weight=0.0, disc_num_layers=1)
    assert without.perceptual_loss is None
    assert not any(k.startswith("perceptual_loss.") for k in without.state_dict())
    # a checkpoint trained with LPIPS loads into the loss without it (strictly: nothing else differs)
    without.load_state_dict(with_lpips.state_dict(), strict=True)
    assert torch_equal_state(without.discriminator.state_dict(), with_lpips.discriminator.state_dict())


def torch_equal_state(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
