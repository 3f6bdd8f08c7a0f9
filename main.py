"""Train autoencoders and latent diffusion models from YAML configs with PyTorch Lightning 2.x.

    python main.py --base configs/latent-diffusion/<config>.yaml -t --gpus 0,
    python main.py --base configs/demo/ldm_shapes_cond.yaml -t --accelerator cpu lightning.trainer.max_steps=100
    python main.py --resume logs/<timestamp>_<name>          # continue a run from its last.ckpt

Several ``--base`` configs are merged in order; trailing ``key=value`` arguments override single entries.
A run writes ``logs/<timestamp>_<name>/`` with ``checkpoints/`` (``last.ckpt`` and the monitored best),
``configs/`` (the merged project and lightning configs) and ``images/train``, ``images/val``.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import inspect
import logging
import os
import sys
import warnings
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ldm.threads import apply_threads, choose_threads

# torch, Lightning and the models are imported when they are needed, so that `--help` and argument
# errors are immediate. Configs name `main.DataModuleFromConfig` and `main.ImageLogger` as targets:
# `__getattr__` below provides them (and the other callbacks) on first use.
_LAZY_ATTRIBUTES = {
    "DataModuleFromConfig": "ldm.data.datamodule", "WrappedDataset": "ldm.data.datamodule",
    "ImageLogger": "ldm.callbacks", "SetupCallback": "ldm.callbacks", "CUDACallback": "ldm.callbacks",
    "SignalCheckpoint": "ldm.callbacks",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY_ATTRIBUTES:
        import importlib

        return getattr(importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


logger = logging.getLogger("main")

#: Trainer options that can be given on the command line as well as in ``lightning.trainer``.
TRAINER_FLAGS = ("accelerator", "devices", "strategy", "num_nodes", "precision", "max_steps", "max_epochs")


class UsageError(SystemExit):
    """A bad command line or config, reported before any training starts."""

    def __init__(self, message: str):
        super().__init__(f"main.py: error: {message}")


def str2bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected (true/false, yes/no, 1/0); got {v!r}")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--name", type=str, const=True, default="", nargs="?", help="postfix for logdir")
    parser.add_argument("-r", "--resume", type=str, const=True, default="", nargs="?",
                        help="resume from a logdir or a checkpoint in a logdir")
    parser.add_argument("-b", "--base", nargs="*", metavar="base_config.yaml", default=list(),
                        help="paths to base configs, loaded from left to right; "
                             "parameters can be overwritten or added with command-line options of the form `--key value`.")
    parser.add_argument("-t", "--train", type=str2bool, const=True, default=None, nargs="?",
                        help="train (the default with --resume; -t false only tests)")
    parser.add_argument("--no-test", type=str2bool, const=True, default=False, nargs="?", help="disable test")
    parser.add_argument("-s", "--seed", type=int, default=23, help="seed for seed_everything")
    parser.add_argument("-f", "--postfix", type=str, default="", help="post-postfix for default name")
    parser.add_argument("-l", "--logdir", type=str, default="logs", help="directory for logging data")
    parser.add_argument("--check_images", type=int, default=10000, metavar="N",
                        help="before training, decode every image file of datasets with at most N files, so a "
                             "corrupt image stops the run at once with its path (0 switches the check off)")
    parser.add_argument("--threads", type=str, default=None, metavar="N",
                        help="CPU threads for torch (default: the cores not busy with other work, or "
                             "OMP_NUM_THREADS / MKL_NUM_THREADS when set)")
    parser.add_argument("--scale_lr", type=str2bool, nargs="?", const=True, default=True,
                        help="scale base-lr by ngpu * batch_size * n_accumulate")
    trainer = parser.add_argument_group("trainer", "Lightning Trainer options (override lightning.trainer.*)")
    trainer.add_argument("--gpus", type=str, default=None,
                         help="CUDA devices as in the original: '0,' for GPU 0, '0,1' for two GPUs")
    trainer.add_argument("--accelerator", type=str, default=None, help="cpu, gpu, cuda, mps or auto")
    trainer.add_argument("--devices", type=str, default=None, help="number of devices, or a list like '0,1'")
    trainer.add_argument("--strategy", type=str, default=None, help="auto, ddp, ddp_spawn, fsdp, ...")
    trainer.add_argument("--num_nodes", type=int, default=None, help="number of nodes for multi-node training")
    trainer.add_argument("--precision", type=str, default=None, help="32, 16-mixed, bf16-mixed, ...")
    parser.add_argument("--compile", type=str2bool, nargs="?", const=True, default=False,
                        help="run the diffusion model's U-Net through torch.compile (forward and backward); the "
                             "first steps compile, later ones run faster; where compilation is unavailable the "
                             "model runs eagerly after a warning")
    trainer.add_argument("--max_steps", type=int, default=None, help="stop after this many optimizer steps")
    trainer.add_argument("--max_epochs", type=int, default=None, help="stop after this many epochs")
    return parser


def parse_devices(value: Any) -> Any:
    """'0,' -> [0]; '0,1' -> [0, 1]; '2' -> 2; 'auto' -> 'auto'; a list (also a config's) -> a list."""
    if isinstance(value, (int, list)) or value is None:
        return value
    if OmegaConf.is_list(value):
        return list(value)
    text = str(value).strip()
    if text in ("auto", "-1"):
        return "auto" if text == "auto" else -1
    if "," in text:
        try:
            return [int(p) for p in text.split(",") if p.strip()]
        except ValueError:
            raise UsageError(f"devices must be a count or a comma-separated list of ids like '0,1'; got {value!r}")
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"devices must be a count or a comma-separated list of ids like '0,1'; got {value!r}")


