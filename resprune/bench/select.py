"""``python -m resprune.bench select``: selection time of every pre-LLM method, as a ratio to one linear layer.

The reference operation, timed in the same run, is one linear layer over the visual tokens, ``(N, D) @ (D, D)``
(what a single projection of the LLM costs on these tokens). Ratios from one run are comparable across machines;
absolute times are printed for context only.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from .. import list_methods, method_info, select


def _paired_times(fn, ref, repeats: int) -> tuple[float, float]:  # noqa: ANN001
    """Median times of ``fn`` and ``ref``, timed alternately so that load from other processes hits both alike."""
    fn()
    ref()  # warm-up
    t_fn, t_ref = [], []
    for _ in range(repeats):
        for f, out in ((ref, t_ref), (fn, t_fn)):
            t0 = time.perf_counter()
            f()
            out.append(time.perf_counter() - t0)
    return statistics.median(t_fn), statistics.median(t_ref)


def run(
    ns: tuple[int, ...] = (576, 2880),
    ks: tuple[int, ...] = (64, 128, 192),
    dim: int = 4096,
    repeats: int = 7,
    methods: list[str] | None = None,
) -> list[dict]:
    """Time every method (and ResPrune's two solvers) on random float32 tokens; returns one row per setting."""
    torch.manual_seed(0)
    methods = methods or [m for m in list_methods() if not method_info(m).requires]
    rows = []
    with torch.no_grad():
        for n in ns:
            tokens = torch.randn(n, dim)
            # tokens with shared structure, as projected tokens have: low-rank part plus noise
            tokens = tokens * 0.3 + torch.randn(n, 64) @ torch.randn(64, dim)
            query = torch.randn(4, dim)
            layer = torch.nn.Linear(dim, dim, bias=False)
            for k in ks:
                variants = [(m, m, {}) for m in methods]
                if "resprune" in methods:
                    variants += [
                        ("resprune[gs]", "resprune", {"solver": "gs"}),
                        ("resprune[gram]", "resprune", {"solver": "gram"}),
                    ]
                for label, m, hp in variants:
                    q = query if method_info(m).text_aware else None
                    t, ref = _paired_times(
                        lambda: select(tokens, k, m, query=q, **hp),  # noqa: B023
                        lambda: layer(tokens),  # noqa: B023
                        repeats,
                    )  # noqa: B023
                    rows.append(dict(method=label, n=n, k=k, d=dim, seconds=t, ref_seconds=ref, ratio=t / ref))
                if "resprune" in methods:  # the arithmetic floors of a greedy residual selection, same run
                    v64 = tokens.double().numpy()
                    for label, fn in _floors(tokens, v64, k).items():
                        t, ref = _paired_times(fn, lambda: layer(tokens), repeats)  # noqa: B023
                        rows.append(dict(method=label, n=n, k=k, d=dim, seconds=t, ref_seconds=ref, ratio=t / ref))
    return rows


FLOOR_F32 = ("floor: Gram GEMM (float32)", "floor: K mat-vecs (float32)")
FLOOR_F64 = "floor: SYRK (float64)"


def _floors(tokens: torch.Tensor, v64, k: int) -> dict:  # noqa: ANN001
    """What a greedy residual selection cannot avoid: one Gram product or K passes over the tokens (float32, the
    issue's floor), and the float64 SYRK that the exact core runs (``v64 @ v64.T``, half a GEMM at half the rate)."""
    rows = tokens[:k]
    return {
        FLOOR_F32[0]: lambda: tokens @ tokens.T,
        FLOOR_F32[1]: lambda: [tokens @ r for r in rows],
        FLOOR_F64: lambda: v64 @ v64.T,
    }


def format_table(rows: list[dict]) -> str:
    """Markdown table: one row per method, one column per (N, K)."""
    settings = sorted({(r["n"], r["k"]) for r in rows})
    header = "| method | " + " | ".join(f"N={n} K={k}" for n, k in settings) + " |"
    lines = [header, "|---|" + "---:|" * len(settings)]
    for m in dict.fromkeys(r["method"] for r in rows):
        cells = []
        for n, k in settings:
            r = next(r for r in rows if r["method"] == m and r["n"] == n and r["k"] == k)
            cells.append(f"{r['ratio']:.3f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if any(r["method"] == FLOOR_F64 for r in rows):
        cells = []
        for n, k in settings:
            at = {r["method"]: r["ratio"] for r in rows if r["n"] == n and r["k"] == k}
            cells.append(f"{at['resprune'] / min(at[f] for f in FLOOR_F32):.2f}x" if "resprune" in at else "-")
        lines.append("| **resprune / float32 floor** | " + " | ".join(cells) + " |")
    refs = {n: statistics.median(r["ref_seconds"] for r in rows if r["n"] == n) for n, _ in settings}
    lines.append("")
    lines.append(
        "Cells: median selection time / median time of one linear layer (N x D) @ (D x D), timed "
        "alternately in "
        "the same run. "
        + ", ".join(f"reference at N={n}: {t * 1e3:.1f} ms" for n, t in sorted(refs.items()))
        + f"; D={rows[0]['d']}, float32, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        + f"{platform.machine()}."
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m resprune.bench select", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[576, 2880], help="token counts N")
    p.add_argument("--k", type=int, nargs="+", default=[64, 128, 192], help="budgets K")
    p.add_argument("--dim", type=int, default=4096, help="feature dimension D")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--methods", nargs="+", default=None, help="subset of methods (default: all pre-LLM)")
    p.add_argument("--json", default=None, help="also write the rows as JSON to this path")
    a = p.parse_args(argv)
    rows = run(tuple(a.n), tuple(a.k), a.dim, a.repeats, a.methods)
    print(format_table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0
