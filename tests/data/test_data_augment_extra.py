"""perspective, flipud, mixup and cutmix as functions: boxes follow the pixels (solid rectangles of one
colour on a plain background, checked against the coloured pixels' extent) and hand-computed cases."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from yolotrain.data import augment as A
from yolotrain.data import mix as X
from yolotrain.data import mosaic as M

RED, GREEN = (255, 0, 0), (0, 255, 0)


def _extent(mask: np.ndarray) -> np.ndarray | None:
    """xyxy extent (pixel edges) of the True pixels, or None."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def _canvas(h: int, w: int, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> np.ndarray:
    img = np.zeros((h, w, 3), dtype=np.uint8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = colour
    return img


# ------------------------------------------------------------------------------ perspective
def test_projective_boxes_hand_computed():
    # x' = x / (1 + 0.001 x), y' = y / (1 + 0.001 x): corners (100,0) (200,0) (200,100) (100,100) of the box
    # go to (90.909, 0) (166.667, 0) (166.667, 83.333) (90.909, 90.909)
    m = np.array([[1.0, 0, 0], [0, 1.0, 0], [0.001, 0, 1.0]])
    got = A.transform_boxes(np.array([[100, 0, 200, 100]], np.float32), m)
    np.testing.assert_allclose(got, [[90.909, 0.0, 166.667, 90.909]], atol=1e-3)
    # a corner sent behind the viewer (1 - 0.01 * 200 < 0) empties the box (dropped later as too small)
    m[2, 0] = -0.01
    assert A.transform_boxes(np.array([[50, 0, 200, 10]], np.float32), m).tolist() == [[0, 0, 0, 0]]
    assert not A.is_scale_translate(np.array([[1.0, 0, 0], [0, 1.0, 0], [1e-4, 0, 1.0]]))


@pytest.mark.parametrize("seed", range(6))
def test_perspective_box_matches_coloured_pixels(seed):
    box = (110, 70, 200, 140)
    img = _canvas(200, 300, box, RED)
    out, boxes, cls = A.random_affine(
        img, np.array([box], np.float32), np.array([4]), degrees=10, scale=0.2, translate=0.05,
        out_size=(200, 300), rng=np.random.default_rng(seed), perspective=0.001,
    )  # fmt: skip
    red = _extent(out[..., 0] > 127)
    assert len(boxes) == 1 and cls.tolist() == [4]
    np.testing.assert_allclose(boxes[0], red, atol=2.0)
    # projective, not affine: the warped rectangle is a trapezoid-like quadrilateral, with columns of
    # different heights on its left and right (an affine map keeps opposite sides equally long)
    cols = (out[..., 0] > 127).sum(0)
    x1, x2 = int(red[0]) + 3, int(red[2]) - 4
    assert abs(int(cols[x1]) - int(cols[x2])) >= 2


def test_perspective_window_equals_full_canvas_warp():
    """With a perspective term, the part of the mosaic canvas that is built still holds every pixel the warp reads."""
    s = 160  # large enough for the perspective to move the window's corners by many pixels
    rng = np.random.default_rng(0)
    items = [(rng.integers(0, 255, (s, s, 3), dtype=np.uint8), np.zeros((0, 4)), np.zeros(0)) for _ in range(4)]
    for seed in range(6):
        r = np.random.default_rng(seed)
        center = M.mosaic_center(s, r)
        m, _ = A.affine_matrix((2 * s, 2 * s), (s, s), 5.0, 0.1, 0.5, 0.0, r, perspective=0.001)
        assert A.is_projective(m)
        full, _, _ = M.mosaic4(items, s, center=center)
        ref = cv2.warpPerspective(full, m, (s, s), flags=cv2.INTER_LINEAR, borderValue=A.PAD_COLOR)
        x0, y0, x1, y1 = A.source_window(m, (s, s), (2 * s, 2 * s))
        part, _, _ = M.mosaic4(items, s, center=center, window=(x0, y0, x1, y1))
        shift = np.eye(3)
        shift[:2, 2] = (x0, y0)
        got = A.warp(part, m @ shift, (s, s))
        diff = np.abs(got.astype(int) - ref.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01


# ------------------------------------------------------------------------------ flipud
def test_flip_ud_hand_computed_and_pixels():
    img = _canvas(50, 40, (10, 5, 30, 20), GREEN)
    out, boxes = A.flip_ud(img, np.array([[10, 5, 30, 20]], np.float32))
    assert boxes.tolist() == [[10, 30, 30, 45]]  # y -> 50 - y
    np.testing.assert_array_equal(_extent(out[..., 1] > 127), boxes[0])


# ------------------------------------------------------------------------------ mixup
def test_mixup_blends_pixels_and_keeps_both_boxes():
    a, b = (10, 10, 50, 40), (30, 20, 70, 60)
    img1, img2 = _canvas(80, 80, a, RED), _canvas(80, 80, b, GREEN)
    out, boxes, cls = X.mixup(img1, np.array([a], np.float32), np.array([1]), img2, np.array([b], np.float32),
                              np.array([2]), ratio=0.25)  # fmt: skip
    assert cls.tolist() == [1, 2]
    np.testing.assert_array_equal(boxes, [a, b])
    # red at 0.25 * 255 = 63.75 -> 64, green at 0.75 * 255 = 191.25 -> 191, both where the boxes overlap
    assert out[15, 15].tolist() == [64, 0, 0]
    assert out[55, 65].tolist() == [0, 191, 0]
    assert out[25, 40].tolist() == [64, 191, 0]
    assert out[70, 5].tolist() == [0, 0, 0]
    np.testing.assert_array_equal(_extent(out[..., 0] > 0), a)
    np.testing.assert_array_equal(_extent(out[..., 1] > 0), b)


def test_mixup_ratio_is_beta_32_32():
    r = np.array([X.mixup_ratio(np.random.default_rng(k)) for k in range(3000)])
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)) = 1/260, standard deviation 0.0620
    assert abs(r.mean() - 0.5) < 0.01
    assert 0.055 < r.std() < 0.069


