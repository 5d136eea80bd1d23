"""Detection-to-ground-truth matching at one IoU threshold, and precision/recall at the best-F1 score.

COCO AP comes from the COCO library (see :mod:`yolotrain.eval.coco`), but the library does not
expose which detection matched which ground truth at IoU 0.50 (faster-coco-eval's ``matched`` is the
union over all ten thresholds). Precision and recall at a confidence threshold need exactly that, so
this module re-does COCO's greedy matching at a single threshold, vectorized over images:

* detections of one image are visited in descending score order (stable, like COCO's mergesort), and
  only the ``max_det`` highest-scoring ones per (image, class) take part, the rest are ignored;
* each detection takes the unmatched, non-crowd ground truth of its class with the highest IoU that is
  ``>= iou_thr`` (ties go to the later box, as in COCO);
* failing that, a detection overlapping a crowd region (IoU = intersection / detection area) is
  ignored rather than counted as a false positive;
* anything else is a false positive.

The only Python loop runs over the detection *rank* inside an image (at most ``max_det`` x classes
steps) while every step handles a whole chunk of images at once.
"""

from __future__ import annotations

import numpy as np

TP, FP, IGNORED = 1, 0, -1

# Elements of one (images, detections, gts) IoU block: 8 MB as float64, about 50 MB with temporaries.
_CHUNK_ELEMENTS = 1_000_000
# Cap on images per block, which also bounds the work spent sizing each block.
_MAX_CHUNK_IMAGES = 4096


