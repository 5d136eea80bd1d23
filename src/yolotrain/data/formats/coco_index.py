"""Reading a COCO annotation JSON into compact arrays, once per file and process.

Only what detection needs is kept (image entries, category ids and names, and per annotation its
id, image id, category id, ``bbox`` and ``iscrowd``), as numpy arrays: the raw JSON of COCO train2017
is several GB of Python objects, the index a few tens of MB. The index is memoized on the file's
(path, size, mtime), so reading the class names in ``load_data_yaml`` and scanning the split later
parse the file once.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from yolotrain.errors import DataError

# Reason key (ScanReport.dropped_rows) of annotations whose fields are missing or mistyped.
DROP_MALFORMED = "malformed_annotation"


@dataclass(frozen=True)
class CocoIndex:
    """The parts of a COCO detection JSON that training and evaluation need.

    Attributes:
        json_file: Absolute path of the JSON.
        category_ids: Category ids in increasing order; class ``i`` is ``category_ids[i]``.
        category_names: Their names, same order.
        image_ids: int64 (k,) ids of the usable image entries, in file order.
        file_names: Their ``file_name`` values.
        widths: int64 (k,) ``width`` of each entry, 0 when absent or invalid.
        heights: int64 (k,) ``height`` of each entry, 0 when absent or invalid.
        ann_ids: int64 (m,) annotation ids (-1 when absent) of the well-formed annotations.
        ann_image_ids: int64 (m,) their ``image_id``.
        ann_category_ids: int64 (m,) their ``category_id``.
        ann_bboxes: float64 (m, 4) their ``bbox`` as (x, y, w, h) pixels.
        ann_crowd: bool (m,) their ``iscrowd``.
        malformed: One message per image entry or annotation left out because a field is missing
            or of the wrong type.
        malformed_annotations: How many annotations that is.
    """

    json_file: str
    category_ids: np.ndarray
    category_names: list[str]
    image_ids: np.ndarray
    file_names: list[str]
    widths: np.ndarray
    heights: np.ndarray
    ann_ids: np.ndarray
    ann_image_ids: np.ndarray
    ann_category_ids: np.ndarray
    ann_bboxes: np.ndarray
    ann_crowd: np.ndarray
    malformed: list[str] = field(default_factory=list)
    malformed_annotations: int = 0


def _is_int(v: Any) -> bool:
    # The bound keeps hostile huge ids from overflowing the int64 arrays.
    return isinstance(v, int) and not isinstance(v, bool) and -(2**62) < v < 2**62


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _positive_int(v: Any) -> int:
    """``width``/``height`` value, or 0 when absent or unusable (the image size is used then)."""
    if _is_num(v) and math.isfinite(v) and v >= 1 and float(v).is_integer():
        return int(v)
    return 0


def _load_json(json_file: str) -> dict[str, Any]:
    try:
        with open(json_file, "rb") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{json_file}: COCO annotation file not found") from None
    except json.JSONDecodeError as e:
        where = f"line {e.lineno} column {e.colno}"
        raise DataError(f"{json_file}: malformed COCO JSON ({e.msg} at {where})") from None
    except (OSError, UnicodeDecodeError, RecursionError) as e:
        raise DataError(f"{json_file}: cannot read COCO JSON ({type(e).__name__})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{json_file}: COCO JSON must be an object with 'images', 'annotations', 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(raw.get(key), list):
            what = "missing" if key not in raw else f"not a list ({type(raw[key]).__name__})"
            raise DataError(f"{json_file}: COCO key '{key}' is {what}")
    return raw


def _categories(raw: list[Any], json_file: str) -> tuple[np.ndarray, list[str]]:
    if not raw:
        raise DataError(f"{json_file}: COCO 'categories' is empty")
    by_id: dict[int, str] = {}
    for i, c in enumerate(raw):
        if not isinstance(c, dict) or not _is_int(c.get("id")) or not isinstance(c.get("name"), str):
            raise DataError(f"{json_file}: COCO category {i} needs an integer 'id' and a string 'name', got {c!r:.80}")
        if c["id"] in by_id:
            raise DataError(f"{json_file}: COCO category id {c['id']} appears twice")
        by_id[c["id"]] = c["name"]
    ids = sorted(by_id)
    return np.asarray(ids, dtype=np.int64), [by_id[i] for i in ids]


def _images(
    raw: list[Any], json_file: str, malformed: list[str]
) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    ids: list[int] = []
    names: list[str] = []
    ws: list[int] = []
    hs: list[int] = []
    seen: set[int] = set()
    for i, im in enumerate(raw):
        if (
            not isinstance(im, dict)
            or not _is_int(im.get("id"))
            or not isinstance(im.get("file_name"), str)
            or not im["file_name"].strip()
        ):
            malformed.append(f"{json_file}: image entry {i} needs an integer 'id' and a 'file_name', skipped")
            continue
        if im["id"] in seen:
            # Annotations point at images by id, so a repeated id makes them ambiguous.
            raise DataError(f"{json_file}: COCO image id {im['id']} appears twice")
        seen.add(im["id"])
        ids.append(im["id"])
        names.append(im["file_name"].strip())
        ws.append(_positive_int(im.get("width")))
        hs.append(_positive_int(im.get("height")))
    return (np.asarray(ids, dtype=np.int64), names, np.asarray(ws, dtype=np.int64), np.asarray(hs, dtype=np.int64))


def _annotation(a: Any) -> tuple[int, int, int, float, float, float, float, bool] | None:
    """One annotation's fields, or None when it is malformed. Parsing only, once per file."""
    if not isinstance(a, dict):
        return None
    img, cat, box, crowd = a.get("image_id"), a.get("category_id"), a.get("bbox"), a.get("iscrowd", 0)
    aid = a.get("id", -1)
    if not (_is_int(img) and _is_int(cat) and _is_int(aid) and isinstance(box, list) and len(box) == 4):
        return None
    if not all(_is_num(v) for v in box) or crowd not in (0, 1, True, False):
        return None
    return aid, img, cat, float(box[0]), float(box[1]), float(box[2]), float(box[3]), bool(crowd)


