"""Prediction on images: ``yolotrain predict model=best.pt source=img_or_dir_or_glob``.

Writes annotated images and YOLO-format prediction files (``class x y w h conf``, normalized) into
``runs/predict/exp*``.
"""

from __future__ import annotations

import glob
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn

from .data.augment import letterbox
from .errors import DataError
from .ops import Postprocessor, scale_boxes
from .utils.plotting import draw_detections

LOGGER = logging.getLogger("yolotrain")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class Prediction:
    """Detections for one image, in original pixels.

    Attributes:
        path: The image file.
        boxes: (n, 4) xyxy.
        scores: (n,).
        cls: (n,) class indices.
        names: Class names.
    """

    path: str
    boxes: np.ndarray
    scores: np.ndarray
    cls: np.ndarray
    names: list[str] = field(default_factory=list)

    def to_yolo_lines(self, width: int, height: int) -> list[str]:
        """``class xc yc w h conf`` lines, normalized by the image size."""
        lines = []
        for (x1, y1, x2, y2), s, c in zip(self.boxes, self.scores, self.cls):
            xc, yc = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
            lines.append(f"{int(c)} {xc:.6f} {yc:.6f} {(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f} {s:.5f}")
        return lines


def list_sources(source: str) -> list[Path]:
    """Image files named by a file, a folder (recursive) or a glob, sorted.

    Raises:
        DataError: When nothing usable is found.
    """
    p = Path(source)
    if p.is_dir():
        files = [f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES]
    elif p.is_file():
        files = [p]
    else:
        files = [Path(f) for f in glob.glob(source, recursive=True) if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"source '{source}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return sorted(files)


def read_rgb(path: Path) -> np.ndarray | None:
    """Read an image as 3-channel uint8 RGB (EXIF orientation applied), or None if unreadable."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@torch.no_grad()
def predict_images(model: nn.Module, files: list[Path], imgsz: int, device: torch.device, conf: float = 0.25,
                   iou: float = 0.7, max_det: int = 300, agnostic: bool = False, batch: int = 8,
                   autocast=None):
    """Yield ``(Prediction, rgb image)`` for each readable file, running the model in batches."""
    import contextlib

    model.eval()
    post = Postprocessor(conf=conf, iou=iou, max_det=max_det, agnostic=agnostic)
    names = list(getattr(model, "names", [])) or [str(i) for i in range(model.nc)]
    for start in range(0, len(files), batch):
        chunk, imgs, metas = [], [], []
        for f in files[start:start + batch]:
            img = read_rgb(f)
            if img is None:
                LOGGER.warning(f"predict: skipped '{f}': not a readable image")
                continue
            lb, ratio, pad = letterbox(img, imgsz)
            chunk.append((f, img))
            imgs.append(torch.from_numpy(np.ascontiguousarray(lb.transpose(2, 0, 1))))
            metas.append(((ratio, ratio) if np.isscalar(ratio) else ratio, pad))
        if not chunk:
            continue
        x = torch.stack(imgs).to(device).float().div_(255).to(next(model.parameters()).dtype)
        with (autocast() if autocast else contextlib.nullcontext()):
            preds = model(x)
        dets = post([p.float() for p in preds], model.stride, model.reg_max)
        for (f, img), det, (ratio, pad) in zip(chunk, dets, metas):
            det = det.cpu()
            det[:, :4] = scale_boxes(det[:, :4], (ratio, pad), img.shape[:2])
            d = det.numpy()
            yield Prediction(str(f), d[:, :4], d[:, 4], d[:, 5].astype(int), names), img


def run_predict(model: nn.Module, source: str, save_dir: Path, imgsz: int, device: torch.device,
                conf: float = 0.25, iou: float = 0.7, max_det: int = 300, agnostic: bool = False,
                save_txt: bool = True) -> list[Prediction]:
    """Predict on ``source`` and save annotated images and label files under ``save_dir``."""
    files = list_sources(source)
    save_dir.mkdir(parents=True, exist_ok=True)
    if save_txt:
        (save_dir / "labels").mkdir(exist_ok=True)
    out = []
    for pred, img in predict_images(model, files, imgsz, device, conf, iou, max_det, agnostic):
        drawn = draw_detections(img, pred.boxes, pred.cls, pred.scores, pred.names)
        name = Path(pred.path).name
        cv2.imwrite(str(save_dir / name), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        if save_txt:
            lines = pred.to_yolo_lines(img.shape[1], img.shape[0])
            (save_dir / "labels" / f"{Path(pred.path).stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
        out.append(pred)
    LOGGER.info(f"predict: {len(out)} images, {sum(len(p.boxes) for p in out)} detections, saved to {save_dir}")
    return out
