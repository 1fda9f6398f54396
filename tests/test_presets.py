"""Every preset on its architecture twin (``resprune.testing.build_twin``: the checkpoint's published configuration
with only depth and width shrunk, saved in the hub's folder layout, loaded through ``load_model(folder)``): the
number of visual tokens and their geometry equal the published architecture's, every method the family supports
runs through ``prune`` (the others raise the documented clear error), ``answer`` works, and exactness holds
(keep = N: bit-identical logits and greedy tokens; at 25 %: the KV cache shorter by the pruned count).

The expected counts are derived by hand from the published architecture, not read from the code under test."""

from __future__ import annotations

import re

import pytest
import torch
from helpers import make_inputs, n_visual, noise_image

import resprune
from resprune.adapters import adapter_for
from resprune.generate import _cache_of, kv_cache_bytes
from resprune.loading import PRESETS, load_model, preset_methods
from resprune.pipeline import prune
from resprune.testing import PRESET_FACTS, build_twin, generate_checking_first_step
from resprune.types import VIEW_BASE, VIEW_HIRES, VIEW_NEWLINE

TWINS = [p for p in PRESETS if not PRESETS[p].bundled]  # the hub checkpoints (not the scenes models)

# preset -> (reference image (width, height), N, {view: grid}) from the published architecture:
# LLaVA-1.5: CLIP-L/14 at 336 px, strategy "default" (no [CLS]): 24 x 24 = 576.
# LLaVA-Interleave: SigLIP 384/14, strategy "full": 27 x 27 = 729.
# LLaVA-NeXT at 672 x 336: pinpoint 336 x 672 = 1 x 2 crops, base 576 + the 24 x 48 grid (no padding to remove)
#   + 24 newlines = 1752.
# Qwen2.5-VL at 448 x 448: 32 x 32 patches of 14 px, 2 x 2 merge: 16 x 16 = 256.
# SmolVLM at 640 x 480: longest edge to 2048 (2048 x 1536), 4 x 3 tiles of 512 px + the global image, 512 / 16 = 32
#   patches per side, pixel shuffle 4: 8 x 8 = 64 per tile: 13 x 64 = 832.
# LLaVA-OneVision at 640 x 480: pinpoint 768 x 768 (2 x 2 crops of 384), the 54 x 54 grid unpadded to 40 x 54
#   (480 / 640 * 54 = 40.5 -> 40 rows, 7 padding rows each side), no anyres_max_9 interpolation (40 * 54 < 9 * 729):
#   729 + 40 * 54 + 40 newlines = 2929.
EXPECTED = {
    "llava-1.5-7b": ((640, 480), 576, {VIEW_BASE: (24, 24)}),
    "llava-interleave-0.5b": ((640, 480), 729, {VIEW_BASE: (27, 27)}),
    "llava-next-7b": ((672, 336), 1752, {VIEW_BASE: (24, 24), VIEW_HIRES: (24, 48)}),
    "llava-next-mistral-7b": ((672, 336), 1752, {VIEW_BASE: (24, 24), VIEW_HIRES: (24, 48)}),
    "qwen2.5-vl-7b": ((448, 448), 256, {VIEW_BASE: (16, 16)}),
    "qwen2.5-vl-3b": ((448, 448), 256, {VIEW_BASE: (16, 16)}),
    "smolvlm-256m": ((640, 480), 832, {VIEW_BASE: (8, 8), VIEW_HIRES: (24, 32)}),
    "smolvlm-500m": ((640, 480), 832, {VIEW_BASE: (8, 8), VIEW_HIRES: (24, 32)}),
    "llava-onevision-0.5b": ((640, 480), 2929, {VIEW_BASE: (27, 27), VIEW_HIRES: (40, 54)}),
}
# the published [CLS] token (CLIP towers) decides which methods a preset supports
HAS_CLS = {"llava-1.5-7b", "llava-next-7b", "llava-next-mistral-7b"}
CLS_METHODS = {"cls", "vispruner", "visionzip"}


# after shrinking, these twins equal their smaller sibling's but for the published LM shape they drop (SmolVLM-500M
# vs 256M; Qwen2.5-VL-7B vs 3B, which also unties the embeddings): the quick loop leaves them to CI
SIBLINGS = {"smolvlm-500m", "qwen2.5-vl-7b"}
QUICK = [pytest.param(n, marks=pytest.mark.slow) if n in SIBLINGS else n for n in TWINS]


