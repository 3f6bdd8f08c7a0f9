"""Lightning callbacks and plugins used by ``main.py``.

- `SetupCallback`: creates the run directory and writes the merged configs (rank 0 only).
- `ImageLogger`: calls the model's ``log_images`` every N batches and writes image grids.
- `CUDACallback`: epoch time and peak CUDA memory, when training on CUDA.
- `SignalCheckpoint`: on SIGUSR1 writes ``last.ckpt`` and trains on; on SIGTERM or Ctrl-C (SIGINT) writes
  ``last.ckpt`` at the end of the current batch and stops with exit status 128 + the signal number.
- `RunCheckpoint`: Lightning's `ModelCheckpoint` that writes ``last.ckpt`` before any top-k file, removes
  temporary files left by killed saves and top-k files that the resumed state does not know, so that
  ``save_top_k`` holds across kills, and that also writes ``last.ckpt`` at the final step of a run.
- `ProgressLog`: one line of progress (step, loss, it/s, ETA) through `logging` every few seconds, for
  output that goes to a file rather than a terminal.
- `StepProgressBar`: the terminal bar, counting optimizer steps towards ``max_steps`` over the whole run.
- `AtomicCheckpointIO`: every checkpoint is written to a temporary file, then renamed into place, so a
  killed run leaves either the previous checkpoint or the new one, never a truncated file; a full disk
  raises `DiskFullError`; every checkpoint that Lightning reads (``--resume``) goes through
  `ldm.checkpoint.load_checkpoint`, which runs no code from the file and reads Lightning-1.x checkpoints.
"""
from __future__ import annotations

import errno
import logging
import math
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torchvision
from omegaconf import OmegaConf
from PIL import Image
from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ldm.checkpoint import InvalidCheckpointError, is_stand_in, load_checkpoint
from ldm.util import atomic_path

logger = logging.getLogger(__name__)
#: Progress of a run (the progress lines, the final checkpoint): a logger of its own, so that a caller
#: such as the demo can show these lines and silence the rest.
progress_logger = logging.getLogger(__name__ + ".progress")

