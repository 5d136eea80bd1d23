"""Helpers shared by the data tests: tiny images and YOLO label folders written into tmp_path.

Imported by name (pytest puts this folder on sys.path); deliberately not a conftest.py so that it
cannot be confused with another folder's conftest module.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

from yolotrain.config_sections import AugmentSettings


def write_image(path: Path, h: int = 48, w: int = 64, color: tuple[int, int, int] = (40, 80, 120)) -> Path:
    """Write a solid RGB image (PNG or JPEG by extension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[:] = color[::-1]  # cv2 writes BGR
    assert cv2.imwrite(str(path), img)
    return path


def write_labels(path: Path, text: str | None) -> None:
    """Write a label file; ``None`` means: no file at all."""
    if text is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def make_split(root: Path, split: str, items: dict[str, str | None], h: int = 48, w: int = 64) -> Path:
    """Create ``root/images/<split>/<name>.png`` + ``root/labels/<split>/<name>.txt``; returns the image dir."""
    img_dir = root / "images" / split
    for name, text in items.items():
        write_image(img_dir / f"{name}.png", h, w)
        write_labels(root / "labels" / split / f"{name}.txt", text)
    img_dir.mkdir(parents=True, exist_ok=True)
    return img_dir


def augment_settings(**overrides: float) -> AugmentSettings:
    """The declared augmentation defaults (typical YOLO settings), with ``overrides``."""
    return replace(AugmentSettings.defaults(), **{k: float(v) for k, v in overrides.items()})


def make_shapes_split(root: Path, n: int = 12, size: int = 64, seed: int = 0) -> Path:
    """Images with a random white rectangle each and its label, for dataset/loader tests."""
    rng = np.random.default_rng(seed)
    img_dir = root / "images" / "train"
    img_dir.mkdir(parents=True, exist_ok=True)
    (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h = int(rng.integers(size // 2, size + 1))
        w = int(rng.integers(size // 2, size + 1))
        img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        x1, y1 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        x2, y2 = int(rng.integers(x1 + 6, w + 1)), int(rng.integers(y1 + 6, h + 1))
        img[y1:y2, x1:x2] = 255
        cv2.imwrite(str(img_dir / f"{i:03d}.png"), img)
        cx, cy, bw, bh = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h
        (root / "labels" / "train" / f"{i:03d}.txt").write_text(f"{i % 3} {cx} {cy} {bw} {bh}\n")
    return img_dir


def by_index(batches: list[dict]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """``{dataset index: (image, its boxes)}`` over collated batches (to compare samples across runs)."""
    out = {}
    for b in batches:
        for j, idx in enumerate(b["index"].tolist()):
            out[idx] = (b["img"][j], b["bboxes"][b["batch_idx"] == j])
    return out
