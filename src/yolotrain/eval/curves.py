"""Precision-recall curves and the confusion matrix, for plots and per-class diagnosis.

Both are computed by :class:`~yolotrain.eval.coco.DetectionEvaluator` alongside the metrics and travel
on :attr:`EvalResult.curves <yolotrain.eval.result.EvalResult>`:

* the PR curve of each class at IoU 0.50, sampled at COCO's 101 recall points with COCO's
  interpolation (precision at recall r is the best precision at any recall >= r), so the area under
  a class's curve is its AP50;
* a confusion matrix at IoU 0.50 and one confidence threshold, with an extra "background" row and
  column: a missed ground truth counts as predicted background, a detection on nothing as a
  background truth.

Everything is vectorized over detections and classes; there is no loop over boxes or images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from yolotrain.eval.metrics import IGNORED, TP, _group_rank, crowd_iou

RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCO's recall thresholds


@dataclass
class Curves:
    """Curve data of one evaluation.

    Attributes:
        recall: Recall points (R,), 0 to 1.
        precision: Interpolated precision per class at each recall point (C, R); zero past a class's
            highest recall and for classes without detections.
        present: Classes with at least one (non-crowd) ground truth (C,).
        confusion: Counts (C + 1, C + 1); rows are the true class, columns the predicted class, and
            index C is background.
        conf: Confidence threshold of the confusion matrix.
        iou: IoU threshold of the confusion matrix.
    """

    recall: np.ndarray
    precision: np.ndarray
    present: np.ndarray
    confusion: np.ndarray
    conf: float
    iou: float = 0.5

    @property
    def ap50(self) -> np.ndarray:
        """Area under each class's curve (C,), i.e. COCO AP at IoU 0.50."""
        return self.precision.mean(axis=1)

    @property
    def mean_precision(self) -> np.ndarray:
        """Mean curve over the classes present in the ground truth (R,)."""
        if not self.present.any():
            return np.zeros_like(self.recall)
        return self.precision[self.present].mean(axis=0)


def pr_curves(
    scores: np.ndarray,
    cls: np.ndarray,
    status: np.ndarray,
    n_gt: np.ndarray,
    recall_points: np.ndarray = RECALL_POINTS,
) -> np.ndarray:
    """Interpolated precision per class at the given recall points.

    Args:
        scores: Detection confidences (D,).
        cls: Detection classes (D,).
        status: TP / FP / IGNORED per detection from :func:`~yolotrain.eval.metrics.match_detections`.
        n_gt: Non-crowd ground truths per class (C,).
        recall_points: Increasing recall values in [0, 1] (R,).

    Returns:
        Precision (C, R); for each class non-increasing along the recall points.
    """
    n_cls = n_gt.shape[0]
    out = np.zeros((n_cls, recall_points.shape[0]))
    used = status != IGNORED
    s, c, tp = scores[used], cls[used].astype(np.int64), (status[used] == TP).astype(np.float64)
    if s.size == 0:
        return out
    order = np.lexsort((-s, c))  # grouped by class, highest score first inside each class
    c, tp = c[order], tp[order]
    rank = _group_rank(c)
    cum_tp = np.cumsum(tp)
    starts = np.flatnonzero(rank == 0)
    # Restart the running TP count at each class by removing what the earlier classes accumulated.
    cum_tp -= np.repeat(cum_tp[starts] - tp[starts], np.diff(np.r_[starts, rank.size]))
    gt_of = n_gt[c].astype(np.float64)
    recall = np.divide(cum_tp, gt_of, out=np.zeros_like(cum_tp), where=gt_of > 0)
    precision = cum_tp / (rank + 1)

    # Precision envelope (best precision at this or any higher recall): a running maximum from the end
    # of each class. Offsetting lower classes by more than the whole [0, 1] range makes one reversed
    # running maximum restart at every class boundary.
    offset = 2.0 * (n_cls - c)
    envelope = np.maximum.accumulate((precision + offset)[::-1])[::-1] - offset

    # Recall is non-decreasing inside a class, so 2*class + recall is sorted overall and one searchsorted
    # finds, for every (class, recall point), the first detection reaching that recall.
    key = 2.0 * c + recall
    query = 2.0 * np.arange(n_cls)[:, None] + recall_points[None, :]
    idx = np.searchsorted(key, query, side="left")
    safe = np.minimum(idx, key.size - 1)
    hit = (idx < key.size) & (c[safe] == np.arange(n_cls)[:, None])
    out[hit] = envelope[safe[hit]]
    return out


