"""Text relevance and its mapping (resprune.relevance), and the query words (resprune.text)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import resprune
from resprune.relevance import map_relevance, text_relevance

# CI must not be flaky: examples are derived from the test, not drawn afresh each run
settings.register_profile("resprune", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("resprune")


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-1, 1), min_size=1, max_size=50), st.sampled_from(["minmax", "affine", "clamp"]))
def test_mapping_is_finite_positive_and_order_preserving(values, mapping):
    r = torch.tensor(values)
    m = map_relevance(r, mapping=mapping)
    assert torch.isfinite(m).all() and (m > 0).all() and (m <= 1).all()
    i, j = torch.meshgrid(torch.arange(len(values)), torch.arange(len(values)), indexing="ij")
    assert ((r[i] > r[j]) <= (m[i] >= m[j])).all()  # order preserved (ties may merge only when clamped)
    if mapping == "minmax" and r.max() > r.min():
        assert float(m.max()) == 1.0 and float(m.min()) == pytest.approx(1e-6)


def test_minmax_constant_relevance_is_neutral():
    assert torch.equal(map_relevance(torch.full((5,), 0.3)), torch.ones(5))


def test_relevance_aggregations_hand_checked():
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    q = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    s2 = math.sqrt(0.5)
    assert text_relevance(v, q, aggregation="max").tolist() == pytest.approx([1.0, s2])
    assert text_relevance(v, q, aggregation="mean").tolist() == pytest.approx([(1 + s2) / 2, s2 / 2])
    pooled = torch.tensor([2.0, 1.0]) / math.sqrt(5)
    assert text_relevance(v, q, aggregation="pooled").tolist() == pytest.approx(pooled.tolist())


def test_keywords_are_nouns_from_a_real_tagger_and_the_extractor_is_reported():
    kw = resprune.extract_keywords("USER: <image>\nWhat colour is the big cube left of the sphere? ASSISTANT:")
    assert kw.extractor == "textblob-pattern" or kw.extractor.startswith("spacy:")
    assert "cube" in kw.words and "sphere" in kw.words and "what" not in kw.words
    assert "big" not in kw.words  # an adjective: the paper keeps nouns only
    nouns = resprune.extract_keywords("What is the woman holding in her hand?").words
    assert nouns == ("woman", "hand")  # no verb ("holding"), no pronoun
    assert resprune.extract_keywords("cube", extractor="fallback") == resprune.Keywords(("cube",), "fallback")
    assert resprune.extract_keywords("big red cube", extractor="fallback").words == ("big", "red", "cube")
    assert resprune.extract_keywords("What is it?", extractor="fallback").words == ()
    assert resprune.extract_keywords("Describe the image.").words == ()  # generic instruction nouns are dropped
    with pytest.raises(TypeError, match="prompt must be a str"):
        resprune.extract_keywords(None)
    with pytest.raises(ValueError, match="extractor must be"):
        resprune.extract_keywords("x", extractor="nltk")


def test_query_modes():
    from resprune.text import query_words

    p = "Is the big red cube left of the sphere?"
    assert query_words(p, "nouns").words == ("cube", "sphere")
    assert query_words(p, "keywords").words == ("big", "red", "cube", "left", "sphere")
    inst = query_words(p, "instruction")
    assert inst.extractor == "instruction" and inst.words == tuple(p.split())
    with pytest.raises(ValueError, match="query must be one of"):
        query_words(p, "verbs")