def check_device_count(devices: Any) -> None:
    """A device count is >= 1 (or -1 / 'auto' for all); a list of ids is non-empty and non-negative."""
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        if not devices or any(not isinstance(d, int) or d < 0 for d in devices):
            raise UsageError(f"devices must list device ids >= 0, such as '0,1'; got {list(devices)!r}")
    elif isinstance(devices, int) and (devices == 0 or devices < -1):
        raise UsageError(f"devices must be a count >= 1, -1 or 'auto' for all, or ids like '0,'; got {devices}")


def parse_overrides(unknown: list[str]) -> DictConfig:
    """Trailing ``key=value`` arguments; anything else is an unknown flag."""
    for arg in unknown:
        if arg.startswith("-"):
            raise UsageError(f"unknown option {arg!r}; see `python main.py --help` "
                             f"(config values are set as key=value, e.g. lightning.trainer.max_steps=100)")
        if "=" not in arg:
            raise UsageError(f"unexpected argument {arg!r}: config overrides take the form key=value")
        key = arg.split("=", 1)[0]
        if any(not part.strip() for part in key.split(".")):
            raise UsageError(f"override {arg!r} from the command line has an empty key; write key=value with a "
                             f"dotted key such as lightning.trainer.max_steps=100")
    return OmegaConf.from_dotlist(unknown)


def resolve_run_dirs(opt: argparse.Namespace, now: str) -> tuple[str, str]:
    """Returns ``(logdir, ckpt)``; fills ``opt.base`` with the run's configs when resuming."""
    if opt.name and opt.resume:
        raise UsageError("-n/--name and -r/--resume cannot be given together. If you want to resume training "
                         "in a new log folder, use -n/--name with the base configs of the old run.")
    if opt.resume:
        if not os.path.exists(opt.resume):
            raise UsageError(f"cannot resume: {opt.resume!r} does not exist (give a run directory under logs/ "
                             f"or a checkpoint inside one)")
        if os.path.isfile(opt.resume):
            ckpt = opt.resume
            parts = os.path.normpath(opt.resume).split(os.sep)
            if "checkpoints" not in parts:
                raise UsageError(f"cannot resume from {opt.resume!r}: the checkpoint must lie in a run's "
                                 f"checkpoints/ folder so that its configs can be found")
            logdir = os.sep.join(parts[: len(parts) - 1 - parts[::-1].index("checkpoints")])
        else:
            logdir = opt.resume.rstrip("/")
            ckpt = os.path.join(logdir, "checkpoints", "last.ckpt")
            if not os.path.isfile(ckpt):
                what = "is a directory, not a checkpoint file" if os.path.isdir(ckpt) else "does not exist"
                raise UsageError(f"cannot resume from {logdir!r}: {ckpt} {what}")
        base_configs = sorted(glob.glob(os.path.join(logdir, "configs", "*.yaml")))
        opt.base = base_configs + opt.base
        return logdir, ckpt
    if opt.name:
        name = "_" + opt.name
    elif opt.base:
        name = "_" + os.path.splitext(os.path.basename(opt.base[0]))[0]
    else:
        name = ""
    return os.path.join(opt.logdir, now + name + opt.postfix), ""


