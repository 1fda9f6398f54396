"""The scene world: deterministic, exact masks, answers consistent with the objects; the shipped model loads."""

from __future__ import annotations

import random

import numpy as np
import pytest

from resprune import scenes
from resprune.scenes.world import COLOURS, NUMBERS, SPLITS

WORLD1_TEST0_SHA256 = "aebffd876c6ef20e616bfb0ba267d254d0689235d65e08d03d89e14c3b20d8cb"  # as before world 2 existed


def test_deterministic():
    a, b = scenes.sample(123), scenes.sample(123)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert [q.text for q in a.questions] == [q.text for q in b.questions]
    assert not np.array_equal(np.asarray(a.image), np.asarray(scenes.sample(124).image))


def test_splits_do_not_overlap():
    ranges = sorted(SPLITS.values())
    assert all(r0[1] <= r1[0] for r0, r1 in zip(ranges, ranges[1:]))
    assert list(scenes.split_seeds("test", 3)) == [SPLITS["test"][0] + i for i in range(3)]
    with pytest.raises(ValueError, match="split must be one of"):
        scenes.split_seeds("dev", 1)


@pytest.mark.parametrize("seed", range(20))
def test_masks_are_exact_and_disjoint(seed):
    s = scenes.sample(seed)
    pix = np.asarray(s.image).astype(int)
    union = np.zeros(pix.shape[:2], dtype=int)
    for o in s.objects:
        assert o.mask.shape == pix.shape[:2] and o.mask.sum() > 50
        union += o.mask
        colours = pix[o.mask]
        assert (colours == colours[0]).all()  # one flat colour per object
        ref = np.array(COLOURS[o.colour])
        assert np.abs(colours[0] - ref).max() < 0.12 * 255 + 1
        assert np.abs(pix[~o.mask & (union == 0)] - colours[0]).sum(1).min() > 0  # not painted elsewhere
    assert union.max() <= 1  # objects never overlap


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("seed", range(40))
def test_answers_follow_from_the_objects(seed, world):
    s = scenes.sample(seed, world=world)
    for q in s.questions:
        if q.type == "count":
            shape = q.text.split()[2][:-1]
            assert q.answer == NUMBERS[sum(o.shape == shape for o in s.objects)]
            assert all(o.shape == shape for o in q.objects)
        elif q.type == "colour":
            (o,) = q.objects
            assert q.answer == o.colour and f"the {o.shape}?" in q.text
        elif q.type == "shape":
            (o,) = q.objects
            assert q.answer == o.shape and o.colour in q.text
        elif q.type == "exist":
            present = any(f"{o.colour} {o.shape}" in q.text for o in s.objects)
            assert q.answer == ("yes" if present else "no") and bool(q.objects) == present
        elif q.type == "spatial":
            a, b = q.objects
            expect = {"left": a.x < b.x, "right": a.x > b.x, "above": a.y < b.y, "below": a.y > b.y}
            assert expect[q.answer]
        else:
            raise AssertionError(q.type)


def test_world_1_is_unchanged_and_world_2_deterministic():
    """World 1 stays bit-identical (the v1 model's world); world 2 is a pure function of the seed, and differs."""
    import hashlib

    v1 = hashlib.sha256(np.asarray(scenes.sample(20_000_000).image).tobytes()).hexdigest()
    assert v1 == WORLD1_TEST0_SHA256
    assert np.array_equal(np.asarray(scenes.sample(5, world=1).image), np.asarray(scenes.sample(5).image))
    a, b = scenes.sample(7, world=2), scenes.sample(7, world=2)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and [q.text for q in a.questions] == [
        q.text for q in b.questions
    ]
    assert not np.array_equal(np.asarray(a.image), np.asarray(scenes.sample(7).image))
    with pytest.raises(ValueError, match=r"world must be one of \(1, 2\)"):
        scenes.sample(1, world=3)


