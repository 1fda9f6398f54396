"""FastV inside the LLM, on tiny random-weight models of every family: keep = N is exact, at 25 % the layers from
``layer`` on hold a shorter cache, the pruned prefill equals an independent layer-by-layer computation, decoding
equals a cache-free forward, hooks never outlive their context."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import resprune
from resprune.generate import _cache_of, chat_prompt
from resprune.pipeline import prune
from resprune.testing import FAMILIES, tiny_model
from resprune.types import VIEW_NEWLINE

PROMPT = "What colour is the circle?"


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    model, proc = tiny_model(request.param)
    image = Image.fromarray(
        np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8).repeat(10, 0).repeat(10, 1)
    )
    inputs = proc(images=image, text=chat_prompt(proc, PROMPT), return_tensors="pt")
    return request.param, model, proc, inputs


def _n(model, inputs):
    return int((inputs["input_ids"] == model.config.image_token_id).sum())


def _hooks(model):
    return sum(
        len(layer._forward_pre_hooks) + len(layer.self_attn._forward_pre_hooks) for layer in model.get_decoder().layers
    )


def test_keep_all_is_exact(family):
    _, model, proc, inputs = family
    n = _n(model, inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = prune(model, inputs, "fastv", n, processor=proc, layer=1)
    with torch.no_grad(), res.generation_context():
        got = model(**res.generate_kwargs).logits
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, got)
    with res.generation_context():
        a = model.generate(**res.generate_kwargs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    b = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert torch.equal(a, b) and _hooks(model) == 0


def test_quarter_budget_prunes_from_layer_on_and_decodes_consistently(family):
    _, model, proc, inputs = family
    n, L = _n(model, inputs), inputs["input_ids"].shape[1]
    k = n // 4
    res = prune(model, inputs, "fastv", k, processor=proc, layer=1)
    sel = res.selections[0]
    assert sel.keep == k and res.stats["visual_tokens_after"] == k and res.stats["llm_layer"] == 1
    assert res.stats["seq_len_after"] == L - (n - k)
    assert res.stats["visual_tokens_equivalent"] == pytest.approx((n + 2 * k) / 3)
    # the kept tokens are the K most attended by the last position in layer 0
    from resprune.methods.fastv import last_query_attention

    att = last_query_attention(model, dict(inputs), 0)[inputs["input_ids"][0] == model.config.image_token_id]
    cand = (res.geometry[0].view != VIEW_NEWLINE).nonzero().squeeze(1)  # newlines="drop": not candidates
    top = cand[torch.sort(att[cand], descending=True, stable=True).indices[:k]]
    assert torch.equal(sel.keep_idx, torch.sort(top).values)
    with res.generation_context():
        out = model.generate(
            **res.generate_kwargs,
            max_new_tokens=4,
            min_new_tokens=4,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    lengths = [layer.keys.shape[-2] for layer in _cache_of(out).layers]
    assert lengths == [L + 3, L - (n - k) + 3, L - (n - k) + 3]  # layer 0 full, the rest pruned
    assert _hooks(model) == 0
    # every decode step == a cache-free forward (with the same hooks) on the prompt + generated tokens
    seq = out.sequences
    full = dict(res.generate_kwargs, input_ids=seq[:, :-1], attention_mask=torch.ones_like(seq[:, :-1]))
    if "mm_token_type_ids" in full:
        extra = torch.zeros(1, seq.shape[1] - 1 - L, dtype=full["mm_token_type_ids"].dtype)
        full["mm_token_type_ids"] = torch.cat([full["mm_token_type_ids"], extra], 1)
    with torch.no_grad(), res.generation_context():
        logits = model(**full, use_cache=False).logits[0, -4:]
    torch.testing.assert_close(torch.stack(out.logits, 1)[0], logits, rtol=1e-5, atol=1e-5)
    # and the pruning matters: the answer's logits differ from the unpruned model's
    with torch.no_grad():
        assert not torch.allclose(model(**inputs).logits[0, -1], logits[0], atol=1e-3)


def test_prefill_equals_an_independent_layer_by_layer_computation():
    """LLaVA: embed, run layer 0 on all tokens, drop the pruned positions, run the rest, norm, head: the hooked
    model's last-position logits are the same."""
    model, proc = tiny_model("llava")
    image = Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 80, 3), dtype=np.uint8))
    inputs = proc(images=image, text=chat_prompt(proc, PROMPT), return_tensors="pt")
    res = prune(model, inputs, "fastv", 16, processor=proc, layer=1)
    ids = inputs["input_ids"]
    is_img = ids[0] == model.config.image_token_id
    keep = ~is_img.clone()
    keep[is_img.nonzero().squeeze(1)[res.selections[0].keep_idx]] = True
    lm = model.get_decoder()
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output[0]
        h = model.get_input_embeddings()(ids).masked_scatter(is_img[None, :, None], feats)
        pos = torch.arange(ids.shape[1])[None]
        cos, sin = lm.rotary_emb(h, pos)
        for i, layer in enumerate(lm.layers):
            if i == 1:
                h, pos, cos, sin = h[:, keep], pos[:, keep], cos[:, keep], sin[:, keep]
            h = layer(h, attention_mask=None, position_ids=pos, position_embeddings=(cos, sin))
        ref = model.lm_head(lm.norm(h))[0, -1]
        with res.generation_context():
            got = model(**res.generate_kwargs).logits[0, -1]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_hooks_are_removed_on_error_and_bad_input(family):
    name, model, proc, inputs = family
    res = prune(model, inputs, "fastv", 8, processor=proc, layer=2)
    with pytest.raises(RuntimeError, match="boom"), res.generation_context():
        assert _hooks(model) == 1  # layer 2 of 3
        raise RuntimeError("boom")
    assert _hooks(model) == 0
    with pytest.raises(ValueError, match=r"layer must be an int in \[1, 2\] for this model, got 3"):
        prune(model, inputs, "fastv", 8, processor=proc, layer=3)
    with pytest.raises(ValueError, match="needs llm_attention"):
        resprune.select(torch.randn(10, 4), 3, "fastv")
    if name == "llava":
        proc.tokenizer.padding_side = "left"
        batch = proc(
            images=[Image.new("RGB", (64, 64))] * 2,
            text=[chat_prompt(proc, PROMPT), chat_prompt(proc, "red")],
            return_tensors="pt",
            padding=True,
        )
        with pytest.raises(ValueError, match="supports batch size 1, got 2"):
            prune(model, batch, "fastv", 8, processor=proc, layer=1)