def build(config_files: list[str], config: DictConfig) -> Any:
    """`instantiate_from_config`, with the config files named in any error."""
    from ldm.checkpoint import InvalidCheckpointError, UnsafeCheckpointError
    from ldm.util import ConfigError, instantiate_from_config

    try:
        return instantiate_from_config(config)
    except ConfigError as err:
        raise UsageError(f"config error in {', '.join(config_files)}: {err}")
    except (InvalidCheckpointError, UnsafeCheckpointError) as err:
        raise UsageError(f"a checkpoint named in {', '.join(config_files)} (ckpt_path) cannot be used: {err}")
    except OSError as err:  # missing data folders, file lists naming missing files, unreadable files
        raise UsageError(f"in {', '.join(config_files)}: {err}")


def load_configs(paths: list[str], overrides: DictConfig) -> DictConfig:
    if not paths:
        raise UsageError("no config given: pass one or more with --base configs/<...>.yaml")
    configs = []
    for path in paths:
        if not os.path.isfile(path):
            raise UsageError(f"config file {path!r} does not exist")
        try:
            loaded = OmegaConf.load(path)
        except Exception as err:  # noqa: BLE001 - any parse error becomes a usage error naming the file
            raise UsageError(f"config file {path!r} is not valid YAML: {err}")
        if not isinstance(loaded, DictConfig):
            raise UsageError(f"config file {path!r} holds a {type(loaded).__name__} at the top level; expected a "
                             f"mapping with model, data and lightning sections")
        configs.append(loaded)
    from ldm.config_checks import ConfigValueError, check_override_keys, check_values, override_paths

    base = OmegaConf.merge(*configs)
    try:
        check_override_keys(base, overrides, paths)
        merged = OmegaConf.merge(base, overrides)
        check_values(merged, override_paths(overrides), paths)
    except ConfigValueError as err:
        raise UsageError(str(err)) from None
    return merged


def build_trainer_config(opt: argparse.Namespace, lightning_config: DictConfig) -> tuple[DictConfig, int]:
    """Merge ``lightning.trainer`` with command-line flags; returns the config and the device count."""
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.trainer import Trainer

    trainer_config = lightning_config.get("trainer", OmegaConf.create())
    for flag in TRAINER_FLAGS:
        value = getattr(opt, flag)
        if value is not None:
            trainer_config[flag] = value
    gpus = opt.gpus if opt.gpus is not None else trainer_config.pop("gpus", None)
    trainer_config.pop("gpus", None)
    if gpus is not None and str(gpus).strip() not in ("", "None", "0"):
        devices = parse_devices(gpus if "," in str(gpus) else int(gpus))
        if not torch.cuda.is_available():
            raise UsageError(f"--gpus {gpus} asks for CUDA devices, but CUDA is not available here; "
                             f"train on the CPU with --accelerator cpu (or leave --gpus out)")
        trainer_config["accelerator"] = "gpu"
        trainer_config["devices"] = devices
    if "devices" in trainer_config:
        trainer_config["devices"] = parse_devices(trainer_config["devices"])
        check_device_count(trainer_config["devices"])
    trainer_config.setdefault("accelerator", "auto")
    accelerator = str(trainer_config["accelerator"]).lower()
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UsageError(f"accelerator {trainer_config['accelerator']!r} asks for CUDA, but no CUDA device is "
                         f"available here; use --accelerator cpu (or auto)")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise UsageError("accelerator 'mps' asks for Apple's GPU, which is not available here; use --accelerator cpu")
    allowed = set(inspect.signature(Trainer.__init__).parameters) - {"self"}
    unknown = sorted(set(trainer_config) - allowed)
    if unknown:
        raise UsageError(f"unknown trainer option(s) {', '.join(map(repr, unknown))} in lightning.trainer "
                         f"(or the command line); pytorch-lightning {pl.__version__} Trainer accepts: "
                         f"{', '.join(sorted(allowed))}")
    devices = trainer_config.get("devices", 1)
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        n_devices = len(devices)
    elif isinstance(devices, int) and devices > 0:
        n_devices = devices
    else:
        n_devices = max(torch.cuda.device_count(), 1) if trainer_config["accelerator"] in ("gpu", "cuda") else 1
    if n_devices > 1 and "strategy" not in trainer_config:
        trainer_config["strategy"] = "ddp"
    return trainer_config, n_devices