#: Temporary files written by `ldm.util.atomic_path`: ``.<name>.<pid>.<8 hex digits>.tmp``.
_TEMP_FILE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")
#: Prefix of the callback-state keys under which a Lightning-1.x checkpoint's class-keyed states are kept.
LEGACY_CALLBACK_KEY = "lightning-1.x:"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that killed atomic writes left in ``folder`` (those of live processes stay)."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = _TEMP_FILE.match(path.name)
        if match and path.is_file() and not _pid_alive(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        logger.info("Removed %d temporary file(s) left by interrupted saves in %s: %s", len(removed), folder,
                    ", ".join(p.name for p in removed))
    return removed


class DiskFullError(OSError):
    """A checkpoint did not fit on its disk; the previous file at that path is untouched."""

    def __init__(self, path: str | os.PathLike, needed: int, free: int):
        self.path, self.needed, self.free = Path(path), needed, free
        super().__init__(errno.ENOSPC, f"no space left in {self.path.parent} for {self.path.name}: it needs about "
                                       f"{_mib(needed)} and {_mib(free)} are free; the previous checkpoint there "
                                       f"was kept. Free some space, then resume the run with --resume")

    def __str__(self) -> str:
        return self.strerror


def _mib(n: int) -> str:
    return f"{n / 2 ** 20:.1f} MiB"


def _checkpoint_nbytes(obj: Any) -> int:
    """Bytes of the tensors that ``obj`` holds (each storage once): about what its file needs."""
    seen: set[int] = set()
    total = 0
    stack = [obj]
    while stack:
        node = stack.pop()
        if isinstance(node, torch.Tensor):
            storage = node.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
    return total


def _rekey_legacy_callbacks(checkpoint: dict) -> None:
    """Lightning 1.x (before 1.5) keyed callback states by the callback's class, which loads as a stand-in
    class; Lightning 2.x would drop them. Keep them under string keys that `RunCheckpoint` reads."""
    callbacks = checkpoint.get("callbacks")
    if not isinstance(callbacks, dict):
        return
    for key in [k for k in callbacks if is_stand_in(k)]:
        callbacks[LEGACY_CALLBACK_KEY + key._stand_in_for] = callbacks.pop(key)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` that writes atomically, reports a full disk in one line, and loads safely."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        try:
            with atomic_path(path) as tmp:
                super().save_checkpoint(checkpoint, tmp, storage_options)
        except (OSError, RuntimeError) as err:  # torch.save reports a failed write as a RuntimeError
            if not _is_disk_full(err):
                raise
            folder = Path(path).parent
            raise DiskFullError(path, _checkpoint_nbytes(checkpoint), shutil.disk_usage(folder).free) from err

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """The checkpoint at ``path`` through `ldm.checkpoint.load_checkpoint` (``weights_only`` is moot: no
        code from the file runs either way)."""
        checkpoint = load_checkpoint(path, map_location="cpu" if map_location is None or callable(map_location)
                                     else map_location)
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "global_step" not in checkpoint:
            keys = sorted(map(str, checkpoint))[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
            raise InvalidCheckpointError(
                f"{path} is not a Lightning training checkpoint (it holds {keys}; a training checkpoint has "
                f"state_dict, global_step, optimizer_states); to start from its weights, set "
                f"model.params.ckpt_path instead of resuming")
        _rekey_legacy_callbacks(checkpoint)
        return checkpoint


def _is_disk_full(err: BaseException) -> bool:
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(err) or "file write failed" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def _filename_pattern(template: str, auto_insert_metric_name: bool) -> re.Pattern:
    """A regex for the names `ModelCheckpoint` makes from ``template`` (``{epoch:06}`` -> ``epoch=000003``)."""
    parts = []
    for literal, field in re.findall(r"([^{]*)(\{[^}]*\})?", template):
        parts.append(re.escape(literal))
        if field:
            name = field[1:-1].split(":")[0]
            value = r"\d+" if name in ("epoch", "step") else "[^/]*?"
            parts.append(f"(?:{re.escape(name)}=)?{value}" if auto_insert_metric_name else value)
    return re.compile("^" + "".join(parts) + r"(?:-v\d+)?\.ckpt$")


class RunCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` that keeps a run's checkpoint folder consistent across kills and resumes.

    - ``last.ckpt`` is written before a top-k file, so it exists even when the disk fills up; when a top-k
      file follows, ``last.ckpt`` is written once more so that it knows of it.
    - On start, temporary files of killed saves are removed; on resume from ``last.ckpt``, top-k files that
      the resumed state does not list (written after it, by a run killed before its next ``last.ckpt``)
      are removed, so at most ``save_top_k`` of them exist.
    - The state of a Lightning-1.x ``ModelCheckpoint`` (keyed by class) is restored.

    Overrides `ModelCheckpoint._save_topk_checkpoint` and ``_save_last_checkpoint`` (pytorch-lightning 2.x):
    the ordering of the two writes has no public hook.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_written_first: tuple[int, str] | None = None
        self._resumed_from: str | None = None

    @property
    def state_key(self) -> str:
        """Lightning's key for ``ModelCheckpoint`` state, so checkpoints of either class resume with either."""
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and stage == "fit" and self.dirpath:
            remove_stale_temp_files(self.dirpath)

    def _save_topk_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        if not self.save_last or self.save_top_k == 0:
            return super()._save_topk_checkpoint(trainer, monitor_candidates)
        self._save_last_checkpoint(trainer, monitor_candidates)
        last = self._last_checkpoint_saved
        super()._save_topk_checkpoint(trainer, monitor_candidates)
        # no top-k file since: last.ckpt is current and Lightning's next call to write it can be skipped
        self._last_written_first = (trainer.global_step, last) if self._last_checkpoint_saved == last else None

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        written, self._last_written_first = self._last_written_first, None
        if written is not None and written[0] == trainer.global_step:
            return
        if not self.last_model_path:  # a resumed state that does not name it: overwrite last.ckpt, not last-v1.ckpt
            self.last_model_path = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)
        super()._save_last_checkpoint(trainer, monitor_candidates)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """``last.ckpt`` also holds the final step: Lightning writes it after validation (or at the end of
        an epoch), so a run whose ``max_steps`` is not a multiple of ``val_check_interval`` would end with a
        ``last.ckpt`` from the last validation, and a resume would train the steps after it again."""
        super().on_train_end(trainer, pl_module)
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            progress_logger.info("Saved the final step %d to %s", trainer.global_step, self.last_model_path)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self._resumed_from = trainer.ckpt_path
        states = checkpoint.get("callbacks") or {}
        legacy = states.get(LEGACY_CALLBACK_KEY + "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint")
        if self.state_key not in states and isinstance(legacy, dict) and "best_model_path" in legacy:
            states[self.state_key] = {"best_model_score": None, **legacy}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        resumed = os.path.basename(str(self._resumed_from or ""))
        # only when resuming the newest state (last.ckpt): resuming an older top-k file is a deliberate
        # step back, and the files after it are kept
        if rank_zero_only.rank == 0 and self.dirpath and state_dict.get("dirpath", self.dirpath) == self.dirpath \
                and resumed.startswith(self.CHECKPOINT_NAME_LAST):
            self._remove_unknown_topk_files()

    def _remove_unknown_topk_files(self) -> None:
        pattern = _filename_pattern(self.filename or "{epoch}-{step}", self.auto_insert_metric_name)
        known = {os.path.abspath(p) for p in (*self.best_k_models, self.best_model_path, self.last_model_path) if p}
        folder = Path(self.dirpath)
        if not folder.is_dir():
            return
        for path in sorted(folder.glob("*.ckpt")):
            if path.name.startswith(self.CHECKPOINT_NAME_LAST) or os.path.abspath(path) in known:
                continue
            if pattern.match(path.name):
                logger.info("Removing %s: a top-k checkpoint written after the state being resumed", path)
                path.unlink(missing_ok=True)


