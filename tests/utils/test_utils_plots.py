"""Run plots: every function writes a real image of a sensible size, from odd inputs too."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from yolotrain.data import ImageRecord
from yolotrain.eval import DetectionEvaluator
from yolotrain.utils.draw import colors
from yolotrain.utils.plots import (
    plot_confusion_matrix,
    plot_labels,
    plot_pr_curve,
    plot_results,
    plot_train_batch,
    read_results,
    smooth,
    train_batch_image,
)

NAMES = ["circle", "rectangle", "triangle"]
COLUMNS = [
    "epoch",
    "seconds",
    "train/box_loss",
    "train/cls_loss",
    "train/dfl_loss",
    "lr/pg0",
    "lr/pg1",
    "metrics/precision",
    "metrics/recall",
    "metrics/mAP50",
    "metrics/mAP50-95",
    "skipped_steps",
]


def _image_size(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 5000  # a blank canvas compresses to far less
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def _write_csv(path: Path, n: int, validate_every: int = 2) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for e in range(1, n + 1):
            val = e % validate_every == 0 or e == n
            row = {
                "epoch": e,
                "seconds": 1.5,
                "train/box_loss": 2 / e,
                "train/cls_loss": 1 / e,
                "train/dfl_loss": 1.2,
                "lr/pg0": 0.01 * (1 - e / (n + 1)),
                "lr/pg1": 0.01,
                "skipped_steps": 0,
            }
            for k in ("metrics/precision", "metrics/recall", "metrics/mAP50", "metrics/mAP50-95"):
                row[k] = round(1 - 1 / (e + 1), 4) if val else ""
            w.writerow(row)


@pytest.mark.parametrize("n_rows", [1, 2, 25])
def test_plot_results_handles_empty_cells_and_short_files(tmp_path: Path, n_rows: int) -> None:
    _write_csv(tmp_path / "results.csv", n_rows)
    cols = read_results(tmp_path / "results.csv")
    assert cols["epoch"].tolist() == list(range(1, n_rows + 1))
    if n_rows == 25:
        assert np.isnan(cols["metrics/mAP50"][0]) and np.isfinite(cols["metrics/mAP50"][1])
    w, h = _image_size(plot_results(tmp_path / "results.csv", tmp_path / "results.png"))
    assert 1000 <= w <= 2500 and 400 <= h <= 1200


def test_smooth_skips_nan_and_follows_trend() -> None:
    x = np.arange(1.0, 41.0)
    y = x.copy()
    y[::3] = np.nan
    s = smooth(x, y)
    assert np.isnan(s[::3]).all() and np.isfinite(s[1::3]).all()
    assert np.all(np.diff(s[np.isfinite(s)]) > 0)  # a rising series stays rising
    assert abs(s[20] - x[20]) < 1.0  # interior points stay near a straight line
    assert np.isnan(smooth(x, np.full(40, np.nan))).all()


def _records(n: int) -> list[ImageRecord]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        k = int(rng.integers(0, 6))
        xy = rng.uniform(0.2, 0.8, (k, 2))
        wh = rng.uniform(0.05, 0.3, (k, 2))
        out.append(ImageRecord(f"/x/{i}.jpg", 480, 640, rng.integers(0, 3, k), np.concatenate([xy, wh], 1)))
    return out


@pytest.mark.parametrize("n_images", [0, 40])
def test_plot_labels(tmp_path: Path, n_images: int) -> None:
    w, h = _image_size(plot_labels(_records(n_images), NAMES, tmp_path / "labels.jpg"))
    assert 800 <= w <= 1500 and 600 <= h <= 1200


def _batch() -> dict:
    img = torch.full((5, 3, 64, 96), 90, dtype=torch.uint8)
    return {
        "img": img,
        "batch_idx": torch.tensor([0.0, 0.0, 3.0, 4.0]),
        "cls": torch.tensor([[0.0], [1.0], [2.0], [1.0]]),
        "bboxes": torch.tensor(
            [[0.25, 0.5, 0.3, 0.5], [0.7, 0.5, 0.2, 0.4], [0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.9, 0.9]]
        ),
    }


def test_train_batch_grid_draws_boxes_in_their_tiles(tmp_path: Path) -> None:
    grid = train_batch_image(_batch(), NAMES)
    assert grid.shape == (2 * 64, 3 * 96, 3)  # 5 images: 3 columns x 2 rows
    # Image 3 sits in row 1, column 0; its class-2 box's left edge is at x = 0.25 * 96 = 24.
    assert tuple(grid[64 + 32, 24]) == colors(2)
    # Image 1 has no box, so the centre of its tile is untouched grey.
    assert tuple(grid[32, 96 + 48]) == (90, 90, 90)
    assert (grid[64:, 2 * 96 + 5 :] == 255).all()  # the empty sixth tile stays white
    small = train_batch_image(_batch(), NAMES, max_images=2, max_size=100)
    assert max(small.shape[:2]) <= 100
    w, h = _image_size(plot_train_batch(_batch(), NAMES, tmp_path / "train_batch0.jpg"))
    assert (w, h) == (3 * 96, 2 * 64)


def _curves():
    rng = np.random.default_rng(1)
    ev = DetectionEvaluator(NAMES)
    for i in range(20):
        gt = rng.uniform(0, 200, (4, 2))
        gt = np.concatenate([gt, gt + rng.uniform(10, 60, (4, 2))], 1)
        cls = rng.integers(0, 3, 4)
        pred = np.concatenate(
            [
                gt + rng.normal(0, 4, gt.shape),
                rng.uniform(0, 1, (4, 1)),
                ((cls + (rng.uniform(size=4) < 0.2)) % 3)[:, None],
            ],
            1,
        )
        ev.add(i, 320, 320, gt, cls, pred)
    return ev.compute().curves


def test_plot_pr_curve_and_confusion_matrix(tmp_path: Path) -> None:
    curves = _curves()
    w, h = _image_size(plot_pr_curve(curves, NAMES, tmp_path / "PR_curve.png"))
    assert 700 <= w <= 1200 and 450 <= h <= 800
    for normalize in (True, False):
        out = plot_confusion_matrix(
            curves.confusion, NAMES, tmp_path / f"cm{normalize}.png", normalize=normalize, conf=curves.conf
        )
        w, h = _image_size(out)
        assert 400 <= w <= 1200 and 400 <= h <= 1200
    many = [f"c{i}" for i in range(60)]  # beyond the named limit: no per-cell text, still a bounded figure
    w, h = _image_size(plot_confusion_matrix(np.eye(61, dtype=np.int64) * 5, many, tmp_path / "big.png"))
    assert w <= 3000 and h <= 3000
