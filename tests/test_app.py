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
    pruned, unpruned, agree, info, overlay, curves, relevance, stats, step, step_img, files, state, api, token = out
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


def test_model_list_shows_the_default_then_the_world_2_model(monkeypatch):
    """The offline default first, then the bundled world-2 model ``scenes-v2``, its label saying it is the world-2
    model, then every real checkpoint: each preset once."""
    from resprune import loading

    monkeypatch.setattr(
        loading,
        "preset_statuses",
        lambda timeout: {n: loading.PresetStatus(True, "bundled", "") for n in loading.PRESETS},
    )
    choices = app.model_choices()
    values = [v for _, v in choices]
    labels = {v: label for label, v in choices}
    bundled = [n for n, p in loading.PRESETS.items() if p.bundled]
    assert values[0] == app.DEFAULT_MODEL and set(values[: len(bundled)]) == set(bundled) == {"scenes", "scenes-v2"}
    assert sorted(values) == sorted(loading.PRESETS)
    assert labels[app.DEFAULT_MODEL].startswith(
        f"{app.DEFAULT_MODEL}: offline default (small LLaVA trained on scene world {app.default_world()}"
    )
    other = next(n for n in bundled if n != app.DEFAULT_MODEL)
    w = app.model_world(other)
    assert labels[other].startswith(f"{other}: the world-{w} model ({app.WORLD_SUMMARY[w]}")
    if other == "scenes-v2":
        assert labels["scenes-v2"].startswith("scenes-v2: the world-2 model (textured, cluttered scenes of 2-7 objects")
    assert "world 1" in labels["scenes"] and "world-2" not in labels["scenes"]
    assert all("world-2" not in labels[n] for n, p in loading.PRESETS.items() if not p.bundled)
    assert loading.PRESETS["scenes-v2"].bundled and loading.PRESETS["scenes-v2"].world == 2
    assert (app.model_world("scenes"), app.model_world("scenes-v2")) == (1, 2)
    assert app.model_world("llava-1.5-7b") is None and app.model_world("no/such") is None


def test_offline_model_list_and_instant_refusal(monkeypatch, tmp_path):
    """Offline (HF_HUB_OFFLINE, an empty hub cache): the model list marks every real checkpoint as not available
    here, the bundled model as available, and picking one fails at once with a message for a web visitor (no
    25 s wait, no Python call, no path)."""
    from resprune import loading

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    labels = dict((v, k) for k, v in app.model_choices())
    assert "not available" not in labels["scenes"]
    for name, preset in loading.PRESETS.items():
        if not preset.bundled:
            assert labels[name].endswith("(not available on this server)"), labels[name]
    s = _scene()
    import resprune

    attempts = []
    monkeypatch.setattr(resprune, "load_model", lambda *a, **k: attempts.append(a))
    with pytest.raises(gr.Error) as err:
        app.run_answer(s.image, "What colour?", "llava-1.5-7b", "resprune", 25, 0, 0.75, None)
    assert attempts == []  # refused before any load attempt (no download, no spinner, no lock held)
    msg = str(err.value)
    assert "works offline" in msg and "llava-1.5-7b" in msg
    assert "load_model" not in msg and "/" not in msg.replace("llava-hf/", "")


def test_new_scene_suggests_a_question():
    from resprune import scenes

    image, question, info, expected = app.on_new_scene(5)
    assert image.size == (192, 192) and question.endswith("?") and "expected answer" in info
    assert expected == {"question": question, "answer": scenes.sample(5, app.default_world()).questions[0].answer}


def test_new_scene_keeps_a_typed_question_unless_asked():
    _, q, _, exp = app.on_new_scene(5, app.DEFAULT_INSTRUCTION, None)
    assert q == exp["question"]  # the default is not the user's question
    _, q2, _, exp2 = app.on_new_scene(6, q, exp)
    assert q2 == exp2["question"]  # nor is the previous suggestion
    _, kept, info, exp3 = app.on_new_scene(7, "Is there a big red square?", exp2)
    assert kept == "Is there a big red square?" and "Your question was kept" in info and exp3["question"] in info
    _, replaced, _, exp4 = app.on_new_scene(7, "Is there a big red square?", exp2, True)
    assert replaced == exp4["question"] != "Is there a big red square?"


