"""Safe loading and atomic saving of model-zoo checkpoints: the one door every weight file passes through.

The checkpoints released with "High-Resolution Image Synthesis with Latent Diffusion Models"
(Rombach et al., CVPR 2022) are pytorch-lightning 1.x pickles. Beside ``state_dict`` they hold
``epoch``, ``global_step``, optimizer and scheduler states, ``hparams``/``hyper_parameters`` (possibly
omegaconf ``DictConfig`` or ``argparse.Namespace`` objects) and ``callbacks`` keyed by Lightning
classes. A pickle can run any code while it loads, so `load_checkpoint` never lets the file name an
arbitrary global. One module per job:

- `ldm.checkpoint.standins`: inert stand-ins for the Lightning/omegaconf/argparse classes a checkpoint names;
- `ldm.checkpoint.allowlist`: the globals a checkpoint may name and the calls it may make, with their checks;
- `ldm.checkpoint.unpickler`: the restricted unpickler that ``torch.load`` runs;
- `ldm.checkpoint.formats`: checks of the file and its format, read from its content;
- `ldm.checkpoint.state_dicts`: `load_checkpoint`, the one loading function, and the state-dict helpers on it;
- `ldm.checkpoint.saving`: atomic saving, temporary-file names and the removal of stale ones;
- `ldm.checkpoint.hints`: the download hint for missing model-zoo files;
- `ldm.checkpoint.pretrained`: `load_pretrained`, the door to Hugging Face folders (tokenizers, CLIP, DINOv2);
- `ldm.checkpoint.errors`: `UnsafeCheckpointError` and `InvalidCheckpointError`;
- `ldm.checkpoint.commands`: ``python -m ldm.checkpoint {convert IN OUT | info PATH}``.

The names below are importable from the package itself. They are imported on first use, so that the
modules that need no torch (`hints`, `errors`) can be imported by the scripts before torch is.
"""
from __future__ import annotations

import importlib
from typing import Any

#: The public names of the package, by the module that defines them.
_EXPORTS = {
    "errors": ("InvalidCheckpointError", "UnsafeCheckpointError"),
    "standins": ("STAND_IN_MODULES", "StandIn", "is_stand_in", "stand_in_class", "to_builtin"),
    "allowlist": ("resolve_global",),
    "unpickler": ("restricted_pickle_module",),
    "state_dicts": ("check_weights_fit", "extract_state_dict", "load_checkpoint", "load_state_dict",
                    "restore_weights"),
    "saving": ("atomic_path", "atomic_write_bytes", "convert_to_safetensors", "remove_stale_temp_files",
               "save_checkpoint_atomic", "temp_file_owner", "temp_path"),
    "hints": ("DOWNLOAD_SCRIPTS", "download_hint"),
    "pretrained": ("MissingPretrainedFiles", "describe_files", "find_local_files", "hf_cache_dir", "load_pretrained"),
    "commands": ("main",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}; it exports {', '.join(__all__)}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
