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

import torch

from .. import list_methods, method_info, select, select_batch
from ..batching import threads_for
from ..timing import measure


def _paired_times(fn, ref, repeats: int, device: torch.device | str = "cpu") -> tuple[float, float]:  # noqa: ANN001
    """Median times of ``fn`` and ``ref``, timed alternately so that load from other processes hits both alike
    (the device synchronised around each call)."""
    fn()
    ref()  # warm-up
    t_fn, t_ref = [], []
    for _ in range(repeats):
        for f, out in ((ref, t_ref), (fn, t_fn)):
            out.append(measure(f, device).seconds[0])
    return statistics.median(t_fn), statistics.median(t_ref)


def run(
    ns: tuple[int, ...] = (576, 2880),
    ks: tuple[int, ...] = (64, 128, 192),
    dim: int = 4096,
    repeats: int = 7,
    methods: list[str] | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[dict]:
    """Time every method (and ResPrune's two solvers) on random tokens; returns one row per setting."""
    torch.manual_seed(0)
    methods = methods or [m for m in list_methods() if not method_info(m).requires]
    rows = []
    with torch.no_grad():
        for n in ns:
            tokens, query = _tokens(n, dim, device, dtype)
            layer = torch.nn.Linear(dim, dim, bias=False).to(device, dtype)
            for k in ks:
                variants = [(m, m, {}) for m in methods]
                if "resprune" in methods:
                    variants += [
                        ("resprune[gs]", "resprune", {"solver": "gs"}),
                        ("resprune[gram]", "resprune", {"solver": "gram"}),
                    ]
                timed = [
                    (label, lambda m=m, hp=hp: select(tokens, k, m, query=_q(m, query), **hp))  # noqa: B023
                    for label, m, hp in variants
                ]
                if "resprune" in methods:  # the arithmetic floors of a greedy residual selection, same run
                    v64 = tokens.double().cpu().numpy() if tokens.device.type == "cpu" else tokens.double()
                    timed += list(_floors(tokens, v64, k).items())
                for label, fn in timed:
                    t, ref = _paired_times(fn, lambda: layer(tokens), repeats, device)  # noqa: B023
                    row = dict(method=label, n=n, k=k, d=dim, seconds=t, ref_seconds=ref, ratio=t / ref)
                    rows.append(dict(row, device=str(device), dtype=str(dtype).replace("torch.", "")))
    return rows


def _q(method: str, query: torch.Tensor) -> torch.Tensor | None:
    return query if method_info(method).text_aware else None


def _tokens(n: int, dim: int, device: str, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens with shared structure, as projected tokens have (a rank-64 part plus noise), and a 4-word query."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(n, dim, generator=g) * 0.3 + torch.randn(n, 64, generator=g) @ torch.randn(
        64, dim, generator=g
    )
    return tokens.to(device, dtype), torch.randn(4, dim, generator=g).to(device, dtype)


BATCHED = ("resprune", "divprune", "cdpruner")


def run_batch(
    n: int = 576,
    k: int = 64,
    batch: int = 16,
    dim: int = 4096,
    repeats: int = 3,
    methods: tuple[str, ...] = BATCHED,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[dict]:
    """``select_batch`` on B images against B single ``select`` calls (same tokens, timed alternately)."""
    images = [_tokens(n, dim, device, dtype, seed=b) for b in range(batch)]
    tokens = [t for t, _ in images]
    query = images[0][1]
    rows = []
    with torch.no_grad():
        for m in methods:
            q = _q(m, query)
            batched, looped = _paired_times(
                lambda: select_batch(tokens, k, m, query=q),  # noqa: B023
                lambda: [select(t, k, m, query=q) for t in tokens],  # noqa: B023
                repeats,
                device,
            )
            rows.append(
                dict(
                    method=m,
                    n=n,
                    k=k,
                    batch=batch,
                    workers=threads_for(tokens),
                    looped=looped,
                    batched=batched,
                    speedup=looped / batched,
                )
            )
    return rows


def format_batch_table(rows: list[dict]) -> str:
    r0 = rows[0]
    head = f"| method (B={r0['batch']}, N={r0['n']}, K={r0['k']}) | {r0['batch']} single calls"
    lines = [
        head + f" | one select_batch ({_how(r0)}) | speedup |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['method']} | {r['looped'] * 1e3:.0f} ms | {r['batched'] * 1e3:.0f} ms | {r['speedup']:.2f}x |"
        for r in rows
    ]
    return "\n".join(lines)


def _how(row: dict) -> str:
    return f"{row['workers']} CPU threads" if row["workers"] > 1 else "the batched variant"


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
        + f"; D={rows[0]['d']}, {rows[0].get('dtype', 'float32')} on {rows[0].get('device', 'cpu')}, "
        + f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}."
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
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps or auto")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--batch", type=int, default=0, help="also time select_batch on B images vs B single calls")
    a = p.parse_args(argv)
    from ..loading import ModelLoadError, resolve_device

    try:
        device = str(resolve_device(a.device))
    except ModelLoadError as e:
        p.error(f"--device: {e}")
    dtype = getattr(torch, a.dtype)
    if a.batch < 0:
        p.error("--batch must be >= 0")
    rows = run(tuple(a.n), tuple(a.k), a.dim, a.repeats, a.methods, device, dtype)
    print(format_table(rows))
    if a.batch:
        batch_rows = run_batch(a.n[0], a.k[0], a.batch, a.dim, a.repeats, BATCHED, device, dtype)
        print()
        print(format_batch_table(batch_rows))
        rows = rows + batch_rows
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0
