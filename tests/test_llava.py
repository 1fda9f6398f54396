"""LLaVA-1.5 specifics (tests/test_adapters.py holds the contract every family keeps): positions, token geometry,
VisPruner / VisionZip internals, and the shipped offline model end to end."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from helpers import make_inputs, noise_image

import resprune
from resprune.adapters import llava_geometry
from resprune.methods.cls import select_vispruner
from resprune.pipeline import prune
from resprune.testing import generate_checking_first_step

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def scenes_model():
    return resprune.load_model("scenes")


def test_positions_matter(tiny_llava):
    model, proc = tiny_llava
    inputs = make_inputs(proc, noise_image())
    a = prune(model, inputs, "uniform", 16, processor=proc)
    b = prune(model, inputs, "uniform", 16, processor=proc, positions="original")
    with torch.no_grad():
        la = model(**a.generate_kwargs).logits[:, -1]
        lb = model(**b.generate_kwargs).logits[:, -1]
    assert not torch.allclose(la, lb, atol=1e-3)


def test_geometry_non_square(tiny_llava):
    _, proc = tiny_llava
    # 160 x 100: shortest edge -> 64: resized 102 x 64, centre crop 64 -> left = (102 - 64) // 2 = 19
    g = llava_geometry(proc, (160, 100), 64)
    sx, sy = 160 / 102, 100 / 64
    assert g.grids[0] == (8, 8)
    torch.testing.assert_close(g.box[0], torch.tensor([19 * sx, 0.0, 27 * sx, 8 * sy]))
    torch.testing.assert_close(g.box[63], torch.tensor([(19 + 56) * sx, 56 * sy, (19 + 64) * sx, 64 * sy]))
    assert int(g.row[9]) == 1 and int(g.col[9]) == 1


def test_geometry_tiles_the_scenes_image(scenes_model):
    model, proc = scenes_model
    scene = resprune.scenes.sample(20_000_000)
    ans = resprune.answer(model, proc, scene.image, scene.questions[0].text, keep=20, compare=False)
    g = ans.result.geometry[0]
    area = ((g.box[:, 2] - g.box[:, 0]) * (g.box[:, 3] - g.box[:, 1])).sum()
    assert g.n_tokens == 144 and float(area) == pytest.approx(192 * 192)


def test_scenes_model_answers_with_every_method(scenes_model):
    model, proc = scenes_model
    scene = resprune.scenes.sample(20_000_002)
    q = scene.questions[0]
    for m in resprune.list_methods():
        a = resprune.answer(model, proc, scene.image, q.text, method=m, keep=36, max_new_tokens=4, compare=False)
        assert isinstance(a.pruned, str) and a.pruned
        assert a.stats["visual_tokens_after"] == 36 and a.stats["seq_len_before"] - a.stats["seq_len_after"] == 108
    full = resprune.answer(model, proc, scene.image, q.text, keep=36, max_new_tokens=4)
    st = full.stats
    assert st["kv_cache_bytes_after"] < st["kv_cache_bytes_before"]
    assert st["prefill_flops_after"] < st["prefill_flops_before"]
    assert full.result.query_words[0] and full.result.selections[0].params["seed"] == "prior"  # CLS-attention seed


def test_unknown_words_are_still_answered(scenes_model):
    model, proc = scenes_model
    scene = resprune.scenes.sample(20_000_003)
    a = resprune.answer(model, proc, scene.image, "What colour is the zebra?", keep=36, max_new_tokens=4)
    assert isinstance(a.pruned, str)
    assert resprune.scenes.unknown_words("What colour is the zebra?") == ["zebra"]


def test_vispruner_uses_the_pre_projector_features(tiny_llava):
    """``prune`` hands VisPruner the CLIP features of the feature layer (before the projector), aligned with the
    projected tokens."""
    model, proc = tiny_llava
    inputs = make_inputs(proc, noise_image())
    adapter = resprune.adapters.ADAPTERS["LlavaForConditionalGeneration"]
    internals = adapter.images(model, proc, inputs, None, frozenset({"cls_attention", "vision_features"}))[0].internals
    att, feats = internals["cls_attention"], internals["vision_features"]
    assert att.shape == (64,) and feats.shape == (64, model.config.vision_config.hidden_size)
    with torch.no_grad():
        projected = model.model.multi_modal_projector(feats[None])[0]
        ref = model.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output[0]
    torch.testing.assert_close(projected, ref.float())
    res = prune(model, inputs, "vispruner", 10, processor=proc)

    direct = select_vispruner(res.visual_tokens[0], 10, cls_attention=att, vision_features=feats)
    assert torch.equal(res.selections[0].keep_idx, direct.keep_idx)


def test_visionzip_in_the_pipeline(tiny_llava):
    """LLaVA: the K merged vectors (projected) fill the first K image slots; the sequence is shorter by N - K; the
    first generated step equals a forward on the pruned sequence; the [CLS] vector is the projected CLS feature."""
    model, proc = tiny_llava
    inputs = make_inputs(proc, noise_image())
    res = prune(model, inputs, "visionzip", 10, processor=proc)
    sel = res.selections[0]
    L = inputs["input_ids"].shape[1]
    assert sel.keep == 10 and res.stats["visual_tokens_after"] == 10 and res.stats["seq_len_after"] == L - 54
    emb = res.generate_kwargs["inputs_embeds"][0]
    first = int((inputs["input_ids"][0] == model.config.image_token_id).nonzero()[0])
    torch.testing.assert_close(emb[first : first + 10].float(), sel.merged)
    with torch.no_grad():
        hs = model.model.vision_tower(inputs["pixel_values"], output_hidden_states=True).hidden_states
        cls = model.model.multi_modal_projector(hs[model.config.vision_feature_layer][0, :1])[0]
    torch.testing.assert_close(sel.merged[0], cls.float())
    generate_checking_first_step(model, res, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = prune(model, inputs, "visionzip", 64, processor=proc)
    with torch.no_grad():
        assert torch.equal(model(**full.generate_kwargs).logits, model(**inputs).logits)
