"""Pruned generation on a real LlavaForConditionalGeneration: exactness at keep = N, shorter sequence and cache at
25 %, every method end to end, geometry, loading and bad input. Tiny random-weight models are built from config
classes (no download); the shipped offline model is used where a trained model matters."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resprune
from resprune.adapters import llava_geometry
from resprune.generate import chat_prompt
from resprune.pipeline import prune
from resprune.testing import generate_checking_first_step

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def scenes_model():
    return resprune.load_model("scenes")


@pytest.fixture(scope="module")
def tiny_llava():
    """A random-weight LLaVA with a 64 px / 8 px vision tower (64 visual tokens), weights scaled so that
    positions and masks matter (a wrong one changes the logits): ``resprune.testing.tiny_model("llava")``."""
    from resprune.testing import tiny_model

    return tiny_model("llava")


def _inputs(proc, image, text="What colour is the circle?"):
    return proc(images=image, text=chat_prompt(proc, text), return_tensors="pt")


def _image(w=80, h=64, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_keep_all_is_exact(tiny_llava):
    model, proc = tiny_llava
    inputs = _inputs(proc, _image())
    n = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n == 64
    with pytest.warns(UserWarning, match="every token is kept"):
        res = prune(model, inputs, "resprune", n, processor=proc, prompt="What colour is the circle?")
    with torch.no_grad():
        ref = model(**inputs).logits
        got = model(**res.generate_kwargs).logits
    assert torch.equal(ref, got)
    a = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    b = model.generate(**res.generate_kwargs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert torch.equal(a[0, inputs["input_ids"].shape[1] :], b[0])


@pytest.mark.parametrize("positions", ["compact", "original"])
def test_quarter_budget_shortens_sequence_and_cache(tiny_llava, positions):
    model, proc = tiny_llava
    inputs = _inputs(proc, _image())
    res = prune(model, inputs, "resprune", 16, processor=proc, prompt="red circle", positions=positions)
    L = inputs["input_ids"].shape[1]
    assert res.generate_kwargs["inputs_embeds"].shape[1] == L - 48
    assert res.stats["seq_len_before"] - res.stats["seq_len_after"] == 48
    out = generate_checking_first_step(model, res, 3)  # first generated step == a plain forward
    nbytes, length = resprune.generate.kv_cache_bytes(resprune.generate._cache_of(out))
    assert length == L - 48 + 2  # prompt + generated tokens but the last


def test_positions_matter(tiny_llava):
    model, proc = tiny_llava
    inputs = _inputs(proc, _image())
    a = prune(model, inputs, "uniform", 16, processor=proc)
    b = prune(model, inputs, "uniform", 16, processor=proc, positions="original")
    with torch.no_grad():
        la = model(**a.generate_kwargs).logits[:, -1]
        lb = model(**b.generate_kwargs).logits[:, -1]
    assert not torch.allclose(la, lb, atol=1e-3)


@pytest.mark.parametrize("method", resprune.list_methods())
def test_every_method_generates(tiny_llava, method):
    model, proc = tiny_llava
    inputs = _inputs(proc, _image())
    res = prune(model, inputs, method, 10, processor=proc, prompt="What colour is the circle?")
    assert res.selections[0].keep == 10 and res.stats["seq_len_after"] == inputs["input_ids"].shape[1] - 54
    if resprune.method_info(method).stage != "llm":  # in-LLM methods hand over the full prompt plus hooks
        assert res.generate_kwargs["inputs_embeds"].shape[1] == inputs["input_ids"].shape[1] - 54
    with res.generation_context():
        out = model.generate(**res.generate_kwargs, max_new_tokens=2, do_sample=False)
    assert out.shape[0] == 1


def test_batch_equals_per_sample(tiny_llava):
    model, proc = tiny_llava
    imgs = [_image(seed=1), _image(seed=2)]
    texts = [chat_prompt(proc, "red circle"), chat_prompt(proc, "How many blue squares are there?")]
    proc.tokenizer.padding_side = "left"
    batch = proc(images=imgs, text=texts, return_tensors="pt", padding=True)
    res = prune(model, batch, "residual", 12, processor=proc)
    with torch.no_grad():
        lb = model(**res.generate_kwargs).logits[:, -1]
        for i in range(2):
            single = prune(model, _inputs_text(proc, imgs[i], texts[i]), "residual", 12, processor=proc)
            ls = model(**single.generate_kwargs).logits[:, -1]
            torch.testing.assert_close(lb[i : i + 1], ls, rtol=1e-4, atol=1e-4)
            assert torch.equal(res.selections[i].keep_idx, single.selections[0].keep_idx)


def _inputs_text(proc, image, text):
    return proc(images=image, text=text, return_tensors="pt")


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


def test_bad_inputs(tiny_llava):
    model, proc = tiny_llava
    inputs = _inputs(proc, _image())
    no_image = proc.tokenizer("USER: What is this? ASSISTANT:", return_tensors="pt")
    with pytest.raises(ValueError, match="no image"):
        prune(model, dict(no_image), "resprune", 8)
    text_only = dict(no_image, pixel_values=inputs["pixel_values"])
    with pytest.raises(ValueError, match="no image placeholder"):
        prune(model, text_only, "resprune", 8)
    two = dict(inputs, pixel_values=torch.cat([inputs["pixel_values"]] * 2))
    msg = r"64 image placeholder tokens but the images give 64 \+ 64 = 128 features \(2 image"
    with pytest.raises(ValueError, match=msg):
        prune(model, two, "resprune", 8)
    with pytest.raises(ValueError, match="unknown method 'nope'; available"):
        prune(model, inputs, "nope", 8)
    with pytest.raises(ValueError, match="keep=0"):
        prune(model, inputs, "resprune", 0)
    with pytest.raises(
        ValueError,
        match="unsupported model class 'Linear'; supported: LlavaForConditionalGeneration, "
        "LlavaNextForConditionalGeneration, Qwen2_5_VLForConditionalGeneration",
    ):
        prune(torch.nn.Linear(2, 2), inputs, "resprune", 8)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = prune(model, inputs, "resprune", 1000, processor=proc)
    assert res.selections[0].keep == 64 and any("every token is kept" in str(x.message) for x in w)


def test_cls_needs_a_cls_tower():
    with pytest.raises(ValueError, match="needs cls_attention"):
        resprune.select(torch.randn(10, 4), 3, "cls")


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


def test_load_errors_name_the_model(tmp_path):
    with pytest.raises(resprune.ModelLoadError, match=r"'no/such-model'.*load_model\('scenes'\)"):
        resprune.load_model("no/such-model")
    with pytest.raises(resprune.ModelLoadError, match="could not load model"):
        resprune.load_model(str(tmp_path))
    from resprune.scenes.model import ScenesModelError, load_scenes_model

    with pytest.raises(ScenesModelError, match="folder not found"):
        load_scenes_model(tmp_path / "missing")
    bad = tmp_path / "ckpt"
    bad.mkdir()
    for f in (ROOT / "assets" / "scenes-model").iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ScenesModelError, match="model.safetensors"):
        load_scenes_model(bad)
    (bad / "config.json").unlink()
    with pytest.raises(ScenesModelError, match="'config.json'"):
        load_scenes_model(bad)


def test_vispruner_important_then_diverse():
    from resprune.methods.cls import select_cls, select_vispruner

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


def test_vispruner_uses_the_pre_projector_features(tiny_llava):
    """``prune`` hands VisPruner the CLIP features of the feature layer (before the projector), aligned with the
    projected tokens."""
    model, proc = tiny_llava
    inputs = _inputs(proc, _image())
    adapter = resprune.adapters.ADAPTERS["LlavaForConditionalGeneration"]
    internals = adapter.images(model, proc, inputs, None, frozenset({"cls_attention", "vision_features"}))[0].internals
    att, feats = internals["cls_attention"], internals["vision_features"]
    assert att.shape == (64,) and feats.shape == (64, model.config.vision_config.hidden_size)
    with torch.no_grad():
        projected = model.model.multi_modal_projector(feats[None])[0]
        ref = model.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output[0]
    torch.testing.assert_close(projected, ref.float())
    res = prune(model, inputs, "vispruner", 10, processor=proc)
    from resprune.methods.cls import select_vispruner

    direct = select_vispruner(res.visual_tokens[0], 10, cls_attention=att, vision_features=feats)
    assert torch.equal(res.selections[0].keep_idx, direct.keep_idx)


def test_visionzip_dominant_plus_contextual_merge():
    from resprune.methods.visionzip import select_visionzip

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


def test_visionzip_in_the_pipeline(tiny_llava):
    """LLaVA: the K merged vectors (projected) fill the first K image slots; the sequence is shorter by N - K; the
    first generated step equals a forward on the pruned sequence; the [CLS] vector is the projected CLS feature."""
    model, proc = tiny_llava
    inputs = _inputs(proc, _image())
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
