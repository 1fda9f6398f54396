"""DivPrune and CDPruner equal independent float64 references, at realistic sizes.

The references are written from the methods' definitions (the papers and their released code's semantics), not
from the library: DivPrune's max-min score recomputed from the full float64 distance matrix at every step;
CDPruner's greedy DPP MAP both as the conditional variance ``L_ii - L_iS L_SS^-1 L_Si`` from an explicit solve,
and as the residual energy of the kernel's feature vectors ``x_i = r_i v_i / ||v_i||`` (explicit float64 residual
vectors, ``test_fidelity.reference_greedy``). Orders must be equal up to the first step where the reference's top
two scores are within 1e-9 relative."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_inputs
from test_fidelity import GAP, _tokens, assert_same_order, canonical, reference_greedy

import resprune
from resprune import select


def reference_divprune(v: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Max-min diversity on ``1 - cos`` in float64; step 0: the token farthest from its nearest other token."""
    x = v / np.linalg.norm(v, axis=1, keepdims=True)
    d = np.clip(1.0 - x @ x.T, 0.0, None)
    n = len(v)
    canon = canonical(v)
    order: list[int] = []
    gaps = []
    for t in range(k):
        if t == 0:
            score = np.where(np.eye(n, dtype=bool), np.inf, d).min(axis=1)
        else:
            score = d[order].min(axis=0)  # from scratch: distance to the nearest picked token
        score[order] = -np.inf
        s = int(np.argmax(score))
        other = score[canon != canon[s]]
        second = other.max() if other.size else -np.inf
        gaps.append(np.inf if not np.isfinite(second) else (score[s] - second) / max(abs(score[s]), 1e-300))
        order.append(s)
    return np.array(order), np.array(gaps)


def reference_relevance(v: np.ndarray, q: np.ndarray) -> np.ndarray:
    """CDPruner's relevance: mean cosine to the query tokens, min-max normalised to [0, 1]."""
    x = v / np.linalg.norm(v, axis=1, keepdims=True)
    t = q / np.linalg.norm(q, axis=1, keepdims=True)
    raw = (x @ t.T).mean(axis=1)
    return (raw - raw.min()) / (raw.max() - raw.min())


