"""LLaVA-NeXT and Qwen2.5-VL through the same ``prune`` / ``answer`` path as LLaVA-1.5: exactness at keep = N,
shorter sequence and cache at 25 %, Qwen's gathered M-RoPE positions, LLaVA-NeXT's layout and newline policy, batch
equals per-sample, geometry, and the family-specific bad inputs. Tiny random-weight models from config classes
(``resprune.testing``), with scaled weights so that a wrong position or mask changes the logits."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import resprune
from resprune.generate import _cache_of, chat_prompt, kv_cache_bytes
from resprune.pipeline import prune
from resprune.testing import generate_checking_first_step, tiny_model
from resprune.types import VIEW_BASE, VIEW_HIRES, VIEW_NEWLINE

PROMPT = "What colour is the circle?"


@pytest.fixture(scope="module", params=["llava_next", "qwen2_5_vl"])
def family(request):
    model, proc = tiny_model(request.param)
    return request.param, model, proc


@pytest.fixture(scope="module")
def next_model():
    return tiny_model("llava_next")


@pytest.fixture(scope="module")
def qwen_model():
    return tiny_model("qwen2_5_vl")


def _image(w=640, h=480, seed=0):
    small = np.random.default_rng(seed).integers(0, 255, (h // 10, w // 10, 3), dtype=np.uint8)
    return Image.fromarray(small.repeat(10, 0).repeat(10, 1))


def _inputs(proc, image, text=PROMPT):
    return proc(images=image, text=chat_prompt(proc, text), return_tensors="pt")


def _n(model, inputs):
    return int((inputs["input_ids"] == model.config.image_token_id).sum())


def test_keep_all_is_exact(family):
    _, model, proc = family
    inputs = _inputs(proc, _image())
    n = _n(model, inputs)
    with pytest.warns(UserWarning, match="every token is kept"):
        res = prune(model, inputs, "resprune", n, processor=proc, prompt=PROMPT)
    assert res.selections[0].keep == n and res.stats["seq_len_after"] == inputs["input_ids"].shape[1]
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, model(**res.generate_kwargs).logits)
    a = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    b = model.generate(**res.generate_kwargs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert torch.equal(a[0, inputs["input_ids"].shape[1] :], b[0])


def test_quarter_budget_shortens_sequence_and_cache(family):
    _, model, proc = family
    inputs = _inputs(proc, _image())
    n = _n(model, inputs)
    k = n // 4
    res = prune(model, inputs, "resprune", k, processor=proc, prompt=PROMPT)
    L = inputs["input_ids"].shape[1]
    assert res.selections[0].keep == k and res.stats["visual_tokens_after"] == k
    assert res.generate_kwargs["inputs_embeds"].shape[1] == L - (n - k) == res.stats["seq_len_after"]
    out = generate_checking_first_step(model, res, 3)  # first generated step == a plain forward
    _, length = kv_cache_bytes(_cache_of(out))
    assert length == L - (n - k) + 2


def test_qwen_keeps_the_gathered_original_mrope_positions(qwen_model):
    model, proc = qwen_model
    inputs = _inputs(proc, _image(300, 200))
    res = prune(model, inputs, "resprune", 10, processor=proc, prompt=PROMPT)
    rope, _ = model.model.get_rope_index(
        inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"]
    )
    image_pos = (inputs["input_ids"][0] == model.config.image_token_id).nonzero().squeeze(1)
    keep = torch.ones(inputs["input_ids"].shape[1], dtype=torch.bool)
    keep[image_pos] = False
    keep[image_pos[res.selections[0].keep_idx]] = True
    pos = res.generate_kwargs["position_ids"]
    assert pos.shape == (4, 1, int(keep.sum()))
    assert torch.equal(pos[1:, 0], rope[:, 0, keep])
    assert torch.equal(pos[0, 0], torch.arange(int(keep.sum())))
    # kept image tokens carry their 2-D grid coordinates (rows 2-3) = the geometry's row / column
    g = res.geometry[0]
    is_img = inputs["input_ids"][0, keep] == model.config.image_token_id
    start = rope[1, 0, image_pos[0]]
    assert torch.equal(pos[2, 0, is_img] - start, g.row[res.selections[0].keep_idx])
    assert torch.equal(pos[3, 0, is_img] - start, g.col[res.selections[0].keep_idx])
    # wrong positions (1-D, renumbered) change the logits: the test model is sensitive to positions
    with torch.no_grad():
        right = model(**res.generate_kwargs).logits[:, -1]
        kw = {k: v for k, v in res.generate_kwargs.items() if k != "position_ids"}
        n = kw["inputs_embeds"].shape[1]
        wrong = model(**kw, position_ids=torch.arange(n)[None, None].expand(4, 1, n)).logits[:, -1]
    assert not torch.allclose(right, wrong, atol=1e-3)
    with pytest.raises(ValueError, match="positions must be 'original' for Qwen2_5_VL"):
        prune(model, inputs, "resprune", 10, processor=proc, positions="compact")


def test_qwen_decoding_continues_the_original_positions(qwen_model):
    """Pruned greedy decoding == a cache-free forward with hand-built positions (last + 1 per generated token)."""
    model, proc = qwen_model
    inputs = _inputs(proc, _image(300, 200))
    res = prune(model, inputs, "residual", 12, processor=proc)
    out = model.generate(
        **res.generate_kwargs, max_new_tokens=4, min_new_tokens=4, do_sample=False, return_dict_in_generate=True
    )
    new = out.sequences[0]
    emb = torch.cat([res.generate_kwargs["inputs_embeds"], model.get_input_embeddings()(new[None, :-1])], 1)
    pos = res.generate_kwargs["position_ids"]
    steps = torch.arange(1, new.numel())
    tail = pos[:, :, -1:] + steps.view(1, 1, -1)
    with torch.no_grad():
        logits = model(
            inputs_embeds=emb, position_ids=torch.cat([pos, tail], -1), attention_mask=torch.ones(emb.shape[:2])
        ).logits
    assert torch.equal(logits[0, -new.numel() :].argmax(-1), new)


def test_next_layout_matches_the_model(next_model):
    """The packed layout (base view, unpadded hi-res rows, one newline per row) is the model's own, token by token:
    newline rows equal ``image_newline``; base tokens equal the base crop's features."""
    model, proc = next_model
    for w, h in ((640, 480), (300, 560), (200, 200)):
        inputs = _inputs(proc, _image(w, h))
        res = prune(model, inputs, "uniform", 8, processor=proc)
        g = res.geometry[0]
        vis = res.visual_tokens[0]
        nl = g.view == VIEW_NEWLINE
        torch.testing.assert_close(vis[nl], model.model.image_newline.float().expand(int(nl.sum()), -1))
        rows, cols = g.grids[VIEW_HIRES]
        assert int(nl.sum()) == rows and int((g.view == VIEW_HIRES).sum()) == rows * cols
        assert g.grids[VIEW_BASE] == (4, 4) and int((g.view == VIEW_BASE).sum()) == 16
        assert (g.col[nl] == -1).all() and torch.equal(g.row[nl], torch.arange(rows))
        # base view: the whole image squashed to one crop, tiled exactly
        base = g.box[g.view == VIEW_BASE]
        area = ((base[:, 2] - base[:, 0]) * (base[:, 3] - base[:, 1])).sum()
        assert float(area) == pytest.approx(w * h)
        # hi-res boxes span the image: the model's unpadding keeps whole tokens, so each edge is off by less than
        # one token (inside or outside), e.g. 300 x 560 keeps columns 2..5 of 8, starting 10 px inside the image
        hi = g.box[g.view == VIEW_HIRES]
        tw, th = (hi[:, 2] - hi[:, 0]).max(), (hi[:, 3] - hi[:, 1]).max()
        assert abs(hi[:, 0].min()) < tw and abs(hi[:, 2].max() - w) < tw
        assert abs(hi[:, 1].min()) < th and abs(hi[:, 3].max() - h) < th
        assert torch.allclose(hi[:, 2] - hi[:, 0], tw) and torch.allclose(hi[:, 3] - hi[:, 1], th)
        # row-major: the box moves right along a row and down across rows
        first_row = hi[:cols]
        assert (first_row[1:, 0] > first_row[:-1, 0]).all() and (hi[cols, 1] > hi[0, 1])
        # the base view's features are the base crop's (the first crop) projected tokens
        with torch.no_grad():
            hs = model.model.vision_tower(inputs["pixel_values"][0, :1], output_hidden_states=True).hidden_states
            base_feats = model.model.multi_modal_projector(hs[model.config.vision_feature_layer][0, 1:])
        torch.testing.assert_close(vis[g.view == VIEW_BASE], base_feats.float())