# ------------------------------------------------------------------------------ cutmix
class _FixedRng:
    """Stands in for a Generator in cutmix_region: fixed beta and integers draws."""

    def __init__(self, lam: float, centre: tuple[int, int]):
        self.lam, self.centre = lam, centre

    def beta(self, a, b):
        return self.lam

    def integers(self, lo, hi):
        return np.array(self.centre)


def test_cutmix_region_hand_computed():
    # lam 0.75 -> sides sqrt(0.25) = 0.5 of the image's: 50 x 40 of a 100 x 80 image
    assert X.cutmix_region(80, 100, _FixedRng(0.75, (50, 40))) == (25, 20, 75, 60)
    assert X.cutmix_region(80, 100, _FixedRng(0.75, (10, 70))) == (0, 50, 35, 80)  # clipped at the edges
    x1, y1, x2, y2 = X.cutmix_region(80, 100, np.random.default_rng(0))
    assert 0 <= x1 <= x2 <= 100 and 0 <= y1 <= y2 <= 80


REGION = (30, 0, 70, 60)
# (base box, expected base box or None when dropped) under REGION; all hand-computed
BASE_CASES = [
    ((10, 10, 50, 30), (10, 10, 30, 30)),  # region spans its height, covers its right edge: trimmed, 50 % left
    ((40, 70, 60, 90), (40, 70, 60, 90)),  # below the region: unchanged
    ((35, 20, 65, 40), None),  # inside the region: gone
    ((25, 40, 80, 55), (25, 40, 80, 55)),  # a dent across its middle: visible pixels still reach all sides
    ((28, 5, 72, 8), None),  # a dent leaving 12 of 132 px (9 % < 10 %): dropped
    ((0, 62, 100, 64), None),  # outside the region but only 2 px tall: dropped like after the affine stage
]
# (pasted box in the partner, expected box or None) under REGION
PASTED_CASES = [
    ((20, 20, 60, 50), (30, 20, 60, 50)),  # clipped to the region, 75 % visible
    ((0, 0, 33, 10), None),  # 3 x 10 of 33 x 10 visible (9 %): dropped
    ((65, 55, 95, 95), None),  # 5 x 5 of 30 x 40 (2 %): dropped
    ((40, 10, 60, 30), (40, 10, 60, 30)),  # wholly inside: unchanged
]


@pytest.mark.parametrize("base,expected", BASE_CASES)
def test_cutmix_base_box_follows_pixels(base, expected):
    img = _canvas(100, 100, base, RED)
    out, boxes, cls = X.cutmix(
        img, np.array([base], np.float32), np.array([3]), np.zeros_like(img), np.zeros((0, 4)), np.zeros(0), REGION
    )
    red = out[..., 0] > 127
    area = (base[2] - base[0]) * (base[3] - base[1])
    if expected is None:
        assert len(boxes) == 0
        ext = _extent(red)  # what is left is a sliver: under 10 % of the box or at most 2 px across
        assert ext is None or red.sum() < 0.1 * area or min(ext[2] - ext[0], ext[3] - ext[1]) <= 2
    else:
        assert cls.tolist() == [3]
        np.testing.assert_array_equal(boxes[0], expected)
        np.testing.assert_array_equal(_extent(red), expected)
        assert red.sum() >= 0.1 * area


@pytest.mark.parametrize("pasted,expected", PASTED_CASES)
def test_cutmix_pasted_box_follows_pixels(pasted, expected):
    base = np.zeros((100, 100, 3), np.uint8)
    partner = _canvas(100, 100, pasted, GREEN)
    out, boxes, cls = X.cutmix(
        base, np.zeros((0, 4)), np.zeros(0, np.int64), partner, np.array([pasted], np.float32), np.array([5]), REGION
    )
    green = out[..., 1] > 127
    area = (pasted[2] - pasted[0]) * (pasted[3] - pasted[1])
    if expected is None:
        assert len(boxes) == 0 and green.sum() < 0.1 * area
    else:
        assert cls.tolist() == [5]
        np.testing.assert_array_equal(boxes[0], expected)
        np.testing.assert_array_equal(_extent(green), expected)
    # outside the region the base is untouched; inside it is the partner's
    x1, y1, x2, y2 = REGION
    np.testing.assert_array_equal(out[y1:y2, x1:x2], partner[y1:y2, x1:x2])
    assert not out[60:].any() and not out[:, :30].any() and not out[:, 70:].any()


def test_cutmix_all_boxes_at_once():
    """One call over every case (vectorized) gives the per-case answers, base boxes first."""
    base = np.array([b for b, _ in BASE_CASES], np.float32)
    pasted = np.array([b for b, _ in PASTED_CASES], np.float32)
    img = np.zeros((100, 100, 3), np.uint8)
    _, boxes, cls = X.cutmix(img, base, np.arange(len(base)), img.copy(), pasted, 10 + np.arange(len(pasted)), REGION)
    want = [(k, e) for k, (_, e) in enumerate(BASE_CASES) if e] + [
        (10 + k, e) for k, (_, e) in enumerate(PASTED_CASES) if e
    ]
    assert cls.tolist() == [k for k, _ in want]
    np.testing.assert_array_equal(boxes, [e for _, e in want])
