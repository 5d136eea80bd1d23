"""Augmentations: letterbox maths, affine boxes follow the pixels, mosaic placement, HSV, flip."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from yolotrain.data.augment import (
    box_candidates,
    letterbox,
    random_affine,
    random_flip_lr,
    random_hsv,
    transform_boxes,
)
from yolotrain.data.mosaic import mosaic4


def _white_extent(img: np.ndarray, thr: int = 127) -> np.ndarray | None:
    """xyxy extent (pixel edges) of the bright pixels, or None."""
    ys, xs = np.nonzero(img[..., 0] > thr)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def _rect_image(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    img = np.zeros((h, w, 3), dtype=np.uint8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = 255
    return img


# ------------------------------------------------------------------------------ letterbox
def test_letterbox_square_target():
    img = _rect_image(100, 200, (20, 10, 60, 50))
    out, (rw, rh), (pw, ph) = letterbox(img, 64)
    assert out.shape == (64, 64, 3)
    assert (rw, rh) == (pytest.approx(0.32), pytest.approx(0.32))
    assert (pw, ph) == (0, 16)  # 100 * 0.32 = 32 rows, 32 rows of padding split 16 / 16
    assert (out[:16] == 114).all() and (out[48:] == 114).all()
    # a box maps with x * r + pad, and lands on the white pixels
    mapped = np.array([20 * rw + pw, 10 * rh + ph, 60 * rw + pw, 50 * rh + ph])
    np.testing.assert_allclose(_white_extent(out), mapped, atol=1.0)


def test_letterbox_rect_target_auto_and_no_scaleup():
    img = np.zeros((100, 150, 3), dtype=np.uint8)
    out, ratio, pad = letterbox(img, (320, 480))
    assert out.shape == (320, 480, 3) and pad == (0, 0) and ratio == (3.2, 3.2)
    out, ratio, pad = letterbox(img, 640, auto=True, stride=32)
    # r = 640 / 150; resized 427 x 640, then padded only to the next multiple of 32 (448)
    assert out.shape == (448, 640, 3)
    assert pad == (0, (448 - 427) // 2)
    out, ratio, pad = letterbox(img, 640, scaleup=False)
    assert out.shape == (640, 640, 3) and ratio == (1.0, 1.0) and pad == (245, 270)


# ------------------------------------------------------------------------------ affine
@pytest.mark.parametrize("seed", range(8))
def test_affine_box_matches_white_region(seed):
    img = _rect_image(200, 300, (90, 60, 190, 130))
    boxes = np.array([[90, 60, 190, 130]], dtype=np.float32)
    rng = np.random.default_rng(seed)
    out, new_boxes, cls = random_affine(
        img, boxes, np.array([3]), degrees=30, translate=0.1, scale=0.4, shear=5,
        out_size=(160, 240), rng=rng,
    )  # fmt: skip
    assert out.shape == (160, 240, 3)
    extent = _white_extent(out)
    assert len(new_boxes) == 1 and cls.tolist() == [3]  # the object stays well inside here
    np.testing.assert_allclose(new_boxes[0], extent, atol=3.0)


def test_affine_crop_filters_boxes_and_classes_together():
    img = np.zeros((200, 200, 3), dtype=np.uint8)
    boxes = np.array([[80, 80, 120, 120], [0, 0, 20, 20], [5, 90, 195, 92]], dtype=np.float32)
    cls = np.array([1, 2, 3])
    # No randomness: a centred 100 x 100 crop (border = -50).
    out, b, c = random_affine(img, boxes, cls, border=-50, rng=np.random.default_rng(0))
    assert out.shape == (100, 100, 3)
    # box 1 ends outside the crop; box 2 becomes 100 x 2 px (too thin: not > 2 px)
    assert c.tolist() == [1]
    np.testing.assert_allclose(b, [[30, 30, 70, 70]], atol=1e-4)


def test_affine_identity_is_a_no_op():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    boxes = np.array([[5, 5, 30, 30]], dtype=np.float32)
    out, b, c = random_affine(img, boxes, np.array([0]), rng=rng)
    np.testing.assert_array_equal(out, img)
    np.testing.assert_array_equal(b, boxes)


def test_affine_requires_generator():
    with pytest.raises(ValueError, match="Generator"):
        random_affine(np.zeros((4, 4, 3), np.uint8), np.zeros((0, 4)), np.zeros(0))


def test_transform_and_candidates_vectorized():
    m = np.array([[2.0, 0, 10], [0, 2.0, 0], [0, 0, 1]])
    b = np.array([[0, 0, 1, 1], [1, 2, 3, 4]], dtype=np.float32)
    np.testing.assert_allclose(transform_boxes(b, m), [[10, 0, 12, 2], [12, 4, 16, 8]])
    keep = box_candidates(
        np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 100, 100], [0, 0, 100, 4]], dtype=np.float32),
        np.array([[0, 0, 10, 10], [0, 0, 1.5, 10], [0, 0, 20, 20], [0, 0, 100, 4]], dtype=np.float32),
    )
    # too narrow; too little area left (4%); aspect ratio 25
    assert keep.tolist() == [True, False, False, False]


# ------------------------------------------------------------------------------ mosaic
def test_mosaic_places_images_and_boxes_consistently():
    s = 64
    items = []
    for k, (h, w) in enumerate([(64, 64), (40, 64), (64, 30), (50, 50)]):
        img = np.full((h, w, 3), 20 * (k + 1), dtype=np.uint8)
        x1, y1 = w // 4, h // 4
        img[y1 : y1 + 10, x1 : x1 + 10] = 255
        items.append((img, np.array([[x1, y1, x1 + 10, y1 + 10]], dtype=np.float32), np.array([k])))
    for seed in range(5):
        canvas, boxes, cls = mosaic4(items, s, np.random.default_rng(seed))
        assert canvas.shape == (2 * s, 2 * s, 3) and canvas.dtype == np.uint8
        assert (boxes >= 0).all() and (boxes <= 2 * s).all()
        assert len(boxes) == len(cls) <= 4
        for b in boxes:
            x1, y1, x2, y2 = b.astype(int)
            patch = canvas[y1:y2, x1:x2]
            assert patch.size and (patch == 255).all()  # every box lies on its white square
        # the four background shades are all present: each image was placed
        assert {20, 40, 60, 80} <= set(np.unique(canvas[..., 0]).tolist())


def test_mosaic_then_affine_crop():
    s = 32
    items = [
        (np.full((s, s, 3), 200, np.uint8), np.array([[4, 4, 28, 28]], np.float32), np.array([i])) for i in range(4)
    ]
    rng = np.random.default_rng(1)
    canvas, b, c = mosaic4(items, s, rng)
    out, b2, c2 = random_affine(canvas, b, c, translate=0.1, scale=0.5, out_size=(s, s), rng=rng)
    assert out.shape == (s, s, 3)
    assert len(b2) == len(c2) and ((b2 >= 0) & (b2 <= s)).all()


# ------------------------------------------------------------------------------ colour and flip
def test_hsv_zero_gain_and_reproducibility():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    same = random_hsv(img.copy(), 0, 0, 0, np.random.default_rng(1))
    np.testing.assert_array_equal(same, img)
    a = random_hsv(img.copy(), 0.1, 0.7, 0.4, np.random.default_rng(5))
    b = random_hsv(img.copy(), 0.1, 0.7, 0.4, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert a.shape == img.shape and a.dtype == np.uint8 and not np.array_equal(a, img)
    grey = np.full((4, 4, 3), 90, np.uint8)
    out = random_hsv(grey, 0.5, 0.0, 0.0, np.random.default_rng(2))
    assert (out == 90).all()  # a hue shift leaves unsaturated pixels alone


def test_hsv_matches_the_per_pixel_definition():
    # The definition, pixel by pixel: hue + dh*180 modulo 180, saturation and value times their gain
    # (float32, rounded half to even, saturated at 255); the gains are the generator's three draws in
    # h, s, v order. The code uses a lookup table and convertScaleAbs; this reference uses neither.
    img = np.random.default_rng(3).integers(0, 256, (37, 53, 3), dtype=np.uint8)  # odd sizes: SIMD tails
    for seed in range(20):
        u = np.random.default_rng(seed).uniform(-1.0, 1.0, 3)
        dh, gs, gv = u[0] * 0.2, 1 + u[1] * 0.9, 1 + u[2] * 0.9
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 0] = np.mod(np.rint(hsv[..., 0] + np.float32(dh * 180.0)), 180)
        hsv[..., 1] = np.minimum(np.rint(hsv[..., 1] * np.float32(gs)), 255)
        hsv[..., 2] = np.minimum(np.rint(hsv[..., 2] * np.float32(gv)), 255)
        expected = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
        got = random_hsv(img.copy(), 0.2, 0.9, 0.9, np.random.default_rng(seed))
        np.testing.assert_array_equal(got, expected, err_msg=f"seed {seed}")


def test_flip_lr_moves_boxes_with_pixels():
    img = _rect_image(30, 50, (5, 10, 15, 20))
    boxes = np.array([[5, 10, 15, 20]], dtype=np.float32)
    out, b = random_flip_lr(img, boxes, 1.0, np.random.default_rng(0))
    np.testing.assert_allclose(b[0], [35, 10, 45, 20])
    np.testing.assert_allclose(_white_extent(out), b[0])
    assert out.flags["C_CONTIGUOUS"]
    out2, b2 = random_flip_lr(img, boxes, 0.0, np.random.default_rng(0))
    assert out2 is img and b2 is boxes
