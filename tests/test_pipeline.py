"""``prune``'s input checks, and loading (presets, folders, clear errors)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from helpers import PROMPT, make_inputs, noise_image

import resprune
from resprune.adapters import ADAPTERS
from resprune.pipeline import prune
from resprune.testing import tiny_model

ROOT = Path(__file__).resolve().parent.parent


def test_bad_inputs(tiny_llava):
    model, proc = tiny_llava
    inputs = make_inputs(proc, noise_image())
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
    with pytest.raises(ValueError, match=r"^model: unsupported model class 'Linear'; supported: ") as err:
        prune(torch.nn.Linear(2, 2), inputs, "resprune", 8)
    listed = str(err.value).split("supported: ", 1)[1].split(", ")
    # every discovered adapter's classes are listed, the four shipped families among them
    assert sorted(listed) == sorted(ADAPTERS)
    for cls in (
        "LlavaForConditionalGeneration",
        "LlavaNextForConditionalGeneration",
        "Qwen2_5_VLForConditionalGeneration",
        "Idefics3ForConditionalGeneration",
    ):
        assert cls in listed
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = prune(model, inputs, "resprune", 1000, processor=proc)
    assert res.selections[0].keep == 64 and any("every token is kept" in str(x.message) for x in w)


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


@pytest.mark.parametrize("name", ["llava_next", "qwen2_5_vl"])
def test_saved_checkpoints_load_through_load_model(name, tmp_path):
    """``load_model`` on a saved folder: the real model class and a processor built without torchvision (Qwen's
    ``AutoProcessor`` needs torchvision; ``QwenImageProcessor`` does not), and prune runs on what it returns."""
    model, proc = tiny_model(name)
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(  # the chat template only in its own file, as on the hub
        (tmp_path / "tokenizer_config.json").read_text().replace('"chat_template"', '"unused_chat_template"')
    )
    m2, p2 = resprune.load_model(str(tmp_path))
    assert type(m2) is type(model) and p2.chat_template
    inputs = make_inputs(p2, noise_image(300, 200))
    ref = make_inputs(proc, noise_image(300, 200))
    assert torch.equal(inputs["input_ids"], ref["input_ids"])
    assert torch.equal(inputs["pixel_values"], ref["pixel_values"])
    res = prune(m2, inputs, "resprune", 5, processor=p2, prompt=PROMPT)
    assert res.selections[0].keep == 5


def test_load_model_device_and_dtype_defaults(tmp_path):
    """``device="auto"`` is the CPU here (no CUDA), float32 by default; an explicit dtype is honoured; devices that
    are not there are refused by name."""
    from resprune.loading import default_dtype, resolve_device

    model, proc = tiny_model("llava")
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    m, _ = resprune.load_model(str(tmp_path))
    assert m.device.type == "cpu" and m.dtype == torch.float32 and not m.training
    m16, _ = resprune.load_model(str(tmp_path), dtype=torch.bfloat16)
    assert m16.dtype == torch.bfloat16
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert default_dtype(torch.device("cpu")) == torch.float32
    if not torch.cuda.is_available():
        with pytest.raises(resprune.ModelLoadError, match="CUDA is not available"):
            resprune.load_model(str(tmp_path), device="cuda")
    with pytest.raises(resprune.ModelLoadError, match="device must be"):
        resprune.load_model(str(tmp_path), device="quantum")
    scenes, _ = resprune.load_model("scenes", device="cpu")
    assert scenes.dtype == torch.float32


def test_answer_reports_median_timings_with_their_repeat_count(tiny_llava):
    model, proc = tiny_llava
    a = resprune.answer(
        model, proc, noise_image(), "What colour is the circle?", keep=8, max_new_tokens=2, timing_repeats=5
    )
    assert a.stats["timing_repeats"] == 5
    assert a.stats["prefill_seconds_after"] > 0 and a.stats["prefill_seconds_before"] > 0
    from resprune.timing import measure

    t = measure(lambda: 3, repeats=4, warmup=1)
    assert len(t.seconds) == 4 and t.result == 3 and t.median >= 0
    with pytest.raises(ValueError, match="repeats must be an int >= 1"):
        measure(lambda: 0, repeats=0)
