"""The embedded demo dataset: coloured shapes drawn by code, so nothing needs downloading.

Each example is one saturated shape ("red circle", "blue square", ...) on a muted, sometimes graded
background, with random position, size, rotation and colour jitter. Everything about an example
follows from (seed, split, index), so a dataset always yields the same images. Examples carry the
keys that the latent diffusion configs (Rombach et al., CVPR 2022) read:

- ``image``: ``(size, size, 3)`` float32 in [-1, 1] (unconditional and first-stage training),
- ``class_label``: int (class-conditional training, ``ClassEmbedder`` with ``key: class_label``),
- ``caption``: a sentence such as "a small red circle on the left" (text-conditional training),
- ``human_label``: the class name.

Shapes are drawn at four times the output size and box-filtered down, which anti-aliases their
edges; one 32x32 example takes a fraction of a millisecond (``cache=True`` keeps them in memory).
"""
from __future__ import annotations

import math
import random
import re
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from ldm.data.base import check_size, split_class, to_float

#: The class names, in class-label order. A dataset uses the first ``num_classes`` of them, or the
#: names it is given.
CLASSES = ("red circle", "blue square", "green triangle", "yellow cross", "purple diamond", "orange star")

#: The shapes a class name may use.
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")

#: Base RGB colour of each colour word; each example jitters it by up to ``COLOUR_JITTER`` per channel.
COLOURS = {
    "red": (215, 35, 35),
    "blue": (35, 85, 225),
    "green": (35, 175, 55),
    "yellow": (235, 210, 30),
    "purple": (145, 50, 200),
    "orange": (245, 135, 25),
}
COLOUR_JITTER = 20

#: Grey level range of each background word; each example adds a small tint and maybe a gradient.
BACKGROUNDS = {"dark": (15, 60), "gray": (95, 135), "light": (180, 225)}

#: Backgrounds on which a colour is hard to see; they are not drawn for it.
LOW_CONTRAST = {"yellow": ("light",)}

#: Shape radius as a fraction of the image side; below ``SMALL_RADIUS`` a caption calls it small.
MIN_RADIUS, MAX_RADIUS, SMALL_RADIUS = 0.2, 0.34, 0.26

#: Largest offset of the shape centre from the image centre, and the offset from which a caption names
#: the position, both as fractions of the image side.
MAX_OFFSET, POSITION_OFFSET = 0.18, 0.08

#: Largest rotation of the shape in degrees (small enough that a square never looks like a diamond).
MAX_ROTATION = 15.0

#: Drawing happens at this multiple of the output size, then is box-filtered down.
SUPERSAMPLE = 4

SPLITS = ("train", "validation")

CAPTION_TEMPLATES = (
    "a {colour} {shape}",
    "a {colour} {shape} on a {background} background",
    "a {size} {colour} {shape}",
    "a {colour} {shape} {position}",
    "a {size} {colour} {shape} {position} on a {background} background",
    "a picture of a {colour} {shape}",
    "{colour} {shape}, {background} background",
)


def _regular_polygon(cx: float, cy: float, radius: float, corners: int, angle: float) -> list[tuple[float, float]]:
    """Corners of a regular polygon (the first one at ``angle`` radians, counted from straight up)."""
    return [(cx + radius * math.sin(angle + 2 * math.pi * k / corners),
             cy - radius * math.cos(angle + 2 * math.pi * k / corners)) for k in range(corners)]


def _rotate(points: Sequence[tuple[float, float]], cx: float, cy: float, angle: float) -> list[tuple[float, float]]:
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + (x - cx) * cos - (y - cy) * sin, cy + (x - cx) * sin + (y - cy) * cos) for x, y in points]