class SetupCallback(pl.Callback):
    """Creates ``logdir``, ``checkpoints/`` and ``configs/`` and saves the merged configs on rank 0."""

    def __init__(self, resume: str, now: str, logdir: str, ckptdir: str, cfgdir: str, config: Any,
                 lightning_config: Any):
        super().__init__()
        self.resume = resume  # the checkpoint or logdir being resumed ("" for a new run)
        self.now = now  # the run's timestamp, used in config file names
        self.logdir = logdir  # the run directory
        self.ckptdir = ckptdir  # where checkpoints go
        self.cfgdir = cfgdir  # where the merged configs go
        self.config = config  # the merged project config (model, data)
        self.lightning_config = lightning_config  # the merged `lightning:` section

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.global_rank != 0:
            return
        for d in (self.logdir, self.ckptdir, self.cfgdir):
            os.makedirs(d, exist_ok=True)
        remove_stale_temp_files(self.cfgdir)
        if "callbacks" in self.lightning_config and "metrics_over_trainsteps_checkpoint" in self.lightning_config.callbacks:
            os.makedirs(os.path.join(self.ckptdir, "trainstep_checkpoints"), exist_ok=True)
        logger.info("Project config\n%s", OmegaConf.to_yaml(self.config))
        self._write_config("project", OmegaConf.to_yaml(self.config))
        self._write_config("lightning", OmegaConf.to_yaml(OmegaConf.create({"lightning": self.lightning_config})))

    def _write_config(self, kind: str, text: str) -> None:
        """Write ``<now>-<kind>.yaml`` unless the newest config of that kind (from the run being resumed)
        says the same, so that resuming does not add two files each time."""
        existing = sorted(Path(self.cfgdir).glob(f"*-{kind}.yaml"))
        if existing and existing[-1].read_text() == text:
            return
        atomic_write_bytes(os.path.join(self.cfgdir, f"{self.now}-{kind}.yaml"), text.encode())


