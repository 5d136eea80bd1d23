"""Prediction on images and videos: ``yolotrain predict model=best.pt source=img_dir_glob_or_video``.

Writes annotated images (and one annotated .mp4 per video), YOLO-format prediction files
(``class x y w h conf``, normalized; ``<video>_<frame>.txt`` for video frames) and a COCO-style
``predictions.json`` into ``runs/predict/exp*``. Inference runs in batches under the chosen precision.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn

from yolotrain.data.augment import letterbox
from yolotrain.errors import DataError
from yolotrain.ops import Postprocessor, scale_boxes
from yolotrain.utils.draw import draw_detections

LOGGER = logging.getLogger("yolotrain")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


@dataclass
class Prediction:
    """Detections for one image, in original pixels.

    Attributes:
        path: The image file.
        boxes: (n, 4) xyxy.
        scores: (n,).
        cls: (n,) class indices.
        names: Class names.
        frame: Frame index within a video, -1 for an image.
    """

    path: str
    boxes: np.ndarray
    scores: np.ndarray
    cls: np.ndarray
    names: list[str] = field(default_factory=list)
    frame: int = -1

    def to_yolo_lines(self, width: int, height: int) -> list[str]:
        """``class xc yc w h conf`` lines, normalized by the image size."""
        lines = []
        for (x1, y1, x2, y2), s, c in zip(self.boxes, self.scores, self.cls):
            xc, yc = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
            lines.append(f"{int(c)} {xc:.6f} {yc:.6f} {(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f} {s:.5f}")
        return lines


def list_sources(source: str) -> list[Path]:
    """Image and video files named by a file, a folder (recursive) or a glob, sorted.

    Raises:
        DataError: When nothing usable is found.
    """
    usable = IMAGE_SUFFIXES | VIDEO_SUFFIXES
    p = Path(source)
    if p.is_dir():
        files = [f for f in p.rglob("*") if f.suffix.lower() in usable]
    elif p.is_file():
        files = [p] if p.suffix.lower() in usable else []
    else:
        files = [Path(f) for f in glob.glob(source, recursive=True) if Path(f).suffix.lower() in usable]
    if not files:
        raise DataError(f"source '{source}' holds no images or videos ({', '.join(sorted(usable))})")
    return sorted(files)


def read_rgb(path: Path) -> np.ndarray | None:
    """Read an image as 3-channel uint8 RGB (EXIF orientation applied), or None if unreadable."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def iter_frames(files: list[Path]) -> Iterator[tuple[str, np.ndarray, int]]:
    """``(name, rgb image, frame index)`` for every image and every video frame (index -1 for images)."""
    for f in files:
        if f.suffix.lower() in VIDEO_SUFFIXES:
            cap = cv2.VideoCapture(str(f))
            if not cap.isOpened():
                LOGGER.warning(f"predict: skipped '{f}': not a readable video")
                continue
            i = 0
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                yield str(f), cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), i
                i += 1
            cap.release()
        else:
            img = read_rgb(f)
            if img is None:
                LOGGER.warning(f"predict: skipped '{f}': not a readable image")
                continue
            yield str(f), img, -1


