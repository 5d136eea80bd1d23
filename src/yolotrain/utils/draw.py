"""Drawing detections on images (for prediction output and training/validation previews)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

# 20 well-separated RGB colours; classes cycle through them.
_PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 56, 56), (72, 249, 10), (0, 148, 255), (255, 178, 29), (207, 56, 255),
    (26, 147, 52), (255, 112, 31), (0, 212, 187), (146, 204, 23), (255, 55, 199),
    (61, 219, 134), (52, 69, 147), (255, 157, 151), (132, 56, 255), (0, 194, 255),
    (187, 212, 0), (82, 0, 133), (255, 149, 200), (44, 153, 168), (168, 153, 44),
)  # fmt: skip


def colors(i: int) -> tuple[int, int, int]:
    """Fixed RGB colour for class ``i`` (the palette repeats every 20 classes).

    Args:
        i: Class index.

    Returns:
        ``(r, g, b)`` with values 0-255.
    """
    return _PALETTE[int(i) % len(_PALETTE)]


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def draw_detections(
    img: np.ndarray,
    boxes: Any,
    cls: Any,
    scores: Any | None = None,
    names: Sequence[str] | dict[int, str] | None = None,
    line_width: int | None = None,
) -> np.ndarray:
    """Draw boxes with per-class colours and ``"name 0.87"`` labels on a copy of an image.

    Args:
        img: HWC uint8 RGB image; left untouched.
        boxes: (n, 4) xyxy boxes in the image's pixels (numpy or torch).
        cls: (n,) class indices.
        scores: Optional (n,) confidences; without them labels show only the name.
        names: Class names by index (list or dict); missing names fall back to the index.
        line_width: Box thickness in pixels; by default it grows with the image size.

    Returns:
        A new HWC uint8 RGB image with the drawings.
    """
    out = np.ascontiguousarray(img, dtype=np.uint8).copy()
    h, w = out.shape[:2]
    boxes = _as_numpy(boxes).reshape(-1, 4).astype(np.float64)
    cls = _as_numpy(cls).reshape(-1).astype(np.int64)
    conf = None if scores is None else _as_numpy(scores).reshape(-1).astype(np.float64)
    if len(boxes) == 0:
        return out
    lw = line_width or max(1, round((h + w) / 2 * 0.003))
    font_scale = max(lw / 3, 0.35)
    font_thick = max(lw - 1, 1)
    # Round and clip all boxes at once; the loop below only issues cv2 drawing calls.
    xyxy = np.round(boxes)
    xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, w - 1)
    xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, h - 1)
    xyxy = xyxy.astype(int)
    for k, (x1, y1, x2, y2) in enumerate(xyxy.tolist()):
        c = int(cls[k])
        color = colors(c)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness=lw)  # axis-aligned: no anti-aliasing needed
        name = _name(names, c)
        label = name if conf is None else f"{name} {conf[k]:.2f}"
        _draw_label(out, label, x1, y1, color, font_scale, font_thick)
    return out


def _name(names: Sequence[str] | dict[int, str] | None, c: int) -> str:
    if isinstance(names, dict):
        return str(names.get(c, c))
    if names is not None and 0 <= c < len(names):
        return str(names[c])
    return str(c)


def _draw_label(
    img: np.ndarray, text: str, x1: int, y1: int, color: tuple[int, int, int], scale: float, thick: int
) -> None:
    """Filled label box above the box corner (inside it when there is no room), kept inside the image."""
    h, w = img.shape[:2]
    (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    bh = th + baseline + 2
    top = y1 - bh if y1 - bh >= 0 else min(y1, max(h - bh, 0))
    left = min(max(x1, 0), max(w - tw - 2, 0))
    cv2.rectangle(img, (left, top), (left + tw + 2, top + bh), color, thickness=-1)
    # Dark text on light colours, white on dark ones, so the label stays legible on every palette entry.
    text_color = (0, 0, 0) if sum(color) > 450 else (255, 255, 255)
    cv2.putText(img, text, (left + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, text_color, thick, cv2.LINE_AA)
