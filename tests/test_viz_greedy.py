"""viz.greedy: the step-through (heat = residual energy of the remaining tokens, the next pick labelled with its
index) and the GIF. Hand-built results from ``test_viz``."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence
from test_viz import (  # noqa: F401  (_no_open_pyplot_figures: the autouse fixture, active here too)
    GEOMETRIES,
    D,
    _grid,
    _no_open_pyplot_figures,
    image_for,
    llava_geometry,
    make_result,
    next_geometry,
    qwen_geometry,
    viz,
)

from resprune.types import Selection


def test_greedy_step_heat_is_residual_energy_of_remaining_tokens():
    geom = llava_geometry()
    res = make_result(geom, 6)
    sel = res.selections[0]
    fig = viz.plot_greedy_step(image_for(geom), res, 3)
    ax = fig.axes[0]
    assert "step 3 of 6" in ax.get_title()
    heat = ax.images[-1].get_array()  # (rows, cols) masked raster of the heat layer
    assert heat.mask.sum() > 0  # picked tokens are not painted
    e = viz.residual_energies(res.visual_tokens[0], sel.order[:3], steps=[3])[0]
    assert heat.max() == pytest.approx(float(e.max() / res.visual_tokens[0].pow(2).sum(1).max()), rel=1e-5)
    with pytest.raises(ValueError, match="step"):
        viz.plot_greedy_step(image_for(geom), res, 7)


def test_greedy_step_without_token_vectors_still_draws_picks():
    geom = qwen_geometry()
    res = make_result(geom, 5, with_tokens=False)
    fig = viz.plot_greedy_step(image_for(geom), res, 2)
    assert "tokens=" in fig.axes[0].get_title()
    tokens = torch.randn(geom.n_tokens, D)
    assert len(viz.plot_greedy_step(image_for(geom), res, 2, tokens=tokens).axes) == 2  # with a colour bar


@pytest.mark.parametrize(
    "name,keep,max_frames,expected",
    [
        ("llava", 6, None, 6),
        ("next", 9, 4, 4),
        ("qwen", 1, None, 1),
        ("llava", 0, None, 1),
    ],
)
def test_greedy_animation_one_frame_per_step(name, keep, max_frames, expected):
    geom = GEOMETRIES[name]()
    res = make_result(geom, keep)
    data = viz.greedy_animation(image_for(geom), res, max_frames=max_frames, dpi=40)
    assert isinstance(data, bytes)
    gif = Image.open(io.BytesIO(data))
    assert gif.format == "GIF"
    assert sum(1 for _ in ImageSequence.Iterator(gif)) == expected


@pytest.mark.parametrize("name", ["llava", "next", "qwen"])
def test_greedy_step_draws_the_index_its_title_names_on_that_patch(name):
    geom = GEOMETRIES[name]()
    res = make_result(geom, 6)
    sel = res.selections[0]
    for t in (0, 3):
        nxt = int(sel.order[t])
        ax = viz.plot_greedy_step(image_for(geom), res, t).axes[0]
        assert f"next pick: token #{nxt}" in ax.get_title()
        (label,) = [x for x in ax.texts if x.get_text().startswith("#")]
        assert label.get_text() == f"#{nxt}" and label.get_visible()
        offsets = {p.view: p.offset for p in _grid.panels(geom)}
        x0, y0, x1, y1 = _grid.boxes(geom)[nxt]
        dx = offsets[int(geom.view[nxt])]
        assert label.get_position() == pytest.approx(((x0 + x1) / 2 + dx, (y0 + y1) / 2))
    ax = viz.plot_greedy_step(image_for(geom), res, 6).axes[0]  # all picks made: no next pick to label
    assert "all picks made" in ax.get_title()
    assert not any(x.get_visible() and x.get_text().startswith("#") for x in ax.texts)


def test_greedy_step_says_when_the_next_pick_has_no_pixels():
    geom = next_geometry()
    newline = int(np.flatnonzero(_grid.newline_tokens(geom))[0])
    order = torch.tensor([0, newline, 12])
    sel = Selection(order.sort().values, order, torch.ones(3), torch.tensor([1.0, 0.6, 0.5, 0.4]), "manual", 37)
    res = dataclasses.replace(make_result(geom, 3), selections=(sel,))
    ax = viz.plot_greedy_step(image_for(geom), res, 1).axes[0]
    assert f"next pick: token #{newline} (a newline token: no pixels)" in ax.get_title()
    assert not any(x.get_visible() and x.get_text().startswith("#") for x in ax.texts)
    ax = viz.plot_greedy_step(image_for(geom), res, 2).axes[0]
    assert "next pick: token #12" in ax.get_title() and "no pixels" not in ax.get_title()
    (label,) = [x for x in ax.texts if x.get_text() == "#12"]
    assert label.get_visible()
