"""What every method shares: building the ``Selection``, per-token internals, the no-query note."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from ..residual import greedy_residual, greedy_residual_batch
from ..types import Selection

NO_QUERY = "no query words: text relevance unused, text-free score"


def finish(
    tokens: torch.Tensor,
    order: torch.Tensor,
    gain: torch.Tensor,
    method: str,
    params: dict,
    *,
    residual: torch.Tensor | None = None,
    v32: torch.Tensor | None = None,
    energy: torch.Tensor | None = None,
    relevance: torch.Tensor | None = None,
    notes: tuple[str, ...] = (),
) -> Selection:
    """The ``Selection`` of ``order`` (pick order); the residual curve is left to compute on first access
    (from ``v32``, the float32 tokens, when given) unless the method passes it."""
    dev = tokens.device
    order = order.to(torch.int64)
    return Selection(
        keep_idx=order.sort().values.to(dev),
        order=order.to(dev),
        gain=gain.float().to(dev),
        _residual=None if residual is None else residual.float().to(dev),
        _tokens=v32 if v32 is not None else tokens.detach(),
        method=method,
        n_tokens=int(tokens.shape[0]),
        energy=None if energy is None else energy.float().to(dev),
        relevance=None if relevance is None else relevance.float().to(dev),
        params=params,
        notes=notes,
    )


def per_token(values: Any, n: int, name: str, method: str, needs: str) -> torch.Tensor:
    """A method's required per-token score (``cls_attention``, ``llm_attention``) as a float32 `(N,)` CPU tensor."""
    if values is None:
        raise ValueError(f"method {method!r} needs {name} ({needs})")
    a = torch.as_tensor(values).float().flatten().cpu()
    if a.numel() != n:
        raise ValueError(f"{name} has {a.numel()} values but tokens has N={n}")
    return a


def split_budget(k: int, sizes: list[int]) -> list[int]:
    """``k`` split as evenly as possible over views of ``sizes`` tokens (earlier views get the remainder), no view
    getting more than it has; what a small view cannot take goes to the others."""
    out = [0] * len(sizes)
    left = k
    open_ = [j for j, n in enumerate(sizes) if n > 0]
    while left > 0 and open_:
        share, extra = divmod(left, len(open_))
        for r, j in enumerate(open_):
            add = min(share + (r < extra), sizes[j] - out[j])
            out[j] += add
            left -= add
        open_ = [j for j in open_ if out[j] < sizes[j]]
    return out


LOCKSTEP_ON_CPU = False  # the lock-step path on the CPU too (the tests exercise it there; slower on a CPU)


@dataclass(frozen=True)
class GreedyPlan:
    """One image's input to the greedy residual core, prepared (checked, weighted, seeded) by a method."""

    tokens: torch.Tensor  # (N, D) as given (for the Selection's device)
    v64: torch.Tensor  # (N, D) float64, on the tokens' device
    k: int
    weight: torch.Tensor | None  # (N,) float64 g(r), or None for all ones
    first: int | None  # the seed pick, or None
    solver: str  # the exact core's solver
    params: dict
    relevance: torch.Tensor | None
    notes: tuple[str, ...]
    norm2: torch.Tensor | None = None  # (N,) float64 squared norms, when the method computed them


def run_greedy(plans: list[GreedyPlan], method: str, *, lockstep: bool) -> list[Selection]:
    """Exact greedy picks of every plan, as ``Selection``s.

    ``lockstep``: images with the same K and seeding run together on their accelerator (``greedy_residual_batch``,
    one batched mat-vec per step, one host synchronisation after the loop; not on the CPU, where the exact core's
    half-size SYRK per image is faster than a batched full GEMM: ``bench select --batch`` measured 0.8-0.96x);
    those whose picks the float64 estimates do not certify, and all of them without ``lockstep``, run the exact
    core (``greedy_residual``, CPU). Either way
    the picks are the exact core's.
    """
    out: list[Selection | None] = [None] * len(plans)
    if lockstep:
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(plans):
            if p.v64.shape[0] >= 2:
                groups.setdefault((p.k, p.first is None, p.v64.device, p.v64.shape[1]), []).append(i)
        for (k, unseeded, dev, d), idx in groups.items():
            if dev.type == "cpu" and not LOCKSTEP_ON_CPU:
                continue  # the CPU: the exact core's SYRK beats the batched GEMM (measured: 0.78-0.96x in lock-step)
            nmax = max(plans[i].v64.shape[0] for i in idx)
            v = torch.zeros(len(idx), nmax, d, dtype=torch.float64, device=dev)
            valid = torch.zeros(len(idx), nmax, dtype=torch.bool, device=dev)
            weight = torch.ones(len(idx), nmax, dtype=torch.float64, device=dev)
            for j, i in enumerate(idx):
                p = plans[i]
                n = p.v64.shape[0]
                v[j, :n] = p.v64
                valid[j, :n] = True
                if p.weight is not None:
                    weight[j, :n] = p.weight.to(dev)
            seed = None if unseeded else torch.tensor([plans[i].first for i in idx], device=dev)
            order, energy, gain, curve, ok = greedy_residual_batch(v, k, weight, seed, valid)
            for j, i in enumerate(idx):
                if bool(ok[j]):  # after the loop: one synchronisation per image at most
                    p = plans[i]
                    out[i] = finish(
                        p.tokens,
                        order[j],
                        gain[j],
                        method,
                        p.params,
                        residual=curve[j],
                        energy=energy[j],
                        relevance=p.relevance,
                        notes=p.notes,
                    )
    for i, p in enumerate(plans):
        if out[i] is None:
            w = None if p.weight is None else p.weight.cpu()
            order, energy, gain, curve = greedy_residual(p.v64.cpu(), p.k, w, p.first, solver=p.solver, norm2=p.norm2)
            out[i] = finish(
                p.tokens,
                order,
                gain,
                method,
                p.params,
                residual=curve,
                energy=energy,
                relevance=p.relevance,
                notes=p.notes,
            )
    return out  # type: ignore[return-value]


def _signature_defaults(fn: Any) -> dict[str, Any]:
    """Keyword-only defaults of a selection function (a batch variant fills what the caller did not pass)."""
    return {
        p.name: p.default
        for p in inspect.signature(inspect.unwrap(fn)).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
    }
