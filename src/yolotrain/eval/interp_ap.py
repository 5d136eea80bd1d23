"""AP the way the YOLOv5 / Ultralytics validators compute it (``ap_style=ultralytics``).

yolotrain reports COCO-exact AP by default (:mod:`yolotrain.eval.coco`). Users comparing a run with
Ultralytics' ``val`` see a different number for the very same detections, because that family of
validators defines AP differently in three ways:

* **Matching.** At each IoU threshold, every detection first picks the ground truth of its class it
  overlaps most (IoU >= threshold); a ground truth picked by several detections keeps the one that
  comes first in the image's detection order (highest score). COCO instead visits detections by score
  and gives each the best still-unmatched ground truth, so a lower-scored detection can take a ground
  truth a higher-scored one would have preferred. Crowd regions are not treated specially.
* **Detections counted.** Every detection NMS kept (up to ``max_det``, 300 by default); COCO scores at
  most 100 per image.
* **Area.** The precision envelope (running maximum from the right) over the recall points, with
  sentinels (recall 0 -> precision 1, recall 1 -> precision 0), is linearly interpolated at 101 recall
  points and integrated with the trapezoid rule; COCO takes the envelope's value at the first
  detection reaching each of the 101 recall points and averages them.

mAP is the mean over classes that have ground truth, of AP at IoU 0.50 (mAP50) or of the mean AP over
the ten thresholds 0.50:0.05:0.95 (mAP50-95). This module is written from that description; it does not
use Ultralytics.
"""

from __future__ import annotations

import numpy as np

from yolotrain.eval.metrics import crowd_iou  # no crowd: plain IoU

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_GRID = np.linspace(0.0, 1.0, 101)


def match_image(
    det_boxes: np.ndarray,
    det_cls: np.ndarray,
    gt_boxes: np.ndarray,
    gt_cls: np.ndarray,
    thresholds: np.ndarray = IOU_THRESHOLDS,
) -> np.ndarray:
    """True positives of one image's detections at each IoU threshold.

    Args:
        det_boxes: Detections (n, 4) xyxy, in descending score order.
        det_cls: Detection classes (n,).
        gt_boxes: Ground truth (m, 4) xyxy.
        gt_cls: Ground-truth classes (m,).
        thresholds: IoU thresholds (T,).

    Returns:
        Boolean (n, T): detection ``i`` is a true positive at threshold ``t``.
    """
    tp = np.zeros((len(det_boxes), len(thresholds)), dtype=bool)
    if not len(det_boxes) or not len(gt_boxes):
        return tp
    iou = crowd_iou(det_boxes[:, None], gt_boxes[None], False) * (det_cls[:, None] == gt_cls[None, :])
    for k, thr in enumerate(thresholds):
        d, g = np.nonzero(iou >= thr)
        if not d.size:
            continue
        by_iou = np.argsort(-iou[d, g], kind="stable")
        d, g = d[by_iou], g[by_iou]
        # Each detection keeps its highest-IoU ground truth; np.unique leaves the pairs in detection order...
        _, first = np.unique(d, return_index=True)
        d, g = d[first], g[first]
        # ...so each ground truth then keeps the earliest (highest-scoring) detection that chose it.
        _, first = np.unique(g, return_index=True)
        tp[d[first], k] = True
    return tp


def envelope_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope, sampled at 101 recall points and integrated by trapezoids.

    Args:
        recall: Recall after each detection of one class, in score order (non-decreasing).
        precision: Precision after each of those detections.
    """
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    y = np.interp(RECALL_GRID, mrec, mpre)
    return float(np.sum((y[1:] + y[:-1]) * np.diff(RECALL_GRID)) / 2)


def interp_map(
    tp: np.ndarray, score: np.ndarray, det_cls: np.ndarray, gt_cls: np.ndarray, n_cls: int
) -> dict[str, object]:
    """Per-class and mean AP from every detection's true-positive flags.

    Args:
        tp: (n, T) true-positive flags of all detections of all images (see :func:`match_image`).
        score: Detection scores (n,).
        det_cls: Detection classes (n,).
        gt_cls: Classes of all ground truths (m,).
        n_cls: Number of classes.

    Returns:
        ``map50``, ``map50_95`` and per-class lists ``per_class_50`` / ``per_class`` (0 for classes
        without ground truth, which do not count in the means).
    """
    n_gt = np.bincount(gt_cls.astype(np.int64), minlength=n_cls)
    ap = np.zeros((n_cls, tp.shape[1]))
    order = np.lexsort((-score, det_cls))  # by class, then descending score (stable for ties)
    tp, det_cls = tp[order], det_cls[order].astype(np.int64)
    starts = np.searchsorted(det_cls, np.arange(n_cls + 1))
    for c in np.flatnonzero(n_gt):  # one pass per class; every step inside is vectorized
        hits = tp[starts[c] : starts[c + 1]].astype(np.float64)
        if not len(hits):
            continue
        tpc = np.cumsum(hits, axis=0)
        fpc = np.cumsum(1.0 - hits, axis=0)
        recall = tpc / n_gt[c]
        precision = tpc / (tpc + fpc)
        ap[c] = [envelope_ap(recall[:, k], precision[:, k]) for k in range(tp.shape[1])]
    present = n_gt > 0
    per_class_50 = ap[:, 0]
    per_class = ap.mean(1)
    return {
        "map50": float(per_class_50[present].mean()) if present.any() else 0.0,
        "map50_95": float(per_class[present].mean()) if present.any() else 0.0,
        "per_class_50": per_class_50.tolist(),
        "per_class": per_class.tolist(),
    }


def ultralytics_style_ap(
    gt_img: np.ndarray,
    gt_boxes: np.ndarray,
    gt_cls: np.ndarray,
    det_img: np.ndarray,
    preds: np.ndarray,
    n_images: int,
    n_cls: int,
) -> dict[str, object]:
    """AP of flat per-image arrays (as :class:`~yolotrain.eval.coco.DetectionEvaluator` holds them).

    Args:
        gt_img: Image index of each ground truth (m,).
        gt_boxes: Ground truth xyxy (m, 4).
        gt_cls: Ground-truth classes (m,).
        det_img: Image index of each detection (n,).
        preds: Detections (n, 6): x1 y1 x2 y2 score class.
        n_images: Number of images.
        n_cls: Number of classes.
    """
    tp = np.zeros((len(preds), len(IOU_THRESHOLDS)), dtype=bool)
    det_start = np.searchsorted(det_img, np.arange(n_images + 1))
    gt_order = np.argsort(gt_img, kind="stable")
    gt_start = np.searchsorted(gt_img[gt_order], np.arange(n_images + 1))
    for i in range(n_images):  # per image: the matching is vectorized over its boxes
        rows = np.arange(det_start[i], det_start[i + 1])
        if not rows.size:
            continue
        rows = rows[np.argsort(-preds[rows, 4], kind="stable")]
        g = gt_order[gt_start[i] : gt_start[i + 1]]
        tp[rows] = match_image(preds[rows, :4], preds[rows, 5], gt_boxes[g], gt_cls[g])
    return interp_map(tp, preds[:, 4], preds[:, 5], gt_cls, n_cls)
