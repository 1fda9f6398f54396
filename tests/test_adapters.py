"""The adapter contract, on a tiny random-weight model of EVERY family in ``resprune.testing.FAMILIES`` (a new
family is picked up here without editing this file): exactness at keep = N, the shorter sequence and cache at 25 %,
every registered method end to end (or its clear error where the family lacks an internal), batch equals
per-sample, one vision-tower pass, a method registered from a test module, ``residual`` == ResPrune with alpha = 0.
Family-specific behaviour lives in tests/test_llava.py, tests/test_llava_next.py and tests/test_qwen2_5_vl.py."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from helpers import PROMPT, make_image, make_inputs, n_visual

import resprune
from resprune.adapters import FAMILY_ADAPTERS, adapter_for
from resprune.generate import _cache_of, chat_prompt, kv_cache_bytes
from resprune.pipeline import prune
from resprune.registry import register, unregister
from resprune.testing import FAMILIES, generate_checking_first_step, tiny_model
from resprune.types import VIEW_NEWLINE


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    model, proc = tiny_model(request.param)
    return request.param, model, proc


def _lacking(model, method):
    """The internals ``method`` requires that the model's family does not offer (``llm_attention`` always is)."""
    offered = adapter_for(model).offers | {"llm_attention"}
    return [i for i in resprune.method_info(method).requires if i not in offered]


def test_every_family_has_an_adapter_and_a_tiny_model():
    assert set(FAMILIES) == set(FAMILY_ADAPTERS)
    for name, adapter in FAMILY_ADAPTERS.items():
        model, _ = tiny_model(name)
        assert adapter_for(model) is adapter and type(model).__name__ in adapter.classes


