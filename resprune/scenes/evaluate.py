"""Unpruned accuracy of the offline model on the test split, per question type: ``python -m resprune.scenes.evaluate``.

Greedy-decoded answers, exact match after lower-casing and stripping; prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Any

from . import test_scenes
from .world import QUESTION_TYPES, WORLDS


def accuracy(model: Any, proc: Any, items: list, batch: int = 64) -> dict[str, tuple[int, int]]:
    """``{type: (correct, total)}`` plus ``"all"`` for (image, question) items, greedy answers, batched."""
    import torch

    from ..generate import chat_prompt

    proc.tokenizer.padding_side = "left"
    ok, tot = Counter(), Counter()
    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        inputs = proc(
            images=[im for im, _ in chunk],
            text=[chat_prompt(proc, q.text) for _, q in chunk],
            return_tensors="pt",
            padding=True,
        )
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        texts = proc.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        for t, (_, q) in zip(texts, chunk):
            ok[q.type] += t.strip().lower().strip(".") == q.answer
            tot[q.type] += 1
    res = {t: (ok[t], tot[t]) for t in QUESTION_TYPES}
    res["all"] = (sum(ok.values()), sum(tot.values()))
    return res


def evaluate(
    n_scenes: int = 1000, batch: int = 64, path: str | None = None, world: int | None = None
) -> dict[str, tuple[int, int]]:
    """Accuracy per question type over the first ``n_scenes`` test scenes of ``world`` (default: the world the
    checkpoint was trained on, from its ``training.json``)."""
    from .model import DEFAULT_DIR, load_scenes_model, trained_world

    path = path or DEFAULT_DIR
    world = trained_world(path) if world is None else world
    model, proc = load_scenes_model(path)
    items = [(s.image, q) for s in test_scenes(n_scenes, world) for q in s.questions]
    return accuracy(model, proc, items, batch)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m resprune.scenes.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--scenes", type=int, default=1000)
    p.add_argument("--model", default=None, help="checkpoint folder (default: the shipped one)")
    p.add_argument("--world", type=int, default=None, choices=WORLDS, help="default: the checkpoint's own world")
    a = p.parse_args(argv)
    res = evaluate(a.scenes, path=a.model, world=a.world)
    print("| question type | accuracy | questions |\n|---|---:|---:|")
    for t, (c, n) in res.items():
        print(f"| {t} | {100 * c / max(n, 1):.1f} % | {n} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
