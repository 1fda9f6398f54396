"""Image input: every odd image either becomes a sane RGB image with a note, or a clear ImageInputError."""

from __future__ import annotations

import base64
import io
import os

import numpy as np
import pytest
from PIL import Image

from resprune.images import MAX_ASPECT, MAX_FILE_BYTES, ImageInputError, load_image


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


# --- issue 14: bounded work per image, checked from the header; specific errors; no leaked file handles


def _strip_png(tmp_path, w: int, h: int) -> str:
    return _save(tmp_path, Image.new("RGB", (w, h)), f"strip_{w}x{h}.png", optimize=True)


def test_extreme_aspect_ratio_is_refused_from_the_header(tmp_path):
    # 1 x 100000 pixels is a ~500-byte PNG; it used to be upscaled x8 and then resized by the processor to
    # 192 x 19.2 M pixels (~15 GB)
    src = _strip_png(tmp_path, 1, 100_000)
    assert os.path.getsize(src) < 2000
    with pytest.raises(ImageInputError, match=r"strip_1x100000.png.*aspect ratio of 100000:1; at most 20:1"):
        load_image(src)
    data = open(src, "rb").read()
    with pytest.raises(ImageInputError, match="aspect ratio"):
        load_image(data)  # the same bytes
    with pytest.raises(ImageInputError, match="aspect ratio"):
        load_image("data:image/png;base64," + base64.b64encode(data).decode())  # the same as a data: URL
    with pytest.raises(ImageInputError, match="aspect ratio"):
        load_image(np.zeros((1, 100_000), np.uint8))
    with pytest.raises(ImageInputError, match="aspect ratio"):
        load_image(Image.new("L", (100_000, 1)))


def test_the_aspect_limit_is_inclusive_and_tiny_images_stay_small(tmp_path):
    assert MAX_ASPECT == 20
    out = load_image(_strip_png(tmp_path, 1, 20))  # exactly 20:1 is allowed; its 1-px side is upscaled to 8
    assert out.image.size == (8, 160) and "upscaled x8" in out.notes[-1]
    with pytest.raises(ImageInputError, match="aspect ratio of 21:1"):
        load_image(_strip_png(tmp_path, 1, 21))


def test_data_urls_and_bytes_load_like_files(tmp_path):
    im = Image.new("RGBA", (30, 20), (255, 0, 0, 0))
    src = _save(tmp_path, im, "t.png")
    data = open(src, "rb").read()
    for source in (data, io.BytesIO(data), "data:image/png;base64," + base64.b64encode(data).decode()):
        out = load_image(source)
        assert out.image.size == (30, 20) and np.asarray(out.image)[0, 0].tolist() == [255, 255, 255]
        assert any("transparent" in n for n in out.notes)
    with pytest.raises(ImageInputError, match="not valid base64|not an image file"):
        load_image("data:image/png;base64,@@@@")
    with pytest.raises(ImageInputError, match="data: URL must be of the form"):
        load_image("data:image/png,rawdata")
    with pytest.raises(ImageInputError, match="URLs are not fetched"):
        load_image("https://example.com/cat.png")


def test_files_above_the_size_limit_are_refused_before_opening(tmp_path):
    big = tmp_path / "big.png"
    with open(big, "wb") as f:  # sparse: no disk used
        f.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(ImageInputError, match=r"'big.png' is 32.0 MiB, more than the 32 MiB allowed"):
        load_image(str(big))


@pytest.mark.parametrize(
    "arr, match",
    [
        (np.zeros((5, 5, 7), np.uint8), r"C in \(1, 3, 4\) channels.*\(5, 5, 7\)"),
        (np.full((8, 8, 3), np.nan), "NaN or inf"),
        (np.full((8, 8), np.inf, np.float32), "NaN or inf"),
        (np.full((8, 8), 300.0), r"float array values must lie in \[0, 1\] or \[0, 255\]"),
        (np.full((8, 8), -1, np.int32), r"integer array values must lie in \[0, 255\]"),
        (np.zeros((8, 8, 3), np.complex64), "not an image type"),
        (np.zeros((0, 8, 3), np.uint8), "non-empty"),
        (np.zeros((8,), np.uint8), r"\(H, W\) or \(H, W, C\)"),
    ],
)
def test_bad_arrays_are_specific_errors(arr, match):
    with pytest.raises(ImageInputError, match=match):
        load_image(arr)


def test_odd_arrays_convert_with_a_note():
    out = load_image(np.full((8, 8, 3), 0.5))
    assert np.asarray(out.image)[0, 0].tolist() == [128, 128, 128] and "float array in [0, 1]" in out.notes[0]
    out = load_image(np.full((8, 8), 65535, np.uint16))
    assert np.asarray(out.image)[0, 0].tolist() == [255, 255, 255] and "65535" in out.notes[0]
    out = load_image(np.ones((8, 8), bool))
    assert np.asarray(out.image).min() == 255 and "boolean" in out.notes[0]
    assert load_image(np.full((8, 8, 1), 7, np.uint8)).image.getpixel((0, 0)) == (7, 7, 7)


def test_folders_and_devices_are_not_reported_as_missing(tmp_path):
    with pytest.raises(ImageInputError, match="is a folder, not an image file"):
        load_image(str(tmp_path))
    if os.path.exists("/dev/zero"):
        with pytest.raises(ImageInputError, match="'zero' is not a regular file"):
            load_image("/dev/zero")
    with pytest.raises(ImageInputError, match="'missing.png' does not exist"):
        load_image(str(tmp_path / "missing.png"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to count open files")
def test_no_file_handle_stays_open_on_refusals(tmp_path):
    bomb = _save(tmp_path, Image.new("1", (12000, 12000)), "bomb.png", optimize=True)
    strip = _strip_png(tmp_path, 1, 100_000)
    good = _save(tmp_path, Image.new("RGB", (16, 16)), "g.png")
    data = open(good, "rb").read()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        for src in (bomb, strip, str(tmp_path / "cut.png")):
            with pytest.raises(ImageInputError):
                load_image(src)
        load_image(good)
    assert len(os.listdir("/proc/self/fd")) <= before


def test_the_loaded_image_is_independent_of_the_file(tmp_path):
    src = _save(tmp_path, Image.new("RGB", (16, 16), (1, 2, 3)), "a.png")
    out = load_image(src)
    os.remove(src)  # the returned image holds no reference to the (closed) file
    assert out.image.getpixel((3, 3)) == (1, 2, 3)
