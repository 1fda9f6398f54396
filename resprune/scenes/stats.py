"""``python -m resprune.scenes.stats``: how degenerate the visual tokens of a scene world are.

For ``--n`` test scenes of ``--world`` (1 or 2), two token sets per image:

- ``pixels``: the raw 16 x 16 RGB patches (768 values each, mean-free per image): the world's own redundancy,
  whatever model looks at it;
- ``model``: the offline model's projected visual tokens (its LLM input embeddings; 144 tokens, D = 128 for v1);
  ``--model DIR`` takes another scenes checkpoint (e.g. one trained on world 2).

Reported as medians over images: the effective rank (``exp`` of the entropy of the normalised squared singular
values), the residual energy of all tokens left after greedy residual selection (``residual``, the exact core) has
kept 25 % and 50 % of them, and the first step at which every remaining token counts as spanned (float64 noise
level), as a share of N (1.0: never before all tokens are kept). With the model, also the cross-modal alignment:
the AUC with which the text relevance of the question's nouns (``relevance``, the LLM input embeddings) separates
the tokens covering the question's objects from the others (0.5: no alignment; below 0.5: anti-aligned).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import numpy as np
import torch

from .model import PATCH
from .world import IMAGE_SIZE, SPLITS, sample


def effective_rank(tokens: torch.Tensor) -> float:
    """``exp(H(p))`` with ``p_i = s_i^2 / sum s^2`` over the singular values ``s`` of the `(N, D)` tokens.

    >>> round(effective_rank(torch.eye(4)), 6), round(effective_rank(torch.ones(5, 3)), 6)
    (4.0, 1.0)
    """
    s = torch.linalg.svdvals(tokens.double())
    p = s.pow(2) / s.pow(2).sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def token_stats(tokens: torch.Tensor) -> dict[str, float]:
    """Effective rank, residual energy at 25 % / 50 % kept, first fully spanned step / N, of one image's tokens."""
    from .. import select

    n = tokens.shape[0]
    sel = select(tokens, n, "residual", seed="max_norm")
    curve = sel.residual.double()
    spanned = torch.nonzero(curve <= 0).flatten()
    return {
        "effective_rank": effective_rank(tokens),
        "residual_at_25": float(curve[round(0.25 * n)]),
        "residual_at_50": float(curve[round(0.5 * n)]),
        "all_spanned_at": (int(spanned[0]) / n) if spanned.numel() else 1.0,
    }


def pixel_tokens(image) -> torch.Tensor:  # noqa: ANN001
    """`(144, 768)` mean-free raw patches of a 192 px scene image."""
    a = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)  # (H, W, 3)
    g = IMAGE_SIZE // PATCH
    p = a.reshape(g, PATCH, g, PATCH, 3).permute(0, 2, 1, 3, 4).reshape(g * g, -1)
    return p - p.mean(0, keepdim=True)


def auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Probability that a positive token scores above a negative one (ties count half); NaN without both.

    >>> first = torch.tensor([True, False, False])
    >>> auc(torch.tensor([0.9, 0.1, 0.5]), first), auc(torch.ones(3), first)
    (1.0, 0.5)
    """
    pos, neg = scores[positive].double(), scores[~positive].double()
    if not pos.numel() or not neg.numel():
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def run(n: int = 1000, world: int = 1, with_model: bool = True, model_path: str | None = None) -> dict:
    """The medians over ``n`` test scenes of ``world``; the model tokens are those of the checkpoint in
    ``model_path`` (default: the shipped offline model)."""
    from .. import load_model, prune
    from ..recall import relevant_tokens
    from .model import load_scenes_model

    model = processor = None
    if with_model:
        model, processor = load_model("scenes") if model_path is None else load_scenes_model(model_path)
    rows: dict[str, list[dict]] = {"pixels": [], "model": []}
    aucs: list[float] = []
    lo = SPLITS["test"][0]
    for seed in range(lo, lo + n):
        scene = sample(seed, world)
        rows["pixels"].append(token_stats(pixel_tokens(scene.image)))
        if with_model:
            question = next((q for q in scene.questions if q.objects), scene.questions[0])
            text = question.text
            prompt = processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}],
                add_generation_prompt=True,
            )
            inputs = processor(images=scene.image, text=prompt, return_tensors="pt")
            with torch.no_grad():  # the tokens, and the relevance of the question's nouns to each of them
                res = prune(model, inputs, "relevance", 1, processor=processor, prompt=text)
            rows["model"].append(token_stats(res.visual_tokens[0]))
            rel = res.selections[0].relevance
            if question.objects and rel is not None:
                mask = np.zeros(scene.image.size[::-1], dtype=bool)
                for o in question.objects:
                    mask |= o.mask
                aucs.append(auc(rel.cpu(), relevant_tokens(res.geometry[0], mask)))
    summary = {"world": world, "n": n, "model_path": model_path}
    for kind, rs in rows.items():
        if rs:
            summary[kind] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
    aucs = [a for a in aucs if a == a]
    if aucs:
        summary["model"]["relevance_auc"] = statistics.fmean(aucs)
        summary["model"]["relevance_auc_questions"] = len(aucs)
    return summary


def format_table(summaries: list[dict]) -> str:
    lines = [
        "| world | tokens | effective rank (median) | residual energy at 25 % kept | at 50 % kept | all spanned at "
        "| relevance AUC for the question's objects (mean) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        for kind in ("pixels", "model"):
            if kind in s:
                r = s[kind]
                lines.append(
                    f"| {s['world']} | {kind} | {r['effective_rank']:.1f} | {r['residual_at_25']:.2e} | "
                    f"{r['residual_at_50']:.2e} | {100 * r['all_spanned_at']:.0f} % of N | "
                    + (
                        f"{r['relevance_auc']:.2f} ({r['relevance_auc_questions']} questions) |"
                        if "relevance_auc" in r
                        else "– |"
                    )
                )
    lines.append("")
    lines.append(f"Medians over {summaries[0]['n']} test scenes per world (python -m resprune.scenes.stats).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m resprune.scenes.stats", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1000, help="test scenes per world")
    p.add_argument("--world", type=int, nargs="+", default=[1, 2], choices=(1, 2))
    p.add_argument("--no-model", action="store_true", help="only the raw-patch tokens")
    p.add_argument("--model", default=None, help="a scenes checkpoint folder (default: the shipped offline model)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.n < 1:
        p.error("--n must be >= 1")
    summaries = [run(a.n, w, not a.no_model, a.model) for w in a.world]
    print(format_table(summaries))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summaries, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
