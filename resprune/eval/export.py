"""The scene world as an lmms-eval task that runs offline: a local ``datasets`` folder plus a task YAML.

``export_scene_task(folder, n)`` writes the first ``n`` test-split questions (in the order
``python -m resprune.bench scenes`` takes them: scene by scene, every question of a scene) as

- ``folder/data/``: a ``datasets.DatasetDict`` with one ``test`` split (``image``, ``question``, ``answer``,
  ``type``, ``scene``), read with ``load_from_disk``;
- ``folder/<task>.yaml``: a ``generate_until`` task (greedy, 4 new tokens, as the scene benchmark) whose metric
  ``accuracy`` is the scene benchmark's exact match (``resprune.bench.scenes.normalise``);
- ``folder/utils.py``: the YAML's ``!function`` hooks, imported from this module.

Pass ``folder`` to lmms-eval's ``--include_path`` (or the sweep runner's ``--include-path``) and the task name to
``--tasks``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

TASK = "resprune_scenes"
MAX_NEW_TOKENS = 4  # what the scene benchmark generates

_YAML = """\
# Written by `python -m resprune.eval.export`: {n} test-split questions of resprune's scene world.
task: {task}
dataset_path: {data}
dataset_kwargs:
  load_from_disk: true
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
process_results: !function utils.process_results
generation_kwargs:
  max_new_tokens: {max_new}
  do_sample: false
  temperature: 0
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1
"""

_UTILS = """\
# The hooks of the task YAML beside this file (written by `python -m resprune.eval.export`).
from resprune.eval.export import doc_to_text, doc_to_visual, process_results  # noqa: F401
"""


def scene_questions(n: int) -> list[tuple[Any, Any, int]]:
    """The first ``n`` test-split ``(image, question, scene index)`` in the scene benchmark's order."""
    from resprune import scenes

    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    items = []
    for s, scene in enumerate(scenes.test_scenes()):
        items += [(scene.image, q, s) for q in scene.questions]
        if len(items) >= n:
            break
    return items[:n]


def export_scene_task(folder: str | Path, n: int = 100, *, task: str = TASK) -> Path:
    """Write the task (data folder, YAML, hooks) into ``folder``; returns the YAML's path."""
    import datasets

    if not isinstance(task, str) or not task.isidentifier():
        raise ValueError(f"task must be an identifier-like name, got {task!r}")
    items = scene_questions(n)
    folder = Path(folder).resolve()
    data = folder / "data"
    features = datasets.Features(
        image=datasets.Image(),
        question=datasets.Value("string"),
        answer=datasets.Value("string"),
        type=datasets.Value("string"),
        scene=datasets.Value("int32"),
    )
    ds = datasets.Dataset.from_dict(
        dict(
            image=[im for im, _, _ in items],
            question=[q.text for _, q, _ in items],
            answer=[q.answer for _, q, _ in items],
            type=[q.type for _, q, _ in items],
            scene=[s for _, _, s in items],
        ),
        features=features,
    )
    folder.mkdir(parents=True, exist_ok=True)
    datasets.DatasetDict(test=ds).save_to_disk(str(data))
    (folder / "utils.py").write_text(_UTILS)
    yaml = folder / f"{task}.yaml"
    yaml.write_text(_YAML.format(n=len(items), task=task, data=data, max_new=MAX_NEW_TOKENS))
    return yaml


# ---- the task's hooks ---------------------------------------------------------------------------------------
def doc_to_visual(doc: dict) -> list[Any]:
    return [doc["image"].convert("RGB")]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    kw = lmms_eval_specific_kwargs or {}
    return f"{kw.get('pre_prompt', '')}{doc['question']}{kw.get('post_prompt', '')}"


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    from resprune.bench.scenes import normalise

    return {"accuracy": float(normalise(results[0]) == normalise(doc["answer"]))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m resprune.eval.export", description=__doc__.split("\n")[0])
    p.add_argument("folder", help="where to write the task (data/, <task>.yaml, utils.py)")
    p.add_argument("--n", type=int, default=100, help="number of test-split questions")
    p.add_argument("--task", default=TASK, help="the task's name")
    a = p.parse_args(argv)
    try:
        yaml = export_scene_task(a.folder, a.n, task=a.task)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(yaml)
    return 0


if __name__ == "__main__":
    sys.exit(main())
