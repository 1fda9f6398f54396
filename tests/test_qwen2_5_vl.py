"""Qwen2.5-VL specifics: the gathered original M-RoPE positions, decoding that continues them, odd image sizes."""

from __future__ import annotations

import pytest
import torch
from helpers import PROMPT, make_image, make_inputs

from resprune.pipeline import prune
from resprune.testing import tiny_model
from resprune.types import VIEW_BASE


@pytest.fixture(scope="module")
def qwen_model():
    return tiny_model("qwen2_5_vl")


def test_qwen_keeps_the_gathered_original_mrope_positions(qwen_model):
    model, proc = qwen_model
    inputs = make_inputs(proc, make_image(300, 200))
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
    inputs = make_inputs(proc, make_image(300, 200))
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


def test_qwen_geometry_odd_sizes(qwen_model):
    model, proc = qwen_model
    for w, h in ((333, 127), (90, 250)):
        img = make_image(w - w % 10, h - h % 10)
        inputs = make_inputs(proc, img)
        res = prune(model, inputs, "uniform", 4, processor=proc, image_sizes=[img.size])
        g = res.geometry[0]
        _, gh, gw = inputs["image_grid_thw"][0].tolist()
        assert g.grids[VIEW_BASE] == (gh // 2, gw // 2) and g.n_tokens == gh * gw // 4
        area = ((g.box[:, 2] - g.box[:, 0]) * (g.box[:, 3] - g.box[:, 1])).sum()
        assert float(area) == pytest.approx(img.size[0] * img.size[1], rel=1e-5)
        assert float(g.box[-1, 2]) == pytest.approx(img.size[0]) and float(g.box[-1, 3]) == pytest.approx(img.size[1])
