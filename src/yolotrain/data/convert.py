"""``yolotrain data convert``: rewrite a dataset of any supported format as YOLO or COCO.

Run it with ``yolotrain data convert src=path/data.yaml to=yolo out=DIR`` (or ``to=coco``; add
``link=true`` to symlink the images instead of copying them). The source is read exactly as
training reads it (same validation, same skipped images and dropped boxes), so the converted
dataset holds the records training would have used.

Output layouts (``<rel>`` is each image's path relative to the deepest folder shared by the
split's images, so sub-folders are kept and names never collide):

* YOLO: ``images/<split>/<rel>``, ``labels/<split>/<rel>.txt``, ``data.yaml``. YOLO labels have no
  crowd flag, so crowd/difficult boxes are left out (and counted in the log).
* COCO: ``images/<split>/<rel>``, ``annotations/instances_<split>.json`` (category ids 1..nc in
  class order, boxes in pixels, ``iscrowd`` kept), ``data.yaml`` with an ``images`` mapping.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from yolotrain.data.data_yaml import load_data_yaml
from yolotrain.data.records import ImageRecord
from yolotrain.data.scan import scan_split
from yolotrain.data.yolo_paths import img_to_label_path
from yolotrain.errors import DataError

LOGGER = logging.getLogger("yolotrain")

TARGETS = ("yolo", "coco")


def _relative_names(records: list[ImageRecord]) -> list[str]:
    """Each image's path relative to the deepest folder all of them share (POSIX separators)."""
    parents = [os.path.dirname(r.im_file) for r in records]
    base = os.path.commonpath(parents) if parents else ""
    return [Path(os.path.relpath(r.im_file, base)).as_posix() for r in records]


def _place_image(src: str, dst: Path, link: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        os.symlink(os.path.abspath(src), dst)
    else:
        shutil.copy2(src, dst)


def _unique(records: list[ImageRecord]) -> list[ImageRecord]:
    """Drop repeated records of the same file (a split may list a file twice), keeping the first."""
    seen: set[str] = set()
    out = []
    for r in records:
        if r.im_file not in seen:
            seen.add(r.im_file)
            out.append(r)
    return out


def _write_yolo_split(records: list[ImageRecord], out: Path, split: str, link: bool) -> int:
    """Images and label files of one split; returns the number of crowd boxes left out."""
    skipped = 0
    for rec, rel in zip(records, _relative_names(records)):
        dst = out / "images" / split / rel
        _place_image(rec.im_file, dst, link)
        keep = ~rec.crowd if rec.crowd is not None else np.ones(rec.num_instances, bool)
        skipped += int((~keep).sum())
        # 8 significant digits keep float32 boxes exact to ~1e-8 relative.
        rows = [f"{c} " + " ".join(f"{v:.8g}" for v in b)
                for c, b in zip(rec.cls[keep].tolist(), rec.bboxes[keep].tolist())]  # fmt: skip
        # The reader's own mapping, so a sub-folder named "images" inside <rel> cannot mislead it.
        label = Path(img_to_label_path(dst))
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    return skipped


def coco_dict(records: list[ImageRecord], names: list[str], file_names: list[str]) -> dict[str, Any]:
    """A COCO detection dict for records (category id = class + 1, boxes in pixels).

    Args:
        records: Images and boxes.
        names: Class names.
        file_names: ``file_name`` of each record.

    Returns:
        ``{"images", "annotations", "categories"}``.
    """
    images, annotations = [], []
    for i, (rec, fn) in enumerate(zip(records, file_names), start=1):
        images.append({"id": i, "file_name": fn, "width": rec.width, "height": rec.height})
        # Recompute in float64 from the float32 normalized values: rounding to 1e-6 px is exact enough
        # to round-trip and keeps the JSON readable.
        b = rec.bboxes.astype(np.float64)
        x1 = (b[:, 0] - b[:, 2] / 2) * rec.width
        y1 = (b[:, 1] - b[:, 3] / 2) * rec.height
        w, h = b[:, 2] * rec.width, b[:, 3] * rec.height
        crowd = rec.crowd if rec.crowd is not None else np.zeros(rec.num_instances, bool)
        for c, bx, by, bw, bh, cr in zip(
            rec.cls.tolist(), x1.tolist(), y1.tolist(), w.tolist(), h.tolist(), crowd.tolist()
        ):
            annotations.append({
                "id": len(annotations) + 1, "image_id": i, "category_id": c + 1,
                "bbox": [round(bx, 6), round(by, 6), round(bw, 6), round(bh, 6)],
                "area": round(bw * bh, 6), "iscrowd": int(cr), "segmentation": [],
            })  # fmt: skip
    categories = [{"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _write_coco_split(records: list[ImageRecord], names: list[str], out: Path, split: str, link: bool) -> None:
    rels = _relative_names(records)
    for rec, rel in zip(records, rels):
        _place_image(rec.im_file, out / "images" / split / rel, link)
    ann = out / "annotations" / f"instances_{split}.json"
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text(json.dumps(coco_dict(records, names, rels)), encoding="utf-8")


def _check_out(out: Path, src_yaml: str) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: output folder exists and is not empty; choose a new out=")
    if Path(src_yaml).resolve().parent == out.resolve():
        raise DataError(f"{out}: output folder must differ from the source dataset's folder")


def convert_dataset(src: str | os.PathLike[str], to: str, out: str | os.PathLike[str], link: bool = False) -> Path:
    """Convert a dataset (YOLO, COCO or VOC) to YOLO or COCO layout.

    Args:
        src: The source data YAML.
        to: ``"yolo"`` or ``"coco"``.
        out: New (or empty) output folder.
        link: Symlink the images instead of copying them.

    Returns:
        The written ``data.yaml``.

    Raises:
        DataError: Unknown target, non-empty output folder, an unusable source split, or a write
            failure (one line each).
    """
    to = str(to).lower()
    if to not in TARGETS:
        raise DataError(f"to={to!r}: expected one of {', '.join(TARGETS)}")
    data = load_data_yaml(src)
    out = Path(out).expanduser().resolve()
    _check_out(out, data["yaml_file"])
    splits = [s for s in ("train", "val", "test") if data[s]]
    scanned = {}
    for split in splits:  # scan everything first: fail before writing anything
        records, report = scan_split(data[split], data["nc"], split, root=data["path"])
        LOGGER.info(f"{split}: {report.summary()}")
        scanned[split] = _unique(records)
    spec: dict[str, Any] = {}
    try:
        out.mkdir(parents=True, exist_ok=True)
        for split in splits:
            if to == "yolo":
                skipped = _write_yolo_split(scanned[split], out, split, link)
                if skipped:
                    LOGGER.info(f"{split}: {skipped} crowd/difficult boxes left out "
                                "(YOLO labels have no crowd flag)")  # fmt: skip
                spec[split] = f"images/{split}"
            else:
                _write_coco_split(scanned[split], data["names"], out, split, link)
                spec[split] = f"annotations/instances_{split}.json"
        if to == "coco":
            spec["images"] = {split: f"images/{split}" for split in splits}
        spec["names"] = list(data["names"])
        yaml_out = out / "data.yaml"
        yaml_out.write_text(
            f"# converted from {data['yaml_file']} ({data['format']} -> {to})\n"
            + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True),
            encoding="utf-8",
        )
    except OSError as e:
        why = f"{type(e).__name__}: {e.strerror or e}"
        raise DataError(f"{out}: cannot write the converted dataset ({why})") from None
    n = sum(len(v) for v in scanned.values())
    LOGGER.info(f"converted {n} images ({', '.join(splits)}) to {to} in {out}")
    return yaml_out