def test_new_scene_draws_from_the_selected_models_world():
    import re

    import numpy as np

    from resprune.scenes import world

    def pixels(im):
        return np.asarray(im.convert("RGB"))

    image, question, info, expected = app.on_new_scene(5, model_name="scenes-v2")
    truth = world.sample(5, 2)
    assert np.array_equal(pixels(image), pixels(world.render(5, 2)[0]))
    assert not np.array_equal(pixels(image), pixels(world.render(5, 1)[0]))
    assert expected == {"question": truth.questions[0].text, "answer": truth.questions[0].answer} and question == (
        truth.questions[0].text
    )
    assert info.startswith("Scene #5 of scene world 2;") and f"**{truth.questions[0].answer}**" in info
    for name in ("scenes", "llava-1.5-7b"):  # world 1's model and models of no scene world: world 1, as before
        image, _, info, expected = app.on_new_scene(5, model_name=name)
        assert np.array_equal(pixels(image), pixels(world.render(5, 1)[0])) and info.startswith("Scene #5;")
        assert expected["answer"] == world.sample(5, 1).questions[0].answer
    # no model named: the default model's world
    image, _, info, expected = app.on_new_scene(5)
    assert np.array_equal(pixels(image), pixels(world.render(5, app.default_world())[0]))
    assert expected["answer"] == world.sample(5, app.default_world()).questions[0].answer
    assert app.default_world() == app.model_world(app.DEFAULT_MODEL)
    # the button: a random scene of the dropdown's model, every old output cleared
    out = app.on_new_scene_ui(app.DEFAULT_INSTRUCTION, None, False, "scenes-v2")
    seed = int(re.match(r"Scene #(\d+) of scene world 2;", out[2]).group(1))
    assert np.array_equal(pixels(out[0]), pixels(world.render(seed, 2)[0]))
    assert out[3]["answer"] == world.sample(seed, 2).questions[0].answer
    assert out[4:] == (*app.cleared_outputs(), *app.CLEARED_COMPARE)
    # the page hands the model dropdown to New scene and to the gallery
    demo = app.build_demo()
    fns = {d.name: d for d in demo.fns.values()}
    for name in ("on_new_scene_ui", "on_example_select", "on_model"):
        labels = [getattr(b, "label", None) for b in fns[name].inputs]
        assert "Model" in labels, (name, labels)


def test_new_scene_of_world_2_runs_on_the_world_2_model_with_its_ground_truth():
    """The real scenes-v2 checkpoint, through the app's own loader: a world-2 New scene is a finding, marked
    against its ground truth; a photo is not."""
    image, question, _, expected = app.on_new_scene(20_000_011, model_name="scenes-v2")
    out = app.on_run(image, question, "scenes-v2", "resprune", 25, 0, 0.75, "auto", expected, progress=_noop)
    assert out[0] and out[1] and f"Expected answer **{expected['answer']}**" in out[2]
    assert "Not a finding" not in out[2] and out[12]["outside_world"] == [] and out[12]["comparable"] is True
    assert "kept **36 of 144**" in out[3]
    model, _ = app.get_model("scenes-v2")
    assert model.config.text_config.hidden_size == 192  # the world-2 model, not the default (128)
    photo = app.on_run(
        _photo(), "What colour is the circle?", "scenes-v2", "resprune", 25, 0, 0.75, "auto", None, progress=_noop
    )
    assert "Not a finding" in photo[2] and "(scene world 2)" in photo[2] and photo[12]["comparable"] is False