class ImageLogger(pl.Callback):
    """Writes ``log_images`` grids to ``<logdir>/images/<split>/`` every ``batch_frequency`` batches."""

    def __init__(self, batch_frequency: int, max_images: int, clamp: bool = True,
                 increase_log_steps: bool = True, rescale: bool = True, disabled: bool = False,
                 log_on_batch_idx: bool = False, log_first_step: bool = False,
                 log_images_kwargs: dict | None = None):
        super().__init__()
        if batch_frequency < 1:
            raise ValueError(f"batch_frequency must be >= 1; got {batch_frequency}")
        self.batch_freq = batch_frequency  # log every this many batches (global step or batch index)
        self.max_images = max_images  # at most this many images per grid
        self.clamp = clamp  # clamp images to [-1, 1] before writing
        self.rescale = rescale  # map [-1, 1] to [0, 1] before writing
        self.disabled = disabled  # switch the logger off without removing it from the config
        self.log_on_batch_idx = log_on_batch_idx  # count batches within the epoch instead of global steps
        self.log_first_step = log_first_step  # also log at step 0
        self.log_images_kwargs = dict(log_images_kwargs or {})  # passed on to `log_images`
        # Early logs at 1, 2, 4, ... until the regular frequency, as in the original.
        self.log_steps = [2 ** n for n in range(int(np.log2(self.batch_freq)) + 1)] if increase_log_steps else [self.batch_freq]

    @rank_zero_only
    def log_local(self, save_dir: str, split: str, images: dict[str, torch.Tensor], global_step: int,
                  current_epoch: int, batch_idx: int) -> list[str]:
        root = os.path.join(save_dir, "images", split)
        os.makedirs(root, exist_ok=True)
        written = []
        for k, imgs in images.items():
            grid = torchvision.utils.make_grid(imgs, nrow=4)
            if self.rescale:
                grid = (grid + 1.0) / 2.0  # [-1, 1] -> [0, 1]
            grid = grid.permute(1, 2, 0).squeeze(-1).numpy()
            grid = (grid * 255).clip(0, 255).astype(np.uint8)
            filename = f"{k}_gs-{global_step:06}_e-{current_epoch:06}_b-{batch_idx:06}.png"
            path = os.path.join(root, filename)
            Image.fromarray(grid).save(path)
            written.append(path)
        return written

    def log_img(self, pl_module: pl.LightningModule, batch: Any, batch_idx: int, split: str = "train") -> None:
        check_idx = batch_idx if self.log_on_batch_idx else pl_module.global_step
        if not (self.check_frequency(check_idx) and callable(getattr(pl_module, "log_images", None))
                and self.max_images > 0):
            return
        was_training = pl_module.training
        if was_training:
            pl_module.eval()
        with torch.no_grad():
            images = pl_module.log_images(batch, split=split, **self.log_images_kwargs)
        prepared = {}
        for k, v in images.items():
            if not isinstance(v, torch.Tensor):
                continue
            v = v[: min(v.shape[0], self.max_images)].detach().float().cpu()
            prepared[k] = v.clamp(-1.0, 1.0) if self.clamp else v
        self.log_local(pl_module.logger.save_dir if pl_module.logger else pl_module.trainer.default_root_dir,
                       split, prepared, pl_module.global_step, pl_module.current_epoch, batch_idx)
        if was_training:
            pl_module.train()

    def check_frequency(self, check_idx: int) -> bool:
        if ((check_idx % self.batch_freq) == 0 or (check_idx in self.log_steps)) and (check_idx > 0 or self.log_first_step):
            if self.log_steps and check_idx in self.log_steps:
                self.log_steps.remove(check_idx)
            return True
        return False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.disabled and (pl_module.global_step > 0 or self.log_first_step):
            self.log_img(pl_module, batch, batch_idx, split="train")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not self.disabled and pl_module.global_step > 0:
            self.log_img(pl_module, batch, batch_idx, split="val")


class CUDACallback(pl.Callback):
    """Logs epoch time and peak CUDA memory; does nothing on other accelerators."""

    def _on_cuda(self, trainer: pl.Trainer) -> bool:
        return trainer.strategy.root_device.type == "cuda"

    def on_train_epoch_start(self, trainer, pl_module):
        if self._on_cuda(trainer):
            torch.cuda.reset_peak_memory_stats(trainer.strategy.root_device)
            torch.cuda.synchronize(trainer.strategy.root_device)
        self.start_time = time.time()

    def on_train_epoch_end(self, trainer, pl_module):
        if not self._on_cuda(trainer):
            return
        torch.cuda.synchronize(trainer.strategy.root_device)
        max_memory = torch.cuda.max_memory_allocated(trainer.strategy.root_device) / 2 ** 20
        epoch_time = time.time() - self.start_time
        max_memory = trainer.strategy.reduce(max_memory)
        epoch_time = trainer.strategy.reduce(epoch_time)
        if trainer.global_rank == 0:
            logger.info("Average epoch time: %.2f seconds; average peak memory %.2f MiB", epoch_time, max_memory)


class TrainingInterrupted(SystemExit):
    """Training stopped on a signal after writing ``last.ckpt``; the exit status is 128 + the signal number,
    as a shell reports a process ended by that signal, so schedulers do not take it for success."""

    def __init__(self, signum: int, checkpoint: str | None):
        self.signum = signum  # the signal received
        self.checkpoint = checkpoint  # the checkpoint written, or None if none could be
        super().__init__(128 + signum)


def exit_status(exc: BaseException) -> int | None:
    """The exit status for a training run that ended with ``exc``: Lightning's own SIGTERM exit (a
    `SystemExit` with status 0) becomes 128 + SIGTERM."""
    if isinstance(exc, TrainingInterrupted):
        return exc.code
    if isinstance(exc, SIGTERMException):
        return 128 + signal.SIGTERM
    return None


