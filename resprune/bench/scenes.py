"""``python -m resprune.bench scenes``: accuracy and relevant-token recall on the scene world, with ground truth.

Every registered method runs on the offline default model at keep in {100, 50, 33, 22, 11, 5} % of the visual
tokens, on a fixed set of test-split questions. Reported with 95 % confidence intervals (Wilson for accuracy,
normal approximation over questions for recall and time):

- answer accuracy, overall and per question type (greedy answer, exact match after normalisation);
- relevant-token recall: the share of the tokens covering the objects the question is about that were kept
  (a token counts when at least 25 % of its pixel box lies on an object's mask);
- mean selection time;
- paired comparisons: at each budget, every pair of methods on the same questions, with an exact McNemar test
  (two-sided binomial test on the discordant questions), Holm-corrected over the pairs of that budget; the table
  marks which methods each one beats significantly (p < 0.05).

Writes a markdown table (stdout and ``--md``), a plot (``--plot``; accuracy and recall vs kept fraction, one
line per method) and, with ``--json``, every number.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from typing import Any

import numpy as np

FRACTIONS = (1.0, 0.5, 0.33, 0.22, 0.11, 0.05)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float, float]:
    """Proportion ``k/n`` with its Wilson 95 % interval.

    >>> [round(x, 3) for x in wilson(9, 10)]
    [0.9, 0.596, 0.982]
    """
    if n == 0:
        return (float("nan"),) * 3
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return p, max(0.0, c - h), min(1.0, c + h)


def mean_ci(xs: list[float], z: float = 1.96) -> tuple[float, float, float]:
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return (float("nan"),) * 3
    m = statistics.fmean(xs)
    h = z * statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else 0.0
    return m, m - h, m + h


def normalise(answer: str) -> str:
    return answer.strip().lower().strip(".!?,;:").split()[0] if answer.strip() else ""


def run(
    n_questions: int = 1000,
    methods: list[str] | None = None,
    fractions: tuple[float, ...] = FRACTIONS,
    log: Any = None,
    model_path: str | None = None,
    world: int | None = None,
) -> dict:
    """Every method at every budget on the first ``n_questions`` test questions of ``world`` (default: the world
    the model was trained on), answered by the scenes checkpoint in ``model_path`` (default: the shipped one)."""
    import torch

    import resprune
    from resprune import scenes
    from resprune.recall import relevant_tokens, token_recall
    from resprune.scenes.model import DEFAULT_DIR, load_scenes_model, trained_world

    if model_path is None:
        model, processor = resprune.load_model("scenes")
    else:
        model, processor = load_scenes_model(model_path)
    world = trained_world(model_path or DEFAULT_DIR) if world is None else world
    methods = methods or resprune.list_methods()
    items = []  # (image, question, relevant mask)
    seed = 0
    for scene in scenes.test_scenes(world=world):
        for q in scene.questions:
            mask = np.zeros(scene.image.size[::-1], dtype=bool)
            for o in q.objects:
                mask |= np.asarray(o.mask, dtype=bool)
            items.append((scene.image, q, mask))
        seed += 1
        if len(items) >= n_questions:
            break
    items = items[:n_questions]
    records = []
    t_start = time.perf_counter()
    with torch.no_grad():
        for i, (image, q, mask) in enumerate(items):
            for frac in fractions:
                for m in methods if frac < 1.0 else methods[:1]:
                    try:
                        ans = resprune.answer(
                            model,
                            processor,
                            image,
                            q.text,
                            method=m,
                            keep=_keep(frac, model, processor, image, q.text),
                            max_new_tokens=4,
                            compare=False,
                            timing_repeats=1,
                        )
                    except (ValueError, TypeError) as e:  # a method that cannot run on this model
                        records.append(dict(method=m, frac=frac, error=str(e)))
                        continue
                    sel = ans.result.selections[0]
                    rel = relevant_tokens(ans.result.geometry[0], mask) if mask.any() else None
                    rec = dict(
                        method=m,
                        frac=frac,
                        question=i,
                        type=q.type,
                        correct=normalise(ans.pruned) == normalise(q.answer),
                        recall=token_recall(sel, rel) if rel is not None else float("nan"),
                        seconds=float(ans.stats.get("selection_seconds", float("nan"))),
                        keep=sel.keep,
                        n=sel.n_tokens,
                    )
                    records.append(rec)
                    if frac == 1.0:  # keeping every token is the same model for every method
                        records += [dict(rec, method=other) for other in methods[1:]]
            if log and (i + 1) % 25 == 0:
                log(f"{i + 1}/{len(items)} questions, {time.perf_counter() - t_start:.0f} s")
    return {**summarise(records, methods, fractions), "world": world, "model_path": model_path}


_KEEP_CACHE: dict = {}


def _keep(frac: float, model, processor, image, text: str) -> int:  # noqa: ANN001
    import resprune

    key = id(model)
    if key not in _KEEP_CACHE:
        _KEEP_CACHE[key] = resprune.count_visual_tokens(model, processor, image, text)
    n = _KEEP_CACHE[key]
    return n if frac >= 1.0 else resprune.keep_count(n, frac)


def summarise(records: list[dict], methods: list[str], fractions: tuple[float, ...]) -> dict:
    out: dict = {"methods": methods, "fractions": list(fractions), "rows": [], "errors": {}}
    by = defaultdict(list)
    for r in records:
        if "error" in r:
            out["errors"].setdefault(r["method"], r["error"])
            continue
        by[(r["method"], r["frac"])].append(r)
    types = sorted({r["type"] for rs in by.values() for r in rs})
    out["types"] = types
    for (m, f), rs in sorted(by.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        row = dict(method=m, frac=f, n=len(rs), keep=rs[0]["keep"], tokens=rs[0]["n"])
        row["acc"] = wilson(sum(r["correct"] for r in rs), len(rs))
        for t in types:
            rt = [r for r in rs if r["type"] == t]
            row[f"acc_{t}"] = wilson(sum(r["correct"] for r in rt), len(rt))
        row["recall"] = mean_ci([r["recall"] for r in rs])
        row["seconds"] = mean_ci([r["seconds"] for r in rs])
        out["rows"].append(row)
    out["paired"] = paired(by, fractions)
    return out


def mcnemar(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for ``b`` and ``c`` discordant pairs (binomial(b + c, 1/2)).

    >>> round(mcnemar(10, 2), 4), mcnemar(5, 5), mcnemar(0, 0)
    (0.0386, 1.0, 1.0)
    """
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values (family-wise error over the list).

    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
    """
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [0.0] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return [round(a, 12) for a in adjusted]


def paired(by: dict, fractions: tuple[float, ...], alpha: float = 0.05) -> list[dict]:
    """Every pair of methods at every budget below 100 %, on the questions both answered: accuracy difference,
    discordant counts (``a_only``: a right and b wrong), exact McNemar p, Holm-adjusted within the budget."""
    out = []
    for f in fractions:
        if f >= 1.0:
            continue
        correct = {m: {r["question"]: r["correct"] for r in rs} for (m, fr), rs in by.items() if fr == f}
        names = sorted(correct)
        pairs = []
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                common = sorted(set(correct[a]) & set(correct[b]))
                a_only = sum(correct[a][q] and not correct[b][q] for q in common)
                b_only = sum(correct[b][q] and not correct[a][q] for q in common)
                diff = (a_only - b_only) / len(common) if common else float("nan")
                pairs.append(
                    dict(
                        frac=f,
                        a=a,
                        b=b,
                        n=len(common),
                        a_only=a_only,
                        b_only=b_only,
                        diff=diff,
                        p=mcnemar(a_only, b_only),
                    )
                )
        for pair, adj in zip(pairs, holm([pr["p"] for pr in pairs])):
            pair["p_holm"] = adj
            pair["significant"] = adj < alpha
        out += pairs
    return out


def beats(summary: dict, method: str, frac: float) -> list[str]:
    """The methods that ``method`` answers significantly better than at ``frac`` (paired, Holm-corrected)."""
    out = []
    for pr in summary.get("paired", []):
        if pr["frac"] == frac and pr["significant"] and method in (pr["a"], pr["b"]):
            winner, loser = (pr["a"], pr["b"]) if pr["diff"] > 0 else (pr["b"], pr["a"])
            if winner == method:
                out.append(loser)
    return sorted(out)


def format_table(summary: dict) -> str:
    types = summary["types"]
    head = [
        "method",
        "kept",
        "accuracy",
        *types,
        "relevant-token recall",
        "selection time",
        "significantly better than",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(head) - 2)]
    for r in summary["rows"]:
        acc = lambda v: f"{100 * v[0]:.1f} ({100 * v[1]:.0f}–{100 * v[2]:.0f})"  # noqa: E731
        cells = [r["method"], f"{100 * r['frac']:.0f} % ({r['keep']}/{r['tokens']})", acc(r["acc"])]
        cells += [f"{100 * r[f'acc_{t}'][0]:.0f}" for t in types]
        rc = r["recall"]
        cells.append(f"{100 * rc[0]:.1f} ± {100 * (rc[2] - rc[0]):.1f}" if not math.isnan(rc[0]) else "")
        cells.append(f"{1000 * r['seconds'][0]:.2f} ms")
        cells.append(", ".join(beats(summary, r["method"], r["frac"])) if r["frac"] < 1.0 else "")
        lines.append("| " + " | ".join(cells) + " |")
    n = summary["rows"][0]["n"] if summary["rows"] else 0
    lines.append("")
    lines.append(
        f"{n} test questions; accuracy in % with Wilson 95 % intervals, per-type columns in %; recall "
        "in % ± 95 % half-width; selection time is the mean per image; 'significantly better than': exact McNemar "
        "test on the same questions, Holm-corrected over the pairs of that budget, p < 0.05."
    )
    for m, e in summary["errors"].items():
        lines.append(f"- `{m}` did not run on this model: {e}")
    return "\n".join(lines)


def plot(summary: dict, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    # one colour and one marker per method (11 registered): no two lines of the legend look alike
    colours = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#882255", "#000000", "#999999"]
    colours += ["#117733", "#DDCC77", "#332288"]
    markers = "osD^vP*XhpH<"
    for i, m in enumerate(summary["methods"]):
        rs = sorted((r for r in summary["rows"] if r["method"] == m), key=lambda r: r["frac"])
        if not rs:
            continue
        x = [100 * r["frac"] for r in rs]
        style = dict(
            color=colours[i % len(colours)], marker=markers[i % len(markers)], label=m, lw=2 if m == "resprune" else 1.2
        )
        ax1.plot(x, [100 * r["acc"][0] for r in rs], **style)
        ax1.fill_between(
            x, [100 * r["acc"][1] for r in rs], [100 * r["acc"][2] for r in rs], color=style["color"], alpha=0.08
        )
        ax2.plot(x, [100 * r["recall"][0] for r in rs], **style)
    for ax, title in ((ax1, "answer accuracy (%)"), (ax2, "relevant-token recall (%)")):
        ax.set_xscale("log")
        ax.set_xticks([100 * f for f in summary["fractions"]], [f"{100 * f:.0f}" for f in summary["fractions"]])
        ax.set_xlabel("visual tokens kept (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax2.legend(fontsize=8, ncol=2)
    fig.savefig(path)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m resprune.bench scenes", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1000, help="number of test questions (per method and budget)")
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--json", default=None, help="write every number as JSON here")
    p.add_argument("--md", default=None, help="write the markdown table here")
    p.add_argument("--plot", default=None, help="write the accuracy/recall plot (PNG) here")
    p.add_argument("--model", default=None, help="a scenes checkpoint folder (default: the shipped offline model)")
    p.add_argument("--world", type=int, default=None, choices=(1, 2), help="default: the model's own world")
    a = p.parse_args(argv)
    summary = run(
        a.n, a.methods, log=lambda s: print(s, file=sys.stderr, flush=True), model_path=a.model, world=a.world
    )
    table = format_table(summary)
    print(table)
    if a.md:
        with open(a.md, "w") as f:
            f.write(table + "\n")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=1)
    if a.plot:
        plot(summary, a.plot)
    return 0
