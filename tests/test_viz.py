"""viz: geometry (``_grid``), the drawing machinery and ``to_image`` (``_canvas``) and the figures (``figures``),
from hand-built PruneResults (LLaVA-like 4x6 grid, cropped / padded variants, LLaVA-NeXT-like views, Qwen-like odd
grid) and from tiny real models. The hand-built cases here are shared by ``test_viz_greedy`` and ``test_viz_probe``.

Checks invariants and artists, and pixels where alignment is the point (a kept box brighter than the rest, the blank
top band).
"""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
import warnings
from pathlib import Path

import matplotlib
import matplotlib.text
import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import resprune  # noqa: E402
import viz  # noqa: E402
from resprune.types import VIEW_BASE, VIEW_HIRES, VIEW_NEWLINE, PruneResult, Selection, TokenGeometry  # noqa: E402
from viz import _grid  # noqa: E402

D = 16


# ---------------------------------------------------------------------------------------------------------------
# Hand-built geometries


def _grid_part(rows: int, cols: int, x0: float, y0: float, cw: float, ch: float, view: int, newline: bool = False):
    """Token rows of one view: (view, row, col, box) lists, raster order, optional newline token after each row."""
    out = []
    for r in range(rows):
        for c in range(cols):
            out.append((view, r, c, (x0 + c * cw, y0 + r * ch, x0 + (c + 1) * cw, y0 + (r + 1) * ch)))
        if newline:
            out.append((VIEW_NEWLINE, r, -1, (float("nan"),) * 4))
    return out


def _geometry(parts: list, image_size: tuple[int, int], grids: dict) -> TokenGeometry:
    return TokenGeometry(
        view=torch.tensor([p[0] for p in parts]),
        row=torch.tensor([p[1] for p in parts]),
        col=torch.tensor([p[2] for p in parts]),
        box=torch.tensor([p[3] for p in parts], dtype=torch.float32),
        image_size=image_size,
        grids=grids,
    )


def llava_geometry() -> TokenGeometry:
    """4 x 6 grid of 20-px cells over a 120 x 80 image."""
    return _geometry(_grid_part(4, 6, 0, 0, 20, 20, VIEW_BASE), (120, 80), {VIEW_BASE: (4, 6)})


def llava_crop_geometry() -> TokenGeometry:
    """The processor cropped a 150 x 80 image to its central 120 x 80: tokens cover only part of it."""
    return _geometry(_grid_part(4, 6, 15, 0, 20, 20, VIEW_BASE), (150, 80), {VIEW_BASE: (4, 6)})


def llava_pad_geometry() -> TokenGeometry:
    """The processor padded a 120 x 60 image to 120 x 80: boxes run 10 px past the top and bottom."""
    return _geometry(_grid_part(4, 6, 0, -10, 20, 20, VIEW_BASE), (120, 60), {VIEW_BASE: (4, 6)})


def next_geometry() -> TokenGeometry:
    """LLaVA-NeXT-like: a 3 x 3 base view, then 4 x 6 high-res tokens with a newline token after each row."""
    parts = _grid_part(3, 3, 0, 0, 30, 20, VIEW_BASE) + _grid_part(4, 6, 0, 0, 15, 15, VIEW_HIRES, newline=True)
    return _geometry(parts, (90, 60), {VIEW_BASE: (3, 3), VIEW_HIRES: (4, 6)})


def qwen_geometry() -> TokenGeometry:
    """Qwen-like: a 5 x 7 grid of merged patches over an odd-sized 71 x 53 image (fractional boxes)."""
    return _geometry(_grid_part(5, 7, 0, 0, 71 / 7, 53 / 5, VIEW_BASE), (71, 53), {VIEW_BASE: (5, 7)})


GEOMETRIES = {
    "llava": llava_geometry,
    "llava_crop": llava_crop_geometry,
    "llava_pad": llava_pad_geometry,
    "next": next_geometry,
    "qwen": qwen_geometry,
}


def empty_selection(n: int, method: str = "resprune") -> Selection:
    z = torch.zeros(0, dtype=torch.int64)
    return Selection(z, z, torch.zeros(0), torch.ones(1), method, n)


