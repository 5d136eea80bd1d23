"""Run plots: training curves, label statistics, training batches, PR curves, confusion matrix.

Each function writes one image file and returns its path. Figures are built with matplotlib's
object API on the Agg canvas (no ``pyplot``), so plotting neither needs a display nor touches global
matplotlib state that a user's notebook may rely on.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from yolotrain.utils.draw import _as_numpy, colors, draw_detections

_PANEL_IN = 3.2  # inches per subplot side
_MAX_NAMED = 30  # more classes than this: no per-class tick labels / cell annotations
_MAX_SCATTER = 20000  # more boxes than this: label plots show a density image instead of points


def _figure(nrows: int, ncols: int, size: tuple[float, float] | None = None) -> tuple[Any, np.ndarray]:
    from matplotlib.figure import Figure  # noqa: PLC0415 - matplotlib loads only when plotting

    fig = Figure(figsize=size or (ncols * _PANEL_IN * 1.25, nrows * _PANEL_IN), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    return fig, axes


def _save(fig: Any, out: str | Path, dpi: int = 100) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    jpg = out.suffix.lower() in (".jpg", ".jpeg")
    fig.savefig(out, dpi=dpi, **({"pil_kwargs": {"quality": 90}} if jpg else {}))
    return out


def _save_rgb(img: np.ndarray, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90]):
        raise OSError(f"could not write image '{out}'")
    return out


# ------------------------------------------------------------------------------------------ results.csv
def read_results(csv_path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a ``results.csv`` as float arrays; empty or unparsable cells become NaN."""
    with Path(csv_path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    keys = list(rows[0]) if rows else []

    def num(v: Any) -> float:
        try:
            return float(v)
        except (TypeError, ValueError):
            return math.nan

    return {k.strip(): np.array([num(r.get(k)) for r in rows], dtype=np.float64) for k in keys}


def smooth(x: np.ndarray, y: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """Gaussian kernel-weighted average of ``y`` over ``x``, skipping NaN points.

    A kernel regression rather than a convolution, so gaps (epochs without validation) and the ends of
    the series need no padding rules.

    Args:
        x: Positions (n,), e.g. epochs.
        y: Values (n,); NaN entries are ignored.
        sigma: Kernel width in units of ``x``; by default 1/20 of the finite points, at least 1.

    Returns:
        Smoothed values at ``x`` (NaN where ``y`` is NaN).
    """
    ok = np.isfinite(y) & np.isfinite(x)
    out = np.full_like(y, np.nan, dtype=np.float64)
    if not ok.any():
        return out
    xs, ys = x[ok], y[ok]
    sigma = sigma or max(1.0, xs.size / 20)
    w = np.exp(-0.5 * ((xs[:, None] - xs[None, :]) / sigma) ** 2)
    out[ok] = (w @ ys) / w.sum(axis=1)
    return out


def plot_results(csv_path: str | Path, out_png: str | Path) -> Path:
    """Plot losses, metrics and learning rate per epoch from a run's ``results.csv``.

    Each panel shows the raw values as markers and a smoothed line; empty cells (epochs that were not
    validated) are skipped, and a single-row file still gives a readable plot.

    Args:
        csv_path: The run's ``results.csv``.
        out_png: Output image.

    Returns:
        The written path.
    """
    cols = read_results(csv_path)
    x = cols.get("epoch", np.arange(1, len(next(iter(cols.values()), [])) + 1, dtype=np.float64))
    panels = [k for k in cols if k.startswith(("train/", "val/"))] + [k for k in cols if k.startswith("metrics/")]
    lr_keys = [k for k in cols if k.startswith("lr/")]
    n = len(panels) + (1 if lr_keys else 0)
    ncols = max(1, math.ceil(n / 2))
    fig, axes = _figure(2 if n > 1 else 1, ncols)
    for ax, key in zip(axes, panels):
        y = cols[key]
        ax.plot(x, y, marker="o", linestyle="none", markersize=3, color="tab:blue", label="raw")
        if np.isfinite(y).sum() >= 3:
            ok = np.isfinite(y)
            ax.plot(x[ok], smooth(x, y)[ok], color="tab:orange", linewidth=2, label="smoothed")
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("epoch")
    if lr_keys:
        ax = axes[len(panels)]
        for key in lr_keys:
            ax.plot(x, cols[key], marker=".", label=key.split("/", 1)[1])
        ax.set_title("learning rate", fontsize=10)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    for ax in axes[n:]:
        ax.set_visible(False)
    if panels:
        axes[0].legend(fontsize=7)
    return _save(fig, out_png)


# ------------------------------------------------------------------------------------------ labels
def plot_labels(records: Sequence[Any], names: Sequence[str], out_jpg: str | Path) -> Path:
    """Label statistics: instances per class, box centres, box sizes and instances per image.

    Args:
        records: :class:`~yolotrain.data.ImageRecord` items (``cls``, normalized xywh ``bboxes``).
        names: Class names by index.
        out_jpg: Output image.

    Returns:
        The written path.
    """
    nc = len(names)
    cls = np.concatenate([r.cls for r in records]) if records else np.zeros(0, np.int64)
    boxes = np.concatenate([r.bboxes for r in records]) if records else np.zeros((0, 4), np.float32)
    per_image = np.array([r.cls.shape[0] for r in records], dtype=np.int64)
    fig, axes = _figure(2, 2, size=(10, 8))

    ax = axes[0]
    counts = np.bincount(cls, minlength=nc)[:nc] if cls.size else np.zeros(nc, np.int64)
    ax.bar(np.arange(nc), counts, color=[np.array(colors(i)) / 255 for i in range(nc)])
    ax.set_title(f"instances per class ({int(counts.sum())} total)", fontsize=10)
    if nc <= _MAX_NAMED:
        ax.set_xticks(np.arange(nc), [str(n) for n in names], rotation=90 if nc > 8 else 0, fontsize=8)
    else:
        ax.set_xlabel("class index")

    for ax, (a, b, title) in zip(axes[1:3], ((0, 1, "box centres (x, y)"), (2, 3, "box sizes (width, height)"))):
        if 0 < boxes.shape[0] <= _MAX_SCATTER:
            ax.scatter(boxes[:, a], boxes[:, b], s=6, alpha=0.5, color="tab:blue", linewidths=0)
        elif boxes.shape[0]:  # a density image stays readable (and fast) where a scatter would be a blot
            from matplotlib.colors import LogNorm  # noqa: PLC0415 - matplotlib loads only when plotting

            ax.hist2d(boxes[:, a], boxes[:, b], bins=100, range=[[0, 1], [0, 1]], cmap="Blues", norm=LogNorm())
        else:
            ax.text(0.5, 0.5, "no boxes", ha="center", va="center")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(title + " / image size", fontsize=10)
    axes[1].invert_yaxis()  # image coordinates: y grows downwards

    ax = axes[3]
    top = int(per_image.max()) if per_image.size else 0
    ax.hist(per_image, bins=np.arange(top + 2) - 0.5, color="tab:blue")
    ax.set_title(f"instances per image ({len(records)} images)", fontsize=10)
    return _save(fig, out_jpg)


# ------------------------------------------------------------------------------------------ batches
def train_batch_image(
    batch: dict[str, Any], names: Sequence[str] | None = None, max_images: int = 16, max_size: int = 1920
) -> np.ndarray:
    """A grid of a collated training batch with its labels drawn.

    Args:
        batch: Output of :func:`yolotrain.data.collate`: ``img`` uint8 (B, 3, H, W), ``batch_idx`` (N,),
            ``cls`` (N, 1), ``bboxes`` (N, 4) normalized xywh.
        names: Class names by index.
        max_images: Most images shown.
        max_size: Longest side of the grid in pixels; larger grids are scaled down before drawing, so
            labels stay legible.

    Returns:
        HWC uint8 RGB image.
    """
    imgs = _as_numpy(batch["img"])[:max_images]
    n, _, h, w = imgs.shape
    ncols = math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows, ncols, h, w, 3), 255, dtype=np.uint8)
    grid.reshape(nrows * ncols, h, w, 3)[:n] = imgs.transpose(0, 2, 3, 1)
    canvas = grid.transpose(0, 2, 1, 3, 4).reshape(nrows * h, ncols * w, 3)
    scale = min(1.0, max_size / max(canvas.shape[:2]))
    if scale < 1.0:
        canvas = cv2.resize(
            canvas, (round(canvas.shape[1] * scale), round(canvas.shape[0] * scale)), interpolation=cv2.INTER_AREA
        )
    th, tw = h * scale, w * scale

    idx = _as_numpy(batch["batch_idx"]).reshape(-1).astype(np.int64)
    keep = idx < n
    idx = idx[keep]
    cls = _as_numpy(batch["cls"]).reshape(-1)[keep]
    xywh = _as_numpy(batch["bboxes"]).reshape(-1, 4)[keep].astype(np.float64)
    origin = np.stack([(idx % ncols) * tw, (idx // ncols) * th], axis=1)
    centre = xywh[:, :2] * [tw, th] + origin
    half = xywh[:, 2:] * [tw, th] / 2
    canvas = draw_detections(canvas, np.concatenate([centre - half, centre + half], axis=1), cls, names=names)
    lw = max(1, round(scale * 2))
    for i in range(n):  # one thin frame per tile (at most max_images), not per box
        x0, y0 = round((i % ncols) * tw), round((i // ncols) * th)
        cv2.rectangle(canvas, (x0, y0), (x0 + round(tw) - 1, y0 + round(th) - 1), (255, 255, 255), lw)
    return canvas


def plot_train_batch(batch: dict[str, Any], names: Sequence[str], out_jpg: str | Path, max_images: int = 16) -> Path:
    """Write :func:`train_batch_image` of ``batch`` to ``out_jpg``; returns the path."""
    return _save_rgb(train_batch_image(batch, names, max_images=max_images), out_jpg)


# ------------------------------------------------------------------------------------------ evaluation
def plot_pr_curve(curves: Any, names: Sequence[str], out_png: str | Path) -> Path:
    """Precision-recall curve (IoU 0.50) per class and their mean, with AP50 in the legend.

    Args:
        curves: :class:`~yolotrain.eval.curves.Curves` of an evaluation.
        names: Class names by index.
        out_png: Output image.

    Returns:
        The written path.
    """
    fig, axes = _figure(1, 1, size=(9, 6))
    ax = axes[0]
    present = np.flatnonzero(curves.present)
    legend = len(present) <= 20
    ap = curves.ap50
    for k in present:
        if legend:
            ax.plot(
                curves.recall,
                curves.precision[k],
                linewidth=1,
                color=np.array(colors(k)) / 255,
                label=f"{names[k] if k < len(names) else k} {ap[k]:.3f}",
            )
        else:
            ax.plot(curves.recall, curves.precision[k], linewidth=0.5, color="grey")
    mean_ap = float(ap[present].mean()) if present.size else 0.0
    ax.plot(
        curves.recall, curves.mean_precision, linewidth=3, color="tab:blue", label=f"all classes {mean_ap:.3f} mAP50"
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("precision-recall (IoU 0.50)")
    ax.legend(loc="lower left", fontsize=7)
    return _save(fig, out_png)


def plot_confusion_matrix(
    matrix: np.ndarray,
    names: Sequence[str],
    out_png: str | Path,
    normalize: bool = True,
    conf: float | None = None,
    iou: float = 0.5,
) -> Path:
    """Confusion matrix with a background class; rows are the true class, columns the prediction.

    Args:
        matrix: Counts (C + 1, C + 1) from :func:`yolotrain.eval.curves.confusion_matrix`.
        names: Class names by index (C).
        out_png: Output image.
        normalize: Show each row as fractions of its total (how each true class was predicted).
        conf: Confidence threshold the matrix was made at, for the title.
        iou: IoU threshold, for the title.

    Returns:
        The written path.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if normalize:
        m = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    labels = [str(n) for n in names] + ["background"]
    side = min(4 + 0.45 * len(labels), 24)
    fig, axes = _figure(1, 1, size=(side * 1.15, side))
    ax = axes[0]
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, shrink=0.8)
    if len(labels) <= _MAX_NAMED + 1:
        ticks = np.arange(len(labels))
        ax.set_xticks(ticks, labels, rotation=90, fontsize=8)
        ax.set_yticks(ticks, labels, fontsize=8)
        # Cell texts: one matplotlib call per cell of at most 31 x 31, not a loop over boxes.
        dark = 0.5 * (1.0 if normalize else max(m.max(), 1.0))  # white text on the darker half of the scale
        for (r, c), v in np.ndenumerate(m):
            if v > 0:
                ax.text(
                    c,
                    r,
                    f"{v:.2f}" if normalize else f"{int(v)}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if v > dark else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    title = "confusion matrix" + (" (row-normalized)" if normalize else "")
    ax.set_title(title + f", IoU {iou:g}" + (f", conf {conf:.3f}" if conf is not None else ""), fontsize=10)
    return _save(fig, out_png)


__all__ = [
    "plot_confusion_matrix",
    "plot_labels",
    "plot_pr_curve",
    "plot_results",
    "plot_train_batch",
    "read_results",
    "smooth",
    "train_batch_image",
]
