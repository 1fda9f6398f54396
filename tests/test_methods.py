"""Every registered method: the contract over the registry, algorithm properties, hand-checked examples; the
model-internal methods (cls, VisPruner, VisionZip) on synthetic internals."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from helpers import query, tokens
from hypothesis import given, settings
from hypothesis import strategies as st

import resprune
from resprune import list_methods, method_info, select
from resprune.methods._common import split_budget
from resprune.methods.cls import select_cls, select_vispruner
from resprune.methods.visionzip import select_visionzip
from resprune.residual import residual_curve

# CI must not be flaky: examples are derived from the test, not drawn afresh each run
settings.register_profile("resprune", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("resprune")

PRE_LLM = list_methods(stage="pre-llm")
DETERMINISTIC_SCORING = ["resprune", "residual", "relevance", "divprune", "cdpruner"]  # index-free scores
DIVERSE = ["resprune", "residual", "divprune", "cdpruner"]

# Synthetic stand-ins for model internals that some (adapter-provided) methods require; a per-token vector each.
_INTERNALS = {"cls_attention": lambda n, g: torch.rand(n, generator=g)}


def _extra(method: str, n: int) -> dict:
    info = method_info(method)
    missing = [r for r in info.requires if r not in _INTERNALS]
    if missing or info.stage == "llm":
        pytest.skip(f"{method} needs model internals {missing or info.requires}: covered by the adapter tests")
    g = torch.Generator().manual_seed(1)
    return {r: _INTERNALS[r](n, g) for r in info.requires}


def test_registry_lists_the_core_methods():
    assert {"resprune", "residual", "relevance", "divprune", "cdpruner", "random", "uniform"} <= set(list_methods())
    assert list_methods() == sorted(list_methods())


@pytest.mark.parametrize("method", list_methods())
def test_contract(method):
    v, q = tokens(), query()
    sel = select(v, 7, method, query=q, **_extra(method, 40))
    assert isinstance(sel, resprune.Selection)
    assert sel.method == method and sel.n_tokens == 40 and sel.keep == 7
    assert sel.keep_idx.dtype == torch.int64 and sel.keep_idx.shape == (7,)
    assert torch.equal(sel.keep_idx, sel.keep_idx.sort().values)
    assert sel.keep_idx.unique().numel() == 7
    assert 0 <= int(sel.keep_idx.min()) and int(sel.keep_idx.max()) < 40
    assert torch.equal(sel.order.sort().values, sel.keep_idx)
    assert sel.gain.shape == (7,) and torch.isfinite(sel.gain).all()
    assert sel.residual.shape == (8,) and sel.residual[0] == 1.0
    assert (sel.residual[1:] <= sel.residual[:-1] + 1e-6).all()
    # the residual curve of any method is the one residual_curve gives for its picks
    assert torch.allclose(sel.residual, residual_curve(v, sel.order), atol=1e-4)
    if sel.relevance is not None:
        assert sel.relevance.shape == (40,)
    json.dumps(sel.to_dict())


@pytest.mark.parametrize("method", list_methods())
def test_keep_at_least_n_returns_every_index_with_a_warning(method):
    v = tokens(12)
    for keep in (12, 50):
        with pytest.warns(UserWarning, match="every token is kept"):
            sel = select(v, keep, method, query=query(), **_extra(method, 12))
        assert torch.equal(sel.keep_idx, torch.arange(12))


@pytest.mark.parametrize("method", list_methods())
def test_deterministic(method):
    v, q = tokens(), query()
    a = select(v, 9, method, query=q, **_extra(method, 40))
    b = select(v.clone(), 9, method, query=q.clone(), **_extra(method, 40))
    assert torch.equal(a.order, b.order) and torch.equal(a.keep_idx, b.keep_idx)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("method", list_methods())
def test_low_precision_input(method, dtype):
    v, q = tokens(), query()
    sel = select(v.to(dtype), 9, method, query=q.to(dtype), **_extra(method, 40))
    assert sel.keep_idx.shape == (9,) and sel.keep_idx.unique().numel() == 9
    assert torch.isfinite(sel.residual).all()


@pytest.mark.parametrize("method", list_methods())
def test_single_token_and_one_pick(method):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sel = select(tokens(1), 1, method, query=query(), **_extra(method, 1))
    assert sel.keep_idx.tolist() == [0]
    one = select(tokens(), 1, method, query=query(), **_extra(method, 40))
    assert one.keep == 1 and one.residual.shape == (2,)


@pytest.mark.parametrize("method", PRE_LLM)
@pytest.mark.parametrize(
    "keep, exc, pattern",
    [
        (0, ValueError, r"keep must be a positive number of tokens, got keep=0"),
        (-3, ValueError, r"keep=-3"),
        (2.5, TypeError, r"keep must be an int .* got 2\.5"),
        ("4", TypeError, r"keep must be an int .* got '4'"),
        (True, TypeError, r"keep must be an int"),
    ],
)
def test_bad_keep(method, keep, exc, pattern):
    with pytest.raises(exc, match=pattern):
        select(tokens(), keep, method)


@pytest.mark.parametrize("method", PRE_LLM)
def test_bad_tokens(method):
    with pytest.raises(ValueError, match=r"tokens must be 2-D \(N, D\), got shape \(40,\)"):
        select(torch.randn(40), 4, method)
    with pytest.raises(ValueError, match=r"tokens must be 2-D \(N, D\), got shape \(1, 40, 16\)"):
        select(torch.randn(1, 40, 16), 4, method)
    with pytest.raises(ValueError, match=r"tokens is empty: got shape \(0, 16\)"):
        select(torch.randn(0, 16), 4, method)
    with pytest.raises(TypeError, match=r"tokens must be a torch.Tensor .* got list"):
        select([[1.0, 2.0]], 1, method)
    for bad in (math.nan, math.inf, -math.inf):
        v = tokens()
        v[3, 5] = bad
        with pytest.raises(ValueError, match=r"tokens contains NaN or inf values \(in 1 of 40 tokens\)"):
            select(v, 4, method)


@pytest.mark.parametrize("method", PRE_LLM)
def test_bad_query(method):
    with pytest.raises(ValueError, match=r"query has feature dimension D=8 but tokens have D=16"):
        select(tokens(), 4, method, query=torch.randn(2, 8))
    q = query()
    q[0, 0] = math.nan
    with pytest.raises(ValueError, match="query contains NaN or inf"):
        select(tokens(), 4, method, query=q)


def test_unknown_method_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"unknown method 'nope'; available: .*cdpruner.*resprune"):
        select(tokens(), 4, "nope")
    with pytest.raises(ValueError, match="unknown method"):
        resprune.get_method("ResPrune ")


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match=r"alpha must be a finite number >= 0, got -1"):
        select(tokens(), 4, "resprune", alpha=-1)
    with pytest.raises(ValueError, match=r"seed must be 'auto'.*got 'cls'"):
        select(tokens(), 4, "resprune", seed="cls")
    with pytest.raises(ValueError, match="seed='prior' needs seed_prior"):
        select(tokens(), 4, "resprune", seed="prior")
    with pytest.raises(ValueError, match="seed_prior must be 40 finite values"):
        select(tokens(), 4, "resprune", seed_prior=torch.ones(39))
    with pytest.raises(ValueError, match=r"aggregation must be 'max', 'mean' or 'pooled', got 'sum'"):
        select(tokens(), 4, "resprune", query=query(), aggregation="sum")
    with pytest.raises(ValueError, match=r"mapping must be 'minmax', 'affine' or 'clamp', got 'x'"):
        select(tokens(), 4, "resprune", query=query(), mapping="x")
    with pytest.raises(TypeError, match="unexpected keyword argument 'alpha'"):
        select(tokens(), 4, "divprune", alpha=0.5)
    with pytest.raises(ValueError, match=r"grid=\(4, 4\) has 16 cells but tokens has N=40"):
        select(tokens(), 4, "uniform", grid=(4, 4))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), method=st.sampled_from(DETERMINISTIC_SCORING), k=st.integers(1, 10))
def test_permutation_equivariance(seed, method, k):
    v, q = tokens(25, 10, seed), query(10, seed=seed + 1)
    perm = torch.randperm(25, generator=torch.Generator().manual_seed(seed))
    a = select(v, k, method, query=q)
    b = select(v[perm], k, method, query=q)
    assert torch.allclose(a.gain, b.gain, rtol=1e-4, atol=1e-6)  # the same scores in the same sequence
    if method == "divprune":
        # DivPrune's first pick ties whenever two tokens are each other's nearest neighbour (d is symmetric); the
        # official rule takes the lower index there, so only the scores are invariant
        return
    assert torch.equal(perm[b.order], a.order)
    assert torch.equal(perm[b.keep_idx].sort().values, a.keep_idx)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), distinct=st.integers(2, 10), method=st.sampled_from(DIVERSE))
def test_duplicates_never_picked_before_distinct_tokens(seed, distinct, method):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(distinct, 16, generator=g)
    copies = torch.randint(0, distinct, (12,), generator=g)
    v = torch.cat([base, base[copies]])  # distinct tokens, then exact duplicates
    v = v[torch.randperm(v.shape[0], generator=g)]
    q = query(16, seed=seed) if method == "resprune" else None  # CDPruner: relevance 0 would void a token
    sel = select(v, distinct, method, query=q)
    picked = v[sel.order]
    assert torch.unique(picked, dim=0).shape[0] == distinct


def test_query_on_one_cluster_keeps_more_of_it_than_alpha_zero():
    g = torch.Generator().manual_seed(0)
    d = 64
    centres = torch.randn(4, d, generator=g) * 3
    labels = torch.arange(4).repeat_interleave(30)  # 4 clusters x 30 tokens
    v = centres[labels] + torch.randn(120, d, generator=g)
    query = centres[2:3] + 0.1 * torch.randn(1, d, generator=g)
    with_text = select(v, 20, "resprune", query=query, alpha=0.75)
    no_text = select(v, 20, "resprune", query=query, alpha=0.0)
    in_cluster = lambda s: int((labels[s.keep_idx] == 2).sum())  # noqa: E731
    assert in_cluster(with_text) > in_cluster(no_text) + 3
    assert with_text.relevance is not None and with_text.relevance.argmax() // 30 == 2


def test_no_hidden_state_between_images():
    a, b = tokens(30, 8, 1), tokens(50, 8, 2) * 100
    alone = select(a, 10, "resprune", query=query(8))
    select(b, 10, "resprune", query=query(8))
    again = select(a, 10, "resprune", query=query(8))
    assert torch.equal(alone.order, again.order) and torch.equal(alone.relevance, again.relevance)


def test_alpha_zero_is_the_pure_residual_method():
    v, q = tokens(), query()
    a = select(v, 12, "resprune", query=q, alpha=0.0)
    b = select(v, 12, "residual")
    assert torch.equal(a.order, b.order)
    assert torch.allclose(a.gain, b.gain)


def test_seed_rules_are_reachable_and_default_is_documented():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(30, 8, generator=g)
    v[4] *= 5  # largest norm
    q = v[17:18] * 0.01 + torch.randn(1, 8, generator=g) * 1e-3  # relevance peaks at token 17
    default = select(v, 3, "resprune", query=q)
    assert default.order[0] == 4 and default.params["seed"] == "max_norm"
    prior = torch.zeros(30)
    prior[22] = 1
    assert select(v, 3, "resprune", query=q, seed_prior=prior).order[0] == 22
    assert select(v, 3, "resprune", query=q, seed_prior=prior, seed="max_norm").order[0] == 4
    weighted = select(v, 3, "resprune", query=q, seed="weighted")
    w = weighted.relevance.double() ** 0.75 * v.double().pow(2).sum(1)
    assert weighted.order[0] == int(w.argmax()) and weighted.params["seed"] == "weighted"


def test_resprune_hand_checked():
    # e1 twice as long as the rest; e2 and e3 orthogonal; t4 lies in span(e1, e2)
    v = torch.tensor([[2.0, 0, 0], [0, 1.0, 0], [0, 0, 0.9], [1.0, 1.0, 0]])
    sel = select(v, 3, "resprune")
    assert sel.order.tolist() == [0, 1, 2]
    assert sel.energy.tolist() == pytest.approx([4.0, 1.0, 0.81])
    total = 4 + 1 + 0.81 + 2
    assert sel.residual.tolist() == pytest.approx([1, (1 + 0.81 + 1) / total, 0.81 / total, 0.0], abs=1e-6)
    # text towards e3 lifts token 2 above token 1 at step 2 (alpha large)
    sel = select(v, 2, "resprune", query=torch.tensor([[0, 0, 1.0]]), alpha=3.0)
    assert sel.order.tolist() == [0, 2]


def test_residual_hand_checked():
    v = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.5]])
    sel = select(v, 2, "residual")
    assert sel.order.tolist() == [0, 2] and sel.gain.tolist() == pytest.approx([1.0, 0.25])


def test_relevance_hand_checked():
    v = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    sel = select(v, 2, "relevance", query=torch.tensor([[0.0, 1.0]]))
    assert sel.order.tolist() == [2, 1]
    none = select(v * torch.tensor([[1.0], [2.0], [3.0], [1.0]]), 2, "relevance")
    assert none.order.tolist() == [2, 1] and none.notes and "text-free" in none.notes[0]


def test_divprune_hand_checked():
    # tokens 0/1 nearly parallel, 2 orthogonal, 3 opposite to 0: first pick has the farthest nearest neighbour
    v = torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0], [-1.0, 0.0]])
    sel = select(v, 3, "divprune")
    assert sel.order.tolist()[:2] == [2, 3] or sel.order.tolist()[:2] == [3, 0]
    assert sel.order[0] in (2, 3)  # both have nearest-neighbour distance 1
    assert set(sel.keep_idx.tolist()) in ({0, 2, 3}, {1, 2, 3})


def test_cdpruner_hand_checked():
    v = torch.tensor([[1.0, 0.0], [0.98, 0.2], [0.0, 1.0]])
    # query along e1: token 2 has relevance 0 -> kernel row 0 -> never preferred
    sel = select(v, 2, "cdpruner", query=torch.tensor([[1.0, 0.0]]))
    assert sel.order.tolist() == [0, 1]
    assert sel.relevance.tolist() == pytest.approx([1.0, 0.98 / math.hypot(0.98, 0.2), 0.0], abs=1e-5)
    # without a query it is a plain DPP: the orthogonal token is taken before the near-duplicate
    assert 2 in select(v, 2, "cdpruner").keep_idx.tolist()


def test_random_uses_an_explicit_generator():
    v = tokens(100)
    a, b = select(v, 10, "random", seed=3), select(v, 10, "random", seed=3)
    assert torch.equal(a.keep_idx, b.keep_idx)
    assert not torch.equal(a.keep_idx, select(v, 10, "random", seed=4).keep_idx)
    state = torch.random.get_rng_state()
    g = torch.Generator().manual_seed(3)
    assert torch.equal(select(v, 10, "random", generator=g).keep_idx, a.keep_idx)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched


def test_uniform_hand_checked():
    assert select(tokens(12), 4, "uniform").keep_idx.tolist() == [1, 4, 7, 10]
    sel = select(tokens(36), 9, "uniform", grid=(6, 6))
    rows, cols = sel.keep_idx // 6, sel.keep_idx % 6
    assert sorted(set(rows.tolist())) == [1, 3, 5] and sorted(set(cols.tolist())) == [1, 3, 5]


@pytest.mark.parametrize("method", [m for m in PRE_LLM if method_info(m).text_aware])
def test_text_methods_fall_back_without_query_and_say_so(method):
    sel = select(tokens(), 5, method, query=None)
    assert any("text-free" in n for n in sel.notes)
    sel_empty = select(tokens(), 5, method, query=torch.zeros(0, 16))
    assert torch.equal(sel.order, sel_empty.order)


def test_keep_count():
    assert resprune.keep_count(576, 1 / 9) == 64
    assert resprune.keep_count(10, 0.01) == 1
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\], got 0"):
        resprune.keep_count(10, 0)


def test_cls_needs_a_cls_tower():
    with pytest.raises(ValueError, match="needs cls_attention"):
        resprune.select(torch.randn(10, 4), 3, "cls")


def test_vispruner_important_then_diverse():

    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(20, 8, generator=g)
    att = torch.linspace(1.0, 0.05, 20)  # descending: the residual order is 0, 1, ..., 19
    # all important (ratio 1) == the [CLS] top-K
    a = select_vispruner(tokens, 6, cls_attention=att, important_ratio=1.0)
    assert torch.equal(a.keep_idx, select_cls(tokens, 6, cls_attention=att).keep_idx)
    # ratio 0: exact duplicates (0, 1), (2, 3), (4, 5), (6, 7) in the features: one round drops the 4 duplicated even
    # tokens (min(8, 20 - 16) = 4), whatever the projected tokens say
    feats = torch.randn(20, 5, generator=g)
    for j in range(0, 8, 2):
        feats[j + 1] = feats[j]
    b = select_vispruner(tokens, 16, cls_attention=att, vision_features=feats, important_ratio=0.0)
    assert set(range(20)) - set(b.keep_idx.tolist()) == {0, 2, 4, 6}
    # half and half: the top-3 by attention are kept whatever the features
    c = select_vispruner(tokens, 6, cls_attention=att, vision_features=feats)
    assert {0, 1, 2} <= set(c.keep_idx.tolist()) and c.keep == 6 and c.params["important_ratio"] == 0.5
    with pytest.raises(ValueError, match="needs cls_attention"):
        resprune.select(tokens, 4, "vispruner")
    with pytest.raises(ValueError, match="important_ratio must be a number in"):
        select_vispruner(tokens, 4, cls_attention=att, important_ratio=2)
    with pytest.raises(ValueError, match=r"vision_features must be \(N=20, C\)"):
        select_vispruner(tokens, 4, cls_attention=att, vision_features=torch.randn(3, 5))


def test_visionzip_dominant_plus_contextual_merge():

    g = torch.Generator().manual_seed(0)
    n, c_dim = 20, 6
    tokens = torch.randn(n, 8, generator=g)
    att = torch.linspace(1.0, 0.05, n).flip(0)  # ascending: token 19 is the most attended
    feats = torch.randn(n, c_dim, generator=g)
    keys = torch.randn(n, 4, generator=g)
    cls = torch.randn(c_dim, generator=g)
    # the projector is the identity here, so the merge can be checked directly
    internals = dict(cls_attention=att, vision_features=feats, vision_keys=keys, cls_feature=cls, projector=lambda x: x)
    sel = select_visionzip(tokens, 8, **internals)
    # K = 8: round(8 * 10 / 64) = 1 contextual, 7 dominant = [CLS] + 6 patches (the 6 most attended: 14..19)
    assert sel.keep == 8 and sel.merged.shape == (8, c_dim) and sel.params["contextual"] == 1
    torch.testing.assert_close(sel.merged[0], cls)
    torch.testing.assert_close(sel.merged[1:7], feats[14:20])
    # contextual: the remaining 14 patches 0..13, step 14 // 1 = 14 -> target 0; all others join it
    torch.testing.assert_close(sel.merged[7], feats[0] + feats[1:14].mean(0))
    assert sel.keep_idx.tolist() == [0, 14, 15, 16, 17, 18, 19]
    # two targets: each other patch joins the target with the most similar normalised key
    sel2 = select_visionzip(tokens, 9, **internals, contextual=2)
    rest = torch.arange(0, 14)
    targets = rest[torch.arange(0, 14, 7)[:2]]  # 0 and 7
    others = rest[~torch.isin(rest, targets)]
    kn = keys / keys.norm(dim=-1, keepdim=True)
    join = (kn[others] @ kn[targets].T).argmax(-1)
    for j, t in enumerate(targets):
        members = others[join == j]
        expect = feats[t] + (feats[members].mean(0) if members.numel() else 0)
        torch.testing.assert_close(sel2.merged[7 + j], expect)
    with pytest.raises(ValueError, match="needs cls_attention"):
        resprune.select(tokens, 4, "visionzip")
    with pytest.raises(ValueError, match=r"contextual must be an int in \[0, keep - 1\]"):
        select_visionzip(tokens, 4, **internals, contextual=4)


def test_split_budget_is_even_and_capped():

    assert split_budget(40, [16, 12, 12, 12, 12]) == [8, 8, 8, 8, 8]
    assert split_budget(13, [16, 12, 12, 12, 12]) == [3, 3, 3, 2, 2]
    assert split_budget(20, [16, 2, 0, 12]) == [10, 2, 0, 8]  # a small crop's share goes to the others
    assert split_budget(30, [16, 2, 0, 12]) == [16, 2, 0, 12]
