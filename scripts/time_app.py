"""Time one full Run of the app on the offline default model, stage by stage, and the method comparison.

    python scripts/time_app.py [--runs 7] [--keep-percent 25]

A Run is what the Run button does: validate the inputs, answer with the pruned and the unpruned model, draw every
figure (overlay, residual-energy curves, relevance heatmap, one greedy step), build the stats table and the
downloads. The model is loaded once before timing (the app caches it per process). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import app  # noqa: E402
from resprune import scenes  # noqa: E402


def one_run(image, question: str, keep_percent: float) -> dict[str, float]:  # noqa: ANN001
    t = {}
    t0 = time.perf_counter()
    run = app.run_answer(image, question, app.DEFAULT_MODEL, app.DEFAULT_METHOD, keep_percent, 0, 0.75, "auto")
    t["answers (pruned + unpruned)"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    figs = app.figures_for(run)
    t["figures"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    app.step_image(run, max(1, run["keep"] // 4))
    t["greedy step figure"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    app.stats_rows(run["answer"].stats)
    app.write_downloads(run, figs)
    t["stats + downloads"] = time.perf_counter() - t3
    t["total"] = time.perf_counter() - t0
    st = run["answer"].stats
    t["  of which selection"] = st.get("selection_seconds", 0.0)
    t["  of which pruned prefill"] = st.get("prefill_seconds_after", 0.0)
    t["  of which unpruned prefill"] = st.get("prefill_seconds_before", 0.0)
    return t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--keep-percent", type=float, default=app.DEFAULT_KEEP_PERCENT)
    p.add_argument("--compare-runs", type=int, default=3)
    a = p.parse_args(argv)
    t_load = time.perf_counter()
    app.get_model(app.DEFAULT_MODEL)
    t_load = time.perf_counter() - t_load
    samples = [scenes.sample(900_000 + i) for i in range(a.runs + 1)]
    one_run(samples[0].image, samples[0].questions[0].text, a.keep_percent)  # warm-up
    rows = [one_run(s.image, s.questions[0].text, a.keep_percent) for s in samples[1:]]
    total = statistics.median(r["total"] for r in rows)
    print("| stage | median (s) | share of a Run |\n|---|---:|---:|")
    for key in rows[0]:
        med = statistics.median(r[key] for r in rows)
        print(f"| {key} | {med:.3f} | {100 * med / total:.0f} % |")
    comp = []
    for s in samples[1 : 1 + a.compare_runs]:
        t0 = time.perf_counter()
        app.on_compare(s.image, s.questions[0].text, app.DEFAULT_MODEL, a.keep_percent, 0, progress=_no_progress)
        comp.append(time.perf_counter() - t0)
    print(
        f"\nmodel load (once per process): {t_load:.2f} s; median Run: {total:.2f} s over {a.runs} runs; "
        f"method comparison (all {len(app.method_choices())} methods): median {statistics.median(comp):.2f} s "
        f"over {len(comp)} runs."
    )
    return 0


def _no_progress(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
    return None


if __name__ == "__main__":
    sys.exit(main())
