"""Validating pixel-coordinate boxes (COCO, VOC) the same way the YOLO label parser does.

Everything is vectorized over all boxes of a file (or of a whole COCO JSON at once); callers loop
only over the few boxes that have a problem, to word the messages.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from yolotrain.data.label_parse import SMALL_OVERSHOOT


@dataclass
class PixelBoxCheck:
    """Outcome of :func:`check_pixel_boxes`; every array has one entry per input box.

    Attributes:
        xywhn: Boxes clipped to the image, as normalized (cx, cy, w, h) float32; only meaningful
            where ``keep`` is True.
        keep: Boxes that survive (finite, with positive width and height after clipping).
        non_finite: Boxes with a NaN or infinite coordinate.
        zero_size: Finite boxes with zero (or negative) width or height after clipping.
        small: Kept boxes clipped by at most ``SMALL_OVERSHOOT`` (not a problem worth reporting).
        big: Kept boxes clipped by more than that.
        overshoot: How far each box pokes out of the image, normalized (<= 0 when inside).
    """

    xywhn: np.ndarray
    keep: np.ndarray
    non_finite: np.ndarray
    zero_size: np.ndarray
    small: np.ndarray
    big: np.ndarray
    overshoot: np.ndarray


def check_pixel_boxes(xyxy: np.ndarray, width: np.ndarray | float, height: np.ndarray | float) -> PixelBoxCheck:
    """Clip pixel boxes to their images, normalize them and flag the unusable ones.

    Args:
        xyxy: (m, 4) pixel corners (x1, y1, x2, y2).
        width: Image width per box (m,) or one width for all.
        height: Image height per box (m,) or one height for all.

    Returns:
        The check result.
    """
    b = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    m = len(b)
    w = np.broadcast_to(np.asarray(width, dtype=np.float64), (m,))
    h = np.broadcast_to(np.asarray(height, dtype=np.float64), (m,))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        n = b / np.stack([w, h, w, h], 1)
        non_finite = ~np.isfinite(n).all(1)
        # An inverted box (x2 < x1) is degenerate, not a box to be flipped: flipping would guess.
        overshoot = np.maximum(-n.min(1), n.max(1) - 1.0)
        n = np.clip(n, 0.0, 1.0)
        wh = n[:, 2:] - n[:, :2]
        zero_size = ~non_finite & (wh <= 0).any(1)
    keep = ~non_finite & ~zero_size
    # Below 1e-6 is float rounding of a box touching the border: not even counted.
    small = keep & (overshoot > 1e-6) & (overshoot <= SMALL_OVERSHOOT)
    big = keep & (overshoot > SMALL_OVERSHOOT)
    xywhn = np.concatenate([(n[:, :2] + n[:, 2:]) / 2, wh], 1).astype(np.float32)
    return PixelBoxCheck(xywhn, keep, non_finite, zero_size, small, big, overshoot)


def first_occurrences(rows: np.ndarray) -> np.ndarray:
    """Mask of rows that are not an exact repeat of an earlier row.

    Args:
        rows: (m, k) numeric array.

    Returns:
        Bool (m,), True for the first occurrence of each distinct row.
    """
    a = np.ascontiguousarray(rows, dtype=np.float64)
    mask = np.zeros(len(a), dtype=bool)
    if len(a) == 0:
        return mask
    # One opaque byte string per row: much faster than np.unique(axis=0).
    keys = a.view(np.dtype((np.void, a.dtype.itemsize * a.shape[1]))).ravel()
    _, first = np.unique(keys, return_index=True)
    mask[first] = True
    return mask