def test_world_notes_follow_the_models_world():
    from resprune.scenes import world

    seeds = range(20_000_000, 20_000_100)
    fits = [app.scene_world_fit(world.render(s, 2)[0], 2) for s in seeds]
    photos = [Image.open(_photo(n)) for n in ("astronaut.jpg", "chelsea.jpg", "coffee.jpg")]
    # world 2's check: its scenes (measured min 0.984 over 200) and the photos (at most 0.52 of these) well apart
    assert min(fits) > app.SCENE_FIT_MIN_V2 + 0.15
    assert max(app.scene_world_fit(p, 2) for p in photos) < app.SCENE_FIT_MIN_V2 - 0.15
    q = "What colour is the circle?"
    for seed in (20_000_002, 20_000_050):
        assert app.world_notes("scenes-v2", world.render(seed, 2)[0], q) == []
        assert app.world_notes("scenes-v2", world.render(seed, 1)[0], q) == []  # world 1 is in world 2's palette
    for p in photos:
        notes = app.world_notes("scenes-v2", p, q)
        assert len(notes) == 1 and "outside the offline model's world (scene world 2)" in notes[0], notes
        assert "textured" in notes[0] and "flat background" not in notes[0]
    # the world-1 model on a textured world-2 scene: outside its world, in world 1's words
    note = app.world_notes("scenes", world.render(20_000_002, 2)[0], q)
    assert len(note) == 1 and "(scene world 1)" in note[0] and "flat background" in note[0]
    # the vocabulary note names the selected model's world
    v2 = app.world_notes("scenes-v2", world.render(20_000_002, 2)[0], "What is the woman wearing?")
    assert v2 and "scene world 2: scenes of 2 to 7 objects" in v2[0] and "zero to five" in v2[0] and "'woman'" in v2[0]
    v1 = app.world_notes("scenes", world.render(20_000_002, 1)[0], "What is the woman wearing?")
    assert v1 and "scene world 1: scenes of 2 to 5 objects" in v1[0] and "zero to five" in v1[0]
    with pytest.raises(ValueError, match="world must be one of"):
        app.scene_world_fit(photos[0], 3)


def test_objects_per_scene_as_the_worlds_draw_them():
    from resprune.scenes import world

    for w, (lo, hi) in app.OBJECTS_PER_SCENE.items():
        counts = {len(world.render(s, w)[1]) for s in range(20_000_000, 20_000_300)}
        assert min(counts) >= lo and max(counts) == hi, (w, sorted(counts))
    assert world.NUMBERS[0] == "zero" and world.NUMBERS[-1] == "five"  # the words the notes name


def test_examples_follow_the_models_world():
    import numpy as np

    from resprune.scenes import world

    ex1, ex2 = app.examples(1), app.examples(2)
    assert ex1 == app.model_examples("scenes") == app.model_examples("llava-1.5-7b")
    assert app.examples() == app.examples(app.default_world()) == app.model_examples(app.DEFAULT_MODEL)
    assert app.model_examples("scenes-v2") == ex2
    scenes2 = [e for e in ex2 if e["kind"] == "scene"]
    assert len(scenes2) >= 4 and all(e["world"] == 2 and Path(e["file"]).name.startswith("scene-w2-") for e in scenes2)
    assert all(e.get("world", 1) == 1 for e in ex1 if e["kind"] == "scene")
    assert [e["file"] for e in ex1 if e["kind"] == "photo"] == [e["file"] for e in ex2 if e["kind"] == "photo"]
    # an example of world 2 is that world's scene, pixel for pixel, with its ground truth
    image, question, info, expected = app.on_example(0, "scenes-v2")
    seed = int(Path(scenes2[0]["file"]).stem.rsplit("-", 1)[1])
    assert np.array_equal(np.asarray(image), np.asarray(world.render(seed, 2)[0]))
    assert expected == {"question": question, "answer": scenes2[0]["answer"]} and "scene world 2" in info
    # a new model in the list: the gallery shows its world's examples
    upd = app.on_model("scenes-v2")
    assert [f for f, _ in upd["value"]] == [e["file"] for e in ex2] and "world-2 scenes" in upd["label"]
    assert [f for f, _ in app.on_model("scenes")["value"]] == [e["file"] for e in ex1]


def _noop(*args, **kwargs):
    return None


# ---------------------------------------------------------------------------------------------------------------
# The teaching UX (issue 18): first screen, honesty, state, figures that explain themselves, numbers


def _photo(name: str = "astronaut.jpg") -> str:
    return str(app.EXAMPLES_DIR / name)


def _run(image, question, method="resprune", expected=None):
    out = app.on_run(image, question, "scenes", method, 25, 0, 0.75, "auto", expected, progress=_noop)
    assert len(out) == len(app.cleared_outputs())
    return out


