"""Every image mode Pillow decodes reaches the model as the right uint8 RGB (or L) pixels.

Each test writes one file with Pillow in one mode, reads it through a real folder source and
compares against an expected array written here in numpy (solid colours, gradients and the
compositing-over-white rule), never through augdiff's own conversion helpers.
"""

from __future__ import annotations

import zipfile

import ml_collections
import numpy as np
import pytest
from PIL import Image, features

from augdiff.data.sources import open_real_source

H, W = 6, 16


def _cfg(path, channels=3) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(path=str(path), tfds_name="", image_size=0,
                                          channels=channels, skip_corrupt=False, per_class=0,
                                          imbalance_factor=1.0, subset_seed=0))


def _read(tmp_path, name, save, channels=3) -> np.ndarray:
    """Save one file as ``root/train/x/<name>`` with ``save(path)``; read it back via a source."""
    d = tmp_path / "root" / "train" / "x"
    d.mkdir(parents=True)
    save(d / name)
    src = open_real_source(_cfg(tmp_path / "root", channels), "train")
    assert len(src) == 1, f"{name} not recognised as an image"
    img = src[0]["image"]
    assert img.dtype == np.uint8 and img.shape == (H, W, channels)
    return img


def _rgb(v) -> np.ndarray:
    """Solid colour ``v`` (3 ints) as an expected [H, W, 3] uint8 array."""
    return np.broadcast_to(np.asarray(v, np.uint8), (H, W, 3))


def _gray3(a) -> np.ndarray:
    return np.repeat(np.asarray(a, np.uint8)[..., None], 3, axis=-1)


GRAD16 = np.tile(np.linspace(0, 65535, W).round().astype(np.uint16), (H, 1))
# 16 bits to 8: v * 255 / 65535, rounded (65535 -> 255, 0 -> 0)
GRAD16_AS_8 = np.floor(GRAD16.astype(np.float64) * 255.0 / 65535.0 + 0.5).astype(np.uint8)


def test_png_16bit_grayscale_scaled_not_white(tmp_path):
    img = _read(tmp_path, "g.png", lambda p: Image.fromarray(GRAD16).save(p))
    assert Image.open(next((tmp_path / "root/train/x").iterdir())).mode.startswith("I")
    np.testing.assert_array_equal(img, _gray3(GRAD16_AS_8))
    assert (img == 255).mean() < 0.2  # the bug this guards: 99.6 % pure white


def test_png_16bit_grayscale_to_one_channel(tmp_path):
    img = _read(tmp_path, "g.png", lambda p: Image.fromarray(GRAD16).save(p), channels=1)
    np.testing.assert_array_equal(img[..., 0], GRAD16_AS_8)


def test_tiff_16bit_and_mode_i(tmp_path):
    # a mode "I" (32-bit) image holding 16-bit values, as some 16-bit files open
    def save(p):
        Image.fromarray(GRAD16.astype(np.int32), "I").save(p)

    img = _read(tmp_path, "g.tif", save)
    np.testing.assert_array_equal(img, _gray3(GRAD16_AS_8))


def test_palette_png_without_transparency(tmp_path):
    idx = (np.arange(W)[None, :] % 2).repeat(H, 0).astype(np.uint8)

    def save(p):
        im = Image.fromarray(idx, "P")
        im.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
        im.save(p)

    expected = np.where(idx[..., None] == 0, [10, 20, 30], [200, 100, 0]).astype(np.uint8)
    np.testing.assert_array_equal(_read(tmp_path, "p.png", save), expected)


def test_palette_png_with_transparency_is_white(tmp_path):
    idx = (np.arange(W)[None, :] % 2).repeat(H, 0).astype(np.uint8)

    def save(p):
        im = Image.fromarray(idx, "P")
        im.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
        im.save(p, transparency=0)  # index 0 fully transparent

    expected = np.where(idx[..., None] == 0, [255, 255, 255], [200, 100, 0]).astype(np.uint8)
    np.testing.assert_array_equal(_read(tmp_path, "p.png", save), expected)


def test_cmyk_tiff_exact_and_jpeg_close(tmp_path):
    # pure inks: C+Y = green, M = magenta, K = black
    cmyk = np.zeros((H, W, 4), np.uint8)
    cmyk[:, :4] = [255, 0, 255, 0]
    cmyk[:, 4:8] = [0, 255, 0, 0]
    cmyk[:, 8:12] = [0, 0, 0, 255]
    expected = np.zeros((H, W, 3), np.uint8)
    expected[:, :4] = [0, 255, 0]
    expected[:, 4:8] = [255, 0, 255]
    expected[:, 8:12] = [0, 0, 0]
    expected[:, 12:] = [255, 255, 255]  # no ink: paper white
    img = _read(tmp_path / "t", "c.tif", lambda p: Image.fromarray(cmyk, "CMYK").save(p))
    np.testing.assert_array_equal(img, expected)
    solid = np.broadcast_to(np.asarray([0, 255, 255, 0], np.uint8), (H, W, 4))  # red
    img = _read(tmp_path / "j", "c.jpg",
                lambda p: Image.fromarray(np.ascontiguousarray(solid), "CMYK").save(p, quality=95))
    np.testing.assert_allclose(img.astype(int), _rgb([255, 0, 0]).astype(int), atol=6)