@pytest.fixture(scope="module", params=QUICK)
def twin(request, tmp_path_factory):
    name = request.param
    folder = build_twin(name, tmp_path_factory.mktemp(name.replace(".", "_")))
    model, proc = load_model(str(folder), device="cpu", dtype=torch.float32)
    size = EXPECTED[name][0]
    return name, model, proc, make_inputs(proc, noise_image(*size))


def test_every_preset_has_a_twin_and_an_expected_layout():
    assert set(TWINS) == set(PRESET_FACTS) == set(EXPECTED)
    assert {"smolvlm-256m", "smolvlm-500m", "llava-onevision-0.5b"} <= set(PRESETS)


def test_the_bundled_preset_is_its_own_model():
    """``scenes`` needs no twin: it is in the repository (a CLIP 192 px / 16 LLaVA: 12 x 12 = 144 tokens)."""
    model, proc = load_model("scenes", device="cpu")
    inputs = make_inputs(proc, noise_image(640, 480))
    assert n_visual(model, inputs) == 144 and adapter_for(model).family == PRESETS["scenes"].family
    assert preset_methods("scenes") == tuple(resprune.list_methods())  # CLIP: every method
    res = prune(model, inputs, "visionzip", 36, processor=proc)
    assert res.stats["seq_len_after"] == inputs["input_ids"].shape[1] - 108


def test_twin_carries_the_published_configuration(twin):
    name, model, proc, _ = twin
    facts = PRESET_FACTS[name]
    cfg = model.config
    assert cfg.model_type == facts["config"]["model_type"]
    vf = facts["config"]["vision_config"]
    for key in ("image_size", "patch_size", "spatial_merge_size", "temporal_patch_size", "window_size"):
        if key in vf:
            assert getattr(cfg.vision_config, key) == vf[key], key
    if "model_type" in vf:
        assert cfg.vision_config.model_type == vf["model_type"]
    tf = facts["config"]["text_config"]
    if "model_type" in tf:
        assert cfg.text_config.model_type == tf["model_type"]
    for key in ("vision_feature_layer", "vision_feature_select_strategy", "image_grid_pinpoints", "scale_factor"):
        if key in facts["config"]:
            assert getattr(cfg, key) == facts["config"][key], key
    adapter = adapter_for(model)  # the preset's declared family, tower and alpha default match the twin
    assert adapter.family == PRESETS[name].family
    assert (PRESETS[name].tower == "clip") == (cfg.vision_config.model_type == "clip_vision_model") == (name in HAS_CLS)
    assert adapter.defaults["alpha"] == (0.75 if name in HAS_CLS else 0.3)
    assert type(proc).__name__ == facts["processor"]["cls"]
    assert type(proc.image_processor).__name__ == facts["processor"]["image_processor"]["cls"]
    assert proc.chat_template == facts["chat_template"]
    image_token = proc.image_token
    assert proc.tokenizer.convert_tokens_to_ids(image_token) == cfg.image_token_id
    assert image_token in proc.tokenizer.all_special_tokens or image_token in proc.tokenizer.get_added_vocab()
    assert cfg.text_config.num_hidden_layers == 3  # shrunk: depth and width only
    vc = cfg.vision_config
    assert (vc.depth if cfg.model_type == "qwen2_5_vl" else vc.num_hidden_layers) == 2


def test_visual_tokens_and_geometry_equal_the_published_architecture(twin):
    name, model, proc, inputs = twin
    size, n, grids = EXPECTED[name]
    assert n_visual(model, inputs) == n
    (img,) = adapter_for(model).images(model, proc, inputs, [size])
    geo = img.geometry
    assert img.tokens.shape[0] == n and geo.image_size == size
    assert {int(k): tuple(v) for k, v in geo.grids.items()} == grids
    w, h = size
    hi = geo.view == VIEW_HIRES
    base = geo.view == VIEW_BASE
    assert int((geo.view == VIEW_NEWLINE).sum()) == (
        grids[VIEW_HIRES][0] if name.startswith(("llava-next", "llava-on")) else 0
    )
    boxes = geo.box[base | hi]
    assert torch.isfinite(boxes).all()
    gh, gw = grids[VIEW_BASE]
    if name.startswith("llava-1.5"):  # shortest edge 336: 448 x 336, centre crop 336: 56 px cut each side
        assert torch.allclose(geo.box[0], torch.tensor([56 * 640 / 448, 0, 70 * 640 / 448, 14 * 480 / 336]))
        assert torch.allclose(geo.box[-1], torch.tensor([378 * 640 / 448, 460, 392 * 640 / 448, 480]))
    else:  # the base view (or the whole merged grid) stretches the whole image
        first = geo.box[base][0]
        torch.testing.assert_close(first, torch.tensor([0, 0, w / gw, h / gh]))
        torch.testing.assert_close(geo.box[base][-1], torch.tensor([w - w / gw, h - h / gh, w, h]))
    if hi.any():  # the hi-res view covers the image
        b = geo.box[hi]
        assert float(b[:, 0].min()) <= 0.5 and float(b[:, 2].max()) >= w - 0.5
        assert float(b[:, 1].min()) <= 15 and float(b[:, 3].max()) >= h - 15  # OV: token rows overhang by < 1 token