def adapt_trainer_to_manual_optimization(model: Any, trainer_args: dict[str, Any]) -> None:
    """Models that step their own optimizers (the autoencoders' generator/discriminator pair) accumulate
    gradients themselves: Lightning 2.x refuses ``accumulate_grad_batches`` for them, so the value goes
    to the model instead of the Trainer. Their alternating optimizers leave some parameters without
    gradients in each step, which DDP must be told about."""
    accumulate = trainer_args.pop("accumulate_grad_batches", None)
    if accumulate is not None:
        if not hasattr(model, "accumulate_grad_batches"):
            raise UsageError(f"lightning.trainer.accumulate_grad_batches={accumulate} is not supported by "
                             f"{type(model).__name__}, which uses manual optimization")
        model.accumulate_grad_batches = int(accumulate)
    if trainer_args.get("strategy") == "ddp":
        trainer_args["strategy"] = "ddp_find_unused_parameters_true"


def check_image_files(data: Any, limit: int) -> None:
    """Decode every image of each dataset that lists its files (``labels["file_path_"]``) and has at most
    ``limit`` of them; a corrupt or unreadable file raises with its path before training starts."""
    from PIL import Image

    for split, dataset in data.datasets.items():
        inner = getattr(dataset, "data", dataset)  # WrappedDataset
        paths = getattr(inner, "labels", {}).get("file_path_") if isinstance(getattr(inner, "labels", None), dict) else None
        if not paths:
            continue
        if len(paths) > limit:
            logger.info("%s: %d image files, more than --check_images %d: not checked ahead of training",
                        split, len(paths), limit)
            continue
        for path in paths:
            try:
                with Image.open(path) as img:
                    img.load()
            except Exception as err:  # noqa: BLE001 - any decoder failure means the file is unusable
                raise UsageError(f"data.params.{split}: image file {path!r} cannot be read ({err}); "
                                 f"remove or replace it (or pass --check_images 0 to skip this check)")


def make_logger(logdir: str, lightning_config: DictConfig) -> Any:
    from ldm.util import instantiate_from_config

    if "logger" in lightning_config:
        cfg = OmegaConf.merge({"params": {"save_dir": logdir}}, lightning_config.logger)
        return instantiate_from_config(cfg)
    try:
        import tensorboard  # noqa: F401
        from pytorch_lightning.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=logdir, name="tensorboard", version="")
    except ImportError:
        from pytorch_lightning.loggers import CSVLogger

        return CSVLogger(save_dir=logdir, name="csv", version="")


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def output_is_terminal() -> bool:
    """Whether the progress bar and the log (both on stderr) reach a terminal."""
    return sys.stderr.isatty()