@pytest.mark.parametrize("seed", range(30))
def test_world_2_masks_are_the_visible_pixels(seed):
    """Overlaps allowed: masks are disjoint visible parts, each inside its object's shape, none occluded by more than
    MAX_OCCLUDED; its pixels carry the object's colour (shaded, lit) and the image is textured (not flat)."""
    from resprune.scenes.world import MAX_OCCLUDED, _shape_mask

    s = scenes.sample(20_000_000 + seed, world=2)
    pix = np.asarray(s.image).astype(float)
    union = np.zeros(pix.shape[:2], dtype=int)
    for o in s.objects:
        full = _shape_mask(o.shape, o.x, o.y, o.r)
        assert not (o.mask & ~full).any()  # visible pixels lie inside the shape
        assert o.mask.sum() >= (1 - MAX_OCCLUDED) * full.sum() - 1
        union += o.mask
        mean = pix[o.mask].mean(0)
        ref = np.array(COLOURS[o.colour], dtype=float)
        assert np.argmax(mean) == np.argmax(ref) or o.colour == "yellow"  # the dominant channel survives lighting
        assert np.abs(mean / max(mean.max(), 1) - ref / ref.max()).max() < 0.35
    assert union.max() <= 1
    background = pix[union == 0]
    assert background.std(0).mean() > 6  # textured: world 1's backgrounds vary by ~3 (noise only)
    assert 2 <= len(s.objects) <= 7


def test_world_2_has_overlaps_and_clutter():
    from resprune.scenes.world import _shape_mask

    overlapping = 0
    for seed in range(60):
        s = scenes.sample(20_000_000 + seed, world=2)
        overlapping += any((_shape_mask(o.shape, o.x, o.y, o.r) & ~o.mask).any() for o in s.objects)
    assert overlapping >= 5  # some scenes have occluded objects


def test_existence_is_balanced():
    answers = [q.answer for i in range(400) for q in scenes.sample(i).questions if q.type == "exist"]
    assert 0.4 < answers.count("yes") / len(answers) < 0.6


def test_patch_targets_follow_the_masks():
    from resprune.scenes.train import GRID, patch_targets

    for seed in range(10):
        s = scenes.sample(seed)
        tgt = patch_targets(s.objects)
        assert tgt.shape == (3, GRID * GRID)
        assert (tgt[2] > 0).sum() == len(s.objects)  # one centre token per object (objects are far apart)
        assert ((tgt[0] > 0) == (tgt[1] > 0)).all()


def test_token_positions_are_raster_order():
    from resprune.scenes.train import GRID, token_positions

    pos = token_positions()
    assert pos.shape == (GRID * GRID, 2)
    assert pos[0].tolist() == [-1.0, -1.0] and pos[-1].tolist() == [1.0, 1.0]
    assert pos[GRID - 1].tolist() == [1.0, -1.0]  # end of the first row: rightmost column, top row
    assert pos[GRID].tolist() == [-1.0, pos[GRID, 1].item()] and -1 < pos[GRID, 1] < 0


def test_no_count_question_has_no_number_word():
    """World 2 may hold six objects of one shape: no count question is asked then (the answers are zero-five)."""
    from resprune.scenes.world import SceneObject, questions

    six = tuple(
        SceneObject("circle", "red", "small", 20.0 + 25 * i, 40.0, 9.0, np.zeros((2, 2), bool)) for i in range(6)
    )
    counts = [q for k in range(30) for q in questions(six, random.Random(k)) if q.type == "count"]
    assert counts and all(q.answer == "zero" and "circles" not in q.text for q in counts)


@pytest.mark.parametrize("world", [1, 2])
def test_training_data_of_a_world_is_its_scenes(world):
    """The first question set of every training scene is exactly ``sample(seed, world)``'s; images are its image."""
    from resprune.scenes.train import make_dataset
    from resprune.scenes.world import SHAPES

    imgs, _, objs, dens, qsets = make_dataset("train", 6, workers=1, n_sets=2, world=world)
    for i, seed in enumerate(scenes.split_seeds("train", 6)):
        s = scenes.sample(seed, world=world)
        assert np.array_equal(imgs[i], np.asarray(s.image))
        assert [(q[0], q[1], q[2]) for q in qsets[i][0]] == [(q.text, q.answer, q.type) for q in s.questions]
        assert objs[i][: len(s.objects)].any(1).all() and not objs[i][len(s.objects) :].any()
        assert np.allclose(dens[i].sum(1), [sum(o.shape == sh for o in s.objects) for sh in SHAPES])
    assert any(qsets[i][1] != qsets[i][0] for i in range(6))  # the second set re-draws the choices


TINY_MODEL = ["--vision-width", "64", "--vision-layers", "1", "--text-width", "64", "--text-layers", "2"]


