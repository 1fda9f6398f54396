"""The scene world: deterministic, exact masks, answers consistent with the objects; the shipped model loads."""

from __future__ import annotations

import numpy as np
import pytest

from resprune import scenes
from resprune.scenes.world import COLOURS, NUMBERS, SPLITS


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


@pytest.mark.parametrize("seed", range(40))
def test_answers_follow_from_the_objects(seed):
    s = scenes.sample(seed)
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


def test_existence_is_balanced():
    answers = [q.answer for i in range(400) for q in scenes.sample(i).questions if q.type == "exist"]
    assert 0.4 < answers.count("yes") / len(answers) < 0.6


def test_shipped_model_smoke_accuracy():
    """Regression guard on 200 test questions. The issue's target (>= 90 %) is NOT met by the shipped checkpoint
    (71.5 % on validation); this asserts well above chance so that a broken model or processor is caught."""
    import resprune
    from resprune.scenes.evaluate import accuracy

    model, proc = resprune.load_model("scenes")
    items = [(s.image, q) for s in scenes.test_scenes(60) for q in s.questions][:200]
    correct = accuracy(model, proc, items, batch=50)["all"][0]
    assert correct / len(items) >= 0.65, correct / len(items)  # measured: 75.5 %