def make_result(
    geom: TokenGeometry,
    keep: int,
    method: str = "resprune",
    *,
    seed: int = 0,
    with_tokens: bool = True,
    with_query: bool = True,
) -> PruneResult:
    g = torch.Generator().manual_seed(seed)
    n = geom.n_tokens
    tokens = torch.randn(n, D, generator=g)
    query = torch.randn(2, D, generator=g) if with_query else None
    if keep == 0:
        sel = empty_selection(n, method)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # keep >= N warns by design
            sel = resprune.select(tokens, keep, method, query=query)
    return PruneResult(
        generate_kwargs={},
        selections=(sel,),
        geometry=(geom,),
        query_words=(("red", "circle") if with_query else (),),
        query_tokens=(query,),
        stats={},
        method=method,
        visual_tokens=(tokens,) if with_tokens else (),
    )


def image_for(geom: TokenGeometry, mode: str = "RGB") -> Image.Image:
    w, h = geom.image_size
    rng = np.random.default_rng(0)
    a = (rng.random((h, w, 3)) * 155 + 100).astype(np.uint8)
    im = Image.fromarray(a)
    if mode == "RGBA":
        im = im.convert("RGBA")
        im.putalpha(180)
    elif mode != "RGB":
        im = im.convert(mode)
    return im


@pytest.fixture(autouse=True)
def _no_open_pyplot_figures():
    """No viz call may leave a pyplot figure open (viz never touches pyplot)."""
    import matplotlib.pyplot as plt

    yield
    assert plt.get_fignums() == []