def test_keep_all_is_exact(family):
    _, model, proc = family
    inputs = make_inputs(proc, make_image())
    n = n_visual(model, inputs)
    with pytest.warns(UserWarning, match="every token is kept"):
        res = prune(model, inputs, "resprune", n, processor=proc, prompt=PROMPT)
    assert res.selections[0].keep == n and res.stats["seq_len_after"] == inputs["input_ids"].shape[1]
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, model(**res.generate_kwargs).logits)
    a = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    b = model.generate(**res.generate_kwargs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert torch.equal(a[0, inputs["input_ids"].shape[1] :], b[0])


@pytest.mark.parametrize("positions", ["compact", "original"])
def test_quarter_budget_shortens_sequence_and_cache(family, positions):
    _, model, proc = family
    if positions not in adapter_for(model).positions:
        with pytest.raises(ValueError, match="positions must be"):
            prune(model, make_inputs(proc, make_image()), "resprune", 4, processor=proc, positions=positions)
        return
    inputs = make_inputs(proc, make_image())
    n = n_visual(model, inputs)
    k = n // 4
    res = prune(model, inputs, "resprune", k, processor=proc, prompt=PROMPT, positions=positions)
    L = inputs["input_ids"].shape[1]
    assert res.selections[0].keep == k and res.stats["visual_tokens_after"] == k
    assert res.generate_kwargs["inputs_embeds"].shape[1] == L - (n - k) == res.stats["seq_len_after"]
    out = generate_checking_first_step(model, res, 3)  # first generated step == a plain forward
    _, length = kv_cache_bytes(_cache_of(out))
    assert length == L - (n - k) + 2  # prompt + generated tokens but the last


@pytest.mark.parametrize("method", resprune.list_methods())
def test_every_method_on_every_family(family, method):
    name, model, proc = family
    inputs = make_inputs(proc, make_image(300, 200))
    lacking = _lacking(model, method)
    if lacking:  # a clear error naming the internal and why the family lacks it
        reason = re.escape(adapter_for(model).no_internals_reason)
        with pytest.raises(ValueError, match=f"needs {lacking[0]}.*{reason}"):
            prune(model, inputs, method, 12, processor=proc, prompt=PROMPT)
        return
    n, L = n_visual(model, inputs), inputs["input_ids"].shape[1]  # K = 12 > the 6 newlines (per-crop peers keep them)
    res = prune(model, inputs, method, 12, processor=proc, prompt=PROMPT)
    assert res.selections[0].keep == 12 and res.stats["seq_len_after"] == L - (n - 12)
    if resprune.method_info(method).stage != "llm":  # in-LLM methods hand over the full prompt plus hooks
        assert res.generate_kwargs["inputs_embeds"].shape[1] == L - (n - 12)
    with res.generation_context():
        out = model.generate(**res.generate_kwargs, max_new_tokens=2, do_sample=False)
    assert out.shape[0] == 1


def test_answer_reports_words_and_savings(family):
    name, model, proc = family
    a = resprune.answer(model, proc, make_image(), "What colour is the circle?", keep=8, max_new_tokens=3)
    st = a.stats
    assert isinstance(a.pruned, str) and isinstance(a.unpruned, str)
    assert a.result.query_words[0] == ("colour", "circle") or "circle" in a.result.query_words[0]
    assert (
        st["visual_tokens_after"] == 8 and st["seq_len_before"] - st["seq_len_after"] == st["visual_tokens_before"] - 8
    )
    assert st["kv_cache_bytes_after"] < st["kv_cache_bytes_before"]
    assert st["prefill_flops_after"] < st["prefill_flops_before"]
    assert a.result.geometry[0].image_size == (640, 480)
    expected_seed = "prior" if "cls_attention" in adapter_for(model).offers else "max_norm"
    assert a.result.selections[0].params["seed"] == expected_seed  # without [CLS]: the max-norm token


@pytest.mark.parametrize("method", ["resprune", "residual", "divprune", "visionzip", "cdpruner"])
def test_batch_equals_per_sample(family, method):
    name, model, proc = family
    if _lacking(model, method):
        pytest.skip(f"{name} does not offer {_lacking(model, method)} (its clear error: test_every_method...)")
    proc.tokenizer.padding_side = "left"
    imgs = [make_image(640, 480, 1), make_image(300, 420, 2)]
    texts = [chat_prompt(proc, "red circle"), chat_prompt(proc, "How many blue squares are there?")]
    batch = proc(images=imgs, text=texts, return_tensors="pt", padding=True)
    res = prune(model, batch, method, 12, processor=proc, prompt="red circle")
    with torch.no_grad():
        lb = model(**res.generate_kwargs).logits[:, -1]
        for i in range(2):
            one = proc(images=imgs[i], text=texts[i], return_tensors="pt")
            single = prune(model, one, method, 12, processor=proc, prompt="red circle")
            ls = model(**single.generate_kwargs).logits[:, -1]
            torch.testing.assert_close(lb[i : i + 1], ls, rtol=1e-4, atol=1e-4)
            assert torch.equal(res.selections[i].keep_idx, single.selections[0].keep_idx)


@pytest.mark.parametrize("method", ["resprune", "cls", "vispruner", "visionzip"])
def test_the_vision_tower_runs_once(family, method):
    """[CLS] attention and the other vision internals come from the same tower pass that made the visual tokens."""
    name, model, proc = family
    if _lacking(model, method):
        pytest.skip(f"{name} does not offer {_lacking(model, method)}")
    inputs = make_inputs(proc, make_image())
    calls = []
    tower = next(getattr(model.model, a) for a in ("vision_tower", "visual", "vision_model") if hasattr(model.model, a))
    handle = tower.register_forward_hook(lambda *_: calls.append(1))
    try:
        res = prune(model, inputs, method, 12, processor=proc, prompt=PROMPT)
    finally:
        handle.remove()
    assert len(calls) == 1 and res.selections[0].keep == 12


def test_residual_is_resprune_with_alpha_zero(family):
    """By declaration both get the same internals ([CLS] seed prior where offered), so the ablation changes alpha
    and nothing else."""
    _, model, proc = family
    inputs = make_inputs(proc, make_image())
    for k in (5, 17):
        a = prune(model, inputs, "residual", k, processor=proc, prompt=PROMPT).selections[0]
        b = prune(model, inputs, "resprune", k, processor=proc, prompt=PROMPT, alpha=0.0).selections[0]
        assert torch.equal(a.order, b.order) and a.params["seed"] == b.params["seed"]
        torch.testing.assert_close(a.energy, b.energy)


@pytest.fixture
def throwaway_method():
    """A method registered from this test module (no library file touched): top-K by an optional [CLS] prior, else
    the first K tokens; it records what it received."""
    from resprune.methods._common import finish

    seen = []

    @register("test-throwaway", summary="test only", optional={"prior": "cls_attention"})
    def select_throwaway(tokens, keep, *, query=None, prior=None, reverse: bool = False):
        seen.append(prior)
        score = prior if prior is not None else -torch.arange(tokens.shape[0], dtype=torch.float32)
        order = torch.sort(score, descending=not reverse, stable=True).indices[:keep]
        return finish(tokens, order, score[order], "test-throwaway", {"reverse": reverse})

    try:
        yield "test-throwaway", seen
    finally:
        unregister("test-throwaway")


def test_a_method_registered_from_a_test_module_runs_on_every_family(family, throwaway_method):
    name, model, proc = family
    method, seen = throwaway_method
    info = resprune.method_info(method)
    assert info.hparams == ("reverse",) and method in resprune.list_methods()
    inputs = make_inputs(proc, make_image())
    res = prune(model, inputs, method, 7, processor=proc, prompt=PROMPT)
    sel = res.selections[0]
    assert sel.keep == 7 and sel.method == method
    out = generate_checking_first_step(model, res, 2)
    assert out.sequences.shape[0] == 1
    if "cls_attention" in adapter_for(model).offers:  # got the declared internal, aligned with the tokens
        cand = (res.geometry[0].view != VIEW_NEWLINE).nonzero().squeeze(1)  # newlines="drop": not candidates
        assert seen[-1] is not None and seen[-1].shape == cand.shape
        assert torch.equal(sel.order, cand[torch.sort(seen[-1], descending=True, stable=True).indices[:7]])
    else:  # not offered: not passed
        assert seen[-1] is None and torch.equal(sel.keep_idx, torch.arange(7))


def test_family_bad_inputs(family):
    name, model, proc = family
    inputs = make_inputs(proc, make_image())
    for extra in adapter_for(model).image_kwargs_keys:
        with pytest.raises(ValueError, match=f"'{extra}' is missing"):
            prune(model, {k: v for k, v in inputs.items() if k != extra}, "resprune", 8)
    no_image = proc.tokenizer(chat_prompt(proc, PROMPT).replace(proc.image_token, ""), return_tensors="pt")
    keys = ("pixel_values", *adapter_for(model).image_kwargs_keys)
    with pytest.raises(ValueError, match="no image placeholder"):
        prune(model, dict(no_image, **{k: inputs[k] for k in keys}), "resprune", 8)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = prune(model, inputs, "resprune", 10_000, processor=proc)
    assert res.selections[0].keep == n_visual(model, inputs) and any("every token is kept" in str(x.message) for x in w)
    if "cls_attention" not in adapter_for(model).offers:
        with pytest.raises(ValueError, match="seed='prior' needs seed_prior.*no \\[CLS\\] token"):
            prune(model, inputs, "resprune", 8, seed="prior")
    with pytest.raises(ValueError, match="unknown method 'nope'; available"):
        prune(model, inputs, "nope", 8)
    with pytest.raises(ValueError, match="newlines must be one of"):
        prune(model, inputs, "resprune", 6, processor=proc, newlines="sometimes")


def test_family_defaults_query_modes_and_declared_prune_options(family):
    """alpha defaults per family (the paper's 0.3 for Qwen2.5-VL, 0.75 for LLaVA), reported in the Selection; the
    query mode decides the words; a method's declared prune defaults (CDPruner: the whole instruction) apply."""
    name, model, proc = family
    inputs = make_inputs(proc, make_image(), "Is the big red circle left of the blue square?")
    prompt = "Is the big red circle left of the blue square?"
    res = prune(model, inputs, "resprune", 12, processor=proc, prompt=prompt)
    assert res.selections[0].params["alpha"] == adapter_for(model).defaults["alpha"]
    paper = {"llava": 0.75, "llava_next": 0.75, "qwen2_5_vl": 0.3}  # new families: their documented choice
    assert name not in paper or res.selections[0].params["alpha"] == paper[name]
    assert res.params["query"] == "nouns" and set(res.query_words[0]) <= {"circle", "square"}
    assert (
        prune(model, inputs, "resprune", 12, processor=proc, prompt=prompt, alpha=0.5).selections[0].params["alpha"]
        == 0.5
    )
    inst = prune(model, inputs, "resprune", 12, processor=proc, prompt=prompt, query="instruction")
    assert inst.query_words[0] == tuple(prompt.split()) and inst.params["extractor"] == "instruction"
    assert inst.query_tokens[0].shape[0] >= len(prompt.split()) - 2  # every token of the instruction
    kw = prune(model, inputs, "resprune", 12, processor=proc, prompt=prompt, query="keywords")
    assert "big" in kw.query_words[0] or "red" in kw.query_words[0]
    cdp = prune(model, inputs, "cdpruner", 12, processor=proc, prompt=prompt)
    assert cdp.params["query"] == "instruction" and cdp.params["budget"] == "per-crop"
    with pytest.raises(ValueError, match="query must be one of"):
        prune(model, inputs, "resprune", 12, processor=proc, prompt=prompt, query="verbs")
    with pytest.raises(ValueError, match="budget must be one of"):
        prune(model, inputs, "resprune", 12, processor=proc, prompt=prompt, budget="sometimes")
