"""Parsing and validating one YOLO label file (``cls cx cy w h`` per row, normalized)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Boxes poking out of the image by at most this much (normalized) are ordinary annotation-tool
# rounding: clip them without a warning. Larger overshoot is clipped too but reported.
SMALL_OVERSHOOT = 0.01

# Reasons a single row is dropped; the keys of ScanReport.dropped_rows.
DROP_CLASS_NOT_INTEGER = "class_not_integer"
DROP_CLASS_OUT_OF_RANGE = "class_out_of_range"
DROP_NON_FINITE = "non_finite"
DROP_ZERO_SIZE = "zero_size"

STATUS_OK = "ok"
STATUS_MISSING = "missing"
STATUS_EMPTY = "empty"
STATUS_MALFORMED = "malformed"


@dataclass
class LabelResult:
    """Outcome of reading one label file.

    Attributes:
        status: One of ``ok``, ``missing``, ``empty``, ``malformed``.
        cls: Kept class ids, int64 (n,).
        bboxes: Kept boxes, normalized xywh float32 (n, 4), clipped to the image.
        dropped: Number of dropped rows by reason.
        duplicates: Number of exact duplicate rows removed.
        clipped: Rows clipped by at most ``SMALL_OVERSHOOT`` (not reported as a problem).
        out_of_range: Rows clipped by more than ``SMALL_OVERSHOOT``.
        messages: One line per problem, naming the file.
    """

    status: str
    cls: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    bboxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.float32))
    dropped: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    clipped: int = 0
    out_of_range: int = 0
    messages: list[str] = field(default_factory=list)


# Label files of at most this many rows are first tried with plain Python floats (_clean_rows): on one or
# two rows, numpy's per-call overhead costs several times the arithmetic.
FAST_ROWS = 8


def _clean_rows(rows: list[list[str]], nc: int) -> LabelResult | None:
    """The result of :func:`validate_rows` for rows that need no repair, or None to take that path.

    "No repair": ``cls cx cy w h`` rows of finite numbers, integer class ids in ``[0, nc)``, no exact
    duplicates, boxes inside the image up to 1e-6 and of positive size. The arithmetic is
    validate_rows' own, in the same float64 order (corners, clip to [0, 1], centres and sizes back,
    then float32), so the boxes are bit-identical; any other row sends the file to validate_rows.
    """
    try:
        values = [tuple(map(float, r)) for r in rows]
    except ValueError:
        return None
    if len(set(values)) < len(values):
        return None
    cls_ids, boxes = [], []
    for v in values:
        if len(v) != 5:
            return None
        c, cx, cy, w, h = v
        if not (math.isfinite(c) and c.is_integer() and 0 <= c < nc):
            return None
        if not (math.isfinite(cx) and math.isfinite(cy) and math.isfinite(w) and math.isfinite(h)):
            return None
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        if max(-min(x1, y1, x2, y2), max(x1, y1, x2, y2) - 1.0) > 1e-6:
            return None  # clipped enough to count: validate_rows reports it
        x1, y1, x2, y2 = (min(max(t, 0.0), 1.0) for t in (x1, y1, x2, y2))
        if x2 - x1 <= 0 or y2 - y1 <= 0:
            return None
        cls_ids.append(int(c))
        boxes.append(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1))
    return LabelResult(STATUS_OK, np.array(cls_ids, dtype=np.int64), np.array(boxes, dtype=np.float32).reshape(-1, 4))


def _rows_to_array(rows: list[list[str]], label_file: str) -> np.ndarray | str:
    """Parse text rows into an (m, 5) float64 array of ``cls cx cy w h``; a str is an error."""
    try:
        values = [[float(v) for v in r] for r in rows]
    except ValueError:
        bad = next(i for i, r in enumerate(rows) if not _all_numeric(r))
        return f"{label_file}: malformed label file, non-numeric value on line {bad + 1}"
    if all(len(v) == 5 for v in values):
        return np.asarray(values, dtype=np.float64).reshape(-1, 5)
    out = np.empty((len(values), 5), dtype=np.float64)
    for i, v in enumerate(values):
        n = len(v)
        if n == 5:
            out[i] = v
        elif n >= 7 and (n - 1) % 2 == 0:
            # Segmentation row: class + polygon (x, y) pairs -> its bounding box.
            xy = np.asarray(v[1:], dtype=np.float64).reshape(-1, 2)
            lo, hi = xy.min(0), xy.max(0)
            out[i] = (v[0], (lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, hi[0] - lo[0], hi[1] - lo[1])
        else:
            return (
                f"{label_file}: malformed label file, line {i + 1} has {n} values "
                "(expected 'cls x y w h' or 'cls' + polygon x y pairs)"
            )
    return out


def _all_numeric(row: list[str]) -> bool:
    try:
        for v in row:
            float(v)
    except ValueError:
        return False
    return True


def parse_label_file(label_file: str, nc: int) -> LabelResult:
    """Read and validate one label file.

    A missing file means an unlabeled image; an empty file means a background image; a file with a
    non-numeric value or a row of the wrong length is malformed as a whole (the caller skips the
    image, since treating it as background would teach the model false negatives). Bad rows in an
    otherwise readable file are dropped one by one and counted.

    Args:
        label_file: Path of the ``.txt`` label file.
        nc: Number of classes; class ids must be integers in ``[0, nc)``.

    Returns:
        The parsed and validated result.
    """
    try:
        with open(label_file, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return LabelResult(STATUS_MISSING, messages=[f"{label_file}: label file missing"])
    except (OSError, UnicodeDecodeError) as e:
        return LabelResult(
            STATUS_MALFORMED,
            messages=[f"{label_file}: malformed label file, unreadable ({type(e).__name__})"],
        )
    rows = [ln.split() for ln in text.splitlines() if ln.strip()]
    if not rows:
        return LabelResult(STATUS_EMPTY)
    if len(rows) <= FAST_ROWS:
        fast = _clean_rows(rows, nc)
        if fast is not None:
            return fast
    arr = _rows_to_array(rows, label_file)
    if isinstance(arr, str):
        return LabelResult(STATUS_MALFORMED, messages=[arr])
    return validate_rows(arr, nc, label_file)


def validate_rows(arr: np.ndarray, nc: int, label_file: str = "<labels>") -> LabelResult:
    """Validate parsed ``cls cx cy w h`` rows (vectorized).

    Args:
        arr: (m, 5) float array.
        nc: Number of classes.
        label_file: Name used in messages.

    Returns:
        A result with status ``ok`` (possibly with zero kept rows).
    """
    res = LabelResult(STATUS_OK)
    # Exact duplicates first, keeping the first occurrence in file order. Comparing each row as
    # one opaque byte string is several times faster than np.unique(axis=0) on these tiny arrays.
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    rows = arr.view(np.dtype((np.void, arr.dtype.itemsize * arr.shape[1]))).ravel()
    _, first = np.unique(rows, return_index=True)
    if len(first) < len(arr):
        res.duplicates = len(arr) - len(first)
        res.messages.append(f"{label_file}: {res.duplicates} duplicate rows removed")
        arr = arr[np.sort(first)]

    c, xywh = arr[:, 0], arr[:, 1:5]
    keep = np.ones(len(arr), dtype=bool)

    def drop(mask: np.ndarray, reason: str, what: str) -> None:
        mask = mask & keep
        n = int(mask.sum())
        if n:
            res.dropped[reason] = res.dropped.get(reason, 0) + n
            res.messages.append(f"{label_file}: {n} rows dropped, {what}")
            keep[mask] = False

    with np.errstate(invalid="ignore"):
        not_int = ~np.isfinite(c) | (c != np.round(c))
        drop(not_int, DROP_CLASS_NOT_INTEGER, "class id is not an integer")
        drop((c < 0) | (c >= nc), DROP_CLASS_OUT_OF_RANGE, f"class id outside [0, {nc})")
        drop(~np.isfinite(xywh).all(1), DROP_NON_FINITE, "non-finite coordinate")

        xyxy = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
        overshoot = np.maximum(-xyxy.min(1), xyxy.max(1) - 1.0)
        # Below 1e-6 is float/decimal rounding of a box touching the border: not worth counting.
        small = keep & (overshoot > 1e-6) & (overshoot <= SMALL_OVERSHOOT)
        big = keep & (overshoot > SMALL_OVERSHOOT)
        xyxy = np.clip(xyxy, 0.0, 1.0)
        wh = xyxy[:, 2:] - xyxy[:, :2]
        drop((wh <= 0).any(1), DROP_ZERO_SIZE, "zero width or height after clipping to the image")

    # Only rows that survive count as clipped; a box clipped to nothing is already "zero_size".
    res.clipped = int((small & keep).sum())
    res.out_of_range = int((big & keep).sum())
    if res.out_of_range:
        worst = float(overshoot[big & keep].max())
        res.messages.append(
            f"{label_file}: {res.out_of_range} boxes extend outside the image "
            f"(by up to {worst:.3f} normalized), clipped"
        )
    xyxy = xyxy[keep]
    res.cls = c[keep].astype(np.int64)
    centers, sizes = (xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]
    res.bboxes = np.concatenate([centers, sizes], 1).astype(np.float32)
    return res
