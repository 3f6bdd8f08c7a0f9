"""ImageNet (ILSVRC2012) for class-conditional latent diffusion and super-resolution (Rombach et al., CVPR 2022).

- ``ImageNetTrain`` / ``ImageNetValidation``: images with ``class_label``, ``human_label``, ``synset``
  (and the original's ``synsets``, ``relpath``, ``file_path_``), configured as the original configs do
  (``config: {size: 256}``).
- ``ImageNetSR`` / ``ImageNetSRTrain`` / ``ImageNetSRValidation``: ``image`` and its degraded
  ``LR_image`` (``ldm.data.superres``).

Nothing is downloaded. A split lives in ``<data_root>/ILSVRC2012_train`` (or ``_validation``), by
default under ``$XDG_CACHE_HOME/autoencoders/data`` (``~/.cache/autoencoders/data``) as in the
original. The split is prepared once, from either
- an extracted ``data/`` folder with one subfolder per synset (``data/n01440764/*.JPEG``), or
- the official tar files placed in the split folder: ``ILSVRC2012_img_train.tar`` (which holds one
  tar per synset), or ``ILSVRC2012_img_val.tar`` together with ``validation_synset.txt`` (one line
  ``<file name> <synset>`` per validation image);
preparing writes ``filelist.txt`` and a ``.ready`` marker. The synset -> index and index -> name tables
come from the repository's ``data/index_synset.yaml`` and ``data/imagenet_clsidx_to_label.txt``.
"""
from __future__ import annotations

import ast
import functools
import glob
import logging
import os
import pickle
import shutil
import tarfile
from typing import Any, Mapping, Sequence

import yaml
from torch.utils.data import Dataset, Subset

from ldm.data.base import ImagePaths, LabelColumns, load_image_array, resolve_path
from ldm.data.superres import SuperResolutionPipeline

logger = logging.getLogger(__name__)

INDEX_SYNSET_YAML = "data/index_synset.yaml"
CLSIDX_TO_LABEL = "data/imagenet_clsidx_to_label.txt"

#: Files the original skipped (a corrupt image in the training set).
IGNORED_FILES = frozenset({"n06596364_9591.JPEG"})

#: Image file endings looked for in a prepared split.
IMAGENET_EXTENSIONS = (".JPEG", ".jpeg", ".jpg", ".JPG", ".png", ".PNG")