def reference_dpp_solve(
    v: np.ndarray, r: np.ndarray, k: int, first: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy DPP MAP by definition: the pick maximising ``log det L_{S+i}``, i.e. the conditional variance
    ``L_ii - L_iS L_SS^-1 L_Si`` (an explicit float64 solve per step). ``first``: a given first pick (the plain
    DPP's step 0 is an exact tie, ``L_ii = 1`` for every token)."""
    x = v / np.linalg.norm(v, axis=1, keepdims=True)
    kernel = r[:, None] * (x @ x.T) * r[None, :]
    order: list[int] = []
    gaps = []
    for _ in range(k):
        if order:
            b = kernel[order]  # (t, N)
            gain = kernel.diagonal() - (b * np.linalg.solve(kernel[np.ix_(order, order)], b)).sum(0)
        else:
            gain = kernel.diagonal().copy()
        gain[order] = -np.inf
        s = int(np.argmax(gain)) if first is None or order else first
        best, second = gain[s], np.partition(gain, -2)[-2]
        gaps.append(np.inf if first is not None and not order else (best - second) / abs(best))
        order.append(s)
    return np.array(order), np.array(gaps)


def _query(d: int, seed: int, n: int = 4) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["random", "low_rank", "outliers", "decaying"])
def test_divprune_equals_the_float64_reference_at_llava_size(kind):
    v = _tokens(kind, 576, 4096)
    ref, gaps = reference_divprune(v.double().numpy(), 192)
    upto = assert_same_order(select(v, 192, "divprune").order.numpy(), ref, gaps, min_compared=150)
    # nested: K = 64 and 128 are prefixes
    for k in (64, 128):
        np.testing.assert_array_equal(select(v, k, "divprune").order.numpy(), ref[:k])
    assert upto >= 150


def test_divprune_picks_every_distinct_vector_before_a_copy():
    """Half of the tokens are exact copies of the other half: a copy is at distance 0 from the kept original, so
    the first N/2 picks are the N/2 distinct vectors (no index twice)."""
    v = _tokens("duplicates", 400, 512)
    order = select(v, 400, "divprune").order.numpy()
    canon = canonical(v.double().numpy())
    assert np.unique(order).size == 400
    assert np.unique(canon[order[:200]]).size == 200


@pytest.mark.parametrize(
    ("kind", "k", "min_compared"), [("random", 192, 150), ("outliers", 192, 150), ("low_rank", 40, 35)]
)
def test_cdpruner_equals_the_dpp_definition_at_llava_size(kind, k, min_compared):
    v = _tokens(kind, 576, 4096)
    q = _query(4096, 7)
    v64 = v.double().numpy()
    r = reference_relevance(v64, q.double().numpy())
    ref, gaps = reference_dpp_solve(v64, r, k)
    assert_same_order(select(v, k, "cdpruner", query=q).order.numpy(), ref, gaps, min_compared=min_compared)
    # the feature-space form of the same DPP (residual energies of x_i = r_i v_i / ||v_i||) agrees
    x = r[:, None] * v64 / np.linalg.norm(v64, axis=1, keepdims=True)
    ref2, gaps2, _ = reference_greedy(x, k)
    assert_same_order(ref2, ref, np.minimum(gaps, gaps2), min_compared=min_compared)


def test_cdpruner_relevance_changes_the_picks():
    """The query matters: with relevance the DPP picks differ from the plain DPP (r = 1), and each equals its own
    reference (ignoring the relevance fails the first assertion)."""
    v = _tokens("random", 576, 1024, seed=2)
    q = _query(1024, 9)
    v64 = v.double().numpy()
    with_q = select(v, 96, "cdpruner", query=q).order.numpy()
    ref, gaps = reference_dpp_solve(v64, reference_relevance(v64, q.double().numpy()), 96)
    assert_same_order(with_q, ref, gaps, min_compared=80)
    plain = select(v, 96, "cdpruner").order.numpy()
    ref0, gaps0 = reference_dpp_solve(v64, np.ones(576), 96, first=int(plain[0]))
    assert_same_order(plain, ref0, gaps0, min_compared=80)
    assert len(set(with_q) ^ set(plain)) > 20


def test_cdpruner_constant_relevance_is_the_plain_dpp():
    """Tokens all orthogonal to the query: the relevance is constant; CDPruner is then the plain DPP (r = 1, as
    without a query), never index order, and says so in its notes."""
    g = torch.Generator().manual_seed(4)
    v = torch.randn(300, 256, generator=g)
    v[:, -1] = 0.0
    q = torch.zeros(2, 256)
    q[:, -1] = 1.0
    sel = select(v, 40, "cdpruner", query=q)
    assert torch.equal(sel.order, select(v, 40, "cdpruner").order)
    assert sel.order.tolist() != list(range(40))
    assert any("constant" in n for n in sel.notes)
    ref, gaps = reference_dpp_solve(v.double().numpy(), np.ones(300), 40, first=int(sel.order[0]))
    assert_same_order(sel.order.numpy(), ref, gaps, min_compared=40)


def test_peers_equal_the_references_on_the_offline_models_real_tokens():
    """The project's own model (N = 144, D = 128): DivPrune and CDPruner (the question as its query) at 50 %."""
    model, proc = resprune.load_model("scenes")
    for seed in range(2):
        scene = resprune.scenes.sample(20_000_100 + seed)
        question = scene.questions[0].text
        inputs = make_inputs(proc, scene.image, question)
        res = resprune.prune(model, inputs, "divprune", 72, processor=proc, prompt=question)
        v64 = res.visual_tokens[0].double().numpy()
        ref, gaps = reference_divprune(v64, 72)
        assert_same_order(res.selections[0].order.numpy(), ref, gaps, min_compared=60)
        res = resprune.prune(model, inputs, "cdpruner", 72, processor=proc, prompt=question)
        q = res.query_tokens[0]
        r = reference_relevance(v64, q.double().numpy())
        x = r[:, None] * v64 / np.linalg.norm(v64, axis=1, keepdims=True)
        ref, gaps, _ = reference_greedy(x, 72)
        assert_same_order(res.selections[0].order.numpy(), ref, gaps, min_compared=40)


@pytest.mark.slow
def test_peers_equal_the_references_at_llava_next_size():
    """N = 2880, D = 4096, K = 320."""
    v = _tokens("random", 2880, 4096, seed=3)
    v64 = v.double().numpy()
    ref, gaps = reference_divprune(v64, 320)
    assert_same_order(select(v, 320, "divprune").order.numpy(), ref, gaps, min_compared=300)
    q = _query(4096, 8)
    r = reference_relevance(v64, q.double().numpy())
    x = r[:, None] * v64 / np.linalg.norm(v64, axis=1, keepdims=True)
    ref, gaps, _ = reference_greedy(x, 320)
    assert_same_order(select(v, 320, "cdpruner", query=q).order.numpy(), ref, gaps, min_compared=300)


def test_gap_threshold_is_the_one_of_the_resprune_references():
    assert GAP == 1e-9