class SignalCheckpoint(pl.Callback):
    """Checkpoints on signals, at the end of a training batch (a consistent state: optimizer, step and EMA).

    - SIGUSR1 (sent by cluster schedulers before preemption): write ``last.ckpt`` and keep training. Under
      SLURM with auto-requeue, SIGUSR1 is left to Lightning, which checkpoints and requeues the job.
    - SIGTERM and SIGINT (Ctrl-C): write ``last.ckpt``, then stop with `TrainingInterrupted` (exit status
      128 + the signal number). A second Ctrl-C stops at once, without a checkpoint.
    Outside training the signals keep their default behaviour.
    """

    def __init__(self, ckptdir: str, signum: int = getattr(signal, "SIGUSR1", 10)):
        super().__init__()
        self.ckptdir = ckptdir  # where last.ckpt goes
        self.signum = signum  # the signal that asks for a checkpoint without stopping
        self.requested = False  # a checkpoint was asked for
        self.stop_signal: int | None = None  # the signal that asked training to stop
        self._training = False
        self._previous: dict[int, Any] = {}

    def _handled_signals(self, trainer: pl.Trainer) -> list[int]:
        from lightning_fabric.plugins.environments import SLURMEnvironment

        signals = [signal.SIGTERM, signal.SIGINT]
        environment = trainer._accelerator_connector.cluster_environment
        if hasattr(signal, "SIGUSR1") and not (isinstance(environment, SLURMEnvironment) and environment.auto_requeue):
            signals.append(self.signum)
        return signals

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or threading.current_thread() is not threading.main_thread():
            return
        for signum in self._handled_signals(trainer):
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._training = False
        for signum, handler in self._previous.items():
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == self.signum and signum not in (signal.SIGTERM, signal.SIGINT):
            self.requested = True
            return
        if not self._training or (signum == signal.SIGINT and self.stop_signal == signal.SIGINT):
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.stop_signal is None:
            logger.info("Received %s: writing last.ckpt at the end of this batch, then stopping",
                        signal.Signals(signum).name)
        self.stop_signal = signum

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._training = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._training = False

    def _save(self, trainer: pl.Trainer) -> str:
        path = os.path.join(self.ckptdir, "last.ckpt")
        trainer.save_checkpoint(path)
        return path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        stop = self.stop_signal is not None
        if trainer.world_size > 1:  # every rank must take part in the save
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            signum = self.stop_signal or signal.SIGTERM
            path = self._save(trainer)
            if trainer.is_global_zero:
                logger.info("Stopped by %s at step %d; wrote %s. Continue with --resume",
                            signal.Signals(signum).name, trainer.global_step, path)
            self._training = False
            raise TrainingInterrupted(signum, path)
        if self.requested:
            self.requested = False
            path = self._save(trainer)
            logger.info("Signal received: saved checkpoint to %s", path)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Lightning stops on SIGTERM by itself during validation; write the checkpoint then
        if isinstance(exception, SIGTERMException) and self.stop_signal is not None and trainer.world_size == 1:
            try:
                path = self._save(trainer)
                logger.info("Stopped by SIGTERM at step %d; wrote %s. Continue with --resume",
                            trainer.global_step, path)
            except Exception as err:  # noqa: BLE001 - stopping anyway; say why there is no checkpoint
                logger.error("Stopped by SIGTERM; could not write last.ckpt: %s", err)
        self._training = False


class ThreadWatch(pl.Callback):
    """Revisits the automatic CPU thread count (`ldm.threads`) every ``interval`` seconds of training:
    other work that starts during a run would otherwise make one thread per core many times slower,
    and cores it leaves free would stay unused."""

    def __init__(self, interval: float = 30.0, processes: int = 1):
        super().__init__()
        self.interval = interval  # seconds between two looks at the load
        self.processes = processes  # training processes sharing this machine's cores
        self._watch: Any = None
        self._last = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from ldm.threads import LoadWatch

        self._watch, self._last = LoadWatch(), time.monotonic()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._watch is None or time.monotonic() - self._last < self.interval:
            return
        from ldm.threads import available_cores, free_cores

        self._last = time.monotonic()
        busy = self._watch.others_busy()
        if busy is None:
            return
        threads = free_cores(busy, available_cores(), self.processes)
        if threads != torch.get_num_threads():
            progress_logger.info("CPU threads: %d -> %d (%.1f cores busy with other work)",
                                 torch.get_num_threads(), threads, busy)
            torch.set_num_threads(threads)


