"""IoU-0.5 matching and best-F1 precision/recall, checked against pycocotools' own per-image matches."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pycocotools.cocoeval import COCOeval

from yolotrain.eval import metrics
from yolotrain.eval.metrics import FP, IGNORED, TP, best_f1_precision_recall, match_detections


def flatten(images: list[dict]) -> dict[str, np.ndarray]:
    pred = np.concatenate([im["pred"] for im in images])
    return {
        "det_boxes": pred[:, :4],
        "det_scores": pred[:, 4],
        "det_cls": pred[:, 5].astype(int),
        "det_img": np.repeat(np.arange(len(images)), [len(im["pred"]) for im in images]),
        "gt_boxes": np.concatenate([im["gt"] for im in images]),
        "gt_cls": np.concatenate([im["cls"] for im in images]),
        "gt_img": np.repeat(np.arange(len(images)), [len(im["gt"]) for im in images]),
        "gt_crowd": np.concatenate([im["crowd"] for im in images]),
    }


def reference_status(ev: COCOeval, n_det: int) -> np.ndarray:
    """TP/FP/ignored per detection from pycocotools' evalImgs at IoU 0.5, area 'all', maxDets 100."""
    ev.params.areaRng, ev.params.areaRngLbl = [ev.params.areaRng[0]], ["all"]
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
    status = np.full(n_det, IGNORED, dtype=np.int8)  # dets COCO never looks at (beyond maxDets)
    for e in ev.evalImgs:
        if e is None:
            continue
        ids = np.asarray(e["dtIds"], dtype=int) - 1  # loadRes numbers detections 1.. in input order
        matched = e["dtMatches"][0] > 0
        ignored = e["dtIgnore"][0].astype(bool)
        status[ids] = np.where(ignored, IGNORED, np.where(matched, TP, FP))
    return status


@pytest.mark.parametrize(
    ("seed", "crowd", "many", "chunk"),
    [(20, False, True, None), (21, True, False, None), (22, True, True, None), (23, True, False, 60)],
)
def test_matching_equals_pycocotools(
    seed: int,
    crowd: bool,
    many: bool,
    chunk: int | None,
    tmp_path: Path,
    make_dataset: Callable,
    coco_reference: Callable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if chunk is not None:  # tiny blocks: many chunks, images split at every possible boundary
        monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", chunk)
    images = make_dataset(seed, n_images=30, crowd=crowd, many=many)
    _, _, ev = coco_reference(images, tmp_path)
    flat = flatten(images)
    expected = reference_status(ev, len(flat["det_scores"]))
    got = match_detections(**flat, iou_thr=0.5, max_det=100)
    assert (expected == TP).sum() > 10 and (expected == FP).sum() > 10
    if crowd or many:  # crowd regions and the maxDets=100 cut are the two sources of ignored dets
        assert (expected == IGNORED).any()
    np.testing.assert_array_equal(got, expected)


def test_duplicate_detection_is_false_positive_and_crowd_absorbs() -> None:
    gt = np.array([[0, 0, 10, 10], [20, 20, 40, 40]], dtype=float)
    det = np.array([[0, 0, 10, 10], [0, 0, 10, 11], [22, 22, 30, 30], [60, 60, 70, 70]], dtype=float)
    status = match_detections(
        det,
        np.array([0.9, 0.8, 0.7, 0.6]),
        np.zeros(4, int),
        np.zeros(4, int),
        gt,
        np.zeros(2, int),
        np.zeros(2, int),
        gt_crowd=np.array([False, True]),
    )
    # Second copy finds the only regular box taken; the box inside the crowd region is ignored.
    assert status.tolist() == [TP, FP, IGNORED, FP]


def test_wrong_class_never_matches() -> None:
    box = np.array([[0, 0, 10, 10]], dtype=float)
    status = match_detections(box, np.ones(1), np.array([1]), np.zeros(1), box, np.array([0]), np.zeros(1))
    assert status.tolist() == [FP]


def test_best_f1_picks_threshold_and_handles_empty() -> None:
    scores = np.array([0.9, 0.8, 0.3])
    cls = np.array([0, 0, 0])
    status = np.array([TP, TP, FP], dtype=np.int8)
    conf, p, r = best_f1_precision_recall(scores, cls, status, np.array([2, 0]))
    assert conf == pytest.approx(0.8)
    assert p.tolist() == [1.0, 0.0] and r.tolist() == [1.0, 0.0]

    # Ignored detections are invisible; with nothing usable everything is zero.
    conf, p, r = best_f1_precision_recall(scores, cls, np.full(3, IGNORED, np.int8), np.array([2, 0]))
    assert conf == 0.0 and p.sum() == 0.0 and r.sum() == 0.0


def test_best_f1_equals_brute_force_over_thresholds() -> None:
    rng = np.random.default_rng(3)
    n, n_cls = 400, 5
    scores = rng.choice(np.linspace(0, 1, 60), n)  # many tied scores
    cls = rng.integers(0, n_cls, n)
    status = rng.choice([TP, FP, IGNORED], n, p=[0.4, 0.5, 0.1]).astype(np.int8)
    n_gt = np.array([30, 0, 50, 25, 40])
    conf, p, r = best_f1_precision_recall(scores, cls, status, n_gt)

    used = status != IGNORED
    best = (-1.0, None)
    for t in np.unique(scores[used])[::-1]:
        keep = used & (scores >= t)
        f1s = []
        for c in np.flatnonzero(n_gt > 0):
            tp = (keep & (cls == c) & (status == TP)).sum()
            k = (keep & (cls == c)).sum()
            pc, rc = (tp / k if k else 0.0), tp / n_gt[c]
            f1s.append(2 * pc * rc / (pc + rc) if pc + rc else 0.0)
        if np.mean(f1s) > best[0] + 1e-12:
            best = (float(np.mean(f1s)), t)
    assert conf == pytest.approx(best[1])
    keep = used & (scores >= conf)
    for c in np.flatnonzero(n_gt > 0):
        tp = (keep & (cls == c) & (status == TP)).sum()
        assert p[c] == pytest.approx(tp / (keep & (cls == c)).sum())
        assert r[c] == pytest.approx(tp / n_gt[c])