# more sizes, from the layout notes of transformers 5.x checked token by token against the real models' tensors:
# NeXT 640 x 480: 2 x 2 crops, the 48 x 48 grid unpadded to 36 x 48: 576 + 1728 + 36; 480 x 900: 48 x 26 + 48;
# Qwen2.5-VL 640 x 480: grid_thw (1, 34, 46) -> 17 x 23 = 391; SmolVLM 300 x 560 (portrait): 2048 px high,
# 1098 -> 1536 wide: 4 x 3 tiles + global = 13 x 64.
MORE = {
    "llava-next-7b": [((640, 480), 2340, (36, 48)), ((480, 900), 1872, (48, 26))],
    "qwen2.5-vl-3b": [((640, 480), 391, None)],
    "smolvlm-256m": [((300, 560), 832, (32, 24))],
}


@pytest.mark.parametrize("name", list(MORE))
def test_more_image_sizes(name, tmp_path):
    model, proc = load_model(str(build_twin(name, tmp_path)), device="cpu", dtype=torch.float32)
    for size, n, hires in MORE[name]:
        inputs = make_inputs(proc, noise_image(*size))
        assert n_visual(model, inputs) == n, size
        (img,) = adapter_for(model).images(model, proc, inputs, [size])
        assert img.tokens.shape[0] == n and img.geometry.grids.get(VIEW_HIRES) == hires


def test_onevision_interpolates_a_large_image_to_anyres_max_9(tmp_path):
    """1600 x 1200: pinpoint 1536 x 1920 (4 x 5 crops: the smallest canvas that holds the image at full size), the
    108 x 135 grid unpadded to 102 x 135 (101.25 rows -> 101, 3 padding rows each side) is more than 9 crops of
    tokens (ratio sqrt(102 * 135 / (9 * 729)) = 1.45 > 1.1), so OneVision interpolates it to 70 x 93:
    729 + 6510 + 70 newlines = 7309."""
    model, proc = load_model(str(build_twin("llava-onevision-0.5b", tmp_path)), device="cpu", dtype=torch.float32)
    inputs = make_inputs(proc, noise_image(1600, 1200))
    assert n_visual(model, inputs) == 7309
    (img,) = adapter_for(model).images(model, proc, inputs, [(1600, 1200)])
    assert img.geometry.grids[VIEW_HIRES] == (70, 93) and int((img.view == VIEW_NEWLINE).sum()) == 70
    b = img.geometry.box[img.view == VIEW_HIRES]
    assert float(b[:, 0].min()) <= 1 and float(b[:, 2].max()) >= 1599  # the interpolated grid still spans the image