def test_examples_gallery_has_scenes_with_ground_truth_and_licensed_photos():
    from resprune import scenes

    licence = (app.EXAMPLES_DIR / "LICENSE.md").read_text()
    photo_fit_max = {1: 0.5, 2: 0.7}  # world 2's palette is wider (muted textures, lighting): measured <= 0.52
    for world in (1, 2):
        ex = app.examples(world)
        kinds = [e["kind"] for e in ex]
        assert kinds.count("scene") >= 4 and kinds.count("photo") >= 2
        for e in ex:
            path = Path(e["file"])
            assert path.stat().st_size < 100_000, path.name
            with Image.open(path) as im:
                assert max(im.size) <= 512
                fit = app.scene_world_fit(im, world)
            if e["kind"] == "scene":  # the ground truth is the scene world's own
                seed = int(path.stem.rsplit("-", 1)[1])
                truth = {q.text: q.answer for q in scenes.sample(seed, world).questions}
                assert truth[e["question"]] == e["answer"] and fit > 0.95
            else:
                assert e["answer"] is None and path.name in licence and e["credit"]
                assert fit < photo_fit_max[world], path.name


def test_scene_world_fit_separates_scenes_from_other_images():
    import numpy as np

    from resprune import scenes

    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8))
    assert app.scene_world_fit(noise) < app.SCENE_FIT_MIN
    for seed in (20_000_002, 20_000_050):
        im = scenes.sample(seed).image
        assert app.scene_world_fit(im) == 1.0
        assert app.scene_world_fit(im.resize((500, 500))) > 0.95  # an enlarged scene is still a scene
    assert app.world_notes("scenes", noise, "What colour is the circle?")
    assert app.world_notes("other/model", noise, "What colour is the circle?") == []


def test_run_with_no_image_is_one_message_not_an_error_on_every_output():
    out = _run(None, "What colour is the circle?")
    assert out[2] == app.NO_IMAGE and "examples" in out[2]
    assert out[0] == out[1] == "" and out[4] is None and out[11] is None


def test_first_screen_shows_the_first_example_already_run():
    out = app.on_first_screen(progress=_noop)
    image, question, info, expected, pruned, unpruned, verdict, _, overlay = out[:9]
    first = app.examples()[0]
    assert question == first["question"] and expected["answer"] == first["answer"] and "expected answer" in info
    assert pruned and unpruned and overlay.size[0] > 200
    assert f"Expected answer **{first['answer']}**" in verdict
    assert app.on_first_screen(progress=_noop) is out  # computed once, then reused
    app.warm_first_screen()  # what ``main`` runs before the server starts: the same cached screen
    assert app.on_first_screen(progress=_noop) is out


def test_a_photo_on_the_offline_model_is_not_presented_as_a_finding():
    from resprune import scenes

    out = _run(_photo(), "What colour is the circle?")  # scene words on a photo: the image gives it away
    verdict = out[2]
    assert "Not a finding" in verdict and "outside the offline model's world" in verdict
    assert "differ" not in verdict and "**The answers agree" not in verdict
    assert out[4].size[0] > 200  # the pictures still show what was kept
    assert out[12]["comparable"] is False and out[12]["outside_world"]
    # words outside the vocabulary on a scene: said where the answers are, too
    s = scenes.sample(20_000_010)
    verdict = _run(s.image, "What is the woman wearing?")[2]
    assert "Not a finding" in verdict and "'woman'" in verdict
    # a scene and its own question: a real verdict, marked against the ground truth
    q = s.questions[0]
    out = _run(s.image, q.text, expected={"question": q.text, "answer": q.answer})
    assert ("agree" in out[2] or "differ" in out[2]) and f"Expected answer **{q.answer}**" in out[2]
    assert out[12]["comparable"] is True and out[12]["outside_world"] == []