def test_next_newline_policies(next_model):
    model, proc = next_model
    inputs = _inputs(proc, _image())
    n = _n(model, inputs)  # 16 + 6 x 8 + 6 = 70
    view = prune(model, inputs, "uniform", 8, processor=proc).geometry[0].view
    nl = (view == VIEW_NEWLINE).nonzero().squeeze(1)
    assert n == 70 and nl.numel() == 6
    drop = prune(model, inputs, "resprune", 20, processor=proc, prompt=PROMPT)
    assert drop.selections[0].keep == 20 and not torch.isin(drop.selections[0].keep_idx, nl).any()
    keep = prune(model, inputs, "resprune", 20, processor=proc, prompt=PROMPT, newlines="keep")
    sel = keep.selections[0]
    assert sel.keep == 20 and torch.isin(nl, sel.keep_idx).all()
    assert torch.isnan(sel.gain[-6:]).all() and sel.relevance.shape == (70,) and (sel.relevance[nl] == 0).all()
    assert sel.residual.shape == (21,) and float(sel.residual[-1]) < float(sel.residual[0])
    pr = prune(model, inputs, "residual", 20, processor=proc, newlines="prune")
    # newlines are one repeated vector: after the first is kept, the others have zero residual energy
    assert int(torch.isin(pr.selections[0].keep_idx, nl).sum()) <= 1
    # K counts what reaches the LLM in every policy
    for res in (drop, keep, pr):
        assert res.stats["seq_len_after"] == inputs["input_ids"].shape[1] - (n - 20)
    # a budget larger than the image tokens but smaller than N: all image tokens, then newlines (top rows first)
    big = prune(model, inputs, "resprune", 66, processor=proc).selections[0]
    assert big.keep == 66 and torch.isin(nl[:2], big.keep_idx).all() and not torch.isin(nl[2:], big.keep_idx).any()
    with pytest.raises(ValueError, match="keep=6 is not more than the 6 image_newline tokens"):
        prune(model, inputs, "resprune", 6, processor=proc, newlines="keep")
    with pytest.raises(ValueError, match="newlines must be one of"):
        prune(model, inputs, "resprune", 6, processor=proc, newlines="sometimes")