@pytest.mark.slow
def test_training_on_world_2_records_it_and_evaluate_uses_it(tmp_path, monkeypatch):
    """``--world 2`` trains on world-2 scenes, records the world in training.json, and ``evaluate`` then scores the
    checkpoint on world 2 unless told otherwise."""
    import json

    from resprune.scenes import evaluate as ev
    from resprune.scenes.model import trained_world
    from resprune.scenes.train import main

    small = ["--scenes", "8", "--val-scenes", "4", "--batch", "4", "--workers", "1", "--eval-every", "2", *TINY_MODEL]
    assert main(["--steps", "2", "--world", "2", "--out", str(tmp_path / "m"), *small]) == 0
    assert json.loads((tmp_path / "m" / "training.json").read_text())["world"] == 2
    assert trained_world(tmp_path / "m") == 2 and trained_world(tmp_path) == 1  # no training.json: world 1
    seen = []
    real = ev.test_scenes
    monkeypatch.setattr(ev, "test_scenes", lambda n, world: seen.append(world) or real(n, world))
    res = ev.evaluate(2, path=str(tmp_path / "m"))
    assert seen == [2] and res["all"][1] == sum(len(s.questions) for s in real(2, 2))
    ev.evaluate(2, path=str(tmp_path / "m"), world=1)
    assert seen == [2, 1]


def test_what_loss_asks_for_the_attended_objects_colour_and_shape():
    """The "what" targets are the shares of colours and shapes among the labelled patches each supervised head
    should look at (background patches ignored; a head without objects is left out), and the loss is their
    cross-entropy: log(4) + log(3) over 2 for a head that knows nothing; its gradient reaches only the queried
    positions of the supervised layer's output."""
    import math

    import torch

    from resprune.scenes.train import what_loss, what_targets

    tgt = torch.zeros(1, 3, 144, dtype=torch.long)
    tgt[0, 0, :4], tgt[0, 1, :4] = 1, 1  # patches 0-3: red circle
    tgt[0, 0, 10:12], tgt[0, 1, 10:12] = 3, 2  # patches 10-11: blue square
    rel = torch.zeros(2, 2, 144, dtype=torch.bool)
    rel[0, 0, [0, 1, 2, 3, 20]] = True  # patch 20 is background
    rel[0, 1, 10:12] = True
    rel[1, 0, [0, 1, 2, 3, 10, 11]] = True  # two objects: 4 red patches, 2 blue
    colour, shape = what_targets(rel, tgt[[0, 0]])
    assert colour.shape == (2, 2, 4) and shape.shape == (2, 2, 3)
    assert colour[0, 0].tolist() == [1, 0, 0, 0] and shape[0, 1].tolist() == [0, 1, 0]
    assert torch.allclose(colour[1, 0], torch.tensor([2 / 3, 0, 1 / 3, 0]))
    assert torch.allclose(shape[1, 0], torch.tensor([2 / 3, 1 / 3, 0]))
    assert colour[1, 1].sum() == 0 and shape[1, 1].sum() == 0
    head = torch.nn.Linear(8, 14)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    h = torch.randn(1, 6, 8, requires_grad=True)
    rows, pos = torch.tensor([0, 0]), torch.tensor([2, 5])
    loss = what_loss(head, h, rows, pos, rel, tgt)
    assert math.isclose(float(loss), (math.log(4) + math.log(3)) / 2, rel_tol=1e-6)
    torch.nn.init.normal_(head.weight)
    what_loss(head, h, rows, pos, rel, tgt).backward()
    touched = h.grad.abs().sum(-1)[0]
    assert (touched[[2, 5]] > 0).all() and touched[[0, 1, 3, 4]].eq(0).all()