def test_empty_answers_are_shown_and_never_compared():
    assert app.shown("") == app.shown("  ") == "(empty answer)" and app.shown("red") == "red"
    assert app.figure_answer("", False) == "(empty answer)"  # the figures' titles say it too
    assert app.figure_answer("left", True) == "left (meaningless: outside the model's world)"
    assert app.agreement_markdown("", "") == "**Both answers are empty**: nothing to compare."
    assert app.agreement_markdown("above", "") == "**One answer is empty**: nothing to compare."
    assert "pruned ✓ right, unpruned ✗ wrong" in app.agreement_markdown("Red.", "blue", expected="red")
    assert app._expected_answer({"question": "Q?", "answer": "red"}, "Q?") == "red"
    assert app._expected_answer({"question": "Q?", "answer": "red"}, "Another?") is None  # an edited question


def test_a_new_image_clears_every_old_output():
    out = app.on_new_image()
    assert len(out) == len(app.cleared_outputs()) + 6
    assert out[:8] == ("", "", "", "", None, None, None, [])
    assert out[9:] == (None, None, None, None, "", None, "", None, [], None, "")


def test_settings_shown_only_for_the_methods_that_use_them():
    import resprune

    seen = set()
    for m in resprune.list_methods():
        acc, alpha, seed, query = app.on_method(m)
        assert alpha["visible"] == ("alpha" in resprune.method_info(m).hparams)
        assert seed["visible"] == app.method_settings(m)["seed"]
        assert query["visible"] == resprune.method_info(m).text_aware
        assert acc["visible"] == (alpha["visible"] or seed["visible"] or query["visible"])
        seen.add(acc["visible"])
    assert seen == {True, False}  # some methods take the settings and some do not: the check can fail


def test_query_words_option_reaches_prune():
    """The Query words setting: nouns (the paper), keywords, instruction (every token); the words used are shown;
    a text-free method ignores it; a bad value is a message."""
    from resprune import scenes

    image = scenes.sample(20_000_010).image
    question = "What colour is the small circle?"
    words = {}
    for mode in ("nouns", "keywords", "instruction"):
        out = app.on_run(image, question, "scenes", "resprune", 25, 0, 0.75, "auto", None, mode, progress=_noop)
        state = out[11]
        words[mode] = [w for ws in state["answer"].result.query_words for w in ws]
        assert f"query words: {', '.join(words[mode])}" in out[3]
    assert "small" not in words["nouns"] and "small" in words["keywords"]
    assert len(words["instruction"]) > len(words["keywords"])
    default = app.on_run(image, question, "scenes", "resprune", 25, 0, 0.75, "auto", None, None, progress=_noop)
    assert [w for ws in default[11]["answer"].result.query_words for w in ws] == words["nouns"]
    assert app.method_params("divprune", None, None, "keywords") == {}  # text-free: not passed
    with pytest.raises(gr.Error, match="Query words must be one of method default, nouns, keywords, instruction"):
        app.run_answer(image, question, "scenes", "resprune", 25, 0, 0.75, None, query_mode="verbs")


def test_clicking_a_patch_names_its_token():
    import viz
    from resprune import scenes

    out = _run(scenes.sample(20_000_010).image, "What colour is the circle?")
    overlay, state = out[4], out[11]
    res = state["answer"].result
    first = int(res.selections[0].order[0])
    left, top, right, bottom = overlay.info["viz_panels"][0]["pixels"]
    hit = next(
        (x, y)
        for x in range(int(left) + 1, int(right) - 1, 3)
        for y in range(int(top) + 1, int(bottom) - 1, 3)
        if (viz.token_at(res, x, y, figure=overlay) or {}).get("index") == first
    )
    text = app.on_token_click(state, gr.SelectData(None, {"index": list(hit), "value": None}))
    assert f"**token {first}**" in text and "pick **#1**" in text and "residual energy at its pick" in text
    assert "relevance 0." in text or "relevance 1" in text
    assert "No token" in app.on_token_click(state, gr.SelectData(None, {"index": [0, 0], "value": None}))