def retrieve(config: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """``config[a][b]`` for ``key`` "a/b"; ``default`` when any level is missing."""
    node: Any = config
    for part in key.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


@functools.lru_cache(maxsize=8)
def _read_yaml_table(path: str) -> dict[int, str]:
    resolved = resolve_path(path)
    if not os.path.isfile(resolved):
        raise FileNotFoundError(f"{path!r} not found; it ships with the repository and maps class index -> synset")
    with open(resolved, "r", encoding="utf-8") as f:
        table = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return {int(k): str(v) for k, v in table.items()}


def synset2idx(path_to_yaml: str = INDEX_SYNSET_YAML) -> dict[str, int]:
    """synset id (``n01440764``) -> ImageNet class index."""
    return {v: k for k, v in _read_yaml_table(path_to_yaml).items()}


def str_to_indices(string: str) -> list[int]:
    """Class indices from a string such as ``"0-9,20,30-32"`` (ranges exclude the upper end, as the original)."""
    if not isinstance(string, str) or not string.strip() or string.strip().endswith(","):
        raise ValueError(f"sub_indices must look like '0-9,20,30-32'; got {string!r}")
    indices = []
    for part in string.split(","):
        bounds = part.split("-")
        try:
            if len(bounds) == 1:
                indices.append(int(bounds[0]))
            elif len(bounds) == 2:
                indices.extend(range(int(bounds[0]), int(bounds[1])))
            else:
                raise ValueError(part)
        except ValueError as err:
            raise ValueError(f"sub_indices must look like '0-9,20,30-32'; got {string!r}") from err
    return sorted(set(indices))


def give_synsets_from_indices(indices: Sequence[int], path_to_yaml: str = INDEX_SYNSET_YAML) -> list[str]:
    """The synsets of the given class indices."""
    table = _read_yaml_table(path_to_yaml)
    bad = [i for i in indices if i not in table]
    if bad:
        raise ValueError(f"class indices must be in [0, {len(table)}); got {bad[:5]}")
    return [table[i] for i in indices]


@functools.lru_cache(maxsize=4)
def synset_to_human(path_to_yaml: str = INDEX_SYNSET_YAML, path_to_labels: str = CLSIDX_TO_LABEL) -> dict[str, str]:
    """synset id -> human-readable name ("tench, Tinca tinca"), from the repository's two tables."""
    index_to_synset = _read_yaml_table(path_to_yaml)
    resolved = resolve_path(path_to_labels)
    if not os.path.isfile(resolved):
        raise FileNotFoundError(f"{path_to_labels!r} not found; it ships with the repository and maps class index "
                                f"-> name, one line \"<index>: '<name>',\" per class")
    names = {}
    with open(resolved, "r", encoding="utf-8") as f:
        for line in f:
            line = line.strip().strip("{}").rstrip(",")
            if not line:
                continue
            index, name = line.split(":", 1)
            names[int(index)] = ast.literal_eval(name.strip().rstrip("}").rstrip(","))
    return {synset: names[i] for i, synset in index_to_synset.items() if i in names}


def _safe_extract(archive: str, target: str) -> None:
    with tarfile.open(archive, "r:*") as tar:
        tar.extractall(path=target, filter="data")


def is_prepared(root: str) -> bool:
    return os.path.exists(os.path.join(root, ".ready"))


def mark_prepared(root: str) -> None:
    with open(os.path.join(root, ".ready"), "w", encoding="utf-8"):
        pass


class ImageNetBase(Dataset):
    """One prepared ImageNet split. ``config`` keys: ``size`` (default 256), ``random_crop`` per split
    (``ImageNetTrain/random_crop``, ``ImageNetValidation/random_crop``), ``sub_indices`` (keep only
    these classes, e.g. "0-99"), ``keep_orig_class_label`` (class labels are the ImageNet indices even
    for a subset; by default they are the positions among the synsets present)."""

    NAME = "ILSVRC2012"
    SPLIT_KEY = "ImageNetBase"
    RANDOM_CROP_DEFAULT = False

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,     # see the class docstring
        process_images: bool = True,                 # False: examples hold labels and file_path_ only
        data_root: str | None = None,                # folder holding the split folder (default: the cache)
    ):
        if config is not None and not isinstance(config, Mapping):
            from omegaconf import DictConfig, OmegaConf

            if not isinstance(config, DictConfig):
                raise TypeError(f"config must be a mapping such as {{size: 256}}; got {type(config).__name__}")
            config = OmegaConf.to_container(config, resolve=True)
        self.config = dict(config or {})
        self.process_images = process_images
        self.data_root = data_root
        self.keep_orig_class_label = bool(self.config.get("keep_orig_class_label", False))
        self.random_crop = bool(retrieve(self.config, f"{self.SPLIT_KEY}/random_crop", self.RANDOM_CROP_DEFAULT))
        if self.data_root:
            self.root = os.path.join(resolve_path(self.data_root), self.NAME)
        else:
            cachedir = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
            self.root = os.path.join(cachedir, "autoencoders", "data", self.NAME)
        self.datadir = os.path.join(self.root, "data")
        self.txt_filelist = os.path.join(self.root, "filelist.txt")
        self.idx2syn = INDEX_SYNSET_YAML
        self._prepare()
        self._load()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.data[i]

    def _extract_archives(self) -> None:
        """Fill ``self.datadir`` from the split's tar files (overridden per split)."""
        raise FileNotFoundError(f"no images for {self.NAME}: expected {self.datadir!r}")

    def _prepare(self) -> None:
        if is_prepared(self.root):
            return
        if not os.path.isdir(self.datadir):
            self._extract_archives()
        logger.info("Preparing %s in %s", self.NAME, self.root)
        filelist = sorted(os.path.relpath(p, start=self.datadir)
                          for ext in IMAGENET_EXTENSIONS for p in glob.glob(os.path.join(self.datadir, "*", "*" + ext)))
        if not filelist:
            raise FileNotFoundError(f"{self.datadir!r} holds no images; expected one subfolder per synset "
                                    f"(e.g. {os.path.join(self.datadir, 'n01440764', 'n01440764_10026.JPEG')!r})")
        with open(self.txt_filelist, "w", encoding="utf-8") as f:
            f.write("\n".join(p.replace(os.sep, "/") for p in filelist) + "\n")
        mark_prepared(self.root)

    def _filter_relpaths(self, relpaths: list[str]) -> list[str]:
        relpaths = [p for p in relpaths if p.split("/")[-1] not in IGNORED_FILES]
        if "sub_indices" in self.config:
            synsets = set(give_synsets_from_indices(str_to_indices(str(self.config["sub_indices"])), self.idx2syn))
            relpaths = [p for p in relpaths if p.split("/")[0] in synsets]
        return relpaths

    def _load(self) -> None:
        if not os.path.isfile(self.txt_filelist):
            raise FileNotFoundError(f"{self.txt_filelist!r} not found although {self.root!r} is marked prepared; "
                                    f"delete {os.path.join(self.root, '.ready')!r} to prepare the split again")
        with open(self.txt_filelist, "r", encoding="utf-8") as f:
            relpaths = [line for line in f.read().splitlines() if line]
        n_listed = len(relpaths)
        self.relpaths = self._filter_relpaths(relpaths)
        logger.info("Removed %d files from filelist during filtering.", n_listed - len(self.relpaths))

        self.synsets = [p.split("/")[0] for p in self.relpaths]
        self.abspaths = [os.path.join(self.datadir, p) for p in self.relpaths]
        if self.keep_orig_class_label:
            index = synset2idx(self.idx2syn)
            unknown = sorted(set(self.synsets) - set(index))
            if unknown:
                raise ValueError(f"synset folders {unknown[:5]} of {self.datadir!r} are not ImageNet synsets of "
                                 f"{self.idx2syn!r}")
            self.class_labels = [index[s] for s in self.synsets]
        else:
            index = {s: i for i, s in enumerate(sorted(set(self.synsets)))}
            self.class_labels = [index[s] for s in self.synsets]

        human_file = os.path.join(self.root, "synset_human.txt")
        if os.path.isfile(human_file):
            with open(human_file, "r", encoding="utf-8") as f:
                human = dict(line.split(maxsplit=1) for line in f.read().splitlines() if line.strip())
        else:
            human = synset_to_human(self.idx2syn)
        self.human_labels = [human.get(s, s) for s in self.synsets]

        labels = {
            "relpath": self.relpaths,
            "synsets": self.synsets,
            "synset": self.synsets,
            "class_label": self.class_labels,
            "human_label": self.human_labels,
        }
        if self.process_images:
            self.size = retrieve(self.config, "size", default=256)
            self.data = ImagePaths(self.abspaths, labels=labels, size=self.size, random_crop=self.random_crop)
        else:
            self.data = LabelColumns({**labels, "file_path_": self.abspaths})


