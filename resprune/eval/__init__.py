"""Evaluate resprune's methods on real benchmarks with lmms-eval (``pip install -r requirements-eval.txt``).

- ``resprune.eval.lmms.ResPruneLMM``: lmms-eval's ``--model resprune`` (found through the ``lmms_eval.models``
  entry point; no fork, no environment variables): every registered method on every supported family.
- ``python -m resprune.eval``: the budget-sweep runner (one model load, every (method, keep) cell, resumable,
  one tidy table and a plot), single process or under ``accelerate launch``.
- ``resprune.eval.export``: the scene world as a local, offline lmms-eval task.

Nothing here imports lmms-eval at import time: ``lmms_eval_models`` is the entry point lmms-eval calls while it
builds its registry (importing lmms-eval at the top of this module would be a circular import).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

MODEL_ID = "resprune"
"""The name lmms-eval knows the bridge by (``--model resprune``)."""


def lmms_eval_models() -> list[Any]:
    """The ``lmms_eval.models`` entry point: the manifests of the models this package adds to lmms-eval."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, simple_class_path="resprune.eval.lmms.ResPruneLMM")]


def import_lmms_eval() -> Any:
    """Import lmms-eval's evaluator and task index, leaving PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES`` as it was.

    Importing ``lmms_eval.api.task`` sets that flag to True for the whole process, which would let truncated
    image files through resprune's own image checks (the app, ``load_image``). The sweep runner turns it on only
    while lmms-eval evaluates (``lmms_eval_images``).
    """
    from PIL import ImageFile

    before = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        import lmms_eval.evaluator
        import lmms_eval.tasks  # noqa: F401
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before
    return lmms_eval


@contextlib.contextmanager
def lmms_eval_images() -> Iterator[None]:
    """PIL as lmms-eval runs its benchmarks (truncated image files load), restored on exit."""
    from PIL import ImageFile

    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before
