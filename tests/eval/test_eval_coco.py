"""DetectionEvaluator against pycocotools run directly on the same data dumped to COCO JSON."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from yolotrain.errors import DataError
from yolotrain.eval import DetectionEvaluator, EvalResult, format_table

NAMES = ["person", "car", "dog", "kite"]


def evaluate(images: list[dict], names: list[str] = NAMES) -> EvalResult:
    ev = DetectionEvaluator(names)
    for im in images:
        ev.add(im["id"], im["w"], im["h"], im["gt"], im["cls"], im["pred"], gt_crowd=im["crowd"])
    return ev.compute()


@pytest.mark.parametrize(
    ("seed", "crowd", "many"), [(0, False, False), (1, False, True), (2, True, False), (3, True, True)]
)
def test_map_matches_pycocotools(
    seed: int, crowd: bool, many: bool, tmp_path: Path, make_dataset: Callable, coco_reference: Callable
) -> None:
    images = make_dataset(seed, crowd=crowd, many=many)
    assert any(len(im["gt"]) == 0 for im in images) and any(len(im["pred"]) == 0 for im in images)
    ref50, ref50_95, _ = coco_reference(images, tmp_path)
    result = evaluate(images)
    assert 0.05 < ref50 < 0.95  # the data is neither trivial nor hopeless
    assert result.map50 == pytest.approx(ref50, abs=1e-4)
    assert result.map50_95 == pytest.approx(ref50_95, abs=1e-4)
    assert result.images == len(images)
    n_instances = sum(int((~im["crowd"]).sum()) for im in images)
    assert result.instances == n_instances


def test_compute_prints_nothing_and_logs_summary(
    make_dataset: Callable, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="yolotrain"):
        evaluate(make_dataset(4))
    assert capsys.readouterr().out == ""
    assert "mAP50-95" in caplog.text


def test_per_class_ap_matches_pycocotools(tmp_path: Path, make_dataset: Callable, coco_reference: Callable) -> None:
    images = make_dataset(5)
    _, _, ref = coco_reference(images, tmp_path)
    result = evaluate(images)
    table = ref.eval["precision"][:, :, :, 0, -1]  # all areas, maxDets 100
    for row in result.per_class:
        k = row["class_id"]
        valid = table[:, :, k][table[:, :, k] > -1]
        valid50 = table[0, :, k][table[0, :, k] > -1]
        assert row["map50_95"] == pytest.approx(valid.mean(), abs=1e-4)
        assert row["map50"] == pytest.approx(valid50.mean(), abs=1e-4)
        assert row["name"] == NAMES[k]
        assert row["instances"] == sum(int((im["cls"] == k).sum()) for im in images)
        assert row["images"] == sum(int((im["cls"] == k).any()) for im in images)


def test_perfect_predictions_score_one(make_dataset: Callable) -> None:
    images = make_dataset(7)
    for im in images:
        im["pred"] = np.concatenate([im["gt"], np.full((len(im["gt"]), 1), 0.9), im["cls"][:, None]], axis=1)
    result = evaluate(images)
    assert result.map50 == pytest.approx(1.0)
    assert result.map50_95 == pytest.approx(1.0)
    assert result.precision == pytest.approx(1.0)
    assert result.recall == pytest.approx(1.0)
    assert all(row["precision"] == 1.0 and row["recall"] == 1.0 for row in result.per_class)


def test_no_predictions_scores_zero(make_dataset: Callable) -> None:
    images = make_dataset(8)
    for im in images:
        im["pred"] = np.zeros((0, 6))
    result = evaluate(images)
    assert result.instances > 0
    assert (result.map50, result.map50_95, result.precision, result.recall) == (0.0, 0.0, 0.0, 0.0)
    assert len(result.per_class) > 0 and all(row["recall"] == 0.0 for row in result.per_class)


def test_no_ground_truth_gives_zeros_not_nan(caplog: pytest.LogCaptureFixture, make_dataset: Callable) -> None:
    images = make_dataset(9)
    for im in images:
        im["gt"], im["cls"], im["crowd"] = np.zeros((0, 4)), np.zeros(0, int), np.zeros(0, bool)
    with caplog.at_level(logging.WARNING, logger="yolotrain"):
        result = evaluate(images)
    assert result.to_dict()["mAP50"] == 0.0 and result.map50_95 == 0.0
    assert result.precision == 0.0 and result.recall == 0.0
    assert result.images == len(images) and result.instances == 0 and result.per_class == []
    assert "no ground-truth" in caplog.text
    assert DetectionEvaluator(NAMES).compute().images == 0  # nothing added at all


def test_hand_checked_precision_recall() -> None:
    ev = DetectionEvaluator(["a", "b"])
    gt = np.array([[10, 10, 50, 50], [100, 100, 160, 140]], dtype=float)
    pred = np.array(
        [
            [10, 10, 50, 50, 0.9, 0],
            [101, 100, 160, 141, 0.8, 1],
            [300, 300, 340, 340, 0.3, 0],  # false positive, lowest score
        ]
    )
    ev.add(1, 400, 400, gt, np.array([0, 1]), pred)
    result = ev.compute()
    # Thresholds 0.9 / 0.8 / 0.3 give mean F1 0.5 / 1.0 / 0.9: 0.8 wins with P = R = 1.
    assert result.best_conf == pytest.approx(0.8)
    assert result.precision == 1.0 and result.recall == 1.0
    assert result.map50 == pytest.approx(1.0)

    # A false positive scoring above the true positive of class "a" caps a's precision at 1/2.
    ev.add(2, 400, 400, np.array([[0, 0, 20, 20]]), np.array([0]), np.array([[200, 200, 220, 220, 0.95, 0]]))
    result = ev.compute()
    rows = {row["name"]: row for row in result.per_class}
    # At 0.3 class a has 1 TP of 3 detections over 2 gts (F1 0.4); at 0.8/0.9 it has 1 TP of 2 (F1 0.5),
    # so the best threshold is 0.8 where b is perfect.
    assert result.best_conf == pytest.approx(0.8)
    assert rows["a"]["precision"] == pytest.approx(0.5) and rows["a"]["recall"] == pytest.approx(0.5)
    assert rows["b"]["precision"] == 1.0 and rows["b"]["recall"] == 1.0
    assert result.precision == pytest.approx(0.75) and result.recall == pytest.approx(0.75)
    assert rows["a"]["images"] == 2 and rows["a"]["instances"] == 2


def test_torch_inputs_and_to_dict() -> None:
    ev = DetectionEvaluator(["a"])
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    ev.add(0, 32, 32, gt, torch.tensor([0]), torch.tensor([[0.0, 0.0, 10.0, 10.0, 0.7, 0.0]]))
    ev.add(1, 32, 32, torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 6))
    ev.add(2, 32, 32, torch.tensor([[5.0, 5.0, 30.0, 30.0]]), torch.tensor([[0.0]]), None)  # (n, 1) classes
    d = ev.compute().to_dict()
    assert {"mAP50", "mAP50-95", "precision", "recall", "images", "instances", "per_class"} <= set(d)
    assert d["images"] == 3 and d["instances"] == 2
    assert d["mAP50"] == pytest.approx(0.5, abs=0.01) and d["recall"] == pytest.approx(0.5)
    json.dumps(d)  # plain Python types only


def test_state_merge_equals_single_evaluator_and_drops_duplicates(make_dataset: Callable) -> None:
    images = make_dataset(11, n_images=20)
    whole = evaluate(images)
    ranks = [DetectionEvaluator(NAMES) for _ in range(2)]
    for i, im in enumerate(images + images[:3]):  # the 3 repeats mimic DistributedSampler padding
        ranks[i % 2].add(im["id"], im["w"], im["h"], im["gt"], im["cls"], im["pred"])
    merged = DetectionEvaluator(NAMES)
    merged.merge([r.state() for r in ranks])
    result = merged.compute()
    assert result.images == whole.images
    assert result.map50_95 == pytest.approx(whole.map50_95, abs=1e-12)
    assert result.precision == pytest.approx(whole.precision, abs=1e-12)


def test_inverted_box_is_zero_size_false_positive() -> None:
    ev = DetectionEvaluator(["a"])
    gt = np.array([[10, 10, 50, 50]], dtype=float)
    pred = np.array([[10, 10, 50, 50, 0.5, 0], [50, 50, 10, 10, 0.9, 0]], dtype=float)
    ev.add(0, 64, 64, gt, np.array([0]), pred)
    result = ev.compute()
    # The inverted box outscores the true positive, so as a false positive it halves AP50 at rank 1
    # precision 1/2 (COCO's interpolated curve: 0.5 everywhere up to recall 1).
    assert result.map50 == pytest.approx(0.5, abs=1e-6)
    assert result.best_conf == pytest.approx(0.5) and result.precision == 0.5 and result.recall == 1.0


def test_bad_inputs_raise() -> None:
    ev = DetectionEvaluator(["a", "b"])
    with pytest.raises(DataError, match="class 5"):
        ev.add(0, 10, 10, np.zeros((1, 4)), np.array([5]), None)
    with pytest.raises(ValueError, match="pred"):
        ev.add(0, 10, 10, None, None, np.zeros((2, 5)))
    with pytest.raises(ValueError, match="same length"):
        ev.add(0, 10, 10, np.zeros((2, 4)), np.array([0]), None)
    assert len(ev) == 0


def test_format_table_lists_all_row_then_classes(make_dataset: Callable) -> None:
    result = evaluate(make_dataset(12))
    text = format_table(result, NAMES)
    lines = text.splitlines()
    assert lines[0].split() == ["class", "images", "instances", "P", "R", "mAP50", "mAP50-95"]
    assert lines[1].split()[0] == "all" and lines[1].split()[1] == str(result.images)
    for row in result.per_class:
        assert any(line.split()[0] == row["name"] for line in lines[2:])
    assert len(lines) == 2 + len(result.per_class)
    assert len({len(line) for line in lines}) == 1  # columns aligned
    renamed = format_table(result, [n.upper() for n in NAMES])
    assert "PERSON" in renamed or "CAR" in renamed