def test_next_cls_attention_follows_the_layout(next_model):
    """[CLS] attention is computed per crop and packed like the features: each base / crop block sums to the
    attention mass of that crop's patches; newline tokens get 0."""
    model, proc = next_model
    inputs = _inputs(proc, _image())
    res = prune(model, inputs, "cls", 10, processor=proc)
    adapter = resprune.adapters.ADAPTERS["LlavaNextForConditionalGeneration"]
    att = adapter.images(model, proc, inputs, None, frozenset({"cls_attention"}))[0].internals["cls_attention"]
    g = res.geometry[0]
    assert att.shape == (70,) and (att[g.view == VIEW_NEWLINE] == 0).all() and (att[g.view != VIEW_NEWLINE] > 0).all()
    order = res.selections[0].order
    assert torch.equal(att[order], torch.sort(att[g.view != VIEW_NEWLINE], descending=True).values[:10])


def test_next_visionzip_compresses_each_crop(next_model):
    """VisionZip on LLaVA-NeXT as its released code does it: each crop (base view, then the hi-res crops) gets an
    even share of K, compressed on its own ([CLS] + dominant by [CLS] attention + key-merged contextual); the LLM
    receives the base crop's [CLS, dominant, contextual], the hi-res dominant patches in raster order of the whole
    hi-res grid, the hi-res [CLS] features, then the hi-res contextual tokens; no newlines. Rebuilt here from the
    vision tower's own per-crop hidden states."""
    from resprune.methods.visionzip import select_visionzip

    model, proc = next_model
    inputs = _inputs(proc, _image())
    L = inputs["input_ids"].shape[1]
    k = 40  # 5 crops (base + 2 x 2), 8 each; round(8 * 10 / 64) = 1 contextual, [CLS] + 6 dominant
    res = prune(model, inputs, "visionzip", k, processor=proc)
    sel, g = res.selections[0], res.geometry[0]
    assert sel.keep == k and sel.merged.shape[0] == k and res.stats["seq_len_after"] == L - (70 - k)
    assert sel.params["per_crop"] == (8, 8, 8, 8, 8) and sel.params["contextual"] == 1
    assert not torch.isin(sel.keep_idx, (g.view == VIEW_NEWLINE).nonzero().squeeze(1)).any()
    # the merged vectors fill the first K image slots
    first = int((inputs["input_ids"][0] == model.config.image_token_id).nonzero()[0])
    torch.testing.assert_close(res.generate_kwargs["inputs_embeds"][0, first : first + k].float(), sel.merged)

    with torch.no_grad():
        pv = inputs["pixel_values"][0]  # (5, 3, S, S): base then the hi-res crops
        tower = model.model.vision_tower
        hs = tower(pv, output_hidden_states=True).hidden_states
        layer = model.config.vision_feature_layer
        feats = hs[layer]  # (5, 17, C): [CLS] + 16 patches per crop
        proj = model.model.multi_modal_projector
        # per-crop [CLS] attention of the layer producing hs[layer], from its own q/k projections
        encoder = tower.vision_model.encoder if hasattr(tower, "vision_model") else tower.encoder
        enc_layer = encoder.layers[layer % len(hs) - 1]
        h = enc_layer.layer_norm1(hs[layer % len(hs) - 1])
        att_mod = enc_layer.self_attn
        q = att_mod.q_proj(h).view(5, 17, att_mod.num_heads, -1).transpose(1, 2)
        kk = att_mod.k_proj(h).view(5, 17, att_mod.num_heads, -1).transpose(1, 2)
        cls_att = ((q[:, :, :1] @ kk.transpose(-1, -2)) * att_mod.scale).softmax(-1).mean(1)[:, 0, 1:]  # (5, 16)
    # the base crop, every patch a candidate: its [CLS], then its 6 most attended patches in index order
    torch.testing.assert_close(sel.merged[0], proj(feats[0, :1])[0].float(), rtol=1e-4, atol=1e-5)
    top = torch.sort(torch.sort(cls_att[0], descending=True, stable=True).indices[:6]).values
    torch.testing.assert_close(sel.merged[1:7], proj(feats[0, 1 + top]).float(), rtol=1e-4, atol=1e-5)
    base_idx = (g.view == VIEW_BASE).nonzero().squeeze(1)
    assert torch.isin(base_idx[top], sel.keep_idx).all()
    # the hi-res dominant patches: 6 per crop, in raster order of the unpadded hi-res grid (the token order)
    hi_keep = sel.keep_idx[g.view[sel.keep_idx] == VIEW_HIRES]
    n_dom_hi = 4 * 6
    vis = res.visual_tokens[0]
    # each hi-res dominant row is the projected feature of a kept hi-res token; their token indices increase
    rows = sel.merged[8 : 8 + n_dom_hi]
    match = torch.cdist(rows, vis[hi_keep]).argmin(1)
    assert (torch.cdist(rows, vis[hi_keep]).min(1).values < 1e-3).all()
    assert (match.diff() > 0).all()
    # then the four hi-res [CLS] features, in crop order, then their contextual tokens
    torch.testing.assert_close(
        sel.merged[8 + n_dom_hi : 12 + n_dom_hi], proj(feats[1:, 0]).float(), rtol=1e-4, atol=1e-5
    )
    assert sel.merged.shape[0] == 12 + n_dom_hi + 4
    # a direct call with the same internals gives the same selection
    info = resprune.method_info("visionzip")
    adapter = resprune.adapters.ADAPTERS["LlavaNextForConditionalGeneration"]
    kw = adapter.images(model, proc, inputs, None, frozenset(info.internals()))[0].internals
    content = (g.view != VIEW_NEWLINE).nonzero().squeeze(1)
    per_tok = ("cls_attention", "vision_features", "vision_keys", "crops")
    direct = select_visionzip(vis[content], k, **{n: (v[content] if n in per_tok else v) for n, v in kw.items()})
    torch.testing.assert_close(direct.merged, sel.merged)
    assert torch.equal(content[direct.keep_idx], sel.keep_idx)
    generate_checking_first_step(model, res, 2)  # generation on the merged sequence; first step == a plain forward
    # uneven budgets: the base crop takes the remainder first; K = N keeps everything unchanged
    odd = prune(model, inputs, "visionzip", 13, processor=proc).selections[0]
    assert odd.params["per_crop"] == (3, 3, 3, 2, 2) and odd.keep == 13
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = prune(model, inputs, "visionzip", 70, processor=proc)
    with torch.no_grad():
        assert torch.equal(model(**full.generate_kwargs).logits, model(**inputs).logits)
    with pytest.raises(ValueError, match="newlines='keep'.*sends no image_newline tokens"):
        prune(model, inputs, "visionzip", 20, processor=proc, newlines="keep")


