"""One tiny dataset written by hand as YOLO, COCO JSON and Pascal VOC XML, for the format tests.

Imported by name (pytest puts this folder on sys.path), like ``data_helpers``. Boxes are integer
pixel corners so the 1-based VOC coordinates convert exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

from data_helpers import write_image

CLASSES = ["cat", "dog", "bird"]
# split -> image stem -> (width, height, [(class, x1, y1, x2, y2, crowd), ...]) in 0-based pixels
SPLITS: dict[str, dict[str, tuple[int, int, list[tuple[int, int, int, int, int, bool]]]]] = {
    "train": {
        "im0": (64, 48, [(0, 4, 6, 30, 40, False), (2, 40, 10, 60, 30, False), (1, 0, 0, 64, 48, True)]),
        "im1": (40, 50, [(1, 10, 12, 35, 49, False)]),
        "im2": (64, 48, []),  # background
        "im3": (64, 48, [(2, 1, 1, 63, 47, False), (0, 20, 20, 28, 30, False)]),
    },
    "val": {
        "im4": (64, 48, [(0, 5, 5, 25, 25, False), (2, 30, 8, 50, 40, True)]),
        "im5": (40, 50, [(1, 2, 3, 20, 30, False)]),
    },
}


def expected(split: str) -> dict[str, tuple[int, int, list[tuple[int, float, float, float, float, bool]]]]:
    """stem -> (height, width, [(class, cx, cy, w, h normalized, crowd)]) as records should hold."""
    out = {}
    for stem, (w, h, boxes) in SPLITS[split].items():
        rows = [(c, (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h, cr)
                for c, x1, y1, x2, y2, cr in boxes]  # fmt: skip
        out[stem] = (h, w, rows)
    return out


def write_split_images(folder: Path, split: str) -> None:
    """Write the images of one split (solid colour, the spec sizes) into ``folder``."""
    for stem, (w, h, _) in SPLITS[split].items():
        write_image(folder / f"{stem}.jpg", h=h, w=w)


def write_yolo(root: Path) -> Path:
    """YOLO layout (crowd boxes cannot be expressed and are left out); returns the data YAML."""
    for split, items in SPLITS.items():
        write_split_images(root / "images" / split, split)
        for stem, (w, h, boxes) in items.items():
            lines = [f"{c} {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}\n"
                     for c, x1, y1, x2, y2, cr in boxes if not cr]  # fmt: skip
            lab = root / "labels" / split / f"{stem}.txt"
            lab.parent.mkdir(parents=True, exist_ok=True)
            lab.write_text("".join(lines))
    y = root / "data.yaml"
    y.write_text(f"train: images/train\nval: images/val\nnames: {CLASSES}\n")
    return y


def coco_json(split: str, cat_ids: tuple[int, ...] = (3, 7, 11)) -> dict:
    """The COCO dict of a split; category ids are non-contiguous and listed out of order."""
    images, annotations = [], []
    for i, (stem, (w, h, boxes)) in enumerate(SPLITS[split].items()):
        images.append({"id": 100 + i, "file_name": f"{stem}.jpg", "width": w, "height": h})
        for c, x1, y1, x2, y2, cr in boxes:
            annotations.append({"id": 1000 + len(annotations), "image_id": 100 + i, "category_id": cat_ids[c],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                "iscrowd": int(cr)})  # fmt: skip
    categories = [{"id": cat_ids[i], "name": n} for i, n in enumerate(CLASSES)][::-1]
    return {"info": {}, "images": images, "annotations": annotations, "categories": categories}


def write_coco(root: Path, names: bool = False) -> Path:
    """Official-style layout: annotations/instances_<split>.json + images/<split>/."""
    for split in SPLITS:
        write_split_images(root / "images" / split, split)
        ann = root / "annotations" / f"instances_{split}.json"
        ann.parent.mkdir(parents=True, exist_ok=True)
        ann.write_text(json.dumps(coco_json(split)))
    y = root / "data.yaml"
    text = "train: annotations/instances_train.json\nval: annotations/instances_val.json\n"
    y.write_text(text + (f"names: {CLASSES}\n" if names else ""))
    return y


VOC_XML = """<annotation>
  <folder>VOC2007</folder>
  <filename>{stem}.jpg</filename>
  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>
{objects}</annotation>
"""
VOC_OBJECT = """  <object>
    <name>{name}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>{difficult}</difficult>
    <bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>
  </object>
"""


def voc_xml(stem: str, w: int, h: int, boxes: list[tuple[int, int, int, int, int, bool]]) -> str:
    """A VOC annotation; 0-based corners (x1, y1, x2, y2) become 1-based xmin=x1+1 .. xmax=x2."""
    objects = "".join(
        VOC_OBJECT.format(name=CLASSES[c], difficult=int(cr), xmin=x1 + 1, ymin=y1 + 1, xmax=x2, ymax=y2)
        for c, x1, y1, x2, y2, cr in boxes
    )
    return VOC_XML.format(stem=stem, w=w, h=h, objects=objects)


def write_voc(root: Path, names: bool = True) -> Path:
    """VOCdevkit-style layout under ``root/VOC2007``; returns the data YAML in ``root``."""
    voc = root / "VOC2007"
    (voc / "Annotations").mkdir(parents=True, exist_ok=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for split, items in SPLITS.items():
        write_split_images(voc / "JPEGImages", split)
        for stem, (w, h, boxes) in items.items():
            (voc / "Annotations" / f"{stem}.xml").write_text(voc_xml(stem, w, h, boxes))
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{s}\n" for s in items))
    y = root / "data.yaml"
    text = "train: VOC2007/ImageSets/Main/train.txt\nval: VOC2007/ImageSets/Main/val.txt\n"
    y.write_text(text + (f"names: {CLASSES}\n" if names else ""))
    return y


def by_stem(records: list) -> dict:
    """Records keyed by image file stem."""
    return {Path(r.im_file).stem: r for r in records}