def test_keep_all_is_exact_and_quarter_shortens_the_cache(twin):
    name, model, proc, inputs = twin
    n = n_visual(model, inputs)
    prompt = "What colour is the circle?"
    with pytest.warns(UserWarning, match="every token is kept"):
        res = prune(model, inputs, "resprune", n, processor=proc, prompt=prompt)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, model(**res.generate_kwargs).logits)
    a = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    b = model.generate(**res.generate_kwargs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert torch.equal(a[0, inputs["input_ids"].shape[1] :], b[0])
    k = n // 4
    res = prune(model, inputs, "resprune", k, processor=proc, prompt=prompt)
    L = inputs["input_ids"].shape[1]
    assert res.stats["seq_len_after"] == L - (n - k)
    out = generate_checking_first_step(model, res, 2)
    _, length = kv_cache_bytes(_cache_of(out))
    assert length == L - (n - k) + 1


@pytest.mark.parametrize(
    "name", [n if n == "llava-interleave-0.5b" else pytest.param(n, marks=pytest.mark.slow) for n in TWINS]
)
def test_keep_all_is_exact_in_bfloat16(name, tmp_path):
    """The accelerators' default dtype: keep = N still gives bit-identical logits."""
    model, proc = load_model(str(build_twin(name, tmp_path)), device="cpu", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    inputs = make_inputs(proc, noise_image(*EXPECTED[name][0]))
    n = n_visual(model, inputs)
    with pytest.warns(UserWarning, match="every token is kept"):
        res = prune(model, inputs, "divprune", n, processor=proc)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, model(**res.generate_kwargs).logits)


@pytest.mark.parametrize("method", resprune.list_methods())
def test_every_supported_method_runs_and_the_others_say_why(twin, method):
    name, model, proc, inputs = twin
    supported = method in preset_methods(name)  # what the app lists for the preset, without loading it
    assert supported == (method not in CLS_METHODS or name in HAS_CLS)
    offered = adapter_for(model).offers | {"llm_attention"}
    assert supported == (set(resprune.method_info(method).requires) <= offered)
    n, L = n_visual(model, inputs), inputs["input_ids"].shape[1]
    if not supported:
        with pytest.raises(ValueError, match=f"needs cls_attention.*{re.escape('no [CLS] token')}"):
            prune(model, inputs, method, 64, processor=proc, prompt="red circle")
        return
    res = prune(model, inputs, method, 64, processor=proc, prompt="red circle")
    assert res.selections[0].keep == 64 and res.stats["seq_len_after"] == L - (n - 64)
    with res.generation_context():
        out = model.generate(**res.generate_kwargs, max_new_tokens=2, do_sample=False)
    assert out.shape[0] == 1


def test_answer_on_the_twin(twin):
    name, model, proc, _ = twin
    size = EXPECTED[name][0]
    a = resprune.answer(
        model, proc, noise_image(*size), "What colour is the circle?", keep=32, max_new_tokens=2, timing_repeats=1
    )
    assert isinstance(a.pruned, str) and isinstance(a.unpruned, str)
    assert a.stats["visual_tokens_before"] == EXPECTED[name][1] and a.stats["visual_tokens_after"] == 32
    assert a.stats["kv_cache_bytes_after"] < a.stats["kv_cache_bytes_before"]
    expected_seed = "prior" if name in HAS_CLS else "max_norm"
    assert a.result.selections[0].params["seed"] == expected_seed


# ---------------------------------------------------------------------------------------------------------------
# Preset availability (library side of the app's model list): no network traffic; the hub is a local server.


@pytest.fixture
def offline_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf" / "hub"


def _fake_cached(hub, repo, files):
    """The hub cache layout of ``repo`` (refs/main -> one snapshot holding ``files``)."""
    root = hub / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("0" * 40)
    for name, text in files.items():
        (snap / name).write_text(text)


def test_preset_status_offline_says_what_loads_here(offline_home):
    import time

    from resprune.loading import preset_status

    st = preset_status("scenes")
    assert st.available and st.where == "bundled"
    t = time.monotonic()
    for name in TWINS:
        st = preset_status(name)
        assert not st.available and st.where is None
        assert "offline" in st.reason and "scenes" in st.reason and name in st.reason
        assert "/" not in st.reason and "load_model" not in st.reason  # no paths, no Python calls for a visitor
    assert time.monotonic() - t < 1.0  # no network wait
    repo = PRESETS["smolvlm-256m"].hub_id
    _fake_cached(offline_home, repo, {"config.json": "{}"})  # weights missing: not loadable
    assert not preset_status("smolvlm-256m").available
    snap = next((offline_home / ("models--" + repo.replace("/", "--")) / "snapshots").iterdir())
    (snap / "model.safetensors").write_text("")
    st = preset_status("smolvlm-256m")
    assert st.available and st.where == "cache"
    repo = PRESETS["qwen2.5-vl-3b"].hub_id  # sharded weights: every shard must be there
    index = '{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}'
    _fake_cached(offline_home, repo, {"config.json": "{}", "model.safetensors.index.json": index})
    assert not preset_status("qwen2.5-vl-3b").available
    snap = next((offline_home / ("models--" + repo.replace("/", "--")) / "snapshots").iterdir())
    for i in (1, 2):
        (snap / f"model-0000{i}-of-00002.safetensors").write_text("")
    assert preset_status("qwen2.5-vl-3b").where == "cache"


def test_preset_status_bad_arguments(offline_home):
    from resprune.loading import preset_status

    with pytest.raises(ValueError, match="name must be one of .*got 'gpt-5'"):
        preset_status("gpt-5")
    with pytest.raises(ValueError, match="timeout must be"):
        preset_status("scenes", timeout=0)


def test_preset_status_probes_the_hub_once_within_the_timeout(offline_home, monkeypatch):
    """A local stand-in for the hub: 200 for one repo, 401 for another; the answer is remembered; an endpoint that
    does not answer costs at most the timeout."""
    import http.server
    import socket
    import threading
    import time

    from resprune import loading

    seen = []

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 - the http.server API
            seen.append(self.path)
            self.send_response(401 if "Qwen" in self.path else 200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setattr(loading, "_PROBES", {})
    monkeypatch.setattr(loading, "_SILENT", {})
    try:
        st = loading.preset_status("smolvlm-500m")
        assert st.available and st.where == "hub" and "first use" in st.reason
        assert seen == ["/HuggingFaceTB/SmolVLM-500M-Instruct/resolve/main/config.json"]
        assert loading.preset_status("smolvlm-500m").where == "hub" and len(seen) == 1  # remembered
        st = loading.preset_status("qwen2.5-vl-7b")
        assert not st.available and "HTTP 401" in st.reason
    finally:
        server.shutdown()
        server.server_close()
    silent = socket.socket()  # listens, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        t = time.monotonic()
        st = loading.preset_status("llava-onevision-0.5b", timeout=0.3)
        assert time.monotonic() - t < 1.0
        assert not st.available and "cannot be reached" in st.reason
        t = time.monotonic()  # the endpoint is known silent now: no further waits for any preset
        assert not loading.preset_status("llava-1.5-7b", timeout=0.3).available and time.monotonic() - t < 0.1
        monkeypatch.setattr(loading, "_SILENT", {})
        monkeypatch.setattr(loading, "_PROBES", {})
        t = time.monotonic()  # the whole list: probes in parallel, about one timeout in all
        every = loading.preset_statuses(timeout=0.3)
        assert time.monotonic() - t < 1.5 and list(every) == list(PRESETS)
        assert every["scenes"].where == "bundled" and not any(every[n].available for n in TWINS)
    finally:
        silent.close()


def test_figures_draw_on_every_twin(twin):
    """The figures read only the geometry: every preset's layout draws (kept tokens, residual energy, relevance,
    greedy step, a two-method grid), at the real N."""
    import viz

    name, model, proc, inputs = twin
    size = EXPECTED[name][0]
    image = noise_image(*size)
    results = {
        m: prune(model, inputs, m, 48, processor=proc, prompt="red circle", image_sizes=[size])
        for m in ("resprune", "divprune")
    }
    res = results["resprune"]
    figs = [
        viz.plot_kept_tokens(image, res, answer="a red circle"),
        viz.plot_residual_energy(res),
        viz.plot_relevance(image, res),
        viz.plot_greedy_step(image, res, 12),
        viz.plot_method_grid(image, results),
    ]
    for fig in figs:
        img = viz.to_image(fig)
        assert img.size[0] > 100 and img.size[1] > 100


# ---------------------------------------------------------------------------------------------------------------
# A preset by NAME: its twin placed in a local hub cache (offline) loads through the preset path, and the app's
# handlers (Run with its figures and step-through, Compare over every method) run on it.


@pytest.fixture
def twin_in_cache(tmp_path, monkeypatch):
    """``put(name)``: the twin of ``name`` saved as the hub cache's snapshot of its hub id; HF offline."""
    import huggingface_hub.constants

    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))  # read at import; follow the env

    def put(name):
        root = hub / ("models--" + PRESETS[name].hub_id.replace("/", "--"))
        build_twin(name, root / "snapshots" / ("1" * 40))
        (root / "refs").mkdir()
        (root / "refs" / "main").write_text("1" * 40)

    return put


