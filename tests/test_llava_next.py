"""LLaVA-NeXT specifics: the model's own layout, the newline policies, per-crop [CLS] attention and VisionZip."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import PROMPT, make_image, make_inputs, n_visual

import resprune
from resprune.methods.visionzip import select_visionzip
from resprune.pipeline import prune
from resprune.testing import generate_checking_first_step, tiny_model
from resprune.types import VIEW_BASE, VIEW_HIRES, VIEW_NEWLINE


@pytest.fixture(scope="module")
def next_model():
    return tiny_model("llava_next")


def test_next_layout_matches_the_model(next_model):
    """The packed layout (base view, unpadded hi-res rows, one newline per row) is the model's own, token by token:
    newline rows equal ``image_newline``; base tokens equal the base crop's features."""
    model, proc = next_model
    for w, h in ((640, 480), (300, 560), (200, 200)):
        inputs = make_inputs(proc, make_image(w, h))
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
    inputs = make_inputs(proc, make_image())
    n = n_visual(model, inputs)  # 16 + 6 x 8 + 6 = 70
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
    inputs = make_inputs(proc, make_image())
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

    model, proc = next_model
    inputs = make_inputs(proc, make_image())
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


@pytest.mark.parametrize("method", ["cdpruner", "vispruner"])
def test_peers_select_per_crop_and_keep_newlines_as_released(next_model, method):
    """CDPruner and VisPruner on LLaVA-NeXT default to their released code's policy: K split evenly over the crops
    (one selection per crop) with the image_newline tokens kept; the global policy stays an option."""
    model, proc = next_model
    inputs = make_inputs(proc, make_image())
    res = prune(model, inputs, method, 26, processor=proc, prompt=PROMPT)
    sel, g = res.selections[0], res.geometry[0]
    n_nl = int((g.view == VIEW_NEWLINE).sum())
    assert res.params["budget"] == "per-crop" and res.params["newlines"] == "keep"
    assert sel.keep == 26 and int((g.view[sel.keep_idx] == VIEW_NEWLINE).sum()) == n_nl  # every newline kept
    crops = (
        resprune.adapters.ADAPTERS["LlavaNextForConditionalGeneration"]
        .images(model, proc, inputs, None, frozenset({"crops"}))[0]
        .internals["crops"]
    )
    per_crop = sel.params["per_crop"]
    content = sel.keep_idx[g.view[sel.keep_idx] != VIEW_NEWLINE]
    counts = torch.bincount(crops[content], minlength=len(per_crop)).tolist()
    assert counts == list(per_crop) and sum(per_crop) == 26 - n_nl and max(per_crop) - min(per_crop) <= 1
    glob = prune(model, inputs, method, 26, processor=proc, prompt=PROMPT, budget="global", newlines="drop")
    assert "per_crop" not in glob.selections[0].params and glob.params["budget"] == "global"
    assert int((g.view[glob.selections[0].keep_idx] == VIEW_NEWLINE).sum()) == 0
    generate_checking_first_step(model, res, 2)