def _group_rank(keys: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal keys, for keys already sorted.

    Args:
        keys: Sorted 1-D integer keys.

    Returns:
        Zero-based rank of each element inside its group.
    """
    if keys.size == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    counts = np.diff(np.r_[starts, keys.size])
    return np.arange(keys.size) - np.repeat(starts, counts)


def _pad(values: np.ndarray, owner: np.ndarray, rank: np.ndarray, rows: int, cols: int, fill: object) -> np.ndarray:
    """Scatter a flat per-box array into a padded (rows, cols, ...) block."""
    out = np.full((rows, cols, *values.shape[1:]), fill, dtype=values.dtype)
    out[owner, rank] = values
    return out


def crowd_iou(det: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes, COCO style: for crowd ground truth, intersection over the detection's area.

    ``det``, ``gt`` (last axis 4) and ``crowd`` broadcast against each other, so the same function
    serves aligned pairs and all-pairs grids.
    """
    iw = np.clip(np.minimum(det[..., 2], gt[..., 2]) - np.maximum(det[..., 0], gt[..., 0]), 0, None)
    ih = np.clip(np.minimum(det[..., 3], gt[..., 3]) - np.maximum(det[..., 1], gt[..., 1]), 0, None)
    inter = iw * ih
    area_d = (det[..., 2] - det[..., 0]) * (det[..., 3] - det[..., 1])
    area_g = (gt[..., 2] - gt[..., 0]) * (gt[..., 3] - gt[..., 1])
    union = np.where(crowd, area_d, area_d + area_g - inter)
    return np.divide(
        inter, union, out=np.zeros(np.shape(inter), dtype=np.result_type(inter, np.float32)), where=union > 0
    )


def _chunk_iou(det: np.ndarray, gt: np.ndarray, gt_crowd: np.ndarray) -> np.ndarray:
    """Pairwise IoU of padded boxes: det (B, K, 4) x gt (B, G, 4) with crowd flags (B, G) -> (B, K, G)."""
    return crowd_iou(det[:, :, None, :], gt[:, None, :, :], gt_crowd[:, None, :])


def match_detections(
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    det_cls: np.ndarray,
    det_img: np.ndarray,
    gt_boxes: np.ndarray,
    gt_cls: np.ndarray,
    gt_img: np.ndarray,
    gt_crowd: np.ndarray | None = None,
    iou_thr: float = 0.5,
    max_det: int = 100,
) -> np.ndarray:
    """Label every detection TP, FP or ignored with COCO's greedy matching at one IoU threshold.

    Boxes of all images are passed flat, each tagged with the index of its image.

    Args:
        det_boxes: Detections xyxy, shape (D, 4).
        det_scores: Detection confidences, shape (D,).
        det_cls: Detection class indices, shape (D,).
        det_img: Image index of each detection, shape (D,).
        gt_boxes: Ground truths xyxy, shape (G, 4).
        gt_cls: Ground-truth class indices, shape (G,).
        gt_img: Image index of each ground truth, shape (G,).
        gt_crowd: Crowd flags, shape (G,); crowd boxes can absorb detections without being counted.
        iou_thr: Minimum IoU for a match.
        max_det: Detections per (image, class) that COCO considers; lower-ranked ones are ignored.

    Returns:
        int8 array of shape (D,) holding ``TP`` (1), ``FP`` (0) or ``IGNORED`` (-1).
    """
    n_det = det_scores.shape[0]
    status = np.full(n_det, FP, dtype=np.int8)
    if n_det == 0:
        return status
    det_img = det_img.astype(np.int64)
    gt_img = gt_img.astype(np.int64)
    det_cls = det_cls.astype(np.int64)
    gt_cls = gt_cls.astype(np.int64)
    crowd = np.zeros(gt_img.shape[0], bool) if gt_crowd is None else gt_crowd.astype(bool)

    # COCO keeps only the max_det best detections of each (image, class).
    order = np.lexsort((-det_scores, det_cls, det_img))
    class_rank = np.empty(n_det, dtype=np.int64)
    n_cls = int(max(det_cls.max(initial=0), gt_cls.max(initial=0))) + 1
    class_rank[order] = _group_rank(det_img[order] * n_cls + det_cls[order])
    kept = class_rank < max_det
    status[~kept] = IGNORED

    # Only images holding both kept detections and ground truths need matching; the rest are all FP.
    shared = np.intersect1d(det_img[kept], gt_img)
    if shared.size == 0:
        return status
    live_det = np.flatnonzero(kept & np.isin(det_img, shared))
    live_gt = np.flatnonzero(np.isin(gt_img, shared))
    # Per-image score order (stable, so equal scores keep their input order as in COCO).
    live_det = live_det[np.lexsort((-det_scores[live_det], det_img[live_det]))]
    live_gt = live_gt[np.argsort(gt_img[live_gt], kind="stable")]
    row_of_det = np.searchsorted(shared, det_img[live_det])
    row_of_gt = np.searchsorted(shared, gt_img[live_gt])
    det_rank = _group_rank(row_of_det)
    gt_rank = _group_rank(row_of_gt)
    det_per_img = np.bincount(row_of_det, minlength=shared.size)
    gt_per_img = np.bincount(row_of_gt, minlength=shared.size)

    # Chunk images so the padded IoU block stays bounded; padding follows the chunk's own maxima so one
    # crowded image does not inflate every block. Rows are sorted, so each chunk is a contiguous slice.
    start = 0
    while start < shared.size:
        window = slice(start, min(start + _MAX_CHUNK_IMAGES, shared.size))
        k_run = np.maximum.accumulate(det_per_img[window])
        g_run = np.maximum.accumulate(gt_per_img[window])
        size = np.arange(1, k_run.size + 1) * k_run * g_run
        n_rows = max(1, int(np.searchsorted(size, _CHUNK_ELEMENTS, side="right")))
        stop = start + n_rows
        d0, d1 = np.searchsorted(row_of_det, [start, stop])
        g0, g1 = np.searchsorted(row_of_gt, [start, stop])
        dets, gts = live_det[d0:d1], live_gt[g0:g1]
        status[dets] = _match_chunk(
            det_boxes[dets],
            det_cls[dets],
            row_of_det[d0:d1] - start,
            det_rank[d0:d1],
            gt_boxes[gts],
            gt_cls[gts],
            crowd[gts],
            row_of_gt[g0:g1] - start,
            gt_rank[g0:g1],
            n_rows,
            iou_thr,
        )
        start = stop
    return status


def _match_chunk(
    det_boxes: np.ndarray,
    det_cls: np.ndarray,
    det_row: np.ndarray,
    det_rank: np.ndarray,
    gt_boxes: np.ndarray,
    gt_cls: np.ndarray,
    gt_crowd: np.ndarray,
    gt_row: np.ndarray,
    gt_rank: np.ndarray,
    n_rows: int,
    iou_thr: float,
) -> np.ndarray:
    """Greedy matching for a block of images; detections must be in per-image score order.

    Args:
        det_boxes: Detections xyxy (D, 4).
        det_cls: Detection classes (D,).
        det_row: Row (image) of each detection inside the block (D,).
        det_rank: Score rank of each detection inside its image (D,).
        gt_boxes: Ground truths xyxy (G, 4).
        gt_cls: Ground-truth classes (G,).
        gt_crowd: Crowd flags (G,).
        gt_row: Row (image) of each ground truth (G,).
        gt_rank: Position of each ground truth inside its image, in input order (G,).
        n_rows: Images in the block.
        iou_thr: Minimum IoU for a match.

    Returns:
        Status of each detection (TP/FP/IGNORED), aligned with the inputs.
    """
    k_max = int(det_rank.max()) + 1
    g_max = int(gt_rank.max()) + 1
    det = _pad(det_boxes.astype(np.float64), det_row, det_rank, n_rows, k_max, 0.0)
    dcls = _pad(det_cls, det_row, det_rank, n_rows, k_max, -1)
    gt = _pad(gt_boxes.astype(np.float64), gt_row, gt_rank, n_rows, g_max, 0.0)
    gcls = _pad(gt_cls, gt_row, gt_rank, n_rows, g_max, -2)  # -2 never equals a padded det's -1
    crowd = _pad(gt_crowd, gt_row, gt_rank, n_rows, g_max, False)

    iou = _chunk_iou(det, gt, crowd)
    # A pair below the threshold or of different classes can never match: fold both into one value.
    iou[(dcls[:, :, None] != gcls[:, None, :]) | (iou < iou_thr)] = -1.0
    regular = np.where(crowd[:, None, :], -1.0, iou)
    crowd_hit = (np.where(crowd[:, None, :], iou, -1.0) >= 0).any(axis=2)  # (B, K)

    taken = np.zeros((n_rows, g_max), dtype=bool)
    out = np.full((n_rows, k_max), FP, dtype=np.int8)
    rows = np.arange(n_rows)
    flipped = slice(None, None, -1)
    for k in range(k_max):
        cand = np.where(taken, -1.0, regular[:, k, :])
        # argmax over the reversed gts picks the last of equal IoUs, as COCO's ">=" scan does.
        best = g_max - 1 - np.argmax(cand[:, flipped], axis=1)
        hit = cand[rows, best] >= 0
        taken[rows[hit], best[hit]] = True
        out[hit, k] = TP
        out[~hit & crowd_hit[:, k], k] = IGNORED
    return out[det_row, det_rank]


def best_f1_precision_recall(
    scores: np.ndarray,
    cls: np.ndarray,
    status: np.ndarray,
    n_gt: np.ndarray,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Per-class precision and recall at the one confidence threshold that maximizes the mean F1.

    Every distinct detection score is a candidate threshold (detections with ``score >= threshold``
    are kept), so the curves are exact rather than sampled. The mean runs over classes with at least
    one ground truth; a class with no kept detection at a threshold scores P = R = F1 = 0 there. Of
    equally good thresholds the highest is chosen, since it keeps fewer detections.

    Args:
        scores: Detection confidences (D,).
        cls: Detection classes (D,).
        status: Output of :func:`match_detections` (D,); ignored detections are left out.
        n_gt: Non-crowd ground-truth count per class (C,).

    Returns:
        ``(threshold, precision, recall)`` with per-class arrays of shape (C,); classes without
        ground truth get 0. With no usable detection the threshold is 0 and everything is 0.
    """
    n_classes = n_gt.shape[0]
    precision = np.zeros(n_classes)
    recall = np.zeros(n_classes)
    used = status != IGNORED
    order = np.argsort(-scores[used], kind="stable")
    s = scores[used][order]
    c = cls[used].astype(np.int64)[order]
    tp = (status[used] == TP)[order].astype(np.float64)
    if s.size == 0 or not (n_gt > 0).any():
        return 0.0, precision, recall

    # Lowering the threshold past one detection changes only its own class's F1. So compute each
    # class's F1 after each of its detections, take the change each detection brings, and a cumulative
    # sum in global score order gives the summed F1 at every threshold, with no (classes x thresholds)
    # table. Classes without ground truth contribute nothing.
    by_class = np.argsort(c, kind="stable")  # grouped by class, still in descending score inside
    c_grouped = c[by_class]
    rank = _group_rank(c_grouped)
    tp_grouped = tp[by_class]
    cum_tp = np.cumsum(tp_grouped)
    starts = np.flatnonzero(rank == 0)
    # Restart the running TP count at each class: subtract what earlier classes accumulated.
    cum_tp -= np.repeat(cum_tp[starts] - tp_grouped[starts], np.diff(np.r_[starts, rank.size]))
    p = cum_tp / (rank + 1)
    gt_of = n_gt[c_grouped].astype(np.float64)
    r = np.divide(cum_tp, gt_of, out=np.zeros_like(cum_tp), where=gt_of > 0)
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(cum_tp), where=(p + r) > 0)
    delta = f1 - np.where(rank > 0, np.r_[0.0, f1[:-1]], 0.0)
    f1_sum = np.empty_like(delta)
    f1_sum[by_class] = delta
    f1_sum = np.cumsum(f1_sum)

    # Only the last detection of a run of equal scores is a real threshold position.
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    curve = f1_sum[ends]
    # Tolerance absorbs cumulative-sum rounding so exact ties still resolve to the highest threshold.
    best = int(ends[np.flatnonzero(curve >= curve.max() - 1e-9)[0]])
    kept_tp = np.bincount(c[: best + 1], weights=tp[: best + 1], minlength=n_classes)
    kept = np.bincount(c[: best + 1], minlength=n_classes)
    present = n_gt > 0
    precision[present] = np.divide(kept_tp, kept, out=np.zeros(n_classes), where=kept > 0)[present]
    recall[present] = kept_tp[present] / n_gt[present]
    return float(s[best]), precision, recall