def _shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """The outline of ``shape`` with circumradius ``r`` centred at (cx, cy); circles are drawn apart."""
    if shape == "square":
        return _regular_polygon(cx, cy, r, 4, math.pi / 4 + angle)
    if shape == "triangle":
        # a triangle's centroid sits below its circumcentre's bounding-box centre: shift it down a little
        return _regular_polygon(cx, cy + 0.15 * r, 1.1 * r, 3, angle)
    if shape == "diamond":
        return _rotate([(cx, cy - r), (cx + 0.65 * r, cy), (cx, cy + r), (cx - 0.65 * r, cy)], cx, cy, angle)
    if shape == "cross":
        t = 0.32 * r
        outline = [(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t),
                   (-r, -t), (-t, -t)]
        return _rotate([(cx + x, cy + y) for x, y in outline], cx, cy, angle)
    if shape == "star":
        outer = _regular_polygon(cx, cy + 0.08 * r, 1.05 * r, 5, angle)
        inner = _regular_polygon(cx, cy + 0.08 * r, 0.45 * r, 5, angle + math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    raise ValueError(f"shape must be one of {', '.join(SHAPES)}; got {shape!r}")


def _position_phrase(dx: float, dy: float) -> str:
    """Words for a centre offset (fractions of the side, y downwards)."""
    horizontal = "left" if dx < -POSITION_OFFSET else "right" if dx > POSITION_OFFSET else ""
    vertical = "top" if dy < -POSITION_OFFSET else "bottom" if dy > POSITION_OFFSET else ""
    if horizontal and vertical:
        return f"in the {vertical} {horizontal}"
    if horizontal:
        return f"on the {horizontal}"
    if vertical:
        return f"at the {vertical}"
    return "in the center"


def _caption(words: dict[str, str]) -> str:
    """Fill the example's template, writing "an" before a vowel ("an orange star")."""
    return re.sub(r"\ba (?=[aeiou])", "an ", words["template"].format(**words))


def render_shape(class_name: str, size: int, rng: random.Random) -> tuple[np.ndarray, dict[str, str]]:
    """Draw one example of ``class_name`` ("<colour> <shape>"); returns the ``(size, size, 3)`` uint8
    image and the words describing it (colour, shape, size, position, background) with a caption
    template that uses them."""
    colour_word, shape = class_name.split(" ", 1)
    if colour_word not in COLOURS:
        raise ValueError(f"class colour must be one of {', '.join(COLOURS)}; got {colour_word!r} in {class_name!r}")
    side = size * SUPERSAMPLE

    backgrounds = [b for b in BACKGROUNDS if b not in LOW_CONTRAST.get(colour_word, ())]
    background = rng.choice(backgrounds)
    grey = rng.uniform(*BACKGROUNDS[background])
    base = np.array([grey + rng.uniform(-8, 8) for _ in range(3)], dtype=np.float32)
    if rng.random() < 0.5:  # a soft vertical or horizontal gradient
        ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32) * rng.uniform(5, 15)
        ramp = ramp[:, None] if rng.random() < 0.5 else ramp[None, :]
        canvas = base[None, None, :] + ramp[..., None]
    else:
        canvas = np.broadcast_to(base, (size, size, 3))

    radius = rng.uniform(MIN_RADIUS, MAX_RADIUS)
    dx, dy = rng.uniform(-MAX_OFFSET, MAX_OFFSET), rng.uniform(-MAX_OFFSET, MAX_OFFSET)
    angle = math.radians(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    colour = tuple(int(min(255, max(0, c + rng.randint(-COLOUR_JITTER, COLOUR_JITTER)))) for c in COLOURS[colour_word])

    cx, cy, r = (0.5 + dx) * side, (0.5 + dy) * side, radius * side
    coverage = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(coverage)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(_shape_polygon(shape, cx, cy, r, angle), fill=255)
    alpha = np.asarray(coverage.reduce(SUPERSAMPLE), dtype=np.float32)[..., None] / 255.0  # (size, size, 1)
    image = canvas * (1.0 - alpha) + np.asarray(colour, dtype=np.float32) * alpha
    image = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    words = {
        "template": CAPTION_TEMPLATES[rng.randrange(len(CAPTION_TEMPLATES))],
        "colour": colour_word,
        "shape": shape,
        "size": "small" if radius < SMALL_RADIUS else "large",
        "position": _position_phrase(dx, dy),
        "background": background,
    }
    return image, words


class SyntheticShapesBase(Dataset):
    """``num_samples`` procedurally drawn shape images, deterministic per (seed, split, index);
    class labels cycle through the classes, so every class is equally frequent."""

    def __init__(
        self,
        size: int = 32,                              # image side length in pixels
        num_samples: int = 10000,                    # number of examples
        split: str = "train",                        # "train" or "validation": which images are drawn
        seed: int = 0,                               # changes every image while keeping the split apart
        num_classes: int | None = None,              # use the first n of CLASSES (None: all, or len(classes))
        classes: Sequence[str] | None = None,        # explicit class names, each "<colour> <shape>"
        cache: bool = False,                         # keep drawn images in memory (per loader worker)
    ):
        check_size(size)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
        if not isinstance(num_samples, int) or num_samples <= 0:
            raise ValueError(f"num_samples must be a positive integer; got {num_samples!r}")
        if classes is None:
            n = len(CLASSES) if num_classes is None else num_classes
            if not isinstance(n, int) or not 1 <= n <= len(CLASSES):
                raise ValueError(f"num_classes must be an integer from 1 to {len(CLASSES)}; got {num_classes!r}")
            classes = CLASSES[:n]
        else:
            classes = tuple(classes)
            for name in classes:
                parts = str(name).split(" ")
                if len(parts) != 2 or parts[0] not in COLOURS or parts[1] not in SHAPES:
                    raise ValueError(f"class names must be '<colour> <shape>' with a colour out of "
                                     f"{', '.join(COLOURS)} and a shape out of {', '.join(SHAPES)}; got {name!r}")
            if num_classes is not None and num_classes != len(classes):
                raise ValueError(f"num_classes={num_classes} does not match the {len(classes)} names in classes")
        self.size = size
        self.num_samples = num_samples
        self.split = split
        self.seed = seed
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self._cache: dict[int, tuple[np.ndarray, dict[str, str]]] | None = {} if cache else None

    def __len__(self) -> int:
        return self.num_samples

    def _rng(self, index: int) -> random.Random:
        return random.Random(f"synthetic-shapes/{self.seed}/{self.split}/{index}")

    def _draw(self, index: int) -> tuple[np.ndarray, dict[str, str]]:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        drawn = render_shape(self.classes[index % self.num_classes], self.size, self._rng(index))
        if self._cache is not None:
            self._cache[index] = drawn
        return drawn

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for a dataset of {self.num_samples} examples")
        index %= self.num_samples
        image, words = self._draw(index)
        label = index % self.num_classes
        return {
            "image": to_float(image),
            "class_label": label,
            "human_label": self.classes[label],
            "caption": _caption(words),
        }

    def class_caption(self, class_label: int) -> str:
        """A plain prompt for a class, e.g. "a red circle" (for text-conditional sampling)."""
        return _caption({"template": "a {name}", "name": self.classes[class_label]})

    def render(self, class_name: str | int, seed: int = 0) -> np.ndarray:
        """Draw one ``(size, size, 3)`` uint8 picture of ``class_name`` (a name or a class label)."""
        if isinstance(class_name, (int, np.integer)):
            if not 0 <= class_name < self.num_classes:
                raise ValueError(f"class label must be in [0, {self.num_classes}); got {class_name}")
            class_name = self.classes[class_name]
        if class_name not in self.classes:
            raise ValueError(f"class name must be one of {', '.join(self.classes)}; got {class_name!r}")
        image, _ = render_shape(class_name, self.size, random.Random(f"synthetic-shapes/render/{seed}"))
        return image


SyntheticShapesTrain = split_class(SyntheticShapesBase, "SyntheticShapesTrain",
                                   "The training split of the embedded shapes dataset.", __name__,
                                   fixed={"split": "train"})
SyntheticShapesValidation = split_class(SyntheticShapesBase, "SyntheticShapesValidation",
                                        "The validation split of the embedded shapes dataset (images disjoint from "
                                        "the training split's).", __name__,
                                        defaults={"num_samples": 512}, fixed={"split": "validation"})