class ImageNetSplit(ImageNetBase):
    """The constructor of the split classes, in the original's argument order: the split folder is
    ``<data_root>/<NAME>`` and ``config`` may hold ``<SPLIT_KEY>/random_crop``."""

    def __init__(
        self,
        process_images: bool = True,                 # False: examples hold labels and file_path_ only
        data_root: str | None = None,                # folder holding the split folder NAME (default: the cache)
        config: Mapping[str, Any] | None = None,     # {size, <SPLIT_KEY>/random_crop, sub_indices, ...}
    ):
        super().__init__(config=config, process_images=process_images, data_root=data_root)


class ImageNetTrain(ImageNetSplit):
    """The ILSVRC2012 training split (random crops by default)."""

    NAME = "ILSVRC2012_train"
    SPLIT_KEY = "ImageNetTrain"
    RANDOM_CROP_DEFAULT = True
    FILES = ("ILSVRC2012_img_train.tar",)

    def _extract_archives(self) -> None:
        archive = os.path.join(self.root, self.FILES[0])
        if not os.path.isfile(archive):
            raise FileNotFoundError(
                f"ImageNet training images not found: expected either {self.datadir!r} with one subfolder per synset "
                f"or the archive {archive!r} (ILSVRC2012_img_train.tar from image-net.org; nothing is downloaded). "
                f"Set data_root to the folder holding {self.NAME}/ to use another location.")
        logger.info("Extracting %s to %s", archive, self.datadir)
        os.makedirs(self.datadir, exist_ok=True)
        _safe_extract(archive, self.datadir)
        for subpath in sorted(glob.glob(os.path.join(self.datadir, "*.tar"))):
            subdir = subpath[:-len(".tar")]
            os.makedirs(subdir, exist_ok=True)
            _safe_extract(subpath, subdir)
            os.remove(subpath)  # the outer archive still holds it