@torch.no_grad()
def predict_frames(
    model: nn.Module,
    frames: Iterable[tuple[str, np.ndarray, int]],
    imgsz: int,
    device: torch.device,
    conf: float = 0.25,
    iou: float = 0.7,
    max_det: int = 300,
    agnostic: bool = False,
    batch: int = 8,
    autocast=None,
):
    """Yield ``(Prediction, rgb image, frame index)`` running the model on batches of frames."""
    model.eval()
    post = Postprocessor(conf=conf, iou=iou, max_det=max_det, agnostic=agnostic)
    names = list(getattr(model, "names", [])) or [str(i) for i in range(model.nc)]
    dtype = next(model.parameters()).dtype
    it = iter(frames)
    while True:
        chunk = list(itertools.islice(it, batch))
        if not chunk:
            return
        imgs, metas = [], []
        for _, img, _ in chunk:
            lb, ratio, pad = letterbox(img, imgsz)
            imgs.append(torch.from_numpy(np.ascontiguousarray(lb.transpose(2, 0, 1))))
            metas.append(((ratio, ratio) if np.isscalar(ratio) else ratio, pad))
        x = torch.stack(imgs).to(device).float().div_(255).to(dtype)
        with autocast() if autocast else contextlib.nullcontext():
            preds = model(x)
        dets = post([p.float() for p in preds], model.stride, model.reg_max)
        for (name, img, idx), det, (ratio, pad) in zip(chunk, dets, metas):
            det = det.cpu()
            det[:, :4] = scale_boxes(det[:, :4], (ratio, pad), img.shape[:2])
            d = det.numpy()
            yield Prediction(name, d[:, :4], d[:, 4], d[:, 5].astype(int), names, frame=idx), img, idx


class _Writers:
    """Annotated outputs: images as files, video frames appended to one video per source."""

    def __init__(self, save_dir: Path):
        self.save_dir = save_dir
        self.videos: dict[str, cv2.VideoWriter] = {}

    def write(self, pred: Prediction, drawn: np.ndarray) -> None:
        bgr = cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR)
        src = Path(pred.path)
        if pred.frame < 0:
            cv2.imwrite(str(self.save_dir / src.name), bgr)
            return
        if pred.path not in self.videos:
            cap = cv2.VideoCapture(pred.path)
            fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
            cap.release()
            h, w = bgr.shape[:2]
            self.videos[pred.path] = cv2.VideoWriter(
                str(self.save_dir / f"{src.stem}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h)
            )
        self.videos[pred.path].write(bgr)

    def close(self) -> None:
        for w in self.videos.values():
            w.release()


def run_predict(
    model: nn.Module,
    source: str,
    save_dir: Path,
    imgsz: int,
    device: torch.device,
    conf: float = 0.25,
    iou: float = 0.7,
    max_det: int = 300,
    agnostic: bool = False,
    save_txt: bool = True,
    batch: int = 8,
    autocast=None,
) -> list[Prediction]:
    """Predict on ``source``; save annotated images/videos, YOLO label files and ``predictions.json``.

    ``predictions.json`` is COCO-style: one ``{"image_id", "file_name", "frame", "category_id",
    "category", "bbox": [x, y, w, h], "score"}`` per detection, in original pixels (``category_id`` is
    the 0-based class index; ``frame`` is -1 for images).
    """
    files = list_sources(source)
    save_dir.mkdir(parents=True, exist_ok=True)
    if save_txt:
        (save_dir / "labels").mkdir(exist_ok=True)
    out, coco = [], []
    writers = _Writers(save_dir)
    try:
        for pred, img, idx in predict_frames(
            model, iter_frames(files), imgsz, device, conf, iou, max_det, agnostic, batch, autocast
        ):
            writers.write(pred, draw_detections(img, pred.boxes, pred.cls, pred.scores, pred.names))
            stem = Path(pred.path).stem + (f"_{idx}" if idx >= 0 else "")
            if save_txt:
                lines = pred.to_yolo_lines(img.shape[1], img.shape[0])
                (save_dir / "labels" / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
            for (x1, y1, x2, y2), s, c in zip(pred.boxes.tolist(), pred.scores.tolist(), pred.cls.tolist()):
                coco.append(
                    {
                        "image_id": stem,
                        "file_name": Path(pred.path).name,
                        "frame": idx,
                        "category_id": int(c),
                        "category": pred.names[int(c)],
                        "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                        "score": round(float(s), 5),
                    }
                )
            out.append(pred)
    finally:
        writers.close()
    (save_dir / "predictions.json").write_text(json.dumps(coco))
    LOGGER.info(f"predict: {len(out)} images/frames, {len(coco)} detections, saved to {save_dir}")
    return out