def _noop(*args, **kwargs):
    pass


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n == "smolvlm-256m" else pytest.mark.slow) for n in TWINS]
)
def test_a_cached_preset_loads_by_name_and_runs_the_app_handlers(twin_in_cache, name, tmp_path):
    import sys
    from pathlib import Path

    from resprune.loading import preset_status

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import app

    assert preset_status(name).available is False  # offline, nothing cached yet
    twin_in_cache(name)
    st = preset_status(name)
    assert st.available and st.where == "cache"
    size, n, _ = EXPECTED[name]
    path = tmp_path / "image.png"
    noise_image(*size).save(path)
    app.get_model.cache_clear()
    try:
        out = app.on_run(str(path), "What colour is the circle?", name, "resprune", 25, 0, None, "auto", progress=_noop)
        pruned, unpruned, _, info, overlay, curves, relevance, stats, _, step_img, files, state = out[:12]
        assert isinstance(pruned, str) and f"of {n}**" in info
        for im in (overlay, curves, relevance, step_img):
            assert im.size[0] > 200 and im.size[1] > 200
        assert app.step_image(state, 3).size[0] > 200
        grid, rows = app.on_compare(str(path), "What colour is the circle?", name, 10, 0, progress=_noop)
        unavailable = {r[0] for r in rows if r[2].startswith("not available")}
        assert grid.size[0] > 400 and unavailable == set(resprune.list_methods()) - set(preset_methods(name))
        assert all("needs cls_attention" in r[2] for r in rows if r[0] in unavailable), rows
    finally:
        app.get_model.cache_clear()