class ImageNetValidation(ImageNetSplit):
    """The ILSVRC2012 validation split (centre crops by default)."""

    NAME = "ILSVRC2012_validation"
    SPLIT_KEY = "ImageNetValidation"
    RANDOM_CROP_DEFAULT = False
    FILES = ("ILSVRC2012_img_val.tar", "validation_synset.txt")

    def _extract_archives(self) -> None:
        archive, synset_file = (os.path.join(self.root, name) for name in self.FILES)
        missing = [p for p in (archive, synset_file) if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(
                f"ImageNet validation images not found: expected either {self.datadir!r} with one subfolder per "
                f"synset or both {archive!r} (from image-net.org; nothing is downloaded) and {synset_file!r} (one "
                f"line '<file name> <synset>' per image); missing: {', '.join(map(repr, missing))}")
        with open(synset_file, "r", encoding="utf-8") as f:
            file_to_synset = dict(line.split() for line in f.read().splitlines() if line.strip())
        logger.info("Extracting %s to %s", archive, self.datadir)
        os.makedirs(self.datadir, exist_ok=True)
        _safe_extract(archive, self.datadir)
        for name, synset in file_to_synset.items():
            src = os.path.join(self.datadir, name)
            if not os.path.isfile(src):
                raise FileNotFoundError(f"{synset_file!r} names {name!r}, which {archive!r} does not contain")
            os.makedirs(os.path.join(self.datadir, synset), exist_ok=True)
            shutil.move(src, os.path.join(self.datadir, synset, name))


class _IndexUnpickler(pickle.Unpickler):
    """Reads pickled index lists; refuses to build any object but numpy arrays."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"index file may only hold integers or numpy arrays; found {module}.{name}")
        return super().find_class(module, name)


def load_indices(path: str) -> list[int] | None:
    """The integer indices pickled in ``path`` (the original's ``data/imagenet_*_hr_indices.p``), or
    None when the file does not exist."""
    resolved = resolve_path(path)
    if not os.path.isfile(resolved):
        return None
    with open(resolved, "rb") as f:
        return [int(i) for i in _IndexUnpickler(f).load()]


class ImageNetSR(Dataset):
    """Super-resolution pairs from an ImageNet split: ``image`` (``size``) and ``LR_image``
    (``size / downscale_f``), with the split's labels. Subclasses choose the split."""

    INDICES_FILE = ""

    def __init__(
        self,
        size: int | None = None,                     # side of the high-resolution image
        degradation: str | None = None,              # bsrgan, bsrgan_light, cv_*, pil_* (ldm.data.superres)
        downscale_f: int = 4,                        # size / downscale_f is the side of LR_image
        min_crop_f: float = 0.5,                     # smallest crop, as a fraction of the smaller image side
        max_crop_f: float = 1.0,                     # largest crop fraction
        random_crop: bool = True,                    # random crop position instead of the centre
        data_root: str | None = None,                # folder holding the ImageNet split folders (default: cache)
    ):
        if size is None:
            raise ValueError("ImageNetSR needs size (the side of the high-resolution image); got None")
        if degradation is None:
            raise ValueError("ImageNetSR needs degradation (e.g. bsrgan_light or pil_bicubic); got None")
        self.pipeline = SuperResolutionPipeline(size, degradation, downscale_f, min_crop_f, max_crop_f, random_crop)
        self.size = size
        self.LR_size = self.pipeline.LR_size
        self.data_root = data_root
        self.base = self.get_base()

    def get_base(self) -> Dataset:
        """The label table of the split (restricted to the original's high-resolution subset when the
        index file ``INDICES_FILE`` exists)."""
        raise TypeError(f"{type(self).__name__} is abstract: use ImageNetSRTrain or ImageNetSRValidation")

    def _subset(self, dataset: Dataset) -> Dataset:
        indices = load_indices(self.INDICES_FILE)
        if indices is None:
            logger.info("%s not found: using all %d images of the split", self.INDICES_FILE, len(dataset))
            return dataset
        return Subset(dataset, indices)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        example = dict(self.base[i])
        example["image"], example["LR_image"] = self.pipeline(load_image_array(example["file_path_"]))
        return example


class ImageNetSRTrain(ImageNetSR):
    """Super-resolution pairs from the ImageNet training split."""

    INDICES_FILE = "data/imagenet_train_hr_indices.p"

    def get_base(self) -> Dataset:
        return self._subset(ImageNetTrain(process_images=False, data_root=self.data_root))


class ImageNetSRValidation(ImageNetSR):
    """Super-resolution pairs from the ImageNet validation split."""

    INDICES_FILE = "data/imagenet_val_hr_indices.p"

    def get_base(self) -> Dataset:
        return self._subset(ImageNetValidation(process_images=False, data_root=self.data_root))
