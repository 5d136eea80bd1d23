"""PR curves and the confusion matrix carried on EvalResult.curves."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from yolotrain.eval import DetectionEvaluator, EvalResult
from yolotrain.eval.curves import confusion_matrix, pr_curves
from yolotrain.eval.metrics import FP, IGNORED, TP

NAMES = ["person", "car", "dog", "kite"]


def evaluate(images: list[dict], **kw) -> EvalResult:
    ev = DetectionEvaluator(NAMES, **kw)
    for im in images:
        ev.add(im["id"], im["w"], im["h"], im["gt"], im["cls"], im["pred"], gt_crowd=im["crowd"])
    return ev.compute()


@pytest.mark.parametrize(("seed", "crowd", "many"), [(0, False, False), (2, True, False), (3, True, True)])
def test_area_under_pr_curves_is_coco_ap50(seed: int, crowd: bool, many: bool, make_dataset: Callable) -> None:
    result = evaluate(make_dataset(seed, crowd=crowd, many=many))
    curves = result.curves
    assert curves is not None and curves.precision.shape == (len(NAMES), 101)
    per_class = {row["class_id"]: row["map50"] for row in result.per_class}
    for k, ap in per_class.items():
        assert curves.ap50[k] == pytest.approx(ap, abs=1e-9)
    assert curves.ap50[curves.present].mean() == pytest.approx(result.map50, abs=1e-9)
    assert curves.mean_precision.mean() == pytest.approx(result.map50, abs=1e-9)


def test_pr_curves_monotone_and_hand_checked() -> None:
    # Class 0 (2 GT): TP 0.9, FP 0.8, TP 0.7 -> (P, R) = (1, .5), (.5, .5), (.67, 1): envelope 1 up to R=.5
    # then .67. Class 1 (1 GT): FP 0.6, ignored 0.95 -> never reaches any recall above 0.
    scores = np.array([0.7, 0.9, 0.6, 0.8, 0.95])
    cls = np.array([0, 0, 1, 0, 1])
    status = np.array([TP, TP, FP, FP, IGNORED], dtype=np.int8)
    prec = pr_curves(scores, cls, status, np.array([2, 1, 0]))
    grid = np.linspace(0, 1, 101)
    np.testing.assert_allclose(prec[0, grid <= 0.5], 1.0)
    np.testing.assert_allclose(prec[0, grid > 0.5], 2 / 3)
    assert (prec[1] == 0).all() and (prec[2] == 0).all()
    rng = np.random.default_rng(0)
    n = 500
    prec = pr_curves(
        rng.uniform(size=n),
        rng.integers(0, 5, n),
        rng.choice([TP, FP, IGNORED], n).astype(np.int8),
        np.array([40, 30, 0, 50, 20]),
    )
    assert (np.diff(prec, axis=1) <= 1e-12).all()  # precision never rises with recall
    assert ((prec >= 0) & (prec <= 1)).all()


def _cm(dets: list[list[float]], gts: list[list[float]], n_cls: int = 3, crowd=None, conf: float = 0.25):
    d = np.asarray(dets, dtype=float).reshape(-1, 7)  # x1 y1 x2 y2 score cls image
    g = np.asarray(gts, dtype=float).reshape(-1, 6)  # x1 y1 x2 y2 cls image
    return confusion_matrix(
        d[:, :4],
        d[:, 4],
        d[:, 5],
        d[:, 6].astype(int),
        g[:, :4],
        g[:, 4],
        g[:, 5].astype(int),
        n_cls,
        gt_crowd=None if crowd is None else np.asarray(crowd, bool),
        conf=conf,
    )


def test_confusion_matrix_hand_made_counts() -> None:
    box_a, box_b, box_c = [0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]
    gts = [
        [*box_a, 0, 0],  # image 0: class 0, found as class 0
        [*box_b, 1, 0],  # image 0: class 1, found as class 2 (confusion)
        [*box_c, 2, 0],  # image 0: class 2, missed
        [*box_a, 1, 1],  # image 1: class 1, found, plus a duplicate detection on it
    ]
    dets = [
        [0, 0, 10, 10, 0.9, 0, 0],
        [20, 20, 30, 29, 0.8, 2, 0],
        [80, 80, 90, 90, 0.7, 1, 0],  # on nothing -> background truth, predicted class 1
        [50, 50, 60, 60, 0.1, 2, 0],  # below conf: ignored, so box_c stays missed
        [0, 0, 10, 10, 0.9, 1, 1],
        [1, 0, 10, 10, 0.6, 1, 1],  # duplicate: the GT is taken -> background truth, predicted class 1
        [0, 0, 10, 10, 0.9, 0, 2],  # image 2 has no GT at all
    ]
    m = _cm(dets, gts)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0] = 1
    expected[1, 2] = 1
    expected[2, 3] = 1  # missed class 2 -> predicted background
    expected[1, 1] = 1
    expected[3, 1] = 2  # the stray and the duplicate
    expected[3, 0] = 1  # the detection in the image without GT
    np.testing.assert_array_equal(m, expected)
    assert m.sum() == 7  # 4 GT + 3 unmatched detections above conf


def test_confusion_matrix_best_iou_wins_crowd_absorbs_and_empty_inputs() -> None:
    # Two detections overlap one GT; the higher-IoU one matches even though it scores lower.
    gts = [[0, 0, 10, 10, 0, 0]]
    dets = [[0, 0, 10, 8, 0.9, 1, 0], [0, 0, 10, 10, 0.5, 0, 0]]
    m = _cm(dets, gts)
    assert m[0, 0] == 1 and m[3, 1] == 1 and m.sum() == 2
    # A detection inside a crowd region is not counted; the crowd box itself is not an instance.
    m = _cm([[2, 2, 6, 6, 0.9, 0, 0]], [[0, 0, 100, 100, 0, 0]], crowd=[True])
    assert m.sum() == 0
    assert _cm([], [[0, 0, 5, 5, 2, 0]])[2, 3] == 1
    assert _cm([[0, 0, 5, 5, 0.9, 1, 0]], [])[3, 1] == 1


def test_evaluator_confusion_uses_best_conf_unless_given(make_dataset: Callable) -> None:
    images = make_dataset(1)
    result = evaluate(images)
    assert result.curves.conf == result.best_conf
    assert result.curves.confusion.shape == (5, 5)
    n_gt = sum(len(im["gt"]) for im in images)
    # Every non-crowd ground truth is counted exactly once, matched or missed.
    assert result.curves.confusion[:4].sum() == n_gt
    everything = evaluate(images, confusion_conf=0.0).curves.confusion
    n_det = sum(len(im["pred"]) for im in images)
    assert everything[:, :4].sum() == n_det  # at conf 0 every detection lands in a predicted column
    assert "curves" not in result.to_dict() and "curves" not in repr(result)
