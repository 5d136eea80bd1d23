"""Shared test data for the eval tests: random detection sets and an independent pycocotools reference."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

NAMES = ["person", "car", "dog", "kite"]


def _random_boxes(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    xy = rng.uniform(0, size * 0.8, (n, 2))
    wh = rng.uniform(4, size * 0.4, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def _make_dataset(seed: int, n_images: int = 40, crowd: bool = False, many: bool = False) -> list[dict]:
    """Random GT and predictions covering every case the evaluator must treat like COCO.

    Predictions include exact copies, jittered copies (some below IoU 0.5), wrong-class copies,
    duplicates and pure noise; some images have no GT, some no predictions. ``many`` adds an image
    with more than 100 predictions of one class (COCO's maxDets cut).
    """
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n_images):
        w, h = int(rng.integers(200, 640)), int(rng.integers(200, 640))
        n_gt = 0 if i % 7 == 3 else int(rng.integers(1, 8))
        gt = _random_boxes(rng, n_gt, min(w, h))
        cls = rng.integers(0, len(NAMES), n_gt)
        is_crowd = (rng.uniform(size=n_gt) < 0.15) if crowd else np.zeros(n_gt, bool)
        preds = []
        if i % 7 != 5:  # images 5, 12, ... have no predictions
            for b, c in zip(gt, cls):
                kind = rng.integers(0, 5)
                if kind == 0:  # perfect
                    preds.append([*b, rng.uniform(0.5, 1.0), c])
                elif kind == 1:  # jittered, IoU anywhere from ~0.3 to ~0.95
                    j = b + rng.normal(0, 0.12 * (b[2] - b[0]), 4)
                    j[2:] = np.maximum(j[2:], j[:2] + 1)  # keep corners ordered, see test_inverted_box_*
                    preds.append([*j, rng.uniform(0.1, 1.0), c])
                elif kind == 2:  # right place, wrong class
                    preds.append([*b, rng.uniform(0.1, 1.0), (c + 1) % len(NAMES)])
                elif kind == 3:  # duplicate pair: one of them must be a false positive
                    preds.append([*b, rng.uniform(0.3, 1.0), c])
                    preds.append([*(b + rng.normal(0, 2, 4)), rng.uniform(0.3, 1.0), c])
                # kind 4: missed
            n_noise = int(rng.integers(0, 6))
            noise = _random_boxes(rng, n_noise, min(w, h))
            for b in noise:
                preds.append([*b, rng.uniform(0.0, 0.7), rng.integers(0, len(NAMES))])
            if many and i == 0:
                for b in _random_boxes(rng, 130, min(w, h)):
                    preds.append([*b, rng.uniform(0, 1), 0])
                if n_gt:
                    preds.append([*gt[0], 0.999, cls[0]])
        pred = np.asarray(preds, dtype=np.float64).reshape(-1, 6)
        images.append({"id": 1000 + i, "w": w, "h": h, "gt": gt, "cls": cls, "crowd": is_crowd, "pred": pred})
    return images


def _pycocotools_stats(images: list[dict], tmp_path: Path) -> tuple[float, float, COCOeval]:
    """Independent reference: write COCO JSON files and run pycocotools' COCOeval on them."""
    gt_json = {
        "images": [{"id": im["id"], "width": im["w"], "height": im["h"]} for im in images],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(NAMES)],
        "annotations": [],
    }
    dets = []
    for im in images:
        for b, c, cr in zip(im["gt"], im["cls"], im["crowd"]):
            w, h = b[2] - b[0], b[3] - b[1]
            gt_json["annotations"].append(
                {
                    "id": len(gt_json["annotations"]) + 1,
                    "image_id": im["id"],
                    "category_id": int(c) + 1,
                    "bbox": [float(b[0]), float(b[1]), float(w), float(h)],
                    "area": float(w * h),
                    "iscrowd": int(cr),
                }
            )
        for p in im["pred"]:
            dets.append(
                {
                    "image_id": im["id"],
                    "category_id": int(p[5]) + 1,
                    "bbox": [float(p[0]), float(p[1]), float(p[2] - p[0]), float(p[3] - p[1])],
                    "score": float(p[4]),
                }
            )
    (tmp_path / "gt.json").write_text(json.dumps(gt_json))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(tmp_path / "gt.json"))
        coco_dt = coco_gt.loadRes(str(tmp_path / "dt.json"))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[1]), float(ev.stats[0]), ev


@pytest.fixture
def make_dataset() -> Callable[..., list[dict]]:
    """Factory for random GT/prediction sets (see :func:`_make_dataset`)."""
    return _make_dataset


@pytest.fixture
def coco_reference() -> Callable[[list[dict], Path], tuple[float, float, COCOeval]]:
    """pycocotools run on the data dumped to JSON: returns (mAP50, mAP50-95, COCOeval)."""
    return _pycocotools_stats
