"""Image input: every odd image either becomes a sane RGB image with a note, or a clear ImageInputError."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from resprune.images import ImageInputError, load_image


def _save(tmp_path, im: Image.Image, name: str, **kw) -> str:
    p = tmp_path / name
    im.save(p, **kw)
    return str(p)


@pytest.mark.parametrize(
    "mode, note",
    [("L", "grayscale"), ("RGBA", "transparent"), ("CMYK", "CMYK"), ("I;16", "16"), ("P", "P image"), ("1", "gray")],
)
def test_modes_become_rgb_with_a_note(tmp_path, mode, note):
    arr = (np.arange(32 * 48) % 251).reshape(32, 48)
    if mode == "I;16":
        im = Image.fromarray((arr * 200).astype(np.uint16))
        assert im.mode.startswith("I;16")
        src = _save(tmp_path, im, "deep.png")
    else:
        im = Image.fromarray(arr.astype(np.uint8)).convert(mode)
        src = _save(tmp_path, im, f"x.{'jpg' if mode == 'CMYK' else 'png'}")
    out = load_image(src)
    assert out.image.mode == "RGB" and out.image.size == (48, 32)
    assert any(note.lower() in n.lower() for n in out.notes), out.notes
    if mode == "I;16":  # 16-bit values are scaled, not clipped to white
        a = np.asarray(out.image)[..., 0]
        assert 0 < a.mean() < 255 and a.max() > 100


def test_rgb_passes_unchanged(tmp_path):
    im = Image.new("RGB", (20, 10), (1, 2, 3))
    out = load_image(_save(tmp_path, im, "a.png"))
    assert out.notes == () and np.asarray(out.image)[0, 0].tolist() == [1, 2, 3]
    assert load_image(im).image.size == (20, 10)
    assert load_image(np.zeros((10, 12, 3), np.uint8)).image.size == (12, 10)


def test_tiny_image_is_upscaled_with_a_note():
    out = load_image(Image.new("RGB", (1, 1), (200, 0, 0)))
    assert min(out.image.size) >= 8 and "tiny image (1x1)" in out.notes[0]


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(ImageInputError, match="no image was given"):
        load_image(None)
    (tmp_path / "notes.txt").write_text("hello, not an image")
    with pytest.raises(ImageInputError, match="'notes.txt' is not an image file"):
        load_image(str(tmp_path / "notes.txt"))
    good = _save(tmp_path, Image.new("RGB", (64, 64), (9, 9, 9)), "c.png")
    data = open(good, "rb").read()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageInputError, match="'cut.png' is corrupt or truncated"):
        load_image(str(tmp_path / "cut.png"))
    with pytest.raises(ImageInputError, match="does not exist"):
        load_image(str(tmp_path / "missing.png"))
    with pytest.raises(ImageInputError, match="must be a file path, a PIL image"):
        load_image(3.5)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    # a 1-bit PNG of 12000 x 12000 = 144 MP is a few KB on disk
    bomb = Image.new("1", (12000, 12000))
    src = _save(tmp_path, bomb, "bomb.png", optimize=True)
    with pytest.raises(ImageInputError, match=r"bomb.png.*(144 MP|too large)"):
        load_image(src)