def test_answer_with_fastv_reports_layer_averaged_savings(family):
    _, model, proc, _ = family
    image = Image.fromarray(np.random.default_rng(5).integers(0, 255, (120, 160, 3), dtype=np.uint8))
    a = resprune.answer(model, proc, image, PROMPT, method="fastv", keep=6, max_new_tokens=3, layer=1)
    st = a.stats
    assert isinstance(a.pruned, str) and st["visual_tokens_after"] == 6 and st["llm_layer"] == 1
    assert st["kv_cache_bytes_after"] < st["kv_cache_bytes_before"]
    assert (
        st["prefill_flops_before"]
        > st["prefill_flops_after"]
        > resprune.generate.prefill_flops(model, st["seq_len_after"])
    )
    assert st["visual_tokens_after"] < st["visual_tokens_equivalent"] < st["visual_tokens_before"]


def test_kept_tokens_are_the_most_attended_by_eager_attention_weights(family):
    """Independent of the library's attention recomputation: the model's own eager attention weights of layer
    ``layer - 1`` (``output_attentions``), the last position's row averaged over heads, top K of the image tokens."""
    _, model, proc, inputs = family
    n = _n(model, inputs)
    k = n // 3
    lm = model.get_decoder()
    saved = lm.config._attn_implementation
    lm.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            att = model(**inputs, output_attentions=True, use_cache=False).attentions
    finally:
        lm.config._attn_implementation = saved
    for layer in (1, 2):
        row = att[layer - 1][0, :, -1, :].float().mean(0)  # (L,) mean over heads
        img = row[inputs["input_ids"][0] == model.config.image_token_id]
        res = prune(model, inputs, "fastv", k, processor=proc, layer=layer)
        cand = (res.geometry[0].view != VIEW_NEWLINE).nonzero().squeeze(1)  # newlines='drop': not candidates
        want = torch.sort(cand[torch.sort(img[cand], descending=True, stable=True).indices[:k]]).values
        assert torch.equal(res.selections[0].keep_idx, want)