def make_callbacks(opt, now, logdir, ckptdir, cfgdir, config, lightning_config, model) -> list[Any]:
    from ldm.callbacks import RunCheckpoint, SetupCallback
    from ldm.util import instantiate_from_config

    default_ckpt = {"dirpath": ckptdir, "filename": "{epoch:06}", "verbose": True, "save_last": True}
    if getattr(model, "monitor", None):
        default_ckpt.update(monitor=model.monitor, save_top_k=3)
    ckpt_cfg = OmegaConf.merge(default_ckpt, lightning_config.get("modelcheckpoint", {}).get("params", {}))
    callbacks: list[Any] = [RunCheckpoint(**OmegaConf.to_container(ckpt_cfg))]
    defaults = {
        "setup_callback": {"target": "ldm.callbacks.SetupCallback",
                           "params": {"resume": opt.resume, "now": now, "logdir": logdir, "ckptdir": ckptdir,
                                      "cfgdir": cfgdir, "config": config, "lightning_config": lightning_config}},
        "image_logger": {"target": "ldm.callbacks.ImageLogger",
                         "params": {"batch_frequency": 750, "max_images": 4, "clamp": True}},
        "learning_rate_logger": {"target": "pytorch_lightning.callbacks.LearningRateMonitor",
                                 "params": {"logging_interval": "step"}},
        "cuda_callback": {"target": "ldm.callbacks.CUDACallback"},
    }
    if opt.thread_choice.automatic:  # other work may start or stop during the run
        defaults["thread_watch"] = {"target": "ldm.callbacks.ThreadWatch",
                                    "params": {"processes": opt.thread_processes}}
    # On a terminal, the bar; otherwise (a log file, a scheduler, CI) one line of progress every 20 seconds.
    if not output_is_terminal():
        defaults["progress_log"] = {"target": "ldm.callbacks.ProgressLog", "params": {"interval": 20}}
    elif lightning_config.trainer.get("enable_progress_bar", True):
        defaults["progress_bar"] = {"target": "ldm.callbacks.StepProgressBar"}
    # After the progress callbacks, so that the step a stop signal ends on is reported before it stops.
    defaults["signal_checkpoint"] = {"target": "ldm.callbacks.SignalCheckpoint", "params": {"ckptdir": ckptdir}}
    user = lightning_config.get("callbacks", OmegaConf.create())
    if "metrics_over_trainsteps_checkpoint" in user:
        defaults["metrics_over_trainsteps_checkpoint"] = {
            "target": "pytorch_lightning.callbacks.ModelCheckpoint",
            "params": {"dirpath": os.path.join(ckptdir, "trainstep_checkpoints"),
                       "filename": "{epoch:06}-{step:09}", "verbose": True, "save_top_k": -1,
                       "every_n_train_steps": 10000, "save_weights_only": True}}
    merged = OmegaConf.merge(OmegaConf.create({k: v for k, v in defaults.items() if k != "setup_callback"}), user)
    callbacks.append(SetupCallback(**defaults["setup_callback"]["params"]))
    for key in merged:
        cfg = merged[key]
        if cfg.get("target") == "main.ImageLogger":
            cfg.target = "ldm.callbacks.ImageLogger"
        callbacks.append(instantiate_from_config(cfg))
    return callbacks


def _drop_advertisements(record: logging.LogRecord) -> bool:
    """Lightning logs a tip about a hosted experiment tracker at the start of every fit."""
    return "litlogger" not in record.getMessage()


def fit(trainer: Any, model: Any, data: Any, ckpt: str) -> None:
    """``trainer.fit``, resuming from ``ckpt`` if given; a checkpoint that cannot be resumed, a full disk
    and a stop on SIGTERM/SIGINT end the process with a one-line message and a non-zero status."""
    from ldm.callbacks import DiskFullError, exit_status
    from ldm.checkpoint import InvalidCheckpointError, UnsafeCheckpointError

    try:
        trainer.fit(model, data, ckpt_path=ckpt or None)
    except (InvalidCheckpointError, UnsafeCheckpointError) as err:
        raise UsageError(f"cannot resume from {ckpt}: {err}") from None
    except RuntimeError as err:
        if ckpt and str(err).startswith("Error(s) in loading state_dict"):
            details = "; ".join(line.strip() for line in str(err).splitlines()[1:4])
            raise UsageError(f"cannot resume from {ckpt}: its weights do not fit the model of this run's configs "
                             f"({details})") from None
        raise
    except DiskFullError as err:
        raise UsageError(str(err)) from None
    except SystemExit as exc:
        status = exit_status(exc)
        if status is not None:
            raise SystemExit(status) from None
        raise


