"""The scene world: procedural images of a few shapes with exact masks, and questions with one-word answers.

Every scene is a pure function of its seed and its world version. Questions are generated only where they are
unambiguous: the object asked about is unique by the attribute used to name it, and left/right or above/below pairs
are clearly separated.

- World 1 (the offline model v1's): a flat, lightly graded background with a few grey strokes and specks; objects
  never overlap (a margin separates them), so each mask is exactly the pixels drawn for the object.
- World 2 (``world=2``): built so that the visual tokens of one image are not near-duplicates, as real photos'
  are not: textured and structured backgrounds (gratings, smooth noise fields, a striped or checked region),
  uneven lighting (a gain gradient and a vignette), distractor clutter (rings, crosses, bars and blobs in grey,
  brown, white, black and purple: none of them a question word), 2 to 7 objects of continuous size, shaded across
  their extent, that may overlap (a later object occludes an earlier one; each mask is the object's VISIBLE pixels,
  and no object loses more than 35 % of its area). World 1 stays exactly reproducible.
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
WORLDS = (1, 2)
DISTRACTOR_COLOURS = ((128, 128, 128), (150, 105, 65), (245, 245, 245), (25, 25, 25), (120, 60, 150))
MAX_OCCLUDED = 0.35  # world 2: no object loses more than this share of its area to later objects

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


def render(seed: int, world: int = 1) -> tuple[Image.Image, tuple[SceneObject, ...]]:
    """The image and objects of scene ``seed`` of world ``world`` (1 or 2)."""
    if world == 2:
        return _render_v2(seed)
    if world != 1:
        raise ValueError(f"world must be one of {WORLDS}, got {world!r}")
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


def _shape_mask(shape: str, x: float, y: float, r: float) -> np.ndarray:
    m = Image.new("1", (IMAGE_SIZE, IMAGE_SIZE), 0)
    _draw(ImageDraw.Draw(m), shape, x, y, r, 1)
    return np.asarray(m, dtype=bool)


def _background_v2(rng: random.Random, nrng: np.random.Generator) -> np.ndarray:
    """`(H, W, 3)` float: a muted base colour, 1-3 gratings, a smooth noise field, maybe a striped/checked region."""
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) / IMAGE_SIZE
    base = np.array([rng.uniform(150, 235) for _ in range(3)], dtype=np.float32)
    base = base * 0.5 + base.mean() * 0.5  # muted: never a saturated question colour
    arr = np.broadcast_to(base, (IMAGE_SIZE, IMAGE_SIZE, 3)).copy()
    for _ in range(rng.randint(1, 3)):  # gratings
        ang, freq = rng.uniform(0, math.pi), rng.uniform(2, 12)
        phase, amp = rng.uniform(0, 2 * math.pi), rng.uniform(4, 18)
        tint = np.array([rng.uniform(0.5, 1.0) for _ in range(3)], dtype=np.float32)
        wave = np.sin(2 * math.pi * freq * (xx * math.cos(ang) + yy * math.sin(ang)) + phase)
        arr += amp * wave[..., None] * tint
    g = rng.choice((4, 6, 8, 12))  # smooth noise: a coarse random grid, bilinearly upsampled
    coarse = nrng.normal(0, 1, (g, g, 3)).astype(np.float32)
    field_ = np.asarray(
        Image.fromarray(((coarse - coarse.min()) / (np.ptp(coarse) + 1e-6) * 255).astype(np.uint8), "RGB").resize(
            (IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR
        ),
        dtype=np.float32,
    )
    arr += (field_ - 127.5) / 127.5 * rng.uniform(8, 24)
    if rng.random() < 0.6:  # a striped or checked region
        x0, y0 = rng.uniform(0, IMAGE_SIZE * 0.6), rng.uniform(0, IMAGE_SIZE * 0.6)
        w, h = rng.uniform(30, 90), rng.uniform(30, 90)
        period = rng.choice((4, 6, 8, 10))
        region = (
            (xx * IMAGE_SIZE >= x0) & (xx * IMAGE_SIZE < x0 + w) & (yy * IMAGE_SIZE >= y0) & (yy * IMAGE_SIZE < y0 + h)
        )
        ix, iy = (xx * IMAGE_SIZE // period).astype(int), (yy * IMAGE_SIZE // period).astype(int)
        pattern = ((ix + iy) % 2 if rng.random() < 0.5 else ix % 2).astype(np.float32)
        arr[region] += ((pattern[region] - 0.5) * rng.uniform(14, 34))[:, None]
    return arr


def _render_v2(seed: int) -> tuple[Image.Image, tuple[SceneObject, ...]]:
    rng = random.Random(seed * 1_000_003 + 2)
    nrng = np.random.default_rng([seed, 2])
    arr = _background_v2(rng, nrng)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(3, 10)):  # distractor clutter: no question word names it
        c = rng.choice(DISTRACTOR_COLOURS)
        x, y, r = rng.uniform(0, IMAGE_SIZE), rng.uniform(0, IMAGE_SIZE), rng.uniform(3, 9)
        kind = rng.choice(("ring", "cross", "bar", "blob"))
        if kind == "ring":
            draw.ellipse([x - r, y - r, x + r, y + r], outline=c, width=2)
        elif kind == "cross":
            draw.line([x - r, y, x + r, y], fill=c, width=2)
            draw.line([x, y - r, x, y + r], fill=c, width=2)
        elif kind == "bar":
            ang = rng.uniform(0, math.pi)
            draw.line([x, y, x + 2.5 * r * math.cos(ang), y + 2.5 * r * math.sin(ang)], fill=c, width=3)
        else:
            draw.ellipse([x - r * 0.6, y - r * 0.4, x + r * 0.6, y + r * 0.4], fill=c)
    arr = np.asarray(img, dtype=np.float32).copy()
    # objects: 2 to 7, continuous size, overlaps allowed up to MAX_OCCLUDED of any earlier object's area
    n = rng.choice((2, 3, 4, 4, 5, 5, 6, 7))
    placed: list[tuple[str, str, float, float, float, np.ndarray]] = []
    tries = 0
    while len(placed) < n and tries < 800:
        tries += 1
        r = rng.uniform(9, 25)
        x, y = rng.uniform(r + 4, IMAGE_SIZE - r - 4), rng.uniform(r + 4, IMAGE_SIZE - r - 4)
        if any(math.hypot(x - px, y - py) < 0.6 * (r + pr) for _, _, px, py, pr, _ in placed):
            continue
        shape = rng.choice(SHAPES)
        m = _shape_mask(shape, x, y, r)
        # the visible part of each earlier object after this one is drawn on top
        cover = np.zeros_like(m)
        ok = True
        for j in range(len(placed) - 1, -1, -1):
            pm = placed[j][5]
            full = pm.sum()
            visible = pm & ~cover & ~m
            if full == 0 or visible.sum() < (1 - MAX_OCCLUDED) * full:
                ok = False
                break
            cover |= pm
        if ok:
            placed.append((shape, rng.choice(tuple(COLOURS)), x, y, r, m))
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
    objects = []
    for i, (shape, colour, x, y, r, m) in enumerate(placed):
        gain = rng.uniform(0.85, 1.08)
        ang = rng.uniform(0, 2 * math.pi)  # shading across the object: +-12 % along a random direction
        shade = 1 + 0.12 * ((xx - x) * math.cos(ang) + (yy - y) * math.sin(ang)) / max(r, 1.0)
        col = np.array(COLOURS[colour], dtype=np.float32) * gain
        arr[m] = np.clip(col[None, :] * shade[m][:, None], 0, 255)
        visible = m.copy()
        for *_, later_mask in placed[i + 1 :]:
            visible &= ~later_mask
        size = "small" if r < 17 else "large"
        objects.append(SceneObject(shape, colour, size, x, y, r, visible))
    # uneven lighting over everything: a gain gradient and a vignette
    gx, gy = rng.uniform(-0.25, 0.25), rng.uniform(-0.25, 0.25)
    cx, cy = rng.uniform(0.3, 0.7) * IMAGE_SIZE, rng.uniform(0.3, 0.7) * IMAGE_SIZE
    d2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / IMAGE_SIZE**2
    light = (1 + gx * (xx / IMAGE_SIZE - 0.5) + gy * (yy / IMAGE_SIZE - 0.5)) * (1 - rng.uniform(0.1, 0.35) * d2)
    arr = arr * light[..., None] + nrng.normal(0, 4.0, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB"), tuple(objects)


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
    if len(by_shape[s]) < len(NUMBERS):  # world 2 may hold six of a shape: no count question then (answers 0-5)
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


def sample(seed: int, world: int = 1) -> Scene:
    """Scene number ``seed`` of world ``world`` (deterministic): ``.image``, ``.objects`` (with masks of their
    visible pixels) and ``.questions``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if world not in WORLDS:
        raise ValueError(f"world must be one of {WORLDS}, got {world!r}")
    image, objects = render(seed, world)
    return Scene(seed, image, objects, questions(objects, random.Random(question_seed(seed, world))))


def question_seed(seed: int, world: int = 1, draw: int = 0) -> int:
    """The seed of the question generator of scene ``seed``: ``draw`` 0 gives the scene's own questions (what
    ``sample`` returns), other draws re-draw the templates' choices (more questions per image for training)."""
    return seed * 7919 + 17 + 104_729 * (world - 1) + 1_000_003 * draw


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
