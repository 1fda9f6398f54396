"""The scene world and its offline model: procedural images with exact object masks, questions with ground truth.

``sample(seed)`` gives a scene (``.image``, ``.objects`` with boolean masks, ``.questions`` with ``.text``,
``.answer``, ``.type`` and ``.objects``); ``sample(seed, world=2)`` the textured, cluttered world 2. Splits are
disjoint seed ranges (``split_seeds``), the same for both worlds.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from .world import QUESTION_TYPES, SPLITS, WORLDS, Question, Scene, SceneObject, sample, split_seeds, vocabulary


def test_scenes(n: int | None = None, world: int = 1) -> Iterator[Scene]:
    """Scenes of the test split of world ``world``, in seed order (all of the split when ``n`` is None)."""
    lo, hi = SPLITS["test"]
    for seed in range(lo, hi if n is None else lo + n):
        yield sample(seed, world)


def unknown_words(prompt: str) -> list[str]:
    """Words of ``prompt`` the offline model never saw in training (it only knows its scene world)."""
    known = vocabulary()
    words = [w.lower() for w in re.findall(r"[A-Za-z]+", prompt)]
    return list(dict.fromkeys(w for w in words if w not in known))


__all__ = [
    "QUESTION_TYPES",
    "WORLDS",
    "Question",
    "Scene",
    "SceneObject",
    "sample",
    "split_seeds",
    "test_scenes",
    "unknown_words",
    "vocabulary",
]