def test_object_patches_mark_each_objects_one_centre_token():
    """``object_patches``: nonzero on an object's patches, ``CENTRE`` on exactly one of them, the patch of its
    centre (what the counting head is asked to look at)."""
    from resprune.scenes.train import CENTRE, PATCH, object_patches

    s = scenes.sample(20_000_007, world=2)
    obj = object_patches(s.objects)
    for i, o in enumerate(s.objects):
        assert (obj[i] == CENTRE).sum() == 1
        assert int(np.flatnonzero(obj[i] == CENTRE)[0]) == min(int(o.y) // PATCH, 11) * 12 + min(int(o.x) // PATCH, 11)
    assert not obj[len(s.objects) :].any()


@pytest.mark.parametrize("world", [1, 2])
def test_count_density_is_each_objects_share_of_its_visible_pixels(world):
    """``count_density``: per shape, each object's share of its visible pixels per patch, so a shape's row sums to
    its number of objects, even where world 2's objects overlap (an occluded object still counts once)."""
    from resprune.scenes.train import GRID, PATCH, count_density
    from resprune.scenes.world import SHAPES

    for seed in range(20_000_000, 20_000_030):
        s = scenes.sample(seed, world=world)
        d = count_density(s.objects)
        assert d.shape == (len(SHAPES), GRID * GRID) and d.dtype == np.float32 and (d >= 0).all()
        assert np.allclose(d.sum(1), [sum(o.shape == sh for o in s.objects) for sh in SHAPES], atol=1e-5)
        for o in s.objects:  # the patch holding most of an object holds its largest share
            c = o.mask.reshape(GRID, PATCH, GRID, PATCH).sum((1, 3)).reshape(-1)
            assert d[SHAPES.index(o.shape), c.argmax()] >= c.max() / c.sum() - 1e-6
        # masks are the visible pixels: no pixel is counted for two objects
        assert not any((a.mask & b.mask).any() for i, a in enumerate(s.objects) for b in s.objects[i + 1 :])


def test_density_loss_is_in_units_of_objects():
    """``density_loss``: zero for the exact density; otherwise the per-token squared errors summed over the tokens
    plus the squared error of the counts, averaged over images and shapes (``pred`` is `(B, 144, shapes)`)."""
    import torch

    from resprune.scenes.train import density_loss

    t = torch.zeros(1, 3, 144)
    t[0, 0, [3, 4]] = 0.5  # one circle over two patches
    assert float(density_loss(t.transpose(1, 2).clone(), t)) == 0
    pred = t.transpose(1, 2).clone()
    pred[0, 10, 1] = 1.0  # a square seen where there is none: per-token error 1, count error 1 for that shape
    assert abs(float(density_loss(pred, t)) - (1 / 3 + 1 / 3)) < 1e-6


def test_count_loss_is_the_cross_entropy_of_the_real_attention_with_equal_shares():
    """The counting head's target puts 1 / (n + 1) on <s> and on each counted object's centre token (all on <s> for
    n = 0), and ``count_loss`` is the cross-entropy of that target with head 0 of the supervised layer's attention,
    as the model's own eager attention computes it (not a re-derivation that could drift from it)."""
    import math

    import torch
    from transformers import LlavaForConditionalGeneration

    from resprune.scenes.model import build_config, build_processor
    from resprune.scenes.train import ATTN_HEADS, ATTN_LAYER, Encoder, count_loss, count_targets

    cen = torch.zeros(2, 144, dtype=torch.bool)
    cen[0, [5, 70]] = True
    t = count_targets(cen)
    assert t.shape == (2, 145) and torch.allclose(t[0, [0, 6, 71]], torch.tensor(1 / 3)) and t[0].sum() == 1
    assert t[1, 0] == 1 and t[1, 1:].eq(0).all()

    torch.manual_seed(0)
    proc = build_processor()
    cfg = build_config(proc.tokenizer, vision_width=64, vision_layers=1, text_width=64, text_layers=2)
    cfg.text_config._attn_implementation = "eager"
    model = LlavaForConditionalGeneration(cfg).eval()
    enc = Encoder(proc)
    ids = torch.tensor([enc.first_turn("How many circles are there?")] * 2)
    am = torch.ones_like(ids)
    x = torch.randn(*ids.shape, 64)  # the input embeddings (the layer's input is what layer 0 makes of them)
    rows, pos = torch.tensor([0, 1]), torch.tensor([ids.shape[1] - 1] * 2)
    lm = model.model.language_model
    out = lm(inputs_embeds=x, attention_mask=am, output_hidden_states=True, output_attentions=True)
    loss = count_loss(model, out.hidden_states[ATTN_LAYER], ids, am, rows, pos, cen)
    att = out.attentions[ATTN_LAYER][:, ATTN_HEADS[0], -1]  # (2, L): head 0 at the answer position
    img = (ids[0] == cfg.image_token_id).nonzero().squeeze(1)
    keys = torch.cat([torch.zeros(1, dtype=torch.long), img])
    ref = -(t * att[:, keys].log()).sum(-1).mean()
    assert math.isclose(float(loss), float(ref), rel_tol=1e-5)
    other = -(t * out.attentions[ATTN_LAYER][:, ATTN_HEADS[1], -1][:, keys].log()).sum(-1).mean()
    assert not math.isclose(float(loss), float(other), rel_tol=1e-3)  # it is head 0's, not another head's


@pytest.mark.slow
def test_training_script_runs_and_chains_stages(tmp_path):
    """Two tiny stages: the second starts from the first (``--init``, without repeating the model's widths), its log
    continues the step count and its training.json records both commands in order."""
    import csv
    import json

    from transformers import LlavaForConditionalGeneration

    from resprune.scenes.train import main

    small = ["--scenes", "12", "--val-scenes", "4", "--batch", "4", "--workers", "1", "--eval-every", "2"]
    assert main(["--steps", "2", "--out", str(tmp_path / "s1"), *small, *TINY_MODEL]) == 0
    # stage 2 does not repeat the widths: its training heads take them from the checkpoint
    stage2 = ["--steps", "4", "--out", str(tmp_path / "s2"), "--init", str(tmp_path / "s1")]
    more = ["--pos-weight", "10", "--where-weight", "10", "--what-weight", "1", "--count-weight", "1"]
    assert main([*stage2, *more, *small]) == 0
    with open(tmp_path / "s2" / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["step"]), int(r["stage"])) for r in rows] == [(2, 1), (4, 2), (6, 2)]
    assert float(rows[0]["where_loss"]) == 0 and all(float(r["where_loss"]) > 0 for r in rows[1:])
    assert float(rows[0]["what_loss"]) == 0 and all(float(r["what_loss"]) > 0 for r in rows[1:])
    assert all(float(r["attn_loss"]) > 0 for r in rows)
    assert rows[0]["count_loss"] == "" and all(float(r["count_loss"]) > 0 for r in rows[1:])
    meta = json.loads((tmp_path / "s2" / "training.json").read_text())
    assert meta["stages"][0].get("count_weight", 0) == 0 and meta["count_weight"] == 1
    assert meta["stage"] == 2 and [s["stage"] for s in meta["stages"]] == [1, 2]
    assert [(s["pos_weight"], s["where_weight"]) for s in meta["stages"]] == [(0.0, 0.0), (10.0, 10.0)]
    assert [s["what_weight"] for s in meta["stages"]] == [0.0, 1.0]
    assert "--init" not in meta["stages"][0]["command"] and "--init" in meta["stages"][1]["command"]
    assert (tmp_path / "s2" / "learning_curve.png").stat().st_size > 0
    m1 = LlavaForConditionalGeneration.from_pretrained(tmp_path / "s1")
    m2 = LlavaForConditionalGeneration.from_pretrained(tmp_path / "s2")
    assert m2.config.text_config.num_hidden_layers == 2  # the architecture came from the first stage
    assert m2.config.text_config.hidden_size == 64
    assert not all(a.equal(b) for a, b in zip(m1.parameters(), m2.parameters()))  # and was trained further


