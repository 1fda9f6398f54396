"""``python -m resprune.eval``: score vs kept tokens for several methods and budgets, one model load.

Every (method, budget) cell runs every task through lmms-eval (``simple_evaluate`` on one ``ResPruneLMM``) and is
written to ``<output>/cells/<method>/keep<K>/cell.json`` when it is complete, so a rerun (or a run resumed
after a kill) skips the finished cells. Then ``<output>/results.csv`` and ``results.json`` hold one tidy table
(task, metric, method, keep, score, n, 95 % CI where the metric allows, mean visual tokens, prefill FLOPs,
prefill time) and ``<output>/score_vs_keep.png`` plots score against kept tokens, one line per method.

Runs in one process or under ``accelerate launch`` (data parallel: lmms-eval splits the samples over the
processes, rank 0 gathers them and writes). Bad input (an unknown method or task, a budget larger than the
model's visual tokens, a model that cannot load) ends with one line ``error: <argument>: ...`` and exit
status 2, before the model is loaded where the check allows.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from . import import_lmms_eval, lmms_eval_images
from ._args import NEWLINES, QUERIES, Budget, budget, method_hparams

COLUMNS = (
    "task",
    "metric",
    "method",
    "keep",
    "score",
    "n",
    "ci_low",
    "ci_high",
    "visual_tokens",
    "visual_tokens_before",
    "prefill_flops",
    "prefill_flops_before",
    "prefill_seconds",
    "selection_seconds",
    "kv_cache_bytes",
)
SCENE_TASK = "resprune_scenes"


class SweepError(ValueError):
    """Bad input to the sweep: the message starts with the argument's name."""


