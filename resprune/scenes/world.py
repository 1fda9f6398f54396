"""The scene world: procedural images of a few shapes with exact masks, and questions with one-word answers.

Every scene is a pure function of its seed. Objects never overlap (a margin separates them), so each object's mask
is exactly the pixels drawn for it. Questions are generated only where they are unambiguous: the object asked
about is unique by the attribute used to name it, and left/right or above/below pairs are clearly separated.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 192
SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 40, 40),
    "green": (30, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 20),
}
SIZES = {"small": 13, "large": 21}  # half-extent in pixels
BACKGROUNDS = ((236, 236, 236), (222, 230, 238), (238, 230, 218), (228, 238, 226), (210, 210, 214))
NUMBERS = ("zero", "one", "two", "three", "four", "five")
QUESTION_TYPES = ("colour", "shape", "count", "exist", "spatial")

# Split seed ranges (never overlapping).
SPLITS = {"train": (0, 10_000_000), "val": (10_000_000, 10_100_000), "test": (20_000_000, 20_100_000)}


@dataclass(frozen=True)
class SceneObject:
    """One object: attributes, centre (x, y) in pixels, half-extent, and its exact boolean mask `(H, W)`."""

    shape: str
    colour: str
    size: str
    x: float
    y: float
    r: float
    mask: np.ndarray = field(repr=False, compare=False)

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Question:
    """A question with a one-word answer, its type, and the objects it is about."""

    text: str
    answer: str
    type: str
    objects: tuple[SceneObject, ...]


@dataclass(frozen=True)
class Scene:
    seed: int
    image: Image.Image
    objects: tuple[SceneObject, ...]
    questions: tuple[Question, ...]


def _polygon(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        return [(x - r, y - r), (x + r, y - r), (x + r, y + r), (x - r, y + r)]
    if shape == "triangle":
        return [(x, y - r * 1.1), (x + r * 1.1, y + r * 0.9), (x - r * 1.1, y + r * 0.9)]
    return None


def _draw(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float, fill: object) -> None:
    poly = _polygon(shape, x, y, r)
    if poly is None:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    else:
        draw.polygon(poly, fill=fill)


def _objects(rng: random.Random) -> list[tuple[str, str, str, float, float, float]]:
    n = rng.choice((2, 3, 3, 4, 4, 5))
    placed: list[tuple[str, str, str, float, float, float]] = []
    tries = 0
    while len(placed) < n and tries < 500:
        tries += 1
        size = rng.choice(tuple(SIZES))
        r = SIZES[size]
        x = rng.uniform(r + 6, IMAGE_SIZE - r - 6)
        y = rng.uniform(r + 6, IMAGE_SIZE - r - 6)
        if all(math.hypot(x - px, y - py) > (r + pr) * 1.25 + 8 for *_, px, py, pr in placed):
            placed.append((rng.choice(SHAPES), rng.choice(tuple(COLOURS)), size, x, y, r))
    return placed


def render(seed: int) -> tuple[Image.Image, tuple[SceneObject, ...]]:
    """The image and objects of scene ``seed``."""
    rng = random.Random(seed)
    bg = np.array(rng.choice(BACKGROUNDS), dtype=np.float32)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) / IMAGE_SIZE
    gx, gy = rng.uniform(-12, 12), rng.uniform(-12, 12)
    arr = bg[None, None, :] + (gx * xx + gy * yy)[..., None]
    noise = np.random.default_rng(seed).normal(0, 3.0, arr.shape)
    image = Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    # clutter: thin grey strokes and specks that are not objects
    for _ in range(rng.randint(2, 6)):
        x0, y0 = rng.uniform(0, IMAGE_SIZE), rng.uniform(0, IMAGE_SIZE)
        ang, ln = rng.uniform(0, math.pi), rng.uniform(6, 18)
        g = rng.randint(120, 175)
        draw.line([x0, y0, x0 + ln * math.cos(ang), y0 + ln * math.sin(ang)], fill=(g, g, g), width=1)
    objects = []
    for shape, colour, size, x, y, r in _objects(rng):
        m = Image.new("1", image.size, 0)
        _draw(ImageDraw.Draw(m), shape, x, y, r, 1)
        mask = np.asarray(m, dtype=bool)
        # shade each object slightly so colour is a category, not one exact RGB value
        base = np.array(COLOURS[colour], dtype=np.float32) * rng.uniform(0.9, 1.05)
        pix = np.asarray(image).copy()
        pix[mask] = np.clip(base, 0, 255).astype(np.uint8)
        image = Image.fromarray(pix, "RGB")
        objects.append(SceneObject(shape, colour, size, x, y, r, mask))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(3, 8)):  # specks on the background only
        x0, y0 = rng.uniform(0, IMAGE_SIZE - 2), rng.uniform(0, IMAGE_SIZE - 2)
        if not any(o.mask[int(y0) : int(y0) + 3, int(x0) : int(x0) + 3].any() for o in objects):
            g = rng.randint(100, 160)
            draw.rectangle([x0, y0, x0 + 1, y0 + 1], fill=(g, g, g))
    return image, tuple(objects)


def questions(objects: tuple[SceneObject, ...], rng: random.Random) -> tuple[Question, ...]:
    """One question of each type that the scene supports (unambiguous ones only), in a seeded order."""
    qs: list[Question] = []
    by_shape = {s: [o for o in objects if o.shape == s] for s in SHAPES}
    by_colour = {c: [o for o in objects if o.colour == c] for c in COLOURS}
    names = {}
    for o in objects:
        names.setdefault(o.name, []).append(o)
    unique = [os_[0] for os_ in names.values() if len(os_) == 1]

    shapes_unique = [s for s, os_ in by_shape.items() if len(os_) == 1]
    if shapes_unique:
        s = rng.choice(shapes_unique)
        qs.append(Question(f"What colour is the {s}?", by_shape[s][0].colour, "colour", (by_shape[s][0],)))
    colours_unique = [c for c, os_ in by_colour.items() if len(os_) == 1]
    if colours_unique:
        c = rng.choice(colours_unique)
        qs.append(Question(f"What shape is the {c} object?", by_colour[c][0].shape, "shape", (by_colour[c][0],)))
    s = rng.choice(SHAPES)
    qs.append(Question(f"How many {s}s are there?", NUMBERS[len(by_shape[s])], "count", tuple(by_shape[s])))
    # existence, balanced yes/no (POPE-like: the absent object shares an attribute with a present one)
    if rng.random() < 0.5 and objects:
        o = rng.choice(objects)
        qs.append(Question(f"Is there a {o.colour} {o.shape}?", "yes", "exist", tuple(names[o.name])))
    else:
        absent = [(c, s) for c in COLOURS for s in SHAPES if f"{c} {s}" not in names]
        c, s = rng.choice(absent)
        qs.append(Question(f"Is there a {c} {s}?", "no", "exist", ()))
    # spatial relation between two uniquely named, clearly separated objects
    pairs = [(a, b) for a in unique for b in unique if a is not b]
    rng.shuffle(pairs)
    for a, b in pairs:
        dx, dy = a.x - b.x, a.y - b.y
        if abs(dx) > 24 and abs(dx) > abs(dy):
            ans = "left" if dx < 0 else "right"
            qs.append(Question(f"Is the {a.name} left or right of the {b.name}?", ans, "spatial", (a, b)))
            break
        if abs(dy) > 24 and abs(dy) > abs(dx):
            ans = "above" if dy < 0 else "below"
            qs.append(Question(f"Is the {a.name} above or below the {b.name}?", ans, "spatial", (a, b)))
            break
    rng.shuffle(qs)
    return tuple(qs)


def sample(seed: int) -> Scene:
    """Scene number ``seed`` (deterministic): ``.image``, ``.objects`` (with masks) and ``.questions``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    image, objects = render(seed)
    return Scene(seed, image, objects, questions(objects, random.Random(seed * 7919 + 17)))


def split_seeds(split: str, n: int, start: int = 0) -> range:
    """``n`` seeds of ``split`` ('train', 'val' or 'test'), from its range's offset ``start``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    lo, hi = SPLITS[split]
    if lo + start + n > hi:
        raise ValueError(f"split {split!r} has {hi - lo} seeds; asked for {start}+{n}")
    return range(lo + start, lo + start + n)


def vocabulary() -> frozenset[str]:
    """Every word the question templates and answers use (what the offline model knows)."""
    words = {
        "what",
        "colour",
        "is",
        "the",
        "shape",
        "object",
        "how",
        "many",
        "are",
        "there",
        "a",
        "left",
        "or",
        "right",
        "of",
        "above",
        "below",
        "yes",
        "no",
        "color",
    }
    words |= set(SHAPES) | {s + "s" for s in SHAPES} | set(COLOURS) | set(NUMBERS)
    return frozenset(words)
