"""The Gradio app: import has no side effects, input checks give visible messages, handlers run end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import app  # noqa: E402


def test_import_has_no_side_effects():
    code = (
        "import sys; import app; "
        "assert app.demo is None; "
        "assert app.get_model.cache_info().currsize == 0; "
        "print('transformers' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]  # no model framework loaded, let alone a model


def test_build_demo_returns_blocks_with_named_endpoints():
    demo = app.build_demo()
    assert isinstance(demo, gr.Blocks)
    names = {d.api_name for d in demo.fns.values() if d.api_name}
    assert {"answer", "run", "compare", "new_scene"} <= names


@pytest.mark.parametrize("text", ["", "   ", None, 12])
def test_empty_instruction_is_a_visible_error(text):
    with pytest.raises(gr.Error, match="instruction is empty"):
        app.check_instruction(text)


def test_long_instruction_is_a_visible_error():
    with pytest.raises(gr.Error, match="10,000 characters; the limit is 1,000"):
        app.check_instruction("x" * 10_000)
    assert app.check_instruction("  What colour?  ") == "What colour?"


def test_budget_rules():
    assert app.budget(144, 25, 0) == 36
    assert app.budget(144, 25, None) == 36
    assert app.budget(144, 25, 10) == 10
    assert app.budget(144, 25, 10.0) == 10
    with pytest.raises(gr.Error, match="more than the 144 visual tokens"):
        app.budget(144, 25, 145)
    with pytest.raises(gr.Error, match="at least 1 token"):
        app.budget(144, 25, -2)
    with pytest.raises(gr.Error, match="whole number"):
        app.budget(144, 25, 2.5)
    with pytest.raises(gr.Error, match="between 1 and 100 %"):
        app.budget(144, 0, 0)


def test_bad_images_are_visible_errors(tmp_path):
    with pytest.raises(gr.Error, match="no image was given"):
        app.check_image(None)
    (tmp_path / "a.txt").write_text("not an image")
    with pytest.raises(gr.Error, match="not an image file"):
        app.check_image(str(tmp_path / "a.txt"))
    img, notes = app.check_image(Image.new("CMYK", (30, 20)))
    assert img.mode == "RGB" and "CMYK" in notes[0]


def test_upload_component_turns_unreadable_files_into_messages(tmp_path):
    # the component hands over the raw upload (nothing decoded or converted); the handler's image check turns an
    # unreadable file into a visible message
    from gradio.data_classes import ImageData

    comp = app.UploadImage(type="filepath")
    bad = tmp_path / "fake.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    raw = comp.preprocess(ImageData(path=str(bad), orig_name="fake.png"))
    assert raw == str(bad)
    with pytest.raises(gr.Error, match="'fake.png' is (not an image file|corrupt)"):
        app.check_image(raw)


def test_stats_rows_and_agreement():
    stats = {
        "visual_tokens_before": 144,
        "visual_tokens_after": 36,
        "kv_cache_bytes_before": 2 * 2**20,
        "kv_cache_bytes_after": 2**19,
        "prefill_seconds_before": 0.2,
        "prefill_seconds_after": 0.1,
        "selection_seconds": 0.003,
    }
    rows = app.stats_rows(stats)
    assert rows[0] == ["visual tokens", "144", "36", "0.250"]
    assert ["KV-cache bytes", "2.00 MiB", "512.0 KiB", "0.250"] in rows
    assert ["prefill speedup", "", "2.00x", ""] in rows
    assert "agree" in app.agreement_markdown("Red.", "red")
    assert "differ" in app.agreement_markdown("red", "blue")
    assert app.agreement_markdown("red", None) == ""


def test_method_choices_come_from_the_registry():
    import resprune

    assert [v for _, v in app.method_choices()] == resprune.list_methods()


def _scene():
    from resprune import scenes

    return scenes.sample(20_000_010)


def test_run_handler_end_to_end(tmp_path):
    s = _scene()
    path = tmp_path / "scene.png"
    s.image.save(path)
    out = app.on_run(str(path), s.questions[0].text, "scenes", "resprune", 25, 0, 0.75, "auto", progress=_noop)
    pruned, unpruned, agree, info, overlay, curves, relevance, stats, step, step_img, files, state = out
    assert pruned and unpruned and ("agree" in agree or "differ" in agree)
    assert "kept **36 of 144**" in info
    for im in (overlay, curves, relevance, step_img):
        assert im.size[0] > 200 and im.size[1] > 200
    assert stats[0][0] == "visual tokens" and stats[0][1:3] == ["144", "36"]
    assert any(f.endswith("_selection.json") for f in files) and sum(f.endswith(".png") for f in files) == 3
    import json

    rec = json.loads(open([f for f in files if f.endswith(".json")][0]).read())
    assert len(rec["selections"][0]["keep_idx"]) == 36 and rec["selections"][0]["residual"][0] == 1.0
    assert app.step_image(state, 5).size[0] > 200
    gif = app.gif_file(state)
    assert open(gif, "rb").read(3) == b"GIF"


def test_api_answer_and_compare():
    s = _scene()
    res = app.api_answer(s.image, s.questions[0].text, "scenes", "divprune", 20, None)
    assert len(res["kept_indices"][0]) == 20 and res["pruned_answer"] and "stats" in res
    grid, rows = app.on_compare(s.image, s.questions[0].text, "scenes", 25, 0, progress=_noop)
    assert grid.size[0] > 400 and {r[0] for r in rows} == set(__import__("resprune").list_methods())


def test_bad_model_and_budget_are_messages():
    s = _scene()
    with pytest.raises(gr.Error, match="Could not load model 'no/such'"):
        app.run_answer(s.image, "What colour?", "no/such", "resprune", 25, 0, 0.75, None)
    with pytest.raises(gr.Error, match="more than the 144 visual tokens"):
        app.run_answer(s.image, "What colour?", "scenes", "resprune", 25, 145, 0.75, None)


def test_new_scene_suggests_a_question():
    image, question, info = app.on_new_scene(5)
    assert image.size == (192, 192) and question.endswith("?") and "expected answer" in info


def _noop(*args, **kwargs):
    return None
