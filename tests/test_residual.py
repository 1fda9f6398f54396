"""The greedy residual core (resprune.residual): the residual curve of any order, the two solvers."""

from __future__ import annotations

import torch
from helpers import query, tokens
from hypothesis import given, settings
from hypothesis import strategies as st

from resprune import select
from resprune.residual import residual_curve

# CI must not be flaky: examples are derived from the test, not drawn afresh each run
settings.register_profile("resprune", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("resprune")


def _low_rank(n: int, rank: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, rank, generator=g) @ torch.randn(rank, d, generator=g)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(4, 40),
    rank=st.integers(1, 8),
    seed=st.integers(0, 10_000),
    method=st.sampled_from(["resprune", "residual"]),
    solver=st.sampled_from(["gs", "gram"]),
)
def test_residual_curve_reaches_zero_at_rank(n, rank, seed, method, solver):
    rank = min(rank, n)
    v = _low_rank(n, rank, 12, seed)
    q = query(12, seed=seed) if method == "resprune" else None
    sel = select(v, rank, method, query=q, solver=solver)
    r = sel.residual
    assert r[0] == 1.0 and (r[1:] <= r[:-1]).all()
    assert float(r[-1]) < 1e-4
    # beyond the rank every extra pick is still a distinct index, and the curve stays at 0
    if n > rank:
        more = select(v, min(n - 1, rank + 2), method, query=q, solver=solver)
        assert more.keep_idx.unique().numel() == more.keep
        assert float(more.residual[rank:].max()) < 1e-4


@settings(max_examples=20, deadline=None)
@given(n=st.integers(3, 30), k=st.integers(1, 30), seed=st.integers(0, 10_000))
def test_residual_curve_of_any_order_is_monotone(n, k, seed):
    v = tokens(n, 8, seed)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(k, n)]
    r = residual_curve(v, order)
    assert r.shape == (order.numel() + 1,) and r[0] == 1.0
    assert (r[1:] <= r[:-1]).all() and float(r.min()) >= 0
    if order.numel() >= min(n, 8):
        assert float(r[-1]) < 1e-4  # n tokens in R^8 are spanned by any 8 generic ones


def test_solvers_agree():
    v, q = tokens(60, 32, 3), query(32)
    a = select(v, 25, "resprune", query=q, solver="gs")
    b = select(v, 25, "resprune", query=q, solver="gram")
    assert torch.equal(a.order, b.order)
    assert torch.allclose(a.residual, b.residual, atol=1e-5)
    assert torch.allclose(a.energy, b.energy, rtol=1e-3, atol=1e-4)
    assert {a.params["solver"], b.params["solver"]} == {"gs", "gram"}


def test_float64_estimates_are_far_inside_the_margin():
    """The lazy search trusts an estimate +- ``MARGIN * ||v||^2``: on structured tokens (low rank plus small noise,
    energies down to 1e-8 of the norm) both solvers' energies at pick stay within 1e-12 of the exact replay, a
    thousand times inside the margin, and auto picks the Gram solver at LLaVA sizes."""
    from resprune.residual import MARGIN, auto_solver, greedy_residual, residual_energies

    g = torch.Generator().manual_seed(3)
    v = torch.randn(300, 1024, generator=g) * 1e-3 + torch.randn(300, 24, generator=g) @ torch.randn(
        24, 1024, generator=g
    )
    norm2 = v.double().pow(2).sum(1)
    for solver in ("gram", "gs"):
        order, energy, _, _ = greedy_residual(v, 120, None, None, solver=solver)
        exact = residual_energies(v, order)[torch.arange(120), order]
        rel = ((energy - exact).abs() / norm2[order]).max().item()
        assert rel < 1e-12 <= MARGIN / 1000, (solver, rel)
        assert (exact / norm2[order]).min() < 1e-6  # the case reaches the noise level
    assert auto_solver(576, 192, 4096) == auto_solver(2880, 320, 4096) == auto_solver(576, 64, 4096) == "gram"
    assert auto_solver(2880, 64, 4096) == "gs"  # K < N / 20: K mat-vecs are cheaper than the SYRK (measured)
    assert auto_solver(20000, 2000, 4096) == "gs"  # the (N, N) Gram matrix would take 3 GiB
