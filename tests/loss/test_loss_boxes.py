"""Box geometry helpers against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from yolotrain.loss.boxes import bbox2dist, bbox_iou, dist2bbox, make_anchors, xywh2xyxy, xyxy2xywh


def test_iou_hand_computed() -> None:
    a = torch.tensor([0.0, 0.0, 2.0, 2.0])
    b = torch.tensor([1.0, 1.0, 3.0, 4.0])
    # intersection 1x1, union 4 + 6 - 1
    assert bbox_iou(a, b).item() == pytest.approx(1 / 9, rel=1e-5)
    assert bbox_iou(a, a).item() == pytest.approx(1.0, rel=1e-5)
    assert bbox_iou(a, torch.tensor([5.0, 5.0, 6.0, 6.0])).item() == 0.0


def test_ciou_hand_computed() -> None:
    a = torch.tensor([0.0, 0.0, 2.0, 2.0])
    b = torch.tensor([1.0, 1.0, 3.0, 4.0])
    iou = 1 / 9
    rho2 = (2 - 1) ** 2 + (2.5 - 1) ** 2  # centres (1, 1) and (2, 2.5)
    c2 = 3**2 + 4**2  # enclosing box 3 x 4
    v = 4 / math.pi**2 * (math.atan(2 / 3) - math.atan(2 / 2)) ** 2
    alpha = v / (1 - iou + v)
    expected = iou - rho2 / c2 - alpha * v
    assert bbox_iou(a, b, CIoU=True).item() == pytest.approx(expected, rel=1e-5)
    # Identical boxes: no centre distance, no aspect penalty.
    assert bbox_iou(a, a, CIoU=True).item() == pytest.approx(1.0, rel=1e-5)


def test_iou_broadcasts_and_accepts_xywh() -> None:
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]])
    out = bbox_iou(boxes[:, None], boxes[None, :])
    assert out.shape == (2, 2)
    assert torch.allclose(out, torch.tensor([[1.0, 1 / 7], [1 / 7, 1.0]]), atol=1e-5)
    assert torch.allclose(bbox_iou(xyxy2xywh(boxes[:1]), xyxy2xywh(boxes[1:]), xywh=True), out[0, 1:], atol=1e-6)


def test_ciou_gradient_is_finite_for_degenerate_boxes() -> None:
    pred = torch.tensor([[1.0, 1.0, 1.0, 1.0]], requires_grad=True)  # zero-size box
    loss = (1 - bbox_iou(pred, torch.tensor([[0.0, 0.0, 2.0, 2.0]]), CIoU=True)).sum()
    loss.backward()
    assert torch.isfinite(pred.grad).all()


def test_xywh_xyxy_round_trip() -> None:
    x = torch.rand(10, 4) * 100
    assert torch.allclose(xyxy2xywh(xywh2xyxy(x)), x, atol=1e-4)


def test_make_anchors_layout() -> None:
    feats = [torch.zeros(1, 1, 2, 3), torch.zeros(1, 1, 1, 2)]
    points, strides = make_anchors(feats, [8, 16])
    assert points.shape == (8, 2) and strides.shape == (8, 1)
    # Row-major within a level (x varies fastest), levels concatenated finest first.
    assert points[:4].tolist() == [[0.5, 0.5], [1.5, 0.5], [2.5, 0.5], [0.5, 1.5]]
    assert points[6:].tolist() == [[0.5, 0.5], [1.5, 0.5]]
    assert strides.squeeze(1).tolist() == [8.0] * 6 + [16.0] * 2


def test_dist2bbox_bbox2dist_round_trip() -> None:
    anchors = torch.rand(50, 2) * 20 + 10
    dist = torch.rand(50, 4) * 14  # inside the representable range of 16 bins
    boxes = dist2bbox(dist, anchors)
    assert torch.allclose(bbox2dist(anchors, boxes, reg_max=16), dist, atol=1e-4)
    xywh = dist2bbox(dist, anchors, xywh=True)
    assert torch.allclose(xywh2xyxy(xywh), boxes, atol=1e-4)


def test_bbox2dist_clamps_to_bin_range() -> None:
    anchor = torch.tensor([[10.0, 10.0]])
    box = torch.tensor([[-30.0, 12.0, 40.0, 11.0]])  # left far away, top behind the anchor
    d = bbox2dist(anchor, box, reg_max=16)
    assert d.tolist()[0] == pytest.approx([15 - 0.01, 0.0, 15 - 0.01, 1.0])
