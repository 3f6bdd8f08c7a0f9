"""CelebA-HQ (Karras et al. 2018) and FFHQ (Karras et al. 2019) from local file lists, as taming-transformers'
``faceshq`` module provided them to the latent diffusion configs (Rombach et al., CVPR 2022). The
``taming.data.faceshq.*`` class paths of the original configs resolve here.

Layout, relative to the working directory or the repository:
- ``data/celebahqtrain.txt``, ``data/celebahqvalidation.txt``: paths relative to ``data/celebahq``
  (``.npy`` files holding ``(1, 3, 1024, 1024)`` uint8 as taming prepared them, or image files);
- ``data/ffhqtrain.txt``, ``data/ffhqvalidation.txt``: paths relative to ``data/ffhq``.
Images are rescaled (smaller side) and centre-cropped to ``size``; examples hold ``image`` and
``file_path_``, or only the listed ``keys``.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from torch.utils.data import Dataset

from ldm.data.base import ImagePaths, check_size, read_lines, resolve_path, split_class


class FacesBase(Dataset):
    """Images listed in ``txt_file`` (paths relative to ``root``), optionally reduced to ``keys``. The split
    classes below default ``txt_file`` and ``root`` to taming-transformers' locations."""

    def __init__(
        self,
        size: int | None,                            # output side length
        keys: Sequence[str] | None = None,           # keep only these example keys (None: all)
        txt_file: str | None = None,                 # file list, one path per line relative to root
        root: str | None = None,                     # folder holding the images
    ):
        if txt_file is None or root is None:
            raise ValueError(f"{type(self).__name__} needs txt_file and root; got txt_file={txt_file!r}, "
                             f"root={root!r}")
        check_size(size)
        relpaths = read_lines(txt_file, f"one image path per line, relative to {root!r}")
        root_dir = resolve_path(root)
        if not os.path.isdir(root_dir):
            raise FileNotFoundError(f"image folder {root!r} not found; it should hold the images listed in "
                                    f"{txt_file!r}")
        paths = [os.path.join(root_dir, p) for p in relpaths]
        if not paths or not os.path.isfile(paths[0]):
            raise FileNotFoundError(f"{txt_file!r} lists no images or its first entry "
                                    f"{paths[0] if paths else None!r} does not exist")
        self.data = ImagePaths(paths=paths, size=size, random_crop=False)
        self.keys = list(keys) if keys is not None else None

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        example = self.data[i]
        if self.keys is None:
            return example
        return {k: example[k] for k in self.keys}


def _face_splits(name: str, title: str) -> tuple[type, type]:
    """``<name>Train`` and ``<name>Validation``: the images listed in ``data/<key>train.txt`` and
    ``data/<key>validation.txt``, relative to ``data/<key>``, where ``<key>`` is ``name`` in lower case."""
    key = name.lower()
    return tuple(split_class(FacesBase, f"{name}{split.capitalize()}", f"{title} {role} images.", __name__,
                             defaults={"txt_file": f"data/{key}{split}.txt", "root": f"data/{key}"})
                 for split, role in (("train", "training"), ("validation", "validation")))


CelebAHQTrain, CelebAHQValidation = _face_splits("CelebAHQ", "CelebA-HQ")
FFHQTrain, FFHQValidation = _face_splits("FFHQ", "FFHQ")
