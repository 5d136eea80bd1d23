"""Mixing two training samples: mixup (blend the images) and cutmix (paste a rectangle of one into the other).

Both take two samples of the same size (two outputs of the training pipeline) and are vectorized over
the boxes. Randomness is drawn by the caller (:func:`mixup_ratio`, :func:`cutmix_region`) from the
sample's own generator, so the result stays a function of (seed, epoch, index).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from yolotrain.data.augment import ImageLabels

MIXUP_BETA = 32.0  # the blend ratio is Beta(32, 32): mostly 0.4-0.6 (the peers' choice)
CUTMIX_BETA = 1.0  # the kept share of the base image is Beta(1, 1), i.e. uniform (the peers' choice)
# A box keeps at least this share of its area (before the paste) or it is dropped; the same
# threshold the affine stage applies (box_candidates' area_ratio) and the peers' cutmix uses.
CUTMIX_MIN_VISIBLE = 0.1
MIN_SIDE = 2.0  # boxes must stay wider and taller than this many pixels, as after the affine stage


def mixup_ratio(rng: np.random.Generator) -> float:
    """The weight of the base image in a mixup, drawn from Beta(:data:`MIXUP_BETA`, :data:`MIXUP_BETA`)."""
    return float(rng.beta(MIXUP_BETA, MIXUP_BETA))


def mixup(
    img: np.ndarray,
    boxes: np.ndarray,
    cls: np.ndarray,
    img2: np.ndarray,
    boxes2: np.ndarray,
    cls2: np.ndarray,
    ratio: float,
) -> ImageLabels:
    """Blend two same-size images as ``ratio * img + (1 - ratio) * img2`` (rounded); keep the boxes of both.

    Args:
        img: HWC uint8 base image.
        boxes: (n, 4) xyxy pixels of ``img``.
        cls: (n,) classes of ``boxes``.
        img2: HWC uint8 image of the same shape.
        boxes2: (m, 4) xyxy pixels of ``img2``.
        cls2: (m,) classes of ``boxes2``.
        ratio: Weight of ``img`` in [0, 1].

    Returns:
        ``(img, boxes, cls)``: a new image and the ``n + m`` boxes, the base's first.
    """
    if img.shape != img2.shape:
        raise ValueError(f"mixup needs two images of one shape, got {img.shape} and {img2.shape}")
    out = cv2.addWeighted(img, float(ratio), img2, 1.0 - float(ratio), 0.0)
    boxes = np.concatenate(
        [np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(boxes2, np.float32).reshape(-1, 4)]
    )
    return out, boxes, np.concatenate([np.asarray(cls).reshape(-1), np.asarray(cls2).reshape(-1)])


def cutmix_region(h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random rectangle ``(x1, y1, x2, y2)`` of an ``h x w`` image to paste over (three draws).

    The base image keeps a share ``lam ~ Beta(1, 1)`` of its area before clipping: the rectangle's
    sides are ``sqrt(1 - lam)`` of the image's, around a uniformly drawn centre, clipped to the image.
    """
    lam = rng.beta(CUTMIX_BETA, CUTMIX_BETA)
    cut = math.sqrt(1.0 - lam)
    cw, ch = int(w * cut), int(h * cut)
    cx, cy = (int(v) for v in rng.integers(0, (w, h)))
    x1, y1 = min(max(cx - cw // 2, 0), w), min(max(cy - ch // 2, 0), h)
    x2, y2 = min(max(cx + cw - cw // 2, 0), w), min(max(cy + ch - ch // 2, 0), h)
    return x1, y1, x2, y2


def _area(b: np.ndarray) -> np.ndarray:
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def _kept(before_area: np.ndarray, after: np.ndarray, visible_area: np.ndarray, min_visible: float) -> np.ndarray:
    w, h = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    return (before_area > 0) & (visible_area >= min_visible * before_area) & (w > MIN_SIDE) & (h > MIN_SIDE)


def cutmix(
    img: np.ndarray,
    boxes: np.ndarray,
    cls: np.ndarray,
    img2: np.ndarray,
    boxes2: np.ndarray,
    cls2: np.ndarray,
    region: tuple[int, int, int, int],
    min_visible: float = CUTMIX_MIN_VISIBLE,
) -> ImageLabels:
    """Paste ``img2``'s pixels inside ``region`` over ``img`` (in place) and fix both sets of boxes.

    Base boxes lose the part under the region: a box the region spans across its whole height (width)
    is trimmed from the side the region covers; one the region only dents keeps its extent (its visible
    pixels still reach every side). Pasted boxes are clipped to the region. A box whose visible area is
    under ``min_visible`` of its area before the paste, or that ends up no more than 2 px wide or tall,
    is dropped.

    Args:
        img: HWC uint8 base image, modified in place.
        boxes: (n, 4) xyxy pixels of ``img``.
        cls: (n,) classes of ``boxes``.
        img2: HWC uint8 image of the same shape.
        boxes2: (m, 4) xyxy pixels of ``img2``.
        cls2: (m,) classes of ``boxes2``.
        region: ``(x1, y1, x2, y2)`` integer pixel rectangle, e.g. from :func:`cutmix_region`.
        min_visible: Smallest share of a box's area that must stay visible.

    Returns:
        ``(img, boxes, cls)``: the base's surviving boxes first, then the pasted ones.
    """
    if img.shape != img2.shape:
        raise ValueError(f"cutmix needs two images of one shape, got {img.shape} and {img2.shape}")
    x1, y1, x2, y2 = (int(v) for v in region)
    img[y1:y2, x1:x2] = img2[y1:y2, x1:x2]
    r = np.array([x1, y1, x2, y2], dtype=np.float32)

    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    area = _area(b)
    inter = _area(np.concatenate([np.maximum(b[:, :2], r[:2]), np.minimum(b[:, 2:], r[2:])], 1))
    spans_h = (r[1] <= b[:, 1]) & (r[3] >= b[:, 3])  # the region crosses the box from top to bottom
    spans_w = (r[0] <= b[:, 0]) & (r[2] >= b[:, 2])
    new = b.copy()
    cut_left = spans_h & (r[0] <= b[:, 0]) & (r[2] > b[:, 0])  # covers the box's left edge
    cut_right = spans_h & (r[2] >= b[:, 2]) & (r[0] < b[:, 2])
    cut_top = spans_w & (r[1] <= b[:, 1]) & (r[3] > b[:, 1])
    cut_bottom = spans_w & (r[3] >= b[:, 3]) & (r[1] < b[:, 3])
    new[:, 0] = np.where(cut_left, np.minimum(r[2], b[:, 2]), new[:, 0])
    new[:, 2] = np.where(cut_right, np.maximum(r[0], b[:, 0]), new[:, 2])
    new[:, 1] = np.where(cut_top, np.minimum(r[3], b[:, 3]), new[:, 1])
    new[:, 3] = np.where(cut_bottom, np.maximum(r[1], b[:, 1]), new[:, 3])
    keep = _kept(area, new, area - inter, min_visible)

    b2 = np.asarray(boxes2, dtype=np.float32).reshape(-1, 4)
    pasted = np.clip(b2, r[[0, 1, 0, 1]], r[[2, 3, 2, 3]])
    keep2 = _kept(_area(b2), pasted, _area(pasted), min_visible)
    out_boxes = np.concatenate([new[keep], pasted[keep2]])
    out_cls = np.concatenate([np.asarray(cls).reshape(-1)[keep], np.asarray(cls2).reshape(-1)[keep2]])
    return img, out_boxes, out_cls