@pytest.mark.slow
def test_vision_phase_trains_only_the_vision_side_first(tmp_path):
    """``--vision-steps``: a first phase changes the vision tower and projector (the dense head learns the patches'
    targets: its loss falls) while the language model waits; it is logged in training.json, and without it
    training is exactly as before."""
    import json

    import torch
    from transformers import LlavaForConditionalGeneration

    from resprune.scenes.train import N_AUX, main, make_dataset, vision_stage

    small = ["--scenes", "8", "--val-scenes", "2", "--batch", "2", "--workers", "1", "--eval-every", "1000"]
    small += [*TINY_MODEL, "--threads", "1", "--lr", "0.01"]
    threads = torch.get_num_threads()
    try:
        assert main(["--steps", "1", "--out", str(tmp_path / "plain"), *small]) == 0
        assert main(["--steps", "1", "--out", str(tmp_path / "again"), *small]) == 0
        vis = ["--vision-steps", "20", "--vision-batch", "4"]
        assert main(["--steps", "1", *vis, "--out", str(tmp_path / "vis"), *small]) == 0
    finally:
        torch.set_num_threads(threads)
    plain, again, vis = (
        dict(LlavaForConditionalGeneration.from_pretrained(tmp_path / n).named_parameters())
        for n in ("plain", "again", "vis")
    )
    assert all(plain[k].equal(again[k]) for k in plain)  # the default is unchanged and deterministic
    vision_side = [k for k in plain if "vision_tower" in k or "multi_modal_projector" in k]
    assert vision_side and any(not plain[k].equal(vis[k]) for k in vision_side)
    meta = json.loads((tmp_path / "vis" / "training.json").read_text())
    rows = meta["vision_phase"]
    assert meta["vision_steps"] == 20 and [r["vision_step"] for r in rows] == list(range(2, 21, 2))
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert all(0 <= r["val_patch_shape"] <= 1 and 0 <= r["val_patch_colour"] <= 1 for r in rows)
    # the phase itself leaves the language model as it was
    model = LlavaForConditionalGeneration.from_pretrained(tmp_path / "plain")
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    d = model.config.text_config.hidden_size
    aux = torch.nn.ModuleDict({"tokens": torch.nn.Linear(d, sum(N_AUX))})
    imgs, tgt, _, _, _ = make_dataset("train", 4, 1, 1, 1)
    imgs, tgt = torch.from_numpy(imgs), torch.from_numpy(tgt.astype("int64"))
    vision_stage(model, aux, imgs, tgt, (imgs, tgt), 3, 2, 0.01, 0)
    changed = {k for k, v in model.named_parameters() if not v.equal(before[k])}
    assert changed and all("vision_tower" in k or "multi_modal_projector" in k for k in changed)


