"""The names under which configs and ``main.py`` reach the training callbacks (``target:
ldm.callbacks.ImageLogger``, ...): they live in `ldm.training`, one module per concern."""
from ldm.training.checkpointing import (LEGACY_CALLBACK_KEY, AtomicCheckpointIO, DiskFullError, RunCheckpoint,
                                        SignalCheckpoint, TrainingInterrupted, exit_status)
from ldm.training.image_logger import ImageLogger
from ldm.training.progress import ProgressLog, StepProgressBar, progress_logger
from ldm.training.resources import CUDACallback, ThreadWatch
from ldm.training.run_setup import SetupCallback

__all__ = ["AtomicCheckpointIO", "CUDACallback", "DiskFullError", "ImageLogger", "LEGACY_CALLBACK_KEY", "ProgressLog",
           "RunCheckpoint", "SetupCallback", "SignalCheckpoint", "StepProgressBar", "ThreadWatch",
           "TrainingInterrupted", "exit_status", "progress_logger"]