def test_la_png_composited_over_white(tmp_path):
    la = np.zeros((H, W, 2), np.uint8)
    la[..., 0] = 100
    la[:, : W // 2, 1] = 255  # opaque half
    la[:, W // 2:, 1] = 0  # transparent half
    expected = np.where(np.arange(W)[None, :, None] < W // 2, 100, 255).repeat(H, 0)
    img = _read(tmp_path, "la.png", lambda p: Image.fromarray(la, "LA").save(p))
    np.testing.assert_array_equal(img, np.repeat(expected, 3, -1).astype(np.uint8))


def test_rgba_png_composited_over_white(tmp_path):
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., :3] = [200, 40, 0]
    rgba[:, :4, 3] = 255
    rgba[:, 4:8, 3] = 0
    rgba[:, 8:, 3] = 128
    a = rgba[..., 3:].astype(np.float64) / 255.0
    expected = rgba[..., :3] * a + 255.0 * (1 - a)  # "over" a white background
    img = _read(tmp_path, "rgba.png", lambda p: Image.fromarray(rgba, "RGBA").save(p))
    np.testing.assert_allclose(img.astype(float), expected, atol=1.0)
    np.testing.assert_array_equal(img[:, 4:8], _rgb([255, 255, 255])[:, 4:8])


def test_grayscale_l_and_bilevel(tmp_path):
    grad = np.tile(np.arange(W, dtype=np.uint8) * 17, (H, 1))
    img = _read(tmp_path / "l", "l.png", lambda p: Image.fromarray(grad, "L").save(p))
    np.testing.assert_array_equal(img, _gray3(grad))
    checker = (np.add.outer(np.arange(H), np.arange(W)) % 2).astype(bool)
    img = _read(tmp_path / "b", "b.png", lambda p: Image.fromarray(checker).convert("1").save(p))
    np.testing.assert_array_equal(img, _gray3(np.where(checker, 255, 0)))


def test_tiff_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        _read(tmp_path, "a.tiff", lambda p: Image.fromarray(rgb).save(p)), rgb)


def test_gif_first_frame(tmp_path):
    def save(p):
        frames = [Image.new("RGB", (W, H), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
        frames[0].save(p, save_all=True, append_images=frames[1:], duration=50)

    img = _read(tmp_path, "a.gif", save)
    np.testing.assert_array_equal(img, _rgb([255, 0, 0]))


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_webp_lossless(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        _read(tmp_path, "a.webp", lambda p: Image.fromarray(rgb).save(p, lossless=True)), rgb)


def test_bmp(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (H, W, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        _read(tmp_path, "a.bmp", lambda p: Image.fromarray(rgb).save(p)), rgb)


def test_jpeg_solid_colour(tmp_path):
    img = _read(tmp_path, "a.jpg",
                lambda p: Image.new("RGB", (W, H), (30, 160, 90)).save(p, quality=100))
    np.testing.assert_allclose(img.astype(int), _rgb([30, 160, 90]).astype(int), atol=3)


def test_exif_orientation_applied(tmp_path):
    # stored 16 wide x 6 high, left half red; orientation 6 = rotate 90 CW on display.
    # Saved as 6 x 16 so that after the rotation it is 16 x 6 again with red on top.
    stored = np.zeros((W, H, 3), np.uint8)
    stored[:, :H // 2] = [255, 0, 0]  # left half of the stored (portrait) image

    def save(p):
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(stored).save(p, exif=exif, quality=100, subsampling=0)

    img = _read(tmp_path, "o.jpg", save)
    # 90 degrees clockwise: the stored left columns become the top rows
    expected = np.rot90(stored, k=-1)
    np.testing.assert_allclose(img.astype(int), expected.astype(int), atol=40)


def test_tiff_gif_webp_bmp_found_in_zip(tmp_path):
    """The zip scanner's extension list: a class of TIFFs (etc.) is not an empty class."""
    zpath = tmp_path / "d.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for k, ext in enumerate(("tif", "tiff", "gif", "webp", "bmp", "TIF")):
            p = tmp_path / f"{k}.{ext}"
            Image.new("RGB", (W, H), (k * 40, 0, 0)).save(p, **(
                {"lossless": True} if ext == "webp" else {}))
            zf.write(p, f"train/c{k}/{k}.{ext}")
    src = open_real_source(_cfg(zpath), "train")
    assert src.class_names == [f"c{k}" for k in range(6)] and len(src) == 6
    for i in range(6):
        k = int(src.name_of(i).rsplit("/", 1)[-1].split(".")[0])
        np.testing.assert_array_equal(src[i]["image"], _rgb([k * 40, 0, 0]))