def _split(text: str, name: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise SweepError(f"{name}: give at least one value, got {text!r}")
    return items


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m resprune.eval", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="scenes", help="preset name, hub id or local folder (default: scenes)")
    p.add_argument("--methods", default="resprune", help="comma-separated method names")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--keep", default=None, help="comma-separated K (visual tokens kept per image)")
    g.add_argument("--keep-ratio", default=None, help="comma-separated fractions of the visual tokens")
    p.add_argument("--tasks", default=SCENE_TASK, help="comma-separated lmms-eval task names")
    p.add_argument("--include-path", action="append", default=[], help="a folder of extra task YAMLs")
    p.add_argument("--scene-questions", type=int, default=100, help=f"questions in the local {SCENE_TASK} task")
    p.add_argument("--output", required=True, help="folder for the cells, the table and the plot")
    p.add_argument("--limit", type=int, default=None, help="at most this many samples per task")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--newlines", default=None, choices=NEWLINES, help="default: the method's declared default")
    p.add_argument("--query", default="auto", choices=QUERIES)
    p.add_argument(
        "--hparam",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a method hyperparameter, for the methods that take it (e.g. alpha=2)",
    )
    return p.parse_args(argv)


def check(a: argparse.Namespace) -> tuple[list[str], list[Budget], dict[str, Any]]:
    """Everything that can be checked without lmms-eval or a model."""
    import resprune

    methods = _split(a.methods, "--methods")
    for m in methods:
        if m not in resprune.list_methods():
            raise SweepError(f"--methods: unknown method {m!r}; available: {', '.join(resprune.list_methods())}")
    if a.keep_ratio is not None:
        budgets = [_budget(keep_ratio=v) for v in _split(a.keep_ratio, "--keep-ratio")]
    else:
        budgets = [_budget(keep=v) for v in _split(a.keep or "64", "--keep")]
    hparams: dict[str, Any] = {}
    for h in a.hparam:
        if "=" not in h:
            raise SweepError(f"--hparam: expected NAME=VALUE, got {h!r}")
        k, v = h.split("=", 1)
        hparams[k.strip()] = _value(v.strip())
    for k in hparams:
        if not any(k in resprune.method_info(m).hparams for m in methods):
            raise SweepError(f"--hparam: {k!r} is a hyperparameter of none of the methods {methods}")
    if a.limit is not None and a.limit < 1:
        raise SweepError(f"--limit must be a positive int, got {a.limit}")
    if a.batch_size < 1:
        raise SweepError(f"--batch-size must be a positive int, got {a.batch_size}")
    _split(a.tasks, "--tasks")
    return methods, budgets, hparams


def _budget(**kw: str) -> Budget:
    name = "--keep" if "keep" in kw else "--keep-ratio"
    v = next(iter(kw.values()))
    try:
        return budget(**{k: (int(x) if k == "keep" and x.isdigit() else x) for k, x in kw.items()})
    except ValueError as e:
        raise SweepError(f"{name}: {e} (value {v!r})") from None


def _value(v: str) -> Any:
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


def cell_dir(output: Path, method: str, b: Budget) -> Path:
    return output / "cells" / method / f"keep{b.label()}"


def resolve_tasks(a: argparse.Namespace, output: Path, rank: int) -> tuple[list[str], Any]:
    """Task names checked against lmms-eval's index (plus ``--include-path`` and the local scene task)."""
    from lmms_eval.tasks import TaskManager

    names = _split(a.tasks, "--tasks")
    include = [str(Path(p).resolve()) for p in a.include_path]
    for p in include:
        if not os.path.isdir(p):
            raise SweepError(f"--include-path: no such folder {p!r}")
    local = TaskManager("WARNING", include_path=include, include_defaults=False) if include else None
    if SCENE_TASK in names and (local is None or SCENE_TASK not in local.all_tasks):  # exported on first use
        folder = output / "tasks" / SCENE_TASK
        if rank == 0 and not (folder / f"{SCENE_TASK}.yaml").exists():
            from .export import export_scene_task

            export_scene_task(folder, a.scene_questions)
        _barrier()
        include.append(str(folder))
        local = TaskManager("WARNING", include_path=include, include_defaults=False)
    if local is not None and all(n in local.all_tasks for n in names):
        tm = local  # only local tasks: no need to index lmms-eval's ~2,000 (6 s)
    else:
        tm = TaskManager("WARNING", include_path=include or None, model_name="resprune")
    known = set(tm.all_tasks)
    for n in names:
        if n not in known:
            raise SweepError(f"--tasks: unknown task {n!r} (not in lmms-eval's task index nor --include-path)")
    return names, tm


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _dist_init(device: str) -> tuple[int, int]:
    """Join the process group when launched by ``accelerate launch`` (before any task is exported)."""
    from .lmms import _accelerator

    acc = _accelerator(device)
    return acc.process_index, acc.num_processes


def run(a: argparse.Namespace, log: Any = print) -> list[dict[str, Any]]:
    methods, budgets, hparams = check(a)
    try:
        import_lmms_eval()
    except ImportError as e:
        raise SweepError(
            f"lmms-eval is not installed ({e}): pip install -r requirements-eval.txt && "
            "pip install --no-deps -r requirements-lmms-eval.txt"
        ) from None
    output = Path(a.output)
    rank, world = _dist_init(a.device)
    if rank == 0:
        output.mkdir(parents=True, exist_ok=True)
    _barrier()
    tasks, tm = resolve_tasks(a, output, rank)
    todo = [(m, b) for m in methods for b in budgets if not (cell_dir(output, m, b) / "cell.json").exists()]
    skipped = len(methods) * len(budgets) - len(todo)
    if rank == 0 and skipped:
        log(f"resprune.eval: {skipped} finished cell(s) skipped")
    if todo:
        from lmms_eval.evaluator import simple_evaluate

        from resprune import ModelLoadError

        from . import lmms
        from .lmms import ResPruneLMM

        m0, b0 = todo[0]
        try:
            lm = ResPruneLMM(
                pretrained=a.model,
                method=m0,
                keep=b0.keep,
                keep_ratio=b0.keep_ratio,
                newlines=a.newlines,
                query=a.query,
                dtype=a.dtype,
                device=a.device,
                batch_size=a.batch_size,
                **method_hparams(m0, hparams, strict=False),
            )
        except ModelLoadError as e:
            raise SweepError(f"--model: {e}") from None
        except (ValueError, OSError) as e:
            where = "--keep" if str(e).startswith("keep=") else f"--model {a.model!r}"
            raise SweepError(f"{where}: {e}") from None
        if lm.n_probe and lmms._fixed_grid(lm.model):  # one N for every image: check every budget now
            for b in budgets:
                if b.keep is not None and b.keep > lm.n_probe:
                    raise SweepError(f"--keep: {b.keep} is larger than the {lm.n_probe} visual tokens of {a.model!r}")
        for m, b in todo:
            cell = cell_dir(output, m, b)
            if rank == 0:
                cell.mkdir(parents=True, exist_ok=True)
                for old in cell.glob("records_rank*.jsonl"):  # a killed run's partial records
                    old.unlink()
            _barrier()
            lm.configure(m, b, method_hparams(m, hparams, strict=False), records=str(cell))
            log(f"resprune.eval: {m} keep={b.label()} on {', '.join(tasks)}") if rank == 0 else None
            try:
                with lmms_eval_images():
                    res = simple_evaluate(
                        model=lm,
                        tasks=tasks,
                        task_manager=tm,
                        limit=a.limit,
                        log_samples=True,
                        bootstrap_iters=0,
                        verbosity="WARNING",
                    )
            except ValueError as e:  # a budget above some image's N (LLaVA-NeXT, Qwen), a sample with two images
                where = "--keep" if str(e).startswith("keep=") else f"--tasks (cell {m}, keep {b.label()})"
                raise SweepError(f"{where}: {e}") from None
            lm.clean()
            _barrier()
            if rank == 0:
                rows = cell_rows(res, m, b, cell)
                tmp = cell / "cell.json.tmp"
                tmp.write_text(json.dumps(dict(method=m, keep=b.label(), rows=rows), indent=1))
                tmp.replace(cell / "cell.json")  # complete, or not there: a killed cell reruns
            _barrier()
    rows = []
    if rank == 0:
        for m in methods:
            for b in budgets:
                rows += json.loads((cell_dir(output, m, b) / "cell.json").read_text())["rows"]
        rows = [r for r in rows if r["task"] in tasks]
        write_table(rows, output)
        plot(rows, output / "score_vs_keep.png")
    return rows


def cell_rows(res: dict[str, Any], method: str, b: Budget, cell: Path) -> list[dict[str, Any]]:
    """The table rows of one finished cell: per task and metric, the score, n and CI; efficiency from the
    per-sample records of every rank (each sample once)."""
    recs: dict[tuple[str, Any], dict[str, Any]] = {}
    for f in sorted(cell.glob("records_rank*.jsonl")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            recs[(r["task"], r["doc_id"])] = r
    rows = []
    for task, metrics in sorted(res["results"].items()):
        samples = res.get("samples", {}).get(task, [])
        ids = {s.get("doc_id") for s in samples}
        task_recs = [r for (t, d), r in recs.items() if t == task and d in ids]
        for key, value in metrics.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or "_stderr" in key or key == "alias":
                continue
            metric = key.split(",")[0]
            values = [s[metric] for s in samples if isinstance(s.get(metric), (int, float))]
            lo, hi = _ci(values, metrics.get(f"{metric}_stderr,{key.split(',', 1)[-1]}"), float(value))
            rows.append(
                dict(
                    task=task,
                    metric=metric,
                    method=method,
                    keep=b.label(),
                    score=float(value),
                    n=len(samples),
                    ci_low=lo,
                    ci_high=hi,
                    visual_tokens=_mean(task_recs, "visual_tokens_after"),
                    visual_tokens_before=_mean(task_recs, "visual_tokens_before"),
                    prefill_flops=_mean(task_recs, "prefill_flops_after"),
                    prefill_flops_before=_mean(task_recs, "prefill_flops_before"),
                    prefill_seconds=_mean(task_recs, "prefill_seconds"),
                    selection_seconds=_mean(task_recs, "selection_seconds"),
                    kv_cache_bytes=_mean(task_recs, "kv_cache_bytes"),
                )
            )
    return rows


def _ci(values: list[float], stderr: Any, score: float) -> tuple[float | None, float | None]:
    """95 % interval: Wilson for a mean of 0/1 scores, normal over samples for other per-sample means, else
    lmms-eval's own stderr; None when the metric is an aggregate without one."""
    from resprune.bench.scenes import wilson

    if values and all(v in (0, 1) for v in values) and math.isclose(statistics.fmean(values), score):
        _, lo, hi = wilson(int(sum(values)), len(values))
        return lo, hi
    if len(values) > 1 and math.isclose(statistics.fmean(values), score):
        h = 1.96 * statistics.stdev(values) / math.sqrt(len(values))
        return score - h, score + h
    if isinstance(stderr, (int, float)) and not isinstance(stderr, bool) and math.isfinite(stderr) and stderr > 0:
        return score - 1.96 * stderr, score + 1.96 * stderr
    return None, None


def _mean(recs: list[dict[str, Any]], key: str) -> float | None:
    xs = [r[key] for r in recs if isinstance(r.get(key), (int, float))]
    return statistics.fmean(xs) if xs else None


def write_table(rows: list[dict[str, Any]], output: Path) -> None:
    with open(output / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in COLUMNS})
    (output / "results.json").write_text(json.dumps(rows, indent=1))


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Score vs mean kept visual tokens, one panel per (task, metric), one line per method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = sorted({(r["task"], r["metric"]) for r in rows})
    if not panels:
        return
    fig = Figure(figsize=(4.5 * len(panels), 3.6), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (task, metric) in zip(axes, panels):
        for m in sorted({r["method"] for r in rows}):
            rs = [r for r in rows if r["task"] == task and r["metric"] == metric and r["method"] == m]
            rs = sorted(rs, key=lambda r: r["visual_tokens"] or 0)
            if not rs:
                continue
            x = [r["visual_tokens"] or 0 for r in rs]
            ax.plot(x, [r["score"] for r in rs], marker="o", lw=2 if m == "resprune" else 1.2, label=m)
            if all(r["ci_low"] is not None for r in rs):
                ax.fill_between(x, [r["ci_low"] for r in rs], [r["ci_high"] for r in rs], alpha=0.1)
        ax.set_xlabel("visual tokens kept (mean per sample)")
        ax.set_ylabel(metric)
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    try:
        a = parse_args(argv)
        rows = run(a, log=lambda s: print(s, file=sys.stderr, flush=True))
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if rows:
        print(f"resprune.eval: {len(rows)} rows in {Path(a.output) / 'results.csv'}")
    return 0
