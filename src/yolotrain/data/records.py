"""The one record type every dataset format is converted into."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from yolotrain.utils.gc_pause import collector_paused


@dataclass
class ImageRecord:
    """One image and its ground-truth boxes.

    Attributes:
        im_file: Absolute path of the image file.
        height: Image height in pixels as displayed, i.e. after the EXIF orientation is applied.
        width: Image width in pixels as displayed, i.e. after the EXIF orientation is applied.
        cls: Class ids, int64 of shape (n,).
        bboxes: Boxes as normalized (center x, center y, width, height), float32 of shape (n, 4).
        crowd: Optional COCO ``iscrowd`` flags, bool of shape (n,).
    """

    im_file: str
    height: int
    width: int
    cls: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    bboxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.float32))
    crowd: np.ndarray | None = None

    def __post_init__(self) -> None:
        # Normalise dtypes/shapes once so downstream code never has to defend against lists or
        # float64 arrays coming from a converter.
        self.cls = np.asarray(self.cls, dtype=np.int64).reshape(-1)
        self.bboxes = np.asarray(self.bboxes, dtype=np.float32).reshape(-1, 4)
        if self.crowd is not None:
            self.crowd = np.asarray(self.crowd, dtype=bool).reshape(-1)
        self.height = int(self.height)
        self.width = int(self.width)

    @classmethod
    def trusted(
        cls,
        im_file: str,
        height: int,
        width: int,
        cls_ids: np.ndarray,
        bboxes: np.ndarray,
        crowd: np.ndarray | None = None,
    ) -> ImageRecord:
        """A record from values already of the right types (int64 (n,), float32 (n, 4), bool (n,)).

        Skips the conversions of ``__post_init__``: the label cache builds hundreds of thousands.
        """
        rec = object.__new__(cls)
        rec.__dict__.update(im_file=im_file, height=height, width=width, cls=cls_ids, bboxes=bboxes, crowd=crowd)
        return rec

    @classmethod
    def spans(
        cls, im_files: list[str], hs: list[int], ws: list[int], starts: list[int], ends: list[int], arrays: tuple
    ) -> list[ImageRecord]:
        """Records whose boxes are rows ``starts[i]:ends[i]`` (views) of ``arrays`` ``(cls, bboxes, crowd or None)``.

        For the label cache, which hands out hundreds of thousands of records at once: the arrays must
        already be typed and validated (no per-record conversion).
        """
        new, rec_cls = object.__new__, cls
        c_all, b_all, k_all = arrays
        out = []
        with collector_paused():  # the records pile up: each collection would walk every one made so far
            for f, h, w, s, e in zip(im_files, hs, ws, starts, ends):
                rec = new(rec_cls)
                rec.__dict__ = {
                    "im_file": f, "height": h, "width": w, "cls": c_all[s:e], "bboxes": b_all[s:e],
                    "crowd": None if k_all is None else k_all[s:e],
                }  # fmt: skip
                out.append(rec)
        return out

    @property
    def num_instances(self) -> int:
        """Number of boxes in the record."""
        return int(self.cls.shape[0])

    def boxes_xyxy(self) -> np.ndarray:
        """Boxes in original-image pixel coordinates (x1, y1, x2, y2), float32 (n, 4)."""
        return xywhn_to_xyxy(self.bboxes, self.width, self.height)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (used by the label cache; no pickle involved)."""
        out: dict[str, Any] = {
            "im_file": self.im_file,
            "height": self.height,
            "width": self.width,
            "cls": self.cls.tolist(),
            "bboxes": self.bboxes.tolist(),
        }
        if self.crowd is not None:
            out["crowd"] = self.crowd.tolist()
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ImageRecord:
        """Inverse of :meth:`to_json`."""
        return cls(
            im_file=str(d["im_file"]),
            height=int(d["height"]),
            width=int(d["width"]),
            cls=np.asarray(d["cls"], dtype=np.int64),
            bboxes=np.asarray(d["bboxes"], dtype=np.float32).reshape(-1, 4),
            crowd=None if d.get("crowd") is None else np.asarray(d["crowd"], dtype=bool),
        )


def xywhn_to_xyxy(bboxes: np.ndarray, w: float, h: float) -> np.ndarray:
    """Convert normalized center boxes to pixel corner boxes.

    Args:
        bboxes: (n, 4) normalized (cx, cy, bw, bh).
        w: Image width in pixels.
        h: Image height in pixels.

    Returns:
        (n, 4) float32 (x1, y1, x2, y2) in pixels.
    """
    b = np.asarray(bboxes, dtype=np.float32).reshape(-1, 4)
    out = np.empty_like(b)
    out[:, 0] = (b[:, 0] - b[:, 2] / 2) * w
    out[:, 1] = (b[:, 1] - b[:, 3] / 2) * h
    out[:, 2] = (b[:, 0] + b[:, 2] / 2) * w
    out[:, 3] = (b[:, 1] + b[:, 3] / 2) * h
    return out


def xyxy_to_xywhn(boxes: np.ndarray, w: float, h: float) -> np.ndarray:
    """Convert pixel corner boxes to normalized center boxes (inverse of :func:`xywhn_to_xyxy`).

    Args:
        boxes: (n, 4) pixel (x1, y1, x2, y2).
        w: Image width in pixels.
        h: Image height in pixels.

    Returns:
        (n, 4) float32 normalized (cx, cy, bw, bh).
    """
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    out = np.empty_like(b)
    out[:, 0] = (b[:, 0] + b[:, 2]) / (2 * w)
    out[:, 1] = (b[:, 1] + b[:, 3]) / (2 * h)
    out[:, 2] = (b[:, 2] - b[:, 0]) / w
    out[:, 3] = (b[:, 3] - b[:, 1]) / h
    return out