def _pairs_by_image(det_img: np.ndarray, gt_img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (detection, ground truth) index pair that shares an image, without a loop over images."""
    n_img = int(max(det_img.max(initial=-1), gt_img.max(initial=-1))) + 1
    gt_order = np.argsort(gt_img, kind="stable")
    gt_count = np.bincount(gt_img, minlength=n_img)
    gt_start = np.cumsum(gt_count) - gt_count
    reps = gt_count[det_img]
    pair_det = np.repeat(np.arange(det_img.size), reps)
    within = np.arange(pair_det.size) - np.repeat(np.cumsum(reps) - reps, reps)
    pair_gt = gt_order[gt_start[det_img[pair_det]] + within]
    return pair_det, pair_gt


def confusion_matrix(
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    det_cls: np.ndarray,
    det_img: np.ndarray,
    gt_boxes: np.ndarray,
    gt_cls: np.ndarray,
    gt_img: np.ndarray,
    n_cls: int,
    gt_crowd: np.ndarray | None = None,
    conf: float = 0.25,
    iou_thr: float = 0.5,
) -> np.ndarray:
    """Count class confusions between detections (score >= ``conf``) and ground truth.

    Matching ignores classes, so a detection of the wrong class on an object shows up off the diagonal.
    Pairs of one image with IoU >= ``iou_thr`` are taken greedily by decreasing IoU, each detection and
    each ground truth at most once. A leftover detection lying on a crowd region is not counted; any
    other leftover detection is a background truth, and a leftover ground truth a background
    prediction.

    Args:
        det_boxes: Detections xyxy (D, 4).
        det_scores: Confidences (D,).
        det_cls: Detection classes (D,).
        det_img: Image index of each detection (D,).
        gt_boxes: Ground truths xyxy (G, 4).
        gt_cls: Ground-truth classes (G,).
        gt_img: Image index of each ground truth (G,).
        n_cls: Number of classes C.
        gt_crowd: Crowd flags (G,); crowd boxes are neither counted nor penalize detections on them.
        conf: Minimum detection confidence.
        iou_thr: Minimum IoU for a match.

    Returns:
        int64 counts (C + 1, C + 1): rows true class, columns predicted class, index C background.
    """
    matrix = np.zeros((n_cls + 1, n_cls + 1), dtype=np.int64)
    crowd = np.zeros(gt_cls.shape[0], bool) if gt_crowd is None else gt_crowd.astype(bool)
    keep = det_scores >= conf
    d_box, d_cls, d_img = det_boxes[keep], det_cls[keep].astype(np.int64), det_img[keep].astype(np.int64)
    g_cls, g_img = gt_cls.astype(np.int64), gt_img.astype(np.int64)

    pair_det, pair_gt = _pairs_by_image(d_img, g_img)
    overlap = crowd_iou(d_box[pair_det], gt_boxes[pair_gt], crowd[pair_gt])
    close = overlap >= iou_thr
    on_crowd = np.zeros(d_cls.size, bool)
    on_crowd[pair_det[close & crowd[pair_gt]]] = True

    cand = np.flatnonzero(close & ~crowd[pair_gt])
    cand = cand[np.argsort(-overlap[cand], kind="stable")]
    # Highest-IoU pair first: keep each detection's first pair, then each ground truth's first pair.
    # np.unique's first indices, sorted, preserve the IoU order between the two steps.
    cand = cand[np.sort(np.unique(pair_det[cand], return_index=True)[1])]
    cand = cand[np.sort(np.unique(pair_gt[cand], return_index=True)[1])]
    md, mg = pair_det[cand], pair_gt[cand]
    np.add.at(matrix, (g_cls[mg], d_cls[md]), 1)

    det_matched = np.zeros(d_cls.size, bool)
    det_matched[md] = True
    gt_matched = np.zeros(g_cls.size, bool)
    gt_matched[mg] = True
    matrix[n_cls, :n_cls] += np.bincount(d_cls[~det_matched & ~on_crowd], minlength=n_cls)
    matrix[:n_cls, n_cls] += np.bincount(g_cls[~gt_matched & ~crowd], minlength=n_cls)
    return matrix


__all__ = ["Curves", "RECALL_POINTS", "confusion_matrix", "pr_curves"]