def _annotations(raw: list[Any], json_file: str, malformed: list[str]) -> tuple[np.ndarray, ...]:
    rows = [_annotation(a) for a in raw]
    good = [r for r in rows if r is not None]
    for i, r in enumerate(rows):
        if r is None:
            a = raw[i]
            aid = a.get("id") if isinstance(a, dict) else None
            where = f"annotation id {aid}" if aid is not None else f"annotation {i}"
            malformed.append(
                f"{json_file}: {where} needs integer 'image_id' and 'category_id', a 'bbox' of 4 numbers "
                "and 'iscrowd' 0 or 1, skipped"
            )
    if not good:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, np.zeros((0, 4)), np.zeros(0, bool)
    ids, img, cat, x, y, w, h, crowd = (np.asarray(col) for col in zip(*good))
    return (
        ids.astype(np.int64),
        img.astype(np.int64),
        cat.astype(np.int64),
        np.stack([x, y, w, h], 1).astype(np.float64),
        crowd.astype(bool),
    )


@functools.lru_cache(maxsize=4)
def _index(json_file: str, size: int, mtime_ns: int) -> CocoIndex:
    raw = _load_json(json_file)
    malformed: list[str] = []
    cat_ids, cat_names = _categories(raw["categories"], json_file)
    image_ids, file_names, widths, heights = _images(raw["images"], json_file, malformed)
    n_bad_images = len(malformed)
    ann_ids, ann_img, ann_cat, ann_box, ann_crowd = _annotations(raw["annotations"], json_file, malformed)
    return CocoIndex(
        json_file=json_file,
        category_ids=cat_ids,
        category_names=cat_names,
        image_ids=image_ids,
        file_names=file_names,
        widths=widths,
        heights=heights,
        ann_ids=ann_ids,
        ann_image_ids=ann_img,
        ann_category_ids=ann_cat,
        ann_bboxes=ann_box,
        ann_crowd=ann_crowd,
        malformed=malformed,
        malformed_annotations=len(malformed) - n_bad_images,
    )


def load_coco_index(json_file: str | os.PathLike[str]) -> CocoIndex:
    """Read (or reuse) the index of a COCO annotation file.

    Args:
        json_file: The JSON file.

    Returns:
        The index; treat it as read-only, it is shared.

    Raises:
        DataError: The file is missing, not JSON, or lacks the COCO structure (one line, naming it).
    """
    path = os.path.abspath(os.fspath(json_file))
    try:
        st = os.stat(path)
    except OSError:
        raise DataError(f"{path}: COCO annotation file not found") from None
    return _index(path, st.st_size, st.st_mtime_ns)


def coco_names(json_file: str | os.PathLike[str]) -> list[str]:
    """Class names of a COCO file: its category names in increasing id order."""
    return list(load_coco_index(json_file).category_names)
