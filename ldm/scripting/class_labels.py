"""ImageNet class labels for the class-conditional models: class indices from indices, synset ids or names."""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from ldm.scripting.inputs import require_file

#: The ImageNet class tables shipped in data/.
IMAGENET_LABELS = Path(__file__).resolve().parents[2] / "data" / "imagenet_clsidx_to_label.txt"
IMAGENET_SYNSETS = Path(__file__).resolve().parents[2] / "data" / "index_synset.yaml"


def imagenet_classes() -> tuple[dict[int, str], dict[int, str]]:
    """(index -> human label, index -> synset id) of the 1000 ImageNet classes."""
    labels: dict[int, str] = {}
    for line in require_file(IMAGENET_LABELS, "ImageNet label table").read_text(encoding="utf-8").splitlines():
        idx, sep, label = line.strip().rstrip(",").partition(":")
        if sep:
            labels[int(idx)] = label.strip().strip("'\"")
    synsets = {int(k): str(v) for k, v in OmegaConf.to_container(OmegaConf.load(
        require_file(IMAGENET_SYNSETS, "ImageNet synset table"))).items()}
    return labels, synsets


def resolve_class(spec: str, n_classes: int | None = None) -> int:
    """A class index from an index ("448"), a synset id ("n02843684") or an ImageNet name ("birdhouse").

    Names match one of the comma-separated synonyms of a label, ignoring case; ValueError when unknown
    or ambiguous, with suggestions.
    """
    spec = str(spec).strip()
    if spec.lstrip("-").isdigit():
        idx = int(spec)
        if idx < 0 or (n_classes is not None and idx >= n_classes):
            raise ValueError(f"class index {idx} is out of range [0, {n_classes}) for this model")
        return idx
    labels, synsets = imagenet_classes()
    by_synset = {v: k for k, v in synsets.items()}
    if spec in by_synset:
        return by_synset[spec]
    wanted = spec.lower()
    matches = sorted({i for i, label in labels.items() if wanted in (s.strip().lower() for s in label.split(","))})
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ValueError(f"class name {spec!r} is ambiguous: " + "; ".join(f"{i}: {labels[i]}" for i in matches)
                         + ". Give the index instead.")
    import difflib

    names = [s.strip() for label in labels.values() for s in label.split(",")]
    close = difflib.get_close_matches(spec, names, n=5)
    raise ValueError(f"unknown class {spec!r}: give an index in [0, 1000), a synset id like n01440764 or an ImageNet "
                     f"class name" + (f" (did you mean: {', '.join(close)}?)" if close else ""))
