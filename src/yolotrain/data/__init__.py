"""Data: YAML config, formats (YOLO/COCO/VOC), label scanning and caching, augmentation, dataset,
loader, demo set, and the ``data check`` / ``data convert`` tools.

The names below load their module on first use: ``from yolotrain.data import ensure_demo_dataset`` (or
``yolotrain data check``) must not import torch, which only the dataset and the loader need (torch takes
about 4 s of CPU to import here, paid by every process that touches this package otherwise).
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module of this package that defines it
_HOME = {
    "letterbox": "augment",
    "random_affine": "augment",
    "random_flip_lr": "augment",
    "random_hsv": "augment",
    "check_dataset": "check",
    "convert_dataset": "convert",
    "load_data_yaml": "data_yaml",
    "DetectionDataset": "dataset",
    "SampleKey": "dataset",
    "ensure_demo_dataset": "demo",
    "SplitSource": "formats",
    "detect_format": "formats",
    "read_image": "image_io",
    "ScanReport": "labels",
    "check_image": "labels",
    "DetectionLoader": "loader",
    "EpochSampler": "loader",
    "build_dataloader": "loader",
    "collate": "loader",
    "set_loader_epoch": "loader",
    "mosaic4": "mosaic",
    "ImageRecord": "records",
    "xywhn_to_xyxy": "records",
    "xyxy_to_xywhn": "records",
    "scan_split": "scan",
    "IMG_EXTS": "yolo_paths",
    "img_to_label_path": "yolo_paths",
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    """Load ``name``'s module the first time the name is asked for, and keep the name here."""
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # the next lookup finds it without calling this again
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
