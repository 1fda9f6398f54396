"""LLaVA-OneVision specifics: the model's own layout (base view, unpadded any-resolution grid interpolated by the
``anyres_max`` rule, one newline per row), rebuilt here from the per-crop features independently of the adapter, and
the token boxes of the interpolated grid."""

from __future__ import annotations

import pytest
import torch
from helpers import make_inputs, noise_image

from resprune.adapters import adapter_for
from resprune.adapters.llava_onevision import anyres_grid
from resprune.pipeline import prune
from resprune.testing import tiny_model
from resprune.types import VIEW_BASE, VIEW_HIRES, VIEW_NEWLINE


@pytest.fixture(scope="module")
def ov_model():
    return tiny_model("llava_onevision")


def test_anyres_grid_rule():
    """OneVision-0.5B numbers: 40 x 54 stays (below 9 crops of 27 x 27); 102 x 135 becomes 70 x 93."""
    assert anyres_grid(40, 54, 27, "anyres_max_9") == (40, 54)
    assert anyres_grid(102, 135, 27, "anyres_max_9") == (70, 93)


@pytest.mark.parametrize("size", [(640, 480), (300, 560), (200, 200), (900, 300)])
def test_onevision_layout_matches_the_model(ov_model, size):
    model, proc = ov_model
    w, h = size
    inputs = make_inputs(proc, noise_image(w, h))
    res = prune(model, inputs, "uniform", 8, processor=proc)
    g, vis = res.geometry[0], res.visual_tokens[0]
    nl, hi, base = g.view == VIEW_NEWLINE, g.view == VIEW_HIRES, g.view == VIEW_BASE
    rows, cols = g.grids[VIEW_HIRES]
    assert int(nl.sum()) == rows and int(hi.sum()) == rows * cols and g.grids[VIEW_BASE] == (4, 4)
    torch.testing.assert_close(vis[nl], model.model.image_newline.float().expand(rows, -1))
    assert (g.col[nl] == -1).all() and torch.equal(g.row[nl], torch.arange(rows))
    # rebuild the hi-res grid by hand: project every crop, lay the crops on the canvas, cut the unpadded region
    # (from the unpad rule of the processor's resize), interpolate it to the grid's size
    from transformers.image_processing_utils import select_best_resolution
    from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

    n_crops = image_size_to_num_patches((h, w), model.config.image_grid_pinpoints, 56)  # base view included
    with torch.no_grad():
        pv = inputs["pixel_values"][0, :n_crops]
        hs = model.model.vision_tower(pv, output_hidden_states=True).hidden_states[-1]
        feats = model.model.multi_modal_projector(hs).float()  # (crops, 16, D)
    torch.testing.assert_close(vis[base], feats[0])
    bh, bw = select_best_resolution((h, w), model.config.image_grid_pinpoints)
    nph, npw, gs = bh // 56, bw // 56, 4
    canvas = feats[1:].view(nph, npw, gs, gs, -1).permute(0, 2, 1, 3, 4).reshape(nph * gs, npw * gs, -1)
    ch, cw = canvas.shape[:2]
    if w / h > cw / ch:  # the image fills the width: padding rows
        pad = (ch - int(round(h * cw / w, 7))) // 2
        region, corner = canvas[pad : ch - pad], (pad, 0)
    else:
        pad = (cw - int(round(w * ch / h, 7))) // 2
        region, corner = canvas[:, pad : cw - pad], (0, pad)
    found = adapter_for(model)._canvas_region(model, inputs["image_sizes"][0], n_crops, gs)
    assert found == (*corner, region.shape[0], region.shape[1])  # the region the boxes are computed from
    assert anyres_grid(region.shape[0], region.shape[1], gs, "anyres_max_4") == (rows, cols)
    if (rows, cols) != region.shape[:2]:
        region = torch.nn.functional.interpolate(region.permute(2, 0, 1)[None], [rows, cols], mode="bilinear")[0]
        region = region.permute(1, 2, 0)
    torch.testing.assert_close(vis[hi], region.reshape(rows * cols, -1), rtol=1e-5, atol=1e-5)
    # boxes: the base view tiles the whole image; the hi-res boxes are equal, row-major, and span the image up to
    # the model's whole-token unpadding (an edge is off by less than one canvas token, inside or outside)
    b = g.box[base]
    assert float(((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).sum()) == pytest.approx(w * h)
    hb = g.box[hi]
    tw, th = (hb[:, 2] - hb[:, 0]).max(), (hb[:, 3] - hb[:, 1]).max()
    assert torch.allclose(hb[:, 2] - hb[:, 0], tw) and torch.allclose(hb[:, 3] - hb[:, 1], th)
    token = 14 / min(bw / w, bh / h)  # one canvas token (14 canvas px) in image pixels
    assert abs(hb[:, 0].min()) < token + 1e-3 and abs(hb[:, 2].max() - w) < token + 1e-3
    assert abs(hb[:, 1].min()) < token + 1e-3 and abs(hb[:, 3].max() - h) < token + 1e-3
    assert (hb[1:cols, 0] > hb[: cols - 1, 0]).all() and hb[cols, 1] > hb[0, 1]
    assert torch.isnan(g.box[nl]).all()