def test_split_budget_is_even_and_capped():
    from resprune.methods.visionzip import split_budget as _split_budget

    assert _split_budget(40, [16, 12, 12, 12, 12]) == [8, 8, 8, 8, 8]
    assert _split_budget(13, [16, 12, 12, 12, 12]) == [3, 3, 3, 2, 2]
    assert _split_budget(20, [16, 2, 0, 12]) == [10, 2, 0, 8]  # a small crop's share goes to the others
    assert _split_budget(30, [16, 2, 0, 12]) == [16, 2, 0, 12]


@pytest.mark.parametrize(
    ("name", "method"), [("llava_next", "residual"), ("llava_next", "visionzip"), ("qwen2_5_vl", "residual")]
)
def test_batch_equals_per_sample(name, method):
    model, proc = tiny_model(name)
    proc.tokenizer.padding_side = "left"
    imgs = [_image(640, 480, 1), _image(300, 420, 2)]
    texts = [chat_prompt(proc, "red circle"), chat_prompt(proc, "How many blue squares are there?")]
    batch = proc(images=imgs, text=texts, return_tensors="pt", padding=True)
    res = prune(model, batch, method, 12, processor=proc)
    with torch.no_grad():
        lb = model(**res.generate_kwargs).logits[:, -1]
        for i in range(2):
            single = prune(model, proc(images=imgs[i], text=texts[i], return_tensors="pt"), method, 12)
            ls = model(**single.generate_kwargs).logits[:, -1]
            torch.testing.assert_close(lb[i : i + 1], ls, rtol=1e-4, atol=1e-4)
            assert torch.equal(res.selections[i].keep_idx, single.selections[0].keep_idx)