def main(argv: list[str] | None = None) -> None:
    # Frozen parts (a latent model's first stage, the LPIPS network) stay in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    # Raised inside Lightning's own use of torch.utils._pytree; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_drop_advertisements)
    now = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    parser = get_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # key=value overrides may stand anywhere, even right after a flag with an optional value (-t, --no-test).
    # A path with "=" in it (a checkpoint named epoch=000003.ckpt after -r) is an argument, not an override.
    dotlist = [a for a in argv if "=" in a and not a.startswith("-") and not os.path.exists(a)]
    opt, unknown = parser.parse_known_args([a for a in argv if a not in dotlist])
    overrides = parse_overrides(unknown + dotlist)
    logdir, ckpt = resolve_run_dirs(opt, now)
    if opt.train is None:
        opt.train = bool(opt.resume)
        if opt.resume:
            logger.info("Resuming training from %s (-t false would only run the test split)", ckpt)
    ckptdir = os.path.join(logdir, "checkpoints")
    cfgdir = os.path.join(logdir, "configs")

    config = load_configs(opt.base, overrides)
    lightning_config = config.pop("lightning", OmegaConf.create())
    trainer_config, n_devices = build_trainer_config(opt, lightning_config)
    lightning_config.trainer = trainer_config
    will_test = not opt.no_test and "test" in (config.get("data") or {}).get("params", {})
    if not opt.train and not will_test:
        raise UsageError("nothing to do: training is off (no -t, or -t false) and "
                         + ("testing is off (--no-test)" if opt.no_test else
                            "the config has no test split (data.params.test)") + "; pass -t to train")
    try:
        on_cpu = trainer_config.get("accelerator") == "cpu" or not torch_cuda_available()
        opt.thread_processes = n_devices if on_cpu else 1
        threads = opt.thread_choice = choose_threads(opt.threads, processes=opt.thread_processes)
    except ValueError as err:
        raise UsageError(str(err))
    logging.getLogger("ldm.threads").info(apply_threads(threads).describe())
    if not output_is_terminal():
        trainer_config.setdefault("enable_progress_bar", False)  # ProgressLog writes the progress instead

    from pytorch_lightning import seed_everything
    from pytorch_lightning.trainer import Trainer

    from ldm.callbacks import AtomicCheckpointIO

    seed_everything(opt.seed, workers=True)
    if "model" not in config:
        raise UsageError(f"the merged config of {opt.base} has no 'model' section")
    if opt.train and "data" not in config:
        raise UsageError(f"the merged config of {opt.base} has no 'data' section: training needs one "
                         f"(see configs/demo/ for small examples)")

    # Data first: a missing data path fails here, before the model is built.
    data = None
    if "data" in config:
        data = build(opt.base, config.data)
        from ldm.util import ConfigError

        try:
            data.prepare_data()
            data.setup(stage="fit" if opt.train else "test")
        except (ConfigError, OSError) as err:  # the datasets are built here: missing or empty folders and lists
            raise UsageError(f"data config in {', '.join(opt.base)}: {err}") from None
        for name, dataset in data.datasets.items():
            logger.info("%s: %s with %d examples", name, dataset.__class__.__name__, len(dataset))
        if opt.train and opt.check_images > 0:
            check_image_files(data, opt.check_images)

    model = build(opt.base, config.model)
    if opt.compile:
        from ldm.compile import compile_unet

        compile_unet(model, freeze=False)  # the weights change as it trains: not constants of the graph

    trainer_kwargs = {
        "logger": make_logger(logdir, lightning_config),
        "callbacks": make_callbacks(opt, now, logdir, ckptdir, cfgdir, config, lightning_config, model),
        "plugins": [AtomicCheckpointIO()],
        "default_root_dir": logdir,
    }
    trainer_args = OmegaConf.to_container(trainer_config, resolve=True)
    accumulate = trainer_args.get("accumulate_grad_batches", 1) or 1
    if not model.automatic_optimization:
        adapt_trainer_to_manual_optimization(model, trainer_args)
    trainer = Trainer(**trainer_args, **trainer_kwargs)

    base_lr = config.model.get("base_learning_rate", getattr(model, "learning_rate", 1.0e-4))
    if data is not None and opt.scale_lr:
        bs = config.data.params.batch_size
        n_nodes = trainer_config.get("num_nodes", 1) or 1
        model.learning_rate = accumulate * n_devices * n_nodes * bs * base_lr
        if trainer.global_rank == 0:
            logger.info("Setting learning rate to %.2e = %d (accumulate_grad_batches) * %d (num_devices) * "
                        "%d (num_nodes) * %d (batchsize) * %.2e (base_lr)",
                        model.learning_rate, accumulate, n_devices, n_nodes, bs, base_lr)
    else:
        model.learning_rate = base_lr
        logger.info("Using base learning rate %.2e (no scaling)", base_lr)

    if opt.train:
        fit(trainer, model, data, ckpt)
    if will_test and not trainer.interrupted:
        trainer.test(model, data)


if __name__ == "__main__":
    main()
