"""The two errors of the checkpoint loader: a file that names something it may not (`UnsafeCheckpointError`,
raised before anything from the file runs) and a file that cannot be read as a checkpoint
(`InvalidCheckpointError`)."""
from __future__ import annotations

import pickle


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint referred to a global outside the allow-list; nothing from it was executed."""

    def __init__(self, global_name: str, source: str, reason: str):
        self.global_name = global_name  # "module.name" of the refused global
        self.source = source  # the file being loaded
        self.reason = reason  # why it was refused
        super().__init__(
            f"refused to load '{global_name}' from checkpoint {source}: {reason}. Nothing from the file was "
            f"executed. Checkpoints may only hold tensors, containers, numbers, strings, numpy arrays and "
            f"Lightning/omegaconf/argparse objects (loaded as inert stand-ins)."
        )


class InvalidCheckpointError(RuntimeError):
    """A file that exists but cannot be read as a checkpoint (empty, truncated, corrupt, wrong format)."""