def _all_figures(image, result):
    k = result.selections[0].keep
    other = make_result(result.geometry[0], max(k, 1), "divprune", seed=1)
    return {
        "kept": viz.plot_kept_tokens(image, result, order_numbers=True, answer="a red circle"),
        "energy": viz.plot_residual_energy(result, {"divprune": other, "sel": other.selections[0]}),
        "relevance": viz.plot_relevance(image, result),
        "step": viz.plot_greedy_step(image, result, k // 2),
        "grid": viz.plot_method_grid(image, {"a": result, "b": other}, answers={"a": "red", "b": "blue"}),
    }


def _render(fig: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())


def _one_token(res: PruneResult, i: int) -> PruneResult:
    sel = Selection(
        torch.tensor([i]),
        torch.tensor([i]),
        torch.ones(1),
        torch.tensor([1.0, 0.5]),
        "manual",
        res.selections[0].n_tokens,
    )
    return dataclasses.replace(res, selections=(sel,))


# ---------------------------------------------------------------------------------------------------------------
# Geometry helpers


def test_panels_one_per_view_and_extents():
    ps = _grid.panels(next_geometry())
    assert [p.view for p in ps] == [VIEW_BASE, VIEW_HIRES]
    assert [p.tokens.size for p in ps] == [9, 24]  # newline tokens have no panel
    assert ps[1].offset > ps[0].extent[2]  # side by side, no overlap
    (pad,) = _grid.panels(llava_pad_geometry())
    assert pad.extent == (0, -10, 120, 70)  # union of the image and the boxes past it
    (crop,) = _grid.panels(llava_crop_geometry())
    assert crop.extent == (0, 0, 150, 80)


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_token_index_map_tiles_each_box(name):
    geom = GEOMETRIES[name]()
    b = _grid.boxes(geom)
    for p in _grid.panels(geom):
        shape = _grid.canvas_scale(p, 200)
        m = _grid.token_index_map(geom, p, shape)
        assert set(np.unique(m[m >= 0])) == set(p.tokens.tolist())  # every token of the view is drawn
        sy, sx = shape[0] / p.height, shape[1] / p.width
        for i in p.tokens:  # the centre of each box maps to that token
            cx, cy = (b[i, 0] + b[i, 2]) / 2, (b[i, 1] + b[i, 3]) / 2
            assert m[int((cy - p.extent[1]) * sy), int((cx - p.extent[0]) * sx)] == i


def test_box_vertices_skip_newlines_and_shift_views():
    geom = next_geometry()
    offsets = {p.view: p.offset for p in _grid.panels(geom)}
    newline = int(np.flatnonzero(_grid.newline_tokens(geom))[0])
    v = _grid.box_vertices(geom, np.array([0, 9, newline]), offsets)
    assert v.shape == (2, 4, 2)
    assert v[1, 0, 0] == pytest.approx(offsets[VIEW_HIRES])  # hi-res token 9 is the first cell of its panel


def test_relevant_tokens_and_recall():
    geom = llava_geometry()
    mask = np.zeros((80, 120), dtype=bool)
    mask[0:20, 0:20] = True  # all of token 0
    mask[0:20, 20:25] = True  # a quarter of token 1
    mask[20:22, 0:20] = True  # a tenth of token 6
    rel = _grid.relevant_tokens(geom, mask, min_overlap=0.25)
    assert torch.nonzero(rel).flatten().tolist() == [0, 1]
    sel = make_result(geom, 3).selections[0]
    kept = set(sel.keep_idx.tolist())
    assert _grid.token_recall(sel, rel) == pytest.approx(len(kept & {0, 1}) / 2)
    assert np.isnan(_grid.token_recall(sel, torch.zeros(24, dtype=torch.bool)))


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA", "P", "I;16"])
def test_to_rgb_modes(mode):
    a = _grid.to_rgb(image_for(llava_geometry(), mode))
    assert a.shape == (80, 120, 3) and a.dtype == np.float32 and 0 <= a.min() <= a.max() <= 1


def test_to_rgb_arrays():
    assert _grid.to_rgb(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)
    assert _grid.to_rgb(np.ones((4, 5, 4), np.float32)).max() == 1.0
    with pytest.raises(ValueError, match="shape"):
        _grid.to_rgb(np.zeros((4, 5, 2)))


def test_wrong_image_size_is_an_error():
    res = make_result(llava_geometry(), 3)
    with pytest.raises(ValueError, match="120x80"):
        viz.plot_kept_tokens(Image.new("RGB", (80, 80)), res)
    viz.plot_kept_tokens(Image.new("RGB", (60, 40)), res)  # same aspect: resampled


# ---------------------------------------------------------------------------------------------------------------
# Residual energies


def test_residual_energies_match_the_core_curve():
    g = torch.Generator().manual_seed(3)
    tokens = torch.randn(30, 8, generator=g)
    sel = resprune.select(tokens, 10, "divprune")
    e = viz.residual_energies(tokens, sel.order)
    assert e.shape == (11, 30)
    curve = e.sum(1) / e[0].sum()
    assert torch.allclose(curve.float(), sel.residual, atol=1e-4)
    assert (e[1:] <= e[:-1] + 1e-9).all()  # energies only shrink
    assert (e[torch.arange(1, 11), sel.order] == 0).all()  # a pick has no residual left
    assert e[-1].sum() == pytest.approx(0.0, abs=1e-6)  # 10 picks (<= D = 8) span everything


def test_residual_energies_steps_and_errors():
    tokens = torch.randn(5, 3)
    assert viz.residual_energies(tokens, [2, 0], steps=[2]).shape == (1, 5)
    with pytest.raises(ValueError, match="repeat"):
        viz.residual_energies(tokens, [1, 1])
    with pytest.raises(ValueError, match="steps"):
        viz.residual_energies(tokens, [1], steps=[2])


# ---------------------------------------------------------------------------------------------------------------
# The kept-token overlay is aligned with the token boxes


@pytest.mark.parametrize("name", ["llava", "qwen", "llava_pad"])
def test_one_kept_token_highlights_exactly_its_box(name):
    geom = GEOMETRIES[name]()
    res = make_result(geom, 1, "residual")
    (i,) = res.selections[0].keep_idx.tolist()
    image = Image.new("RGB", geom.image_size, (200, 200, 200))
    (panel,) = _grid.panels(geom)
    scale = 3  # display pixels per image pixel
    fig = Figure(figsize=(panel.width * scale / 100, panel.height * scale / 100), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    assert viz.plot_kept_tokens(image, res, ax=ax) is fig
    px = _render(fig)[..., :3].astype(float).mean(-1)  # (H, W) brightness
    x0, y0, x1, y1 = _grid.boxes(geom)[i]
    to_px = lambda x, lo: int(round((x - lo) * scale))  # noqa: E731
    c0, c1 = to_px(x0, panel.extent[0]), to_px(x1, panel.extent[0])
    r0, r1 = to_px(max(y0, 0), panel.extent[1]), to_px(min(y1, geom.image_size[1]), panel.extent[1])
    m = 4  # stay clear of the outline
    inside = px[r0 + m : r1 - m, c0 + m : c1 - m]
    assert inside.size and inside.min() > 190  # the kept box shows the image at full brightness
    outside = np.ones_like(px, dtype=bool)
    b0, b1 = to_px(y0, panel.extent[1]), to_px(y1, panel.extent[1])  # the whole box, padding included
    outside[max(b0 - m, 0) : b1 + m, max(c0 - m, 0) : c1 + m] = False
    assert px[outside].max() < 100  # everything else is dimmed (or padding grey, dimmed)
    assert inside.mean() > 2 * px[outside].mean()


def test_cropped_region_is_dimmed_even_with_all_tokens_kept():
    geom = llava_crop_geometry()
    res = make_result(geom, 24)
    image = Image.new("RGB", geom.image_size, (220, 220, 220))
    fig = Figure(figsize=(3.0, 1.6), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    viz.plot_kept_tokens(image, res, ax=ax)
    px = _render(fig)[..., :3].astype(float).mean(-1)
    assert px[40:120, 6:24].max() < 100  # the cropped-away left strip (x < 15 image px)
    assert px[48:72, 78:102].min() > 200  # inside a token (row 1, col 1: image x 35..55, y 20..40)


# ---------------------------------------------------------------------------------------------------------------
# Every figure: returns a Figure, draws into a given Axes, handles K = 0 / 1 / N and every layout


@pytest.mark.parametrize("name", ["llava", "next", "qwen"])
@pytest.mark.parametrize("keep", ["zero", "one", "all", "some"])
def test_every_figure_for_every_layout_and_budget(name, keep):
    geom = GEOMETRIES[name]()
    n = geom.n_tokens
    k = {"zero": 0, "one": 1, "all": n, "some": n // 3}[keep]
    res = make_result(geom, k)
    for fig in _all_figures(image_for(geom), res).values():
        assert isinstance(fig, Figure)
        _render(fig)  # draws without error


def test_figures_draw_into_a_given_axes():
    geom = next_geometry()
    res = make_result(geom, 7)
    image = image_for(geom)
    fig = Figure()
    axes = fig.subplots(2, 3).ravel()
    assert viz.plot_kept_tokens(image, res, ax=axes[0]) is fig
    assert viz.plot_relevance(image, res, ax=axes[1]) is fig
    assert viz.plot_greedy_step(image, res, 3, ax=axes[2]) is fig
    assert viz.plot_residual_energy(res, ax=axes[3]) is fig
    assert viz.plot_residual_energy(res, ax=(axes[4], axes[5])) is fig
    assert axes[0].images and axes[1].images and axes[2].images and axes[3].lines and axes[5].lines
    _render(fig)


def test_next_layout_title_counts_newlines():
    geom = next_geometry()
    res = make_result(geom, 10)
    fig = viz.plot_kept_tokens(image_for(geom), res)
    title = fig.axes[0].get_title()
    assert "10 of 37" in title and "4 newline tokens" in title
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert any(s.startswith("base view") for s in labels) and any(s.startswith("high-res") for s in labels)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_grayscale_and_rgba_images(mode):
    geom = llava_geometry()
    res = make_result(geom, 5)
    image = image_for(geom, mode)
    for fig in _all_figures(image, res).values():
        _render(fig)
    viz.plot_kept_tokens(np.asarray(image_for(geom, "L")), res)  # a bare (H, W) array


def test_title_states_method_budget_and_answer():
    res = make_result(llava_geometry(), 6)
    title = viz.plot_kept_tokens(image_for(llava_geometry()), res, answer="red").axes[0].get_title()
    assert "resprune" in title and "6 of 24" in title and "answer: red" in title


def test_order_numbers_follow_pick_order():
    res = make_result(llava_geometry(), 4)
    ax = viz.plot_kept_tokens(image_for(llava_geometry()), res, order_numbers=True).axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["1", "2", "3", "4"]


def test_residual_energy_curves_one_line_per_method():
    geom = llava_geometry()
    res = make_result(geom, 8)
    others = {"divprune": make_result(geom, 8, "divprune"), "random": make_result(geom, 5, "random").selections[0]}
    fig = viz.plot_residual_energy(res, others)
    ax_curve, ax_gain = fig.axes[:2]
    curves = [ln for ln in ax_curve.lines if ln.get_linestyle() != "None"]
    assert len(curves) == 3
    np.testing.assert_allclose(curves[0].get_ydata(), res.selections[0].residual.numpy(), rtol=1e-6)
    markers = [ln for ln in ax_curve.lines if ln.get_linestyle() == "None"]
    assert [float(m.get_xdata()[0]) for m in markers] == [8, 8, 5]  # a marker at each K
    solid = [ln for ln in ax_gain.lines if ln.get_linestyle() != ":"]
    dotted = [ln for ln in ax_gain.lines if ln.get_linestyle() == ":"]
    assert len(solid) == 3  # the decrease of each residual curve
    np.testing.assert_allclose(solid[1].get_ydata(), -np.diff(others["divprune"].selections[0].residual.numpy()))
    # resprune records its picks' energies: dotted, as a share of the tokens' total energy
    assert len(dotted) == 1
    tokens = res.visual_tokens[0]
    np.testing.assert_allclose(
        dotted[0].get_ydata(), res.selections[0].energy.numpy() / float(tokens.pow(2).sum()), rtol=1e-5
    )


def test_residual_energy_without_token_vectors_uses_a_twin_axis():
    geom = llava_geometry()
    res = make_result(geom, 8, with_tokens=False)
    fig = viz.plot_residual_energy(res, {"divprune": make_result(geom, 8, "divprune")})
    assert len(fig.axes) == 3  # curves, gains, and the twin axis for raw pick energies


def test_relevance_text_aware_text_free_and_none():
    geom = llava_geometry()
    image = image_for(geom)
    res = make_result(geom, 6, "resprune")
    fig = viz.plot_relevance(image, res)
    assert "red, circle" in fig.axes[0].get_title()
    assert len(fig.axes) == 2 and "relevance" in fig.axes[1].get_ylabel()  # a labelled colour bar
    heat = fig.axes[0].images[-1].get_array()
    assert heat.max() == pytest.approx(1.0) and heat.min() >= 0

    free = make_result(geom, 6, "residual")  # text-free: computed from the query tokens for display
    fig = viz.plot_relevance(image, free)
    assert "computed for display" in fig.axes[0].get_title() and len(fig.axes) == 2

    nothing = make_result(geom, 6, "residual", with_query=False)
    fig = viz.plot_relevance(image, nothing)
    assert len(fig.axes) == 1
    assert any("No text relevance" in t.get_text() for t in fig.axes[0].texts)


def test_method_grid_titles_answers_and_recall():
    geom = llava_geometry()
    image = image_for(geom)
    results = {m: make_result(geom, 6, m) for m in ("resprune", "divprune", "random", "uniform")}
    mask = np.zeros((80, 120), dtype=bool)
    mask[20:60, 40:80] = True  # tokens 8, 9, 14, 15
    fig = viz.plot_method_grid(image, results, answers={"resprune": "red"}, objects_mask=mask)
    axes = [ax for ax in fig.axes if ax.images]
    assert len(axes) == 4
    relevant = _grid.relevant_tokens(geom, mask)
    for ax, (name, res) in zip(axes, results.items()):
        r = _grid.token_recall(res.selections[0], relevant)
        assert ax.get_title().startswith(name) and f"recall: {100 * r:.0f}%" in ax.get_title()
    assert "answer: red" in axes[0].get_title()
    fig = viz.plot_method_grid(image, results, recall={"resprune": 0.5})
    assert "recall: 50%" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="empty"):
        viz.plot_method_grid(image, {})


def test_bad_inputs_raise_clear_errors():
    res = make_result(llava_geometry(), 3)
    with pytest.raises(IndexError, match="index=1"):
        viz.plot_kept_tokens(image_for(llava_geometry()), res, index=1)
    with pytest.raises(TypeError, match="PruneResult"):
        viz.plot_kept_tokens(image_for(llava_geometry()), res.selections[0])


# ---------------------------------------------------------------------------------------------------------------
# No pyplot, no global state


def test_importing_viz_does_not_import_pyplot():
    code = "import sys, viz; assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_importing_resprune_does_not_import_matplotlib():
    code = "import sys, resprune; assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_to_image_renders_rgb_at_figure_size_and_releases_the_figure():
    geom = llava_geometry()
    fig = viz.plot_kept_tokens(image_for(geom), make_result(geom, 4), figsize=(3.0, 2.0))
    img = viz.to_image(fig)
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (300, 200)
    a = np.asarray(img)
    assert a.std() > 10  # something was drawn (not a blank canvas)
    assert fig.axes == []  # released
    kept = viz.plot_kept_tokens(image_for(geom), make_result(geom, 4), figsize=(3.0, 2.0))
    assert viz.to_image(kept, release=False).size == (300, 200) and kept.axes  # kept for more frames
    np.testing.assert_array_equal(np.asarray(viz.to_image(kept)), a)  # the same pixels as the first render
    with pytest.raises(TypeError, match="fig must be a matplotlib Figure"):
        viz.to_image(img)


def test_no_rcparams_change():
    before = dict(matplotlib.rcParams)
    res = make_result(llava_geometry(), 4)
    _all_figures(image_for(llava_geometry()), res)
    assert dict(matplotlib.rcParams) == before


def test_no_pyplot_in_viz_sources():
    import re

    for path in (ROOT / "viz").glob("*.py"):
        assert not re.search(r"import\s+matplotlib\.pyplot|from\s+matplotlib\s+import\s+pyplot", path.read_text()), path


# ---------------------------------------------------------------------------------------------------------------
# Real token geometry from the adapters (tiny random-weight LLaVA-NeXT and Qwen2.5-VL, resprune.testing)


@pytest.fixture(scope="module")
def real_results():
    """``{family: (image, PruneResult)}`` from ``resprune.prune`` on tiny models: LLaVA-NeXT on a 640 x 480 image
    (base view + 6 x 8 hi-res grid + newlines) and Qwen2.5-VL on an odd-sized 333 x 127 image."""
    from resprune.generate import chat_prompt
    from resprune.pipeline import prune
    from resprune.testing import tiny_model

    out = {}
    for name, size in (("llava_next", (640, 480)), ("qwen2_5_vl", (333, 127))):
        model, proc = tiny_model(name)
        rng = np.random.default_rng(1)
        image = Image.fromarray((rng.random((size[1], size[0], 3)) * 155 + 100).astype(np.uint8))
        inputs = proc(images=image, text=chat_prompt(proc, "Where is the red circle?"), return_tensors="pt")
        res = prune(
            model,
            inputs,
            "resprune",
            9,
            processor=proc,
            prompt="Where is the red circle?",
            image_sizes=[image.size],
            newlines="keep" if name == "llava_next" else "drop",
        )
        out[name] = (image, res)
    return out


def test_real_qwen_token_highlights_exactly_its_box(real_results):
    image, res = real_results["qwen2_5_vl"]
    geom = res.geometry[0]
    rows, cols = geom.grids[VIEW_BASE]
    i = (rows // 2) * cols + cols // 2  # a token in the middle of the merged grid
    # token i covers merged patch (row, col) = (i // cols, i % cols), 28 resized px each, scaled to the image
    sx, sy = image.size[0] / (cols * 28), image.size[1] / (rows * 28)
    r, c = divmod(i, cols)
    torch.testing.assert_close(
        geom.box[i], torch.tensor([c * 28 * sx, r * 28 * sy, (c + 1) * 28 * sx, (r + 1) * 28 * sy])
    )
    one = _one_token(res, i)
    grey = Image.new("RGB", geom.image_size, (200, 200, 200))
    (panel,) = _grid.panels(geom)
    scale = 3
    fig = Figure(figsize=(panel.width * scale / 100, panel.height * scale / 100), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    viz.plot_kept_tokens(grey, one, ax=ax)
    px = _render(fig)[..., :3].astype(float).mean(-1)
    x0, y0, x1, y1 = (float(v) for v in geom.box[i])
    m = 4
    inside = px[round(y0 * scale) + m : round(y1 * scale) - m, round(x0 * scale) + m : round(x1 * scale) - m]
    assert inside.size and inside.min() > 190
    outside = np.ones_like(px, dtype=bool)
    outside[
        max(round(y0 * scale) - m, 0) : round(y1 * scale) + m, max(round(x0 * scale) - m, 0) : round(x1 * scale) + m
    ] = False
    assert px[outside].max() < 100


def test_real_next_geometry_rasterises_token_by_token(real_results):
    image, res = real_results["llava_next"]
    geom = res.geometry[0]
    ps = _grid.panels(geom)
    assert [p.view for p in ps] == [VIEW_BASE, VIEW_HIRES]
    for p in ps:
        shape = _grid.canvas_scale(p, 400)
        idx = _grid.token_index_map(geom, p, shape)
        x0, y0, x1, y1 = p.extent
        for t in p.tokens[:: max(1, p.tokens.size // 7)]:  # the centre pixel of a token's box maps to the token
            bx0, by0, bx1, by1 = (float(v) for v in geom.box[t])
            r = int(((by0 + by1) / 2 - y0) / (y1 - y0) * shape[0])
            c = int(((bx0 + bx1) / 2 - x0) / (x1 - x0) * shape[1])
            assert idx[r, c] == t
    assert (geom.view == VIEW_NEWLINE).sum() == geom.grids[VIEW_HIRES][0]


@pytest.mark.parametrize("name", ["llava_next", "qwen2_5_vl"])
def test_every_figure_on_real_results(real_results, name):
    image, res = real_results[name]
    for fig in _all_figures(image, res).values():
        assert isinstance(fig, Figure)
        _render(fig)
    gif = viz.greedy_animation(image, res)
    assert Image.open(io.BytesIO(gif)).n_frames == res.selections[0].keep  # one frame per pick


# ---------------------------------------------------------------------------------------------------------------
# Figures that explain themselves: legends, captions, colour-bar units, a blank top band, named tokens drawn


def _legend_texts(fig: Figure) -> list[str]:
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    return [t.get_text() for leg in legends for t in leg.get_texts()]


def _caption(fig: Figure) -> str | None:
    from viz import _canvas

    return _canvas.caption_of(fig)


@pytest.mark.parametrize("name", ["llava", "next", "qwen"])
def test_every_figure_has_a_caption_and_explain_false_removes_it(name):
    geom = GEOMETRIES[name]()
    res = make_result(geom, 5)
    image = image_for(geom)
    for key, fig in _all_figures(image, res).items():
        cap = _caption(fig)
        assert cap and len(cap) > 30, key
    other = make_result(geom, 5, "divprune", seed=1)
    bare = [
        viz.plot_kept_tokens(image, res, explain=False),
        viz.plot_residual_energy(res, {"d": other}, explain=False),
        viz.plot_relevance(image, res, explain=False),
        viz.plot_greedy_step(image, res, 2, explain=False),
        viz.plot_method_grid(image, {"a": res, "b": other}, explain=False),
    ]
    for j, fig in enumerate(bare):
        assert _caption(fig) is None
        assert j == 1 or _legend_texts(fig) == []  # the residual curves keep their per-method legends


def test_caption_in_a_given_axes_sits_under_it_and_its_x_label():
    geom = llava_geometry()
    res = make_result(geom, 5)
    fig = Figure(figsize=(8, 6))
    a, b = fig.subplots(1, 2)
    viz.plot_residual_energy(res, ax=a)
    viz.plot_kept_tokens(image_for(geom), res, ax=b)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    r = canvas.get_renderer()
    caps = [t for t in fig.findobj(matplotlib.text.Text) if t.get_gid() == "caption"]
    assert len(caps) == 2
    cap_a = next(t for t in caps if "Residual energy" in t.get_text())
    assert cap_a.get_window_extent(r).y1 <= a.xaxis.label.get_window_extent(r).y0 + 1  # under the x label
    cap_b = next(t for t in caps if "One box per token" in t.get_text())
    assert cap_b.get_window_extent(r).y1 <= b.get_window_extent(r).y0 + 1  # under the image
    assert b.get_legend() is not None and [t.get_text() for t in b.get_legend().get_texts()] == [
        "kept (outlined)",
        "pruned (dimmed)",
    ]


def test_kept_overlay_legend_and_caption_say_outlined_is_kept_and_dimmed_is_pruned():
    geom = llava_geometry()
    fig = viz.plot_kept_tokens(image_for(geom), make_result(geom, 4), order_numbers=True)
    assert _legend_texts(fig) == ["kept (outlined)", "pruned (dimmed)"]  # no crop box: no crop entry
    cap = _caption(fig)
    assert "outlined: kept by resprune" in cap and "dimmed: pruned" in cap and "pick order" in cap
    fig = viz.plot_kept_tokens(image_for(geom), make_result(geom, 4))
    assert "pick order" not in _caption(fig)  # no numbers drawn, none explained


@pytest.mark.parametrize("name,word", [("llava_crop", "cropped"), ("llava_pad", "padded")])
def test_dashed_crop_box_is_explained_in_legend_and_caption(name, word):
    geom = GEOMETRIES[name]()
    res = make_result(geom, 4)
    image = image_for(geom)
    for fig in (
        viz.plot_kept_tokens(image, res),
        viz.plot_relevance(image, res),
        viz.plot_greedy_step(image, res, 2),
        viz.plot_method_grid(image, {"a": res}),
    ):
        assert "what the model saw" in _legend_texts(fig)
        assert f"the processor {word} the image to the dashed box" in _caption(fig)
        dashed = [c for c in fig.axes[0].collections if c.get_linestyle()[0][1] is not None and len(c.get_paths()) == 1]
        assert dashed, "the dashed box is drawn"


def test_multi_view_caption_names_the_panels():
    geom = next_geometry()
    cap = _caption(viz.plot_kept_tokens(image_for(geom), make_result(geom, 5)))
    assert "left: base view, right: high-res crops" in cap


def test_colour_bars_state_their_scale():
    geom = llava_geometry()
    res = make_result(geom, 5)
    rel = viz.plot_relevance(image_for(geom), res)
    assert "0 = least, 1 = most relevant" in rel.axes[1].get_ylabel()
    assert "cosine similarity" in _caption(rel) and _legend_texts(rel) == ["kept by resprune"]
    step = viz.plot_greedy_step(image_for(geom), res, 2)
    assert "largest ‖v‖²" in step.axes[1].get_ylabel() and "(log)" in step.axes[1].get_ylabel()
    assert "energy each unpicked token has left" in _caption(step)
    assert _legend_texts(step) == ["picked so far (number: pick order)", "next pick (#: its token index)"]


def test_method_grid_legend_names_the_objects_outline():
    geom = llava_geometry()
    mask = np.zeros((80, 120), dtype=bool)
    mask[20:60, 40:80] = True
    fig = viz.plot_method_grid(image_for(geom), {"a": make_result(geom, 6)}, objects_mask=mask)
    assert _legend_texts(fig) == ["kept (outlined)", "pruned (dimmed)", "objects the question is about"]
    assert "(6 of 24)" in _caption(fig) and "recall:" in _caption(fig)


@pytest.mark.parametrize("name", ["llava", "next", "qwen"])
def test_top_band_is_blank_so_an_image_label_covers_no_title(name):
    """gradio draws an image's label over its top-left corner: every new figure keeps a blank band at the top."""
    from viz import _canvas

    geom = GEOMETRIES[name]()
    res = make_result(geom, 5)
    for key, fig in _all_figures(image_for(geom), res).items():
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        band = int(_canvas.TOP_BAND_IN * fig.dpi) - 1
        px = np.asarray(canvas.buffer_rgba())[..., :3]
        assert (px[:band, : px.shape[1] // 2] == 255).all(), f"{key}: something drawn in the top band's left half"
        h = px.shape[0]
        for ax in fig.axes:
            title = ax.title
            if title.get_text():
                top = h - title.get_window_extent(canvas.get_renderer()).y1  # pixels from the top
                assert top >= band, f"{key}: title reaches into the top band"


@pytest.mark.parametrize("name", ["llava_next", "qwen2_5_vl"])
def test_token_at_on_real_geometry(real_results, name):
    image, res = real_results[name]
    geom = res.geometry[0]
    b = _grid.boxes(geom)
    ok = _grid.drawable(geom)
    views = geom.view.numpy()
    for i in np.flatnonzero(ok)[::5]:
        cx, cy = (b[i, 0] + b[i, 2]) / 2, (b[i, 1] + b[i, 3]) / 2
        if not (0 <= cx < image.size[0] and 0 <= cy < image.size[1]):
            continue  # a padding token: no pixel of the original image
        info = viz.token_at(res, int(cx), int(cy), view=int(views[i]))
        assert info["index"] == i
        finest = viz.token_at(res, int(cx), int(cy))
        assert finest["view"] == ("high-res crops" if name == "llava_next" else "base view")
    assert viz.token_at(res, image.size[0] + 5, 0) is None