@pytest.mark.slow
def test_density_target_and_uniform_counting_head_reach_the_model(tmp_path):
    """``--density-weight``: the vision phase also learns the counting density (its rows report the share of counts
    the summed density gets right, and the tower differs from a run without it); ``--count-attention uniform``
    gives the counting head a different target from ``centres`` (a different language model), and both are
    recorded in training.json."""
    import csv
    import json

    import torch
    from transformers import LlavaForConditionalGeneration

    from resprune.scenes.train import main

    small = ["--scenes", "8", "--val-scenes", "4", "--batch", "2", "--workers", "1", "--eval-every", "2", "--world"]
    small += ["2", *TINY_MODEL, "--threads", "1", "--lr", "0.01", "--vision-steps", "6", "--vision-batch", "4"]
    small += ["--freeze-vision"]
    threads = torch.get_num_threads()
    try:
        assert main(["--steps", "2", "--out", str(tmp_path / "plain"), *small]) == 0
        counting = ["--steps", "2", "--density-weight", "1", "--count-weight", "1"]
        assert main([*counting, "--count-attention", "uniform", "--out", str(tmp_path / "uni"), *small]) == 0
        assert main([*counting, "--out", str(tmp_path / "cen"), *small]) == 0
    finally:
        torch.set_num_threads(threads)
    plain, uni, cen = (
        dict(LlavaForConditionalGeneration.from_pretrained(tmp_path / n).named_parameters())
        for n in ("plain", "uni", "cen")
    )
    tower = [k for k in plain if "vision_tower" in k]
    assert any(not plain[k].equal(uni[k]) for k in tower)  # the density target changed the vision phase
    assert all(uni[k].equal(cen[k]) for k in tower)  # the same phase for both counting heads
    assert any(not uni[k].equal(cen[k]) for k in uni if "language_model" in k)  # different counting targets
    meta = json.loads((tmp_path / "uni" / "training.json").read_text())
    assert (meta["density_weight"], meta["count_attention"], meta["count_weight"]) == (1.0, "uniform", 1.0)
    assert all(0 <= r["val_patch_count"] <= 1 for r in meta["vision_phase"])
    assert "val_patch_count" not in json.loads((tmp_path / "plain" / "training.json").read_text())["vision_phase"][0]
    with open(tmp_path / "uni" / "train_log.csv", newline="") as f:
        assert all(float(r["count_loss"]) > 0 for r in csv.DictReader(f))


