"""DetectionLoss: conventions, empty labels, mixed precision and learnability."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from yolotrain.config_sections import LossGains
from yolotrain.loss.criterion import DetectionLoss
from yolotrain.models import build_model


def _batch() -> dict[str, torch.Tensor]:
    return {
        "batch_idx": torch.tensor([1, 0, 1]),  # deliberately unsorted
        "cls": torch.tensor([[1.0], [0.0], [1.0]]),
        "bboxes": torch.tensor([[0.3, 0.3, 0.25, 0.3], [0.5, 0.5, 0.5, 0.4], [0.7, 0.65, 0.35, 0.3]]),
    }


def _empty_batch() -> dict[str, torch.Tensor]:
    return {"batch_idx": torch.zeros(0), "cls": torch.zeros(0, 1), "bboxes": torch.zeros(0, 4)}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("n", nc=2)


def test_from_model_reads_model_and_gains(model: torch.nn.Module) -> None:
    loss_fn = DetectionLoss.from_model(model, LossGains(box=1.0, cls=2.0, dfl=3.0))
    assert (loss_fn.nc, loss_fn.reg_max, loss_fn.strides, loss_fn.gains) == (2, 16, (8.0, 16.0, 32.0), (1.0, 2.0, 3.0))
    assert DetectionLoss.from_model(model, replace(LossGains.defaults(), box=4.0)).gains == (4.0, 0.5, 1.5)


def test_loss_is_sum_of_items_times_batch(model: torch.nn.Module) -> None:
    preds = model(torch.rand(2, 3, 64, 64))
    loss, items = DetectionLoss.from_model(model)(preds, _batch())
    assert loss.shape == () and items.shape == (3,) and not items.requires_grad
    assert torch.isclose(loss, items.sum() * 2)
    assert (items > 0).all()
    loss.backward()
    assert all(p.grad is not None for p in model.head.parameters())
    model.zero_grad()


def test_target_packing_is_order_independent(model: torch.nn.Module) -> None:
    labels, boxes, mask = DetectionLoss._targets(_batch(), 3, 64.0, 32.0, torch.device("cpu"))
    assert labels.shape == (3, 2, 1) and mask[:, :, 0].tolist() == [[True, False], [True, True], [False, False]]
    assert boxes[0, 0].tolist() == pytest.approx([16.0, 9.6, 48.0, 22.4])  # xywh*size -> xyxy pixels
    assert labels[1, :, 0].tolist() == [1.0, 1.0]


def test_empty_labels_give_zero_box_and_dfl(model: torch.nn.Module) -> None:
    preds = model(torch.rand(2, 3, 64, 64))
    loss, items = DetectionLoss.from_model(model)(preds, _empty_batch())
    assert items[0] == 0 and items[2] == 0
    assert torch.isfinite(items[1]) and items[1] > 0
    loss.backward()  # still differentiable, and the box branch gets (zero) gradients
    box_grad = model.head.box[0][-1].weight.grad
    assert box_grad is not None and (box_grad == 0).all()
    model.zero_grad()


def test_image_without_labels_in_mixed_batch(model: torch.nn.Module) -> None:
    preds = [p.detach() for p in model(torch.rand(2, 3, 64, 64))]
    only0 = {
        "batch_idx": torch.tensor([0]),
        "cls": torch.tensor([[1.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]]),
    }
    loss_fn = DetectionLoss.from_model(model)
    _, items = loss_fn(preds, only0)
    assert items[0] > 0 and items[2] > 0
    # The label-free image contributes no box/DFL loss: changing its predictions leaves them unchanged.
    noisy = [p.clone() for p in preds]
    for p in noisy:
        p[1] += torch.randn_like(p[1])
    _, items2 = loss_fn(noisy, only0)
    assert torch.allclose(items[[0, 2]], items2[[0, 2]])


def test_bf16_preds_give_float32_loss(model: torch.nn.Module) -> None:
    x = torch.rand(2, 3, 64, 64)
    loss_fn = DetectionLoss.from_model(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        preds = model(x)
        assert preds[0].dtype == torch.bfloat16
        loss, items = loss_fn(preds, _batch())
    assert loss.dtype == torch.float32 and items.dtype == torch.float32
    assert torch.isfinite(loss)
    # Same value as feeding the bf16 outputs upcast by hand: the loss runs entirely in float32.
    ref, _ = loss_fn([p.detach().float() for p in preds], _batch())
    assert torch.isclose(loss.detach(), ref, rtol=1e-5)
    loss.backward()
    model.zero_grad()


@pytest.mark.slow
def test_loss_decreases_when_overfitting() -> None:
    torch.manual_seed(0)
    model = build_model("n", nc=2)
    loss_fn = DetectionLoss.from_model(model)
    x = torch.rand(2, 3, 64, 64)
    batch = _batch()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        loss, _ = loss_fn(model(x), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    # Batch-of-2 BatchNorm makes single steps noisy, so compare averages (seeds 0-2 reach 0.43-0.52).
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3


def test_hand_computed_loss() -> None:
    """One 2x2 level (stride 8, a 16 px image), reg_max 4, one class, all logits 0; worked out by hand.

    DFL logits 0 give uniform bins 0..3, so every side is 1.5 grid cells from its anchor: anchor (0.5, 0.5)
    predicts (-1,-1,2,2), and so on. The gt covers the image, (0,0,2,2) in grid units, and contains all
    four anchors; each prediction overlaps it by 4 of 9 cells: IoU 4/9.
    Assigner: all four positive (topk 10 > 4), equal metrics, so each target score = best IoU = 4/9;
    normaliser = 16/9.
    cls: BCE(logit 0, t) = log 2 for any t; 4 log 2 / (16/9) = 2.25 log 2 = 1.5595812; x gain 0.5 = 0.7797906.
    box: CIoU = 4/9 - rho^2/c^2 = 4/9 - 0.5/18 = 5/12 (equal aspect: no v term); each anchor
    (1 - 5/12) * 4/9, summed / (16/9) = 7/12 = 0.5833333; x gain 7.5 = 4.375.
    dfl: uniform log-softmax is -log 4 at every bin, so each side costs log 4 whatever its target;
    4 * log 4 * 4/9 / (16/9) = log 4 = 1.3862944; x gain 1.5 = 2.0794415.
    """
    loss_fn = DetectionLoss(nc=1, reg_max=4, strides=(8,))
    preds = [torch.zeros(1, 4 * 4 + 1, 2, 2, requires_grad=True)]
    batch = {"batch_idx": torch.tensor([0]), "cls": torch.tensor([[0.0]]), "bboxes": torch.tensor([[0.5, 0.5, 1, 1]])}
    loss, items = loss_fn(preds, batch)
    assert torch.allclose(items, torch.tensor([4.375, 0.7797906, 2.0794415]), atol=1e-5), items
    assert loss.item() == pytest.approx(7.2342321, abs=1e-5)


def test_hand_computed_dfl() -> None:
    """Bin logits (0, ln 3, 0, 0): softmax (1/6, 1/2, 1/6, 1/6). A target of 0.25 between bins 0 and 1 weighs
    them 0.75 / 0.25: loss = 0.75 ln 6 + 0.25 ln 2 = 1.3438203 + 0.1732868 = 1.5171071 (every side alike)."""
    logits = torch.tensor([0.0, math.log(3.0), 0.0, 0.0]).expand(1, 4, 4)
    out = DetectionLoss._dfl(logits, torch.full((1, 4), 0.25))
    assert out.shape == (1,) and out.item() == pytest.approx(1.5171071, abs=1e-6)
