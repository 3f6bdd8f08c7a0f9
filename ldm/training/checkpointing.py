"""Checkpoints of a training run, kept consistent across kills, full disks and resumes.

- `AtomicCheckpointIO`: every checkpoint is written to a temporary file, then renamed into place, so a
  killed run leaves either the previous checkpoint or the new one, never a truncated file; a full disk
  raises `DiskFullError`; every checkpoint that Lightning reads (``--resume``) goes through
  `ldm.checkpoint.load_checkpoint`, which runs no code from the file and reads Lightning-1.x checkpoints.
- `RunCheckpoint`: Lightning's `ModelCheckpoint` that writes ``last.ckpt`` before any top-k file, removes
  temporary files left by killed saves and top-k files that the resumed state does not know, so that
  ``save_top_k`` holds across kills, and that also writes ``last.ckpt`` at the final step of a run.
- `SignalCheckpoint`: on SIGUSR1 writes ``last.ckpt`` and trains on; on SIGTERM or Ctrl-C (SIGINT) writes
  ``last.ckpt`` at the end of the current batch and stops with exit status 128 + the signal number
  (`TrainingInterrupted`, `exit_status`).
"""
from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ldm.checkpoint import InvalidCheckpointError, atomic_path, is_stand_in, load_checkpoint, remove_stale_temp_files
from ldm.training.progress import progress_logger

logger = logging.getLogger(__name__)

#: Prefix of the callback-state keys under which a Lightning-1.x checkpoint's class-keyed states are kept.
LEGACY_CALLBACK_KEY = "lightning-1.x:"


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
        if self._training and self.stop_signal is not None:
            logger.info("Received %s after the last step; the run is complete and last.ckpt holds its final step",
                        signal.Signals(self.stop_signal).name)
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

    # Training counts as running until teardown, not until on_train_end: Lightning calls the checkpoint
    # callbacks' on_train_end after this one, and `RunCheckpoint` writes the final step there. A signal in that
    # window is recorded (the final step is being saved anyway) instead of killing the process mid-write.

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