_DOWNLOAD_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import app
from resprune.loading import ModelLoadError, download_preset, preset_status
out = {"status": preset_status("smolvlm-256m").where}
events = []
model, _ = app._load("smolvlm-256m", lambda frac=None, desc=None, **k: events.append([frac, desc]))
out["events"], out["model"] = events, type(model).__name__
again = []
app._load("smolvlm-256m", lambda frac=None, desc=None, **k: again.append([frac, desc]))
out["again"] = again
calls = []
download_preset("smolvlm-256m", lambda done, total: calls.append([done, total]))  # in the cache now
out["cached_calls"] = calls
try:
    download_preset("smolvlm-500m")
except ModelLoadError as e:
    out["refused"] = str(e)
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_a_hub_preset_downloads_with_byte_progress_then_loads(tmp_path):
    """The app's first load of a hub preset: from a hub on loopback (``resprune.testing.LoopbackHub`` serving the
    preset's twin under its hub id), the files arrive with the bytes on the progress bar (monotone, up to the
    repository's total of ``DOWNLOAD_PATTERNS`` files; a ``.bin`` copy is not fetched), then the model loads; the
    second load downloads nothing; a repository the hub does not have is a clear error naming the preset."""
    import json
    import os
    import re
    import subprocess
    import sys
    from fnmatch import fnmatch

    from resprune.loading import DOWNLOAD_PATTERNS
    from resprune.testing import LoopbackHub

    folder = tmp_path / "twin"
    build_twin("smolvlm-256m", folder)
    (folder / "pytorch_model.bin").write_bytes(b"\0" * 1000)  # a second copy of the weights: not fetched
    expected = sum(p.stat().st_size for p in folder.iterdir() if any(fnmatch(p.name, pat) for pat in DOWNLOAD_PATTERNS))
    root = __import__("pathlib").Path(__file__).resolve().parent.parent
    with LoopbackHub({PRESETS["smolvlm-256m"].hub_id: folder}) as hub:
        env = {
            k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "TRANSFORMERS_OFFLINE")
        }
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1")
        run = subprocess.run(
            [sys.executable, "-c", _DOWNLOAD_SCRIPT, str(root)], env=env, capture_output=True, text=True, timeout=300
        )
        fetched = [p for m, p in hub.requests if m == "GET" and "/resolve/" in p]
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert out["status"] == "hub" and out["model"] == "Idefics3ForConditionalGeneration"
    events = out["events"]
    fracs = [f for f, _ in events]
    assert fracs == sorted(fracs) and fracs[0] == 0.05 and fracs[-1] == 0.9
    sizes = [re.fullmatch(r"Downloading smolvlm-256m: ([\d.]+) MB of ([\d.]+) MB", d) for _, d in events[1:-1]]
    assert all(sizes) and len(sizes) >= 2 and sizes[-1][1] == sizes[-1][2] == f"{expected / 1e6:.1f}"
    assert events[-1][1] == "Loading model 'smolvlm-256m' (first run only)…"
    assert out["again"] == []  # loaded once: no download, no load
    assert out["cached_calls"] == [[0, 0]]  # in the cache now: nothing left to fetch
    assert not any(p.endswith(".bin") for p in fetched) and any(p.endswith("model.safetensors") for p in fetched)
    assert out["refused"].startswith("could not download preset 'smolvlm-500m'")
