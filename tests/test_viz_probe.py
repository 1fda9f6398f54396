"""viz.token_at: the token under a pixel of the original image or of a rendered figure, and its facts.
Hand-built results from ``test_viz``; real LLaVA-NeXT / Qwen2.5-VL geometry is covered there."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_viz import (  # noqa: F401  (_no_open_pyplot_figures: the autouse fixture, active here too)
    GEOMETRIES,
    VIEW_BASE,
    VIEW_HIRES,
    _grid,
    _no_open_pyplot_figures,
    _one_token,
    llava_geometry,
    make_result,
    next_geometry,
    viz,
)


@pytest.mark.parametrize("name", ["llava", "qwen", "llava_pad"])
def test_token_at_box_centres_and_outside(name):
    geom = GEOMETRIES[name]()
    res = make_result(geom, 6)
    sel = res.selections[0]
    b = _grid.boxes(geom)
    order = sel.order.tolist()
    for i in range(geom.n_tokens):
        cx, cy = (b[i, 0] + b[i, 2]) / 2, (b[i, 1] + b[i, 3]) / 2
        info = viz.token_at(res, int(cx), int(cy))  # the pixel holding the centre
        assert info["index"] == i and info["row"] == int(geom.row[i]) and info["col"] == int(geom.col[i])
        assert info["box"] == pytest.approx(tuple(b[i]))
        assert info["kept"] == (i in sel.keep_idx.tolist())
        assert info["pick"] == (order.index(i) + 1 if i in order else None)
        assert info["relevance"] == pytest.approx(float(sel.relevance[i]))
    w, h = geom.image_size
    x1, y1 = b[:, 2].max(), b[:, 3].max()
    assert viz.token_at(res, x1 + 1, 5) is None and viz.token_at(res, 5, y1 + 1) is None
    assert viz.token_at(res, b[:, 0].min() - 2, 5) is None


def test_token_at_energies():
    geom = llava_geometry()
    res = make_result(geom, 6)
    sel = res.selections[0]
    tokens = res.visual_tokens[0]
    b = _grid.boxes(geom)
    first, third = int(sel.order[0]), int(sel.order[2])
    info = viz.token_at(res, b[third, 0] + 1, b[third, 1] + 1)
    assert info["pick"] == 3 and info["energy_at_pick"] == pytest.approx(float(sel.energy[2]), rel=1e-5)
    assert info["energy_left"] == 0.0
    assert viz.token_at(res, b[first, 0], b[first, 1])["energy_at_pick"] == pytest.approx(
        float(tokens[first].pow(2).sum()), rel=1e-5
    )  # the first pick's residual is the whole token
    pruned = next(i for i in range(24) if i not in sel.keep_idx.tolist())
    info = viz.token_at(res, b[pruned, 0] + 1, b[pruned, 1] + 1)
    e = viz.residual_energies(tokens, sel.order, steps=[6])[0, pruned] / tokens[pruned].double().pow(2).sum()
    assert info["pick"] is None and info["energy_at_pick"] is None
    assert info["energy_left"] == pytest.approx(float(e))
    bare = make_result(geom, 6, with_tokens=False)
    info = viz.token_at(bare, b[pruned, 0] + 1, b[pruned, 1] + 1)
    assert info["energy_left"] is None and info["relevance"] is not None  # resprune recorded its relevance
    free = make_result(geom, 6, "divprune", with_tokens=False, with_query=False)  # records neither
    info = viz.token_at(free, b[first, 0] + 1, b[first, 1] + 1)
    assert info["relevance"] is None and info["energy_left"] is None


def test_token_at_multi_view_prefers_the_finer_token_unless_a_view_is_named():
    geom = next_geometry()
    res = make_result(geom, 5)
    info = viz.token_at(res, 40, 25)  # base cell (1, 1): 30..60 x 20..40; hi-res cell (1, 2): 30..45 x 15..30
    assert info["view"] == "high-res crops" and (info["row"], info["col"]) == (1, 2)
    base = viz.token_at(res, 40, 25, view=VIEW_BASE)
    assert base["view"] == "base view" and (base["row"], base["col"]) == (1, 1) and base["index"] == 4


def test_token_at_on_a_rendered_figure_maps_the_highlighted_box_back_to_its_token():
    """Independent of the recorded panel map: find the one kept box (full-brightness grey 220, the rest dimmed, the
    figure's background white) in the rendered pixels and click its centre."""
    geom = llava_geometry()
    grey = Image.new("RGB", geom.image_size, (220, 220, 220))
    for i in (0, 9, 23):
        one = _one_token(make_result(geom, 1), i)
        img = viz.to_image(viz.plot_kept_tokens(grey, one))
        px = np.asarray(img).astype(float)
        ys, xs = np.nonzero((np.abs(px - 220) < 8).all(-1))
        assert ys.size > 100
        info = viz.token_at(one, int(np.median(xs)), int(np.median(ys)), figure=img)
        assert info is not None and info["index"] == i and info["kept"] and info["pick"] == 1
        assert viz.token_at(one, 1, 1, figure=img) is None  # the white margin: no panel


def test_token_at_bad_input():
    geom = llava_geometry()
    res = make_result(geom, 3)
    with pytest.raises(TypeError, match="x must be a number"):
        viz.token_at(res, "3", 4)
    with pytest.raises(TypeError, match="y must be a number"):
        viz.token_at(res, 3, True)
    with pytest.raises(ValueError, match="y must be finite"):
        viz.token_at(res, 3, float("nan"))
    with pytest.raises(ValueError, match="view must be one of"):
        viz.token_at(res, 3, 4, view=VIEW_HIRES)
    with pytest.raises(ValueError, match="figure has no token panels"):
        viz.token_at(res, 3, 4, figure=Image.new("RGB", (10, 10)))
    with pytest.raises(TypeError, match="figure must be the PIL image"):
        viz.token_at(res, 3, 4, figure=np.zeros((4, 4)))
    with pytest.raises(IndexError, match="index=2"):
        viz.token_at(res, 3, 4, index=2)


def test_token_at_on_a_rendered_method_grid_maps_each_panel():
    """Two panels, each keeping one (different) token: a click on either bright box maps to that panel's token."""
    geom = llava_geometry()
    grey = Image.new("RGB", geom.image_size, (220, 220, 220))
    results = {"a": _one_token(make_result(geom, 1), 7), "b": _one_token(make_result(geom, 1), 16)}
    img = viz.to_image(viz.plot_method_grid(grey, results, ncols=2))
    px = np.asarray(img).astype(float)
    ys, xs = np.nonzero((np.abs(px - 220) < 8).all(-1))
    left = xs < img.size[0] / 2
    for side, (name, i) in zip((left, ~left), (("a", 7), ("b", 16))):
        x, y = int(np.median(xs[side])), int(np.median(ys[side]))
        assert viz.token_at(results[name], x, y, figure=img)["index"] == i
    assert len(img.info["viz_panels"]) == 2
