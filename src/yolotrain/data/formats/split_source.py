"""Which dataset format a split entry is, and the split entry type that remembers it.

The format is told apart by what a data YAML's split entry points at:

* a ``.json`` file -> COCO (an annotation file with ``images``, ``annotations``, ``categories``);
* a ``.txt`` file inside ``ImageSets/Main/`` -> Pascal VOC (a list of image ids);
* anything else (a folder of images, or a ``.txt`` list of image paths) -> YOLO.
"""

from __future__ import annotations

import os
from pathlib import Path

FORMAT_YOLO = "yolo"
FORMAT_COCO = "coco"
FORMAT_VOC = "voc"
FORMATS = (FORMAT_YOLO, FORMAT_COCO, FORMAT_VOC)


def is_voc_list(path: str | os.PathLike[str]) -> bool:
    """True for ``.../ImageSets/Main/<name>.txt``, the image-id lists of a VOC dataset."""
    p = Path(path)
    return p.suffix.lower() == ".txt" and p.parent.name == "Main" and p.parent.parent.name == "ImageSets"


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format of one split entry, from its path alone (the file need not exist).

    Args:
        path: A split entry (folder, ``.txt`` list, VOC image-set list or COCO ``.json``).

    Returns:
        One of ``"yolo"``, ``"coco"``, ``"voc"``.
    """
    fmt = getattr(path, "format", None)
    if fmt in FORMATS:
        return fmt
    if Path(path).suffix.lower() == ".json":
        return FORMAT_COCO
    if is_voc_list(path):
        return FORMAT_VOC
    return FORMAT_YOLO


class SplitSource(str):
    """A split entry: its absolute path, plus what reading it needs beyond the path.

    It *is* the path string, so code that only passes sources along (or compares them with
    paths) keeps working; :func:`~yolotrain.data.labels.scan_split` reads the extra attributes.
    That is how the COCO image folder and the VOC class names chosen by the data YAML reach the
    scanner without every caller having to pass them.

    Attributes:
        format: ``"yolo"``, ``"coco"`` or ``"voc"``.
        images: COCO only: the image folder from the data YAML's ``images`` key, or None to search
            the usual places (see :func:`~yolotrain.data.formats.coco.find_image_dir`).
        names: VOC only: the class names (object ``<name>`` values) in id order, or None to use
            the sorted names found in the split's own XML files.
    """

    format: str
    images: str | None
    names: tuple[str, ...] | None

    def __new__(
        cls,
        path: str | os.PathLike[str],
        format: str | None = None,  # noqa: A002 - the natural name, shadowing is harmless here
        images: str | None = None,
        names: list[str] | tuple[str, ...] | None = None,
    ) -> SplitSource:
        obj = super().__new__(cls, os.fspath(path))
        obj.format = format or detect_format(obj)
        obj.images = images
        obj.names = tuple(names) if names is not None else None
        return obj

    def __repr__(self) -> str:
        return f"SplitSource({str(self)!r}, format={self.format!r})"