def test_efficiency_table_shows_medians_and_explains_in_llm_methods():
    import resprune
    from resprune import scenes

    s = scenes.sample(20_000_010)
    out = _run(s.image, s.questions[0].text)
    assert "prefill time (median of 3 runs)" in [r[0] for r in out[7]]
    assert "median of 3 runs" in app.on_stats_note(out[11])
    in_llm = [m for m in resprune.list_methods() if resprune.method_info(m).stage == "llm"]
    assert in_llm  # the check below runs on at least one method
    out = _run(s.image, s.questions[0].text, method=in_llm[0])
    assert "visual tokens, averaged over layers" in [r[0] for r in out[7]]
    note = app.on_stats_note(out[11])
    assert "prunes inside the language model" in note and "first 2 layers see all 144 visual tokens" in note
    assert "inside the language model" not in app.efficiency_note(resprune.DEFAULT_METHOD, {"timing_repeats": 3})


def test_only_plain_data_crosses_the_gpu_boundary():
    import inspect
    import pickle

    from resprune import scenes

    assert list(inspect.signature(app._answer).parameters)[:6] == [
        "model_name",
        "image",
        "prompt",
        "method",
        "keep",
        "compare",
    ]
    s = scenes.sample(20_000_010)
    ans = app._answer("scenes", s.image, s.questions[0].text, app.DEFAULT_METHOD, 20, False)
    assert ans.result.generate_kwargs == {} and ans.result.context is None
    blob = pickle.dumps(ans)
    assert len(blob) < 5_000_000 and b"LlavaForConditionalGeneration" not in blob


def readme_snippets() -> list[str]:
    """The README's ```python blocks, in order."""
    import re

    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_front_matter_is_spaces_ready():
    front = (ROOT / "README.md").read_text().split("---\n")[1]
    meta = dict(line.split(": ", 1) for line in front.strip().splitlines())
    assert len(meta["short_description"]) <= 60, meta["short_description"]
    assert meta["python_version"].strip('"').startswith("3.") and meta["app_file"] == "app.py"


def test_readme_python_snippet_runs_as_written():
    code = next(c for c in readme_snippets() if "import resprune" in c)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code + "\nassert ans.pruned and out.shape[0] == 1 and len(sel.keep_idx) == 64",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]


def test_two_methods_side_by_side_name_the_patches_that_differ():
    import resprune
    from resprune import scenes

    s = scenes.sample(20_000_010)
    a = resprune.DEFAULT_METHOD
    b = next(m for m in resprune.list_methods() if m != a and resprune.method_info(m).stage == "pre-llm")
    grid, text = app.on_side_by_side(s.image, s.questions[0].text, "scenes", a, b, 25, 0, progress=_noop)
    assert grid.size[0] > 400 and "At **36 of 144** tokens both keep" in text
    both, only_a, only_b = (int(x) for x in __import__("re").findall(r"keep\w* \**(\d+)", text)[:3])
    assert both + only_a == 36 and both + only_b == 36
    with pytest.raises(gr.Error, match="two different methods"):
        app.on_side_by_side(s.image, s.questions[0].text, "scenes", a, a, 25, 0, progress=_noop)


def test_a_slow_model_load_does_not_block_visitors_of_another_model(monkeypatch):
    """Model loads and runs are serialised per model: while one visitor's model is still loading (a real model whose
    load is held until the test releases it), a Run on the loaded offline model completes. With one lock for all
    models the Run would wait for the release and the bounded join below would fail."""
    import threading

    import resprune
    from resprune import scenes

    real = resprune.load_model
    started, release = threading.Event(), threading.Event()

    def held(name, *a, **k):
        if name == "slow-model":
            started.set()
            release.wait(60)
            return real("scenes")
        return real(name, *a, **k)

    app._load("scenes")
    monkeypatch.setattr(resprune, "load_model", held)
    done = {}
    loader = threading.Thread(target=lambda: done.setdefault("slow", app._load("slow-model")), daemon=True)
    loader.start()
    try:
        assert started.wait(60)
        image = scenes.sample(20_000_011).image
        run = threading.Thread(
            target=lambda: done.setdefault(
                "run",
                app.on_run(
                    image, "What colour is the circle?", "scenes", "resprune", 25, 0, 0.75, "auto", progress=_noop
                ),
            ),
            daemon=True,
        )
        run.start()
        run.join(60)
        assert "run" in done and done["run"][0]  # answered while the other model was still loading
        assert "slow" not in done and loader.is_alive()
    finally:
        release.set()
        loader.join(60)
        app.get_model.cache_clear()
    assert "slow" in done