def test_freeze_vision_keeps_the_tower_of_the_vision_phase(tmp_path):
    """``--freeze-vision``: after the vision phase the tower stays as that phase left it (1 or 3 later steps: the
    same tower) while the projector and the language model go on learning; without the flag the tower moves on;
    it is recorded in training.json, and without a trained tower to keep it is an argparse error."""
    import json

    import torch
    from transformers import LlavaForConditionalGeneration

    from resprune.scenes.train import main

    small = ["--scenes", "8", "--val-scenes", "2", "--batch", "2", "--workers", "1", "--eval-every", "1000"]
    small += [*TINY_MODEL, "--threads", "1", "--lr", "0.01", "--vision-steps", "4", "--vision-batch", "4"]
    threads = torch.get_num_threads()
    try:
        assert main(["--steps", "1", "--freeze-vision", "--out", str(tmp_path / "f1"), *small]) == 0
        assert main(["--steps", "3", "--freeze-vision", "--out", str(tmp_path / "f3"), *small]) == 0
        assert main(["--steps", "3", "--out", str(tmp_path / "u3"), *small]) == 0
        with pytest.raises(SystemExit):
            main(["--steps", "1", "--freeze-vision", "--vision-steps", "0", "--out", str(tmp_path / "bad")])
    finally:
        torch.set_num_threads(threads)
    f1, f3, u3 = (
        dict(LlavaForConditionalGeneration.from_pretrained(tmp_path / n).named_parameters()) for n in ("f1", "f3", "u3")
    )
    tower = [k for k in f1 if "vision_tower" in k]
    assert tower and all(f1[k].equal(f3[k]) for k in tower)
    assert any(not f1[k].equal(f3[k]) for k in f1 if "multi_modal_projector" in k)
    assert any(not f1[k].equal(f3[k]) for k in f1 if "language_model" in k)
    assert any(not f3[k].equal(u3[k]) for k in tower)
    assert json.loads((tmp_path / "f3" / "training.json").read_text())["freeze_vision"] is True
    assert json.loads((tmp_path / "u3" / "training.json").read_text())["freeze_vision"] is False


@pytest.mark.slow
def test_training_switches_the_position_losses_on_part_way(tmp_path):
    """``--position-from 0.5``: the object-centre loss is off for the first half of the schedule and on after it."""
    import csv
    import json

    from resprune.scenes.train import main

    small = ["--scenes", "12", "--val-scenes", "4", "--batch", "4", "--workers", "1", "--eval-every", "1"]
    small += TINY_MODEL
    args = ["--steps", "4", "--pos-weight", "10", "--where-weight", "10", "--position-from", "0.5"]
    assert main([*args, "--out", str(tmp_path / "m"), *small]) == 0
    with open(tmp_path / "m" / "train_log.csv", newline="") as f:
        where = [float(r["where_loss"]) for r in csv.DictReader(f)]
    assert len(where) == 4 and where[:2] == [0.0, 0.0] and all(w > 0 for w in where[2:]), where
    meta = json.loads((tmp_path / "m" / "training.json").read_text())
    assert meta["position_from"] == 0.5 and meta["steps"] == 4
    with pytest.raises(SystemExit):  # argparse's error, which names the flag
        main(["--position-from", "1.5", "--out", str(tmp_path / "bad")])


@pytest.mark.slow
def test_budget_steps_replays_a_time_budget_schedule(tmp_path):
    """``--budget-steps N`` (the replay of a ``--time-budget`` run that fixed its schedule at N steps at step 60) is
    deterministic and is not the same schedule as ``--steps N`` (whose warm-up and cosine know N from step 0)."""
    import json

    import torch
    from transformers import LlavaForConditionalGeneration

    from resprune.scenes.train import main

    small = ["--scenes", "8", "--val-scenes", "2", "--batch", "2", "--workers", "1", "--eval-every", "1000"]
    small += TINY_MODEL
    small += ["--threads", "1"]  # bit-exact: with two threads, CPU reductions may sum in a different order
    threads = torch.get_num_threads()
    try:
        for name, args in (
            ("a", ["--steps", "100", "--budget-steps", "64"]),
            ("b", ["--steps", "100", "--budget-steps", "64"]),
            ("c", ["--steps", "64"]),
        ):
            assert main([*args, "--out", str(tmp_path / name), *small]) == 0
    finally:
        torch.set_num_threads(threads)
    a, b, c = (LlavaForConditionalGeneration.from_pretrained(tmp_path / n) for n in "abc")
    assert all(x.equal(y) for x, y in zip(a.parameters(), b.parameters()))
    assert not all(x.equal(y) for x, y in zip(a.parameters(), c.parameters()))
    assert json.loads((tmp_path / "a" / "training.json").read_text())["steps"] == 64
    for bad in (
        ["--budget-steps", "30"],
        ["--budget-steps", "64", "--time-budget", "10"],
        ["--steps", "50", "--time-budget", "10"],
    ):
        with pytest.raises(SystemExit):
            main([*bad, "--out", str(tmp_path / "bad")])


