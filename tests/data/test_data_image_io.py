"""Image decoding: EXIF orientation, grayscale, RGBA, 16-bit all become 3-channel uint8 RGB."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from yolotrain.data.image_io import read_image, to_uint8
from yolotrain.data.labels import check_image
from yolotrain.errors import DataError


def test_rgb_channel_order(tmp_path):
    p = tmp_path / "red.png"
    Image.new("RGB", (8, 6), (255, 0, 0)).save(p)
    img = read_image(p)
    assert img.shape == (6, 8, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == (255, 0, 0)


def test_exif_rotated_jpeg_matches_pil_and_scan(tmp_path):
    p = tmp_path / "rot.jpg"
    arr = np.zeros((20, 60, 3), dtype=np.uint8)
    arr[:, :30] = (250, 0, 0)  # left half red as stored
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    im.save(p, exif=exif, quality=95)
    img = read_image(p)
    assert img.shape == (60, 20, 3)
    assert check_image(str(p)) == (60, 20)  # the scan records the same displayed size
    with Image.open(p) as pim:
        ref = np.asarray(ImageOps.exif_transpose(pim).convert("RGB"))
    assert ref.shape == img.shape
    assert np.abs(ref.astype(int) - img.astype(int)).mean() < 3
    # stored left half ends up on top after a clockwise rotation
    assert img[:25, :, 0].mean() > 200 and img[-25:, :, 0].mean() < 50


def test_grayscale_png(tmp_path):
    p = tmp_path / "g.png"
    g = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (7, 1))
    cv2.imwrite(str(p), g)
    img = read_image(p)
    assert img.shape == (7, 25, 3) and img.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(img[..., c], g)


def test_rgba_png_drops_alpha(tmp_path):
    p = tmp_path / "a.png"
    rgba = np.zeros((9, 11, 4), dtype=np.uint8)
    rgba[..., 1] = 200  # green
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(p)
    img = read_image(p)
    assert img.shape == (9, 11, 3)
    assert tuple(img[4, 4]) == (0, 200, 0)


def test_16bit_png_reduced_to_8bit(tmp_path):
    p = tmp_path / "d.png"
    a = (np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 500).astype(np.uint16)
    cv2.imwrite(str(p), a)
    img = read_image(p)
    assert img.shape == (12, 10, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[..., 0], (a >> 8).astype(np.uint8))


def test_16bit_color_and_float():
    a = np.full((2, 2, 3), 65535, dtype=np.uint16)
    assert to_uint8(a).max() == 255
    f = np.full((2, 2, 3), 0.5, dtype=np.float32)
    assert to_uint8(f)[0, 0, 0] == 127


def test_unreadable_file_raises(tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(b"garbage")
    with pytest.raises(DataError, match="x.png"):
        read_image(p)
