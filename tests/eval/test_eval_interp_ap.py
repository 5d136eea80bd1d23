"""ap_style=ultralytics: AP as the YOLOv5 / Ultralytics validators define it, on hand-computed cases."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from conftest import NAMES, _make_dataset
from yolotrain.eval import DetectionEvaluator
from yolotrain.eval.interp_ap import envelope_ap, match_image

PARITY_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "ultralytics_parity.py"


def test_envelope_ap_hand_computed():
    # 3 ground truths; detections TP, FP, TP: recall 1/3, 1/3, 2/3; precision 1, 1/2, 2/3.
    # Envelope: 1 up to recall 1/3, then 2/3 up to 2/3, then the sentinel line down to 0 at recall 1.
    # Trapezoids over the 101-point samples: 0.33 (x <= 0.33) + (1 + 2/3) / 200 + 32 * 0.01 * 2/3
    # + (2/3 + 2 * 0.33) / 200 + 0.33**2 (the exact area under 2(1 - x) from 0.67 to 1) = 0.6672.
    recall = np.array([1, 1, 2]) / 3
    precision = np.array([1, 0.5, 2 / 3])
    assert envelope_ap(recall, precision) == pytest.approx(0.6672, abs=1e-9)


def test_perfect_detections_score_0_995_not_1():
    # The sampled envelope reaches the sentinel (recall 1, precision 0) at the last point, so the last
    # trapezoid is half: a perfect detector scores 0.995, the figure Ultralytics users know.
    assert envelope_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == pytest.approx(0.995, abs=1e-12)


def test_match_each_ground_truth_keeps_the_higher_scoring_detection():
    gt = np.array([[0, 0, 10, 10]], dtype=float)
    # both detections overlap the one ground truth: the first (higher score) with IoU 0.6, the second 1.0
    det = np.array([[0, 0, 10, 6], [0, 0, 10, 10]], dtype=float)
    tp = match_image(det, np.array([0, 0]), gt, np.array([0]), np.array([0.5, 0.7]))
    # at 0.5 the ground truth keeps detection 0 (earlier in score order) although 1 overlaps it more;
    # at 0.7 detection 0 no longer qualifies and detection 1 takes it
    assert tp.tolist() == [[True, False], [False, True]]
    # a detection overlapping two ground truths takes the one it overlaps most (IoU 0.82 over 0.54), which
    # leaves the other free for the next detection (IoU 0.9): both are true positives
    two_gt = np.array([[0, 0, 10, 10], [4, 0, 14, 10]], dtype=float)
    two_det = np.array([[3, 0, 13, 10], [0, 0, 10, 9]], dtype=float)
    tp = match_image(two_det, np.array([0, 0]), two_gt, np.array([0, 0]), np.array([0.5]))
    assert tp[:, 0].tolist() == [True, True]
    wrong_class = match_image(det, np.array([1, 1]), gt, np.array([0]), np.array([0.5]))
    assert not wrong_class.any()


def test_every_detection_counts_not_only_100_per_image():
    # 150 objects in one image, each found exactly: COCO scores only 100 detections per image
    # (recall stops at 2/3: 67 of its 101 recall points have precision 1), Ultralytics' AP counts all 150.
    x = np.arange(150, dtype=float) * 20
    gt = np.stack([x, np.zeros(150), x + 10, np.full(150, 10.0)], 1)
    pred = np.concatenate([gt, np.linspace(0.9, 0.5, 150)[:, None], np.zeros((150, 1))], 1)
    results = {}
    for style in ("coco", "ultralytics"):
        ev = DetectionEvaluator(["thing"], ap_style=style)
        ev.add(image_id=0, width=3000, height=20, gt_boxes=gt, gt_cls=np.zeros(150, int), pred=pred)
        results[style] = ev.compute()
    assert results["coco"].map50 == pytest.approx(67 / 101, abs=1e-6)
    assert results["ultralytics"].map50 == pytest.approx(0.995, abs=1e-9)
    assert results["ultralytics"].map50_95 == pytest.approx(0.995, abs=1e-9)


def test_unknown_ap_style_refused():
    with pytest.raises(ValueError, match="ap_style"):
        DetectionEvaluator(["a"], ap_style="voc")


def test_same_as_ultralytics_own_code_when_installed():
    pytest.importorskip("ultralytics", reason="ultralytics is not installed (never a dependency of yolotrain)")
    # the reference: Ultralytics' validator matching and its ap_per_class, as benchmarks/ultralytics_parity.py
    # applies them (one re-statement of the peer's matching, used by the benchmark and here)
    spec = importlib.util.spec_from_file_location("ultralytics_parity", PARITY_SCRIPT)
    parity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parity)

    images = _make_dataset(seed=3, n_images=30, many=True)
    ev = DetectionEvaluator(NAMES, ap_style="ultralytics")
    scored = []
    for k, im in enumerate(images):
        pred = im["pred"][np.argsort(-im["pred"][:, 4], kind="stable")]
        keep = ~im["crowd"]
        gt, cls = im["gt"][keep], im["cls"][keep]
        ev.add(image_id=k, width=im["w"], height=im["h"], gt_boxes=gt, gt_cls=cls, pred=pred)
        scored.append({"pred": pred, "gt_boxes": gt, "gt_cls": cls})
    map50, map50_95 = parity.ultralytics_ap(scored)
    ours = ev.compute()
    assert ours.map50 == pytest.approx(map50, abs=1e-4)
    assert ours.map50_95 == pytest.approx(map50_95, abs=1e-4)