@pytest.fixture(scope="module")
def shipped():
    from resprune.scenes.model import DEFAULT_DIR, load_scenes_model

    return load_scenes_model(DEFAULT_DIR)


@pytest.fixture(scope="module", params=["scenes", "scenes-v2"])
def bundled(request):
    """Each scenes model shipped in the repository, its processor and the scene world it was trained on."""
    from resprune.loading import PRESETS, preset_path
    from resprune.scenes.model import load_scenes_model, trained_world

    path = preset_path(request.param)
    assert trained_world(path) == PRESETS[request.param].world
    return (*load_scenes_model(path), PRESETS[request.param].world)


def test_shipped_checkpoint_loads_with_plain_from_pretrained():
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    from resprune.scenes.model import DEFAULT_DIR

    model = LlavaForConditionalGeneration.from_pretrained(DEFAULT_DIR, local_files_only=True)
    proc = LlavaProcessor.from_pretrained(DEFAULT_DIR, local_files_only=True)
    cfg = model.config
    assert (cfg.vision_feature_layer, cfg.vision_feature_select_strategy) == (-2, "default")
    assert (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2 == 144
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}]
    assert proc.apply_chat_template(msgs, add_generation_prompt=True) == "USER: <image>\nQ? ASSISTANT:"


def test_shipped_model_smoke_accuracy(bundled):
    """200 fixed test questions of each shipped model's world, batched greedy decoding, held to the models' targets:
    >= 95 % overall and >= 90 % per question type (measured: v1 200 / 200, v2 197 / 200 with counts 41 / 44; on
    the full 1,000 test scenes v2's counts are at 89.3 %, below the target: see its model card)."""
    from resprune.scenes.evaluate import accuracy

    model, proc, world = bundled
    items = [(s.image, q) for s in scenes.test_scenes(60, world) for q in s.questions][:200]
    res = accuracy(model, proc, items, batch=100)
    assert res["all"][0] / len(items) >= 0.95, res
    assert all(c / n >= 0.90 for t, (c, n) in res.items() if t != "all"), res


def test_out_of_vocabulary_question_still_answers(shipped):
    import torch

    model, proc = shipped
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the zebra?"}]}]
    inputs = proc(
        images=scenes.sample(5).image,
        text=proc.apply_chat_template(msgs, add_generation_prompt=True),
        return_tensors="pt",
    )
    assert (inputs["input_ids"] != proc.tokenizer.unk_token_id).all()  # byte fallback: no <unk>
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    answer = proc.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert isinstance(answer, str)


def test_missing_or_corrupt_checkpoint_names_the_file(tmp_path):
    from resprune.scenes.model import DEFAULT_DIR, load_scenes_model

    with pytest.raises(FileNotFoundError, match="folder not found"):
        load_scenes_model(tmp_path / "nowhere")
    ck = tmp_path / "ck"
    ck.mkdir()
    for f in DEFAULT_DIR.iterdir():
        if f.suffix in (".json", ".jinja", ".safetensors"):
            (ck / f.name).write_bytes(f.read_bytes())
    (ck / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="'config.json'"):
        load_scenes_model(ck)
    (ck / "config.json").write_bytes((DEFAULT_DIR / "config.json").read_bytes())
    (ck / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="'model.safetensors'"):
        load_scenes_model(ck)
    (ck / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="'model.safetensors'"):
        load_scenes_model(ck)


def test_token_statistics_of_the_worlds(capsys):
    """python -m resprune.scenes.stats: effective rank and residual energies per world; world 2's raw patches are
    less degenerate than world 1's (more energy left at 25 % kept, higher effective rank)."""
    from resprune.scenes import stats

    s1, s2 = stats.run(12, 1, with_model=False), stats.run(12, 2, with_model=False)
    assert s2["pixels"]["residual_at_25"] > 2 * s1["pixels"]["residual_at_25"]
    assert s2["pixels"]["effective_rank"] > s1["pixels"]["effective_rank"]
    m = stats.run(3, 2, with_model=True)["model"]
    assert 1 <= m["effective_rank"] <= 128 and 0 <= m["residual_at_50"] <= m["residual_at_25"] <= 1
    assert 0 <= m["relevance_auc"] <= 1 and m["relevance_auc_questions"] >= 1
    assert stats.main(["--n", "2", "--world", "2", "--no-model"]) == 0
    assert "| 2 | pixels |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        stats.main(["--n", "0"])