def test_qwen_geometry_odd_sizes(qwen_model):
    model, proc = qwen_model
    for w, h in ((333, 127), (90, 250)):
        img = _image(w - w % 10, h - h % 10)
        inputs = _inputs(proc, img)
        res = prune(model, inputs, "uniform", 4, processor=proc, image_sizes=[img.size])
        g = res.geometry[0]
        _, gh, gw = inputs["image_grid_thw"][0].tolist()
        assert g.grids[VIEW_BASE] == (gh // 2, gw // 2) and g.n_tokens == gh * gw // 4
        area = ((g.box[:, 2] - g.box[:, 0]) * (g.box[:, 3] - g.box[:, 1])).sum()
        assert float(area) == pytest.approx(img.size[0] * img.size[1], rel=1e-5)
        assert float(g.box[-1, 2]) == pytest.approx(img.size[0]) and float(g.box[-1, 3]) == pytest.approx(img.size[1])


@pytest.mark.parametrize("method", resprune.list_methods())
def test_every_method_on_every_family(family, method):
    name, model, proc = family
    inputs = _inputs(proc, _image(300, 200))
    requires = resprune.method_info(method).requires
    if "cls_attention" in requires and name == "qwen2_5_vl":
        with pytest.raises(ValueError, match="vision tower has no \\[CLS\\] token"):
            prune(model, inputs, method, 6, processor=proc, prompt=PROMPT)
        return
    res = prune(model, inputs, method, 6, processor=proc, prompt=PROMPT)
    assert res.selections[0].keep == 6
    with res.generation_context():
        out = model.generate(**res.generate_kwargs, max_new_tokens=2, do_sample=False)
    assert out.shape[0] == 1


def test_answer_reports_words_and_savings(family):
    name, model, proc = family
    a = resprune.answer(model, proc, _image(), "What colour is the circle?", keep=8, max_new_tokens=3)
    st = a.stats
    assert isinstance(a.pruned, str) and isinstance(a.unpruned, str)
    assert a.result.query_words[0] == ("colour", "circle") or "circle" in a.result.query_words[0]
    assert (
        st["visual_tokens_after"] == 8 and st["seq_len_before"] - st["seq_len_after"] == st["visual_tokens_before"] - 8
    )
    assert st["kv_cache_bytes_after"] < st["kv_cache_bytes_before"]
    assert st["prefill_flops_after"] < st["prefill_flops_before"]
    assert a.result.geometry[0].image_size == (640, 480)
    if name == "qwen2_5_vl":  # no [CLS]: ResPrune's default seed falls back to the max-norm token
        assert a.result.selections[0].params["seed"] == "max_norm"


def test_family_bad_inputs(family, qwen_model):
    name, model, proc = family
    inputs = _inputs(proc, _image())
    extra = "image_sizes" if name == "llava_next" else "image_grid_thw"
    with pytest.raises(ValueError, match=f"'{extra}' is missing"):
        prune(model, {k: v for k, v in inputs.items() if k != extra}, "resprune", 8)
    no_image = proc.tokenizer(chat_prompt(proc, PROMPT).replace(proc.image_token, ""), return_tensors="pt")
    with pytest.raises(ValueError, match="no image placeholder"):
        prune(model, dict(no_image, **{k: inputs[k] for k in ("pixel_values", extra)}), "resprune", 8)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = prune(model, inputs, "resprune", 10_000, processor=proc)
    assert res.selections[0].keep == _n(model, inputs) and any("every token is kept" in str(x.message) for x in w)
    if name == "qwen2_5_vl":
        with pytest.raises(ValueError, match="seed='prior' needs seed_prior.*no \\[CLS\\] token"):
            prune(model, inputs, "resprune", 8, seed="prior")


@pytest.mark.parametrize("name", ["llava_next", "qwen2_5_vl"])
def test_saved_checkpoints_load_through_load_model(name, tmp_path):
    """``load_model`` on a saved folder: the real model class and a processor built without torchvision (Qwen's
    ``AutoProcessor`` needs torchvision; ``QwenImageProcessor`` does not), and prune runs on what it returns."""
    model, proc = tiny_model(name)
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(  # the chat template only in its own file, as on the hub
        (tmp_path / "tokenizer_config.json").read_text().replace('"chat_template"', '"unused_chat_template"')
    )
    m2, p2 = resprune.load_model(str(tmp_path))
    assert type(m2) is type(model) and p2.chat_template
    inputs = _inputs(p2, _image(300, 200))
    ref = _inputs(proc, _image(300, 200))
    assert torch.equal(inputs["input_ids"], ref["input_ids"])
    assert torch.equal(inputs["pixel_values"], ref["pixel_values"])
    res = prune(m2, inputs, "resprune", 5, processor=p2, prompt=PROMPT)
    assert res.selections[0].keep == 5


@pytest.mark.parametrize("method", ["resprune", "cls", "vispruner", "visionzip"])
@pytest.mark.parametrize("name", ["llava", "llava_next"])
def test_the_vision_tower_runs_once(name, method):
    """[CLS] attention and the other vision internals come from the same tower pass that made the visual tokens."""
    model, proc = tiny_model(name)
    inputs = _inputs(proc, _image())
    calls = []
    handle = model.model.vision_tower.register_forward_hook(lambda *_: calls.append(1))
    try:
        res = prune(model, inputs, method, 12, processor=proc, prompt=PROMPT)
    finally:
        handle.remove()
    assert len(calls) == 1 and res.selections[0].keep == 12