def _is_step_limited(trainer: pl.Trainer) -> bool:
    """Training stops at ``max_steps`` (not after a number of epochs)."""
    return trainer.max_steps is not None and trainer.max_steps > 0 and trainer.max_epochs in (None, -1)


def _format_duration(seconds: float) -> str:
    """``1h02m03s``, ``4m05s`` or ``17s``."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _loss_value(outputs: Any, metrics: dict[str, Any]) -> tuple[str, float] | None:
    """The training loss of the last batch: the step's returned loss, else the first logged
    per-step metric with "loss" in its name (the autoencoders log ``aeloss_step``)."""
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        return "loss", float(loss)
    candidates = [k for k in metrics if "loss" in k and not k.endswith("_epoch") and not k.startswith("val")]
    steps = [k for k in candidates if k.endswith("_step")] or candidates
    if steps:
        value = metrics[steps[0]]
        return steps[0], float(value) if not isinstance(value, torch.Tensor) else float(value.detach().float())
    return None


class ProgressLog(pl.Callback):
    """Logs one line of progress every ``interval`` seconds (and after the first and the last step):

        step 1200/2500 (48.0%) epoch 1 | loss 0.1234 | 5.21 it/s | elapsed 3m50s | ETA 4m09s

    "it/s" is optimizer steps per second since the previous line; the ETA assumes that speed for the
    remaining steps. Lightning's progress bar draws only on a terminal: this is what a run whose output
    goes to a file, a scheduler or CI shows instead. Rank 0 only.
    """

    def __init__(self, interval: float = 20.0):
        super().__init__()
        if interval < 0:
            raise ValueError(f"ProgressLog interval must be >= 0 seconds (0 logs every step); got {interval}")
        self.interval = interval  # seconds between two lines; 0 logs every step
        self._last_time = 0.0
        self._last_step = 0
        self._start_time = 0.0
        self._start_step = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_time = self._last_time = time.monotonic()
        self._start_step = self._last_step = trainer.global_step
        if trainer.is_global_zero:
            target = f"step {trainer.max_steps}" if _is_step_limited(trainer) else f"{trainer.max_epochs} epochs"
            start = f"from step {trainer.global_step}" if trainer.global_step else "from step 0"
            progress_logger.info("training %s to %s; progress every %gs", start, target, self.interval)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.monotonic()
        first = self._last_step == self._start_step
        done = _is_step_limited(trainer) and trainer.global_step >= trainer.max_steps
        if trainer.is_global_zero and (first or done or now - self._last_time >= self.interval):
            progress_logger.info(self.line(trainer, outputs, now))
            self._last_time, self._last_step = now, trainer.global_step

    def line(self, trainer: pl.Trainer, outputs: Any, now: float) -> str:
        step = trainer.global_step
        dt = now - self._last_time
        rate = (step - self._last_step) / dt if dt > 0 else float("nan")
        if _is_step_limited(trainer):
            position = f"step {step}/{trainer.max_steps} ({100.0 * step / trainer.max_steps:.1f}%)"
            eta = f"ETA {_format_duration((trainer.max_steps - step) / rate)}" if rate > 0 else "ETA ?"
        else:
            position, eta = f"step {step}", None
        parts = [f"{position} epoch {trainer.current_epoch}"]
        loss = _loss_value(outputs, trainer.callback_metrics)
        if loss is not None:
            parts.append(f"{loss[0]} {loss[1]:.4g}")
        parts.append(f"{rate:.2f} it/s" if math.isfinite(rate) else "it/s ?")
        parts.append(f"elapsed {_format_duration(now - self._start_time)}")
        if eta:
            parts.append(eta)
        return " | ".join(parts)


class StepProgressBar(TQDMProgressBar):
    """Lightning's terminal bar, counting optimizer steps (``global_step``) towards ``max_steps`` over the
    whole run when training is limited by steps, so that it agrees with ``max_steps``, the checkpoints and
    the logs (also for models that step two optimizers per batch, and after a resume). Runs limited by
    epochs keep the per-epoch bar."""

    @property
    def total_train_batches(self) -> int | float:
        if _is_step_limited(self.trainer):
            return self.trainer.max_steps
        return super().total_train_batches

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        if _is_step_limited(trainer) and self.train_progress_bar is not None:
            self.train_progress_bar.initial = trainer.global_step
            self.train_progress_bar.n = trainer.global_step
            self.train_progress_bar.refresh()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not _is_step_limited(trainer):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        bar = self.train_progress_bar
        if bar is not None and self._should_update(trainer.global_step, bar.total):
            bar.n = trainer.global_step
            bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))
