"""cls_weights in DetectionLoss: each class's BCE terms are scaled by its weight (hand-computed case)."""

from __future__ import annotations

import math

import pytest
import torch

from yolotrain.loss.criterion import DetectionLoss


def _case(cls_weights=None) -> torch.Tensor:
    """One 2x2 level (stride 8, a 16 px image), reg_max 4, two classes, every logit 0, one gt of class 0
    covering the image (the case of test_loss_criterion.test_hand_computed_loss, with a second class)."""
    loss_fn = DetectionLoss(nc=2, reg_max=4, strides=(8,), cls_weights=cls_weights)
    preds = [torch.zeros(1, 4 * 4 + 2, 2, 2)]
    batch = {"batch_idx": torch.tensor([0]), "cls": torch.tensor([[0.0]]), "bboxes": torch.tensor([[0.5, 0.5, 1, 1]])}
    return loss_fn(preds, batch)[1]


def test_class_weights_scale_each_class_term() -> None:
    """BCE(logit 0, t) = log 2 for any t, so each of the 4 anchors costs log 2 per class; the normaliser is
    16/9 (four positives of target score 4/9).
    Unweighted: 8 log 2 / (16/9) = 4.5 log 2; x gain 0.5 = 2.25 log 2 = 1.5595812.
    Weights (3, 1): (4 * 3 + 4 * 1) log 2 / (16/9) = 9 log 2; x gain 0.5 = 4.5 log 2 = 3.1191624.
    Weights (1, 0.5): (4 + 2) log 2 / (16/9) = 3.375 log 2; x gain 0.5 = 1.6875 log 2 = 1.1696859.
    The box and DFL terms do not change (4.375 and 2.0794415, as in the one-class case)."""
    plain = _case()
    assert plain[1].item() == pytest.approx(2.25 * math.log(2), abs=1e-5)
    assert _case([1.0, 1.0]).tolist() == pytest.approx(plain.tolist(), abs=1e-6)
    weighted = _case([3.0, 1.0])
    assert weighted[1].item() == pytest.approx(4.5 * math.log(2), abs=1e-5)
    assert _case(torch.tensor([1.0, 0.5]))[1].item() == pytest.approx(1.6875 * math.log(2), abs=1e-5)
    assert [weighted[0].item(), weighted[2].item()] == pytest.approx([4.375, 2.0794415], abs=1e-5)
