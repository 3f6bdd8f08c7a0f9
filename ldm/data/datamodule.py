"""The Lightning data module of the latent diffusion training driver (Rombach et al., CVPR 2022).

``DataModuleFromConfig`` builds the train/validation/test/predict datasets from ``{target, params}``
configs (``data.params`` of every config, ``target: main.DataModuleFromConfig``) and serves them
through DataLoaders. ``WrappedDataset`` turns any object with ``__len__`` and ``__getitem__`` into a
torch dataset (``wrap: true``). ``worker_init_fn`` seeds numpy and ``random`` per loader worker and
gives each worker its slice of a ``Txt2ImgIterableBaseDataset``.
"""
from __future__ import annotations

import logging
import os
import random
from functools import partial
from typing import Any, Mapping

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ldm.data.base import Txt2ImgIterableBaseDataset
from ldm.util import instantiate_from_config

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test", "predict")


class WrappedDataset(Dataset):
    """Wraps an arbitrary object with ``__len__`` and ``__getitem__`` into a torch dataset."""

    def __init__(self, dataset: Any):
        self.data = dataset

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx: int) -> Any:
        return self.data[idx]


def worker_init_fn(_: int) -> None:
    """Seed numpy and ``random`` from the worker's torch seed (distinct per worker and epoch), and give
    an iterable ``Txt2ImgIterableBaseDataset`` the worker's share of its ``valid_ids``."""
    worker_info = torch.utils.data.get_worker_info()
    dataset = worker_info.dataset
    if isinstance(dataset, Txt2ImgIterableBaseDataset):
        split_size = dataset.num_records // worker_info.num_workers
        dataset.sample_ids = dataset.valid_ids[worker_info.id * split_size:(worker_info.id + 1) * split_size]
    seed = worker_info.seed % 2**32
    np.random.seed(seed)
    random.seed(seed)


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not available on macOS and Windows
        return os.cpu_count() or 1


class DataModuleFromConfig(pl.LightningDataModule):
    """Datasets built from configs, served in batches of ``batch_size``. Only the configured splits get
    a dataloader method, so Lightning skips validation when no ``validation`` config is given."""

    def __init__(
        self,
        batch_size: int,                             # examples per batch (per device)
        train: Mapping[str, Any] | None = None,      # {target, params} of the training dataset
        validation: Mapping[str, Any] | None = None, # {target, params} of the validation dataset
        test: Mapping[str, Any] | None = None,       # {target, params} of the test dataset
        predict: Mapping[str, Any] | None = None,    # {target, params} of the prediction dataset
        wrap: bool = False,                          # wrap each dataset in WrappedDataset
        num_workers: int | None = None,              # loader processes; None: 2 * batch_size; capped at the CPUs
        shuffle_test_loader: bool = False,           # shuffle the test loader
        use_worker_init_fn: bool = False,            # seed numpy/random per worker also for map-style datasets
        shuffle_val_dataloader: bool = False,        # shuffle the validation loader
    ):
        super().__init__()
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 0):
            raise ValueError(f"num_workers must be a non-negative integer or None; got {num_workers!r}")
        self.batch_size = batch_size
        requested = num_workers if num_workers is not None else batch_size * 2
        self.num_workers = min(requested, available_cpus())
        if self.num_workers < requested:
            logger.info("num_workers %d capped at the %d available CPUs", requested, self.num_workers)
        self.use_worker_init_fn = use_worker_init_fn
        self.wrap = wrap
        self.dataset_configs: dict[str, Any] = {}
        self.datasets: dict[str, Any] = {}
        for split, config in zip(SPLITS, (train, validation, test, predict)):
            if config is None:
                continue
            if not hasattr(config, "keys") or "target" not in config:
                raise ValueError(f"data.params.{split} must be a mapping with 'target' (the dataset class path) "
                                 f"and optional 'params'; got {config!r}")
            self.dataset_configs[split] = config
        if "train" in self.dataset_configs:
            self.train_dataloader = self._train_dataloader
        if "validation" in self.dataset_configs:
            self.val_dataloader = partial(self._val_dataloader, shuffle=shuffle_val_dataloader)
        if "test" in self.dataset_configs:
            self.test_dataloader = partial(self._test_dataloader, shuffle=shuffle_test_loader)
        if "predict" in self.dataset_configs:
            self.predict_dataloader = self._predict_dataloader

    def _instantiate(self, split: str) -> Any:
        return instantiate_from_config(self.dataset_configs[split], where=f"data.params.{split}")

    def prepare_data(self) -> None:
        """Build every dataset once on the main process, so that one-time preparation (file lists,
        archive extraction) happens there and a missing path fails before training starts."""
        for split in self.dataset_configs:
            self._instantiate(split)

    def setup(self, stage: str | None = None) -> None:
        for split in self.dataset_configs:
            if split in self.datasets:
                continue
            dataset = self._instantiate(split)
            self.datasets[split] = WrappedDataset(dataset) if self.wrap else dataset

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup()
        dataset = self.datasets[split]
        iterable = isinstance(dataset, IterableDataset)
        init_fn = worker_init_fn if isinstance(dataset, Txt2ImgIterableBaseDataset) or self.use_worker_init_fn else None
        return DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                          shuffle=shuffle and not iterable, worker_init_fn=init_fn,
                          persistent_workers=self.num_workers > 0)

    def _train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def _val_dataloader(self, shuffle: bool = False) -> DataLoader:
        return self._loader("validation", shuffle=shuffle)

    def _test_dataloader(self, shuffle: bool = False) -> DataLoader:
        return self._loader("test", shuffle=shuffle)

    def _predict_dataloader(self, shuffle: bool = False) -> DataLoader:
        return self._loader("predict", shuffle=shuffle)
