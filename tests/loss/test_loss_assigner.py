"""Task-aligned assigner: candidate selection, top-k, conflict resolution and empty batches."""

from __future__ import annotations

import torch

from yolotrain.loss.assigner import TaskAlignedAssigner
from yolotrain.loss.boxes import bbox_iou


def _grid(n: int = 8, stride: float = 8.0) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
    return torch.stack((xs, ys), -1).view(-1, 2) * stride


def _predictions(anchors: torch.Tensor, b: int, c: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(b, anchors.shape[0], c, generator=g)
    half = torch.rand(b, anchors.shape[0], 2, generator=g) * 12 + 6
    boxes = torch.cat((anchors - half, anchors + half), -1)
    return scores, boxes


def _inside(anchors: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    return (anchors[:, 0] > box[0]) & (anchors[:, 0] < box[2]) & (anchors[:, 1] > box[1]) & (anchors[:, 1] < box[3])


def test_gt_gets_exactly_its_topk_anchors_inside() -> None:
    anchors = _grid()
    scores, boxes = _predictions(anchors, 1, 3)
    gt = torch.tensor([[[2.0, 2.0, 42.0, 34.0]]])  # 5 x 4 = 20 anchor centres inside
    labels = torch.tensor([[[2.0]]])
    assigner = TaskAlignedAssigner(topk=10, num_classes=3)
    t_labels, t_boxes, t_scores, fg, gt_idx = assigner(scores, boxes, anchors, labels, gt, torch.ones(1, 1, 1))

    inside = _inside(anchors, gt[0, 0])
    assert inside.sum() == 20
    assert fg.sum() == 10 and (fg[0] <= inside).all()
    # The 10 chosen anchors are those with the largest score^0.5 * IoU^6 among the inside ones.
    metric = scores[0, :, 2] ** 0.5 * bbox_iou(gt[0], boxes[0]).clamp(min=0) ** 6
    expected = torch.where(inside, metric, -1.0).topk(10).indices
    assert set(fg[0].nonzero().squeeze(1).tolist()) == set(expected.tolist())
    assert (t_labels[0][fg[0]] == 2).all() and (t_labels[0][~fg[0]] == 0).all()
    assert torch.equal(t_boxes[0][fg[0]], gt[0, 0].expand(10, 4))
    # Scores: one-hot on the gt class, normalised so the best positive gets the best positive IoU.
    assert (t_scores[0, :, :2] == 0).all() and (t_scores[0][~fg[0]] == 0).all()
    best_iou = bbox_iou(gt[0], boxes[0])[fg[0]].max()
    assert torch.isclose(t_scores[0, :, 2].max(), best_iou, rtol=1e-4)
    assert (gt_idx == 0).all()


def test_small_gt_gets_all_anchors_inside_when_fewer_than_topk() -> None:
    anchors = _grid()
    scores, boxes = _predictions(anchors, 1, 2)
    gt = torch.tensor([[[2.0, 2.0, 22.0, 14.0]]])  # 3 x 2 anchor centres inside
    assigner = TaskAlignedAssigner(topk=10, num_classes=2)
    fg = assigner(scores, boxes, anchors, torch.zeros(1, 1, 1), gt, torch.ones(1, 1, 1))[3]
    assert torch.equal(fg[0], _inside(anchors, gt[0, 0]))
    assert fg.sum() == 6


def test_overlapping_gts_never_share_an_anchor() -> None:
    anchors = _grid()
    scores, boxes = _predictions(anchors, 1, 2, seed=1)
    # Two heavily overlapping gts (16 shared anchor centres) and topk=13, so top-k sets collide.
    gt = torch.tensor([[[2.0, 2.0, 42.0, 42.0], [10.0, 10.0, 50.0, 50.0]]])
    labels = torch.tensor([[[0.0], [1.0]]])
    assigner = TaskAlignedAssigner(topk=13, num_classes=2)
    t_labels, t_boxes, t_scores, fg, gt_idx = assigner(scores, boxes, anchors, labels, gt, torch.ones(1, 2, 1))

    # Each positive anchor has exactly one class with a positive score and a consistent box/label.
    assert ((t_scores[0][fg[0]] > 0).sum(-1) <= 1).all()
    assert torch.equal(t_boxes[0][fg[0]], gt[0][gt_idx[0][fg[0]]])
    assert torch.equal(t_labels[0][fg[0]], labels[0, :, 0].long()[gt_idx[0][fg[0]]])
    # Recompute each gt's top-k set by hand: anchors in one set belong to that gt, anchors in both
    # belong to the gt they overlap more.
    ious = bbox_iou(gt[0][:, None], boxes[0][None]).clamp(min=0)  # (2, A)
    sets = []
    for j in range(2):
        inside = _inside(anchors, gt[0, j])
        metric = scores[0, :, j] ** 0.5 * ious[j] ** 6
        sets.append(set(torch.where(inside, metric, -1.0).topk(13).indices.tolist()))
    shared = sets[0] & sets[1]
    assert shared, "scenario must produce conflicts"
    assert set(fg[0].nonzero().squeeze(1).tolist()) == sets[0] | sets[1]
    for a in sets[0] ^ sets[1]:
        assert gt_idx[0, a].item() == (0 if a in sets[0] else 1)
    for a in shared:
        assert gt_idx[0, a].item() == int(ious[1, a] > ious[0, a])
    assert fg.sum() == 26 - len(shared)


def test_conflict_resolution_picks_higher_iou() -> None:
    # One anchor, two gts both containing it with topk=1: the anchor is the top-1 of both.
    anchors = torch.tensor([[10.0, 10.0]])
    scores = torch.full((1, 1, 2), 0.9)
    pred = torch.tensor([[[5.0, 5.0, 15.0, 15.0]]])
    gt = torch.tensor([[[0.0, 0.0, 20.0, 20.0], [4.0, 4.0, 16.0, 16.0]]])  # second overlaps more
    out = TaskAlignedAssigner(topk=1, num_classes=2)(
        scores, pred, anchors, torch.tensor([[[0.0], [1.0]]]), gt, torch.ones(1, 2, 1)
    )
    t_labels, _, t_scores, fg, gt_idx = out
    assert fg.tolist() == [[True]]
    assert gt_idx.item() == 1 and t_labels.item() == 1
    assert t_scores[0, 0, 0] == 0 and t_scores[0, 0, 1] > 0


def test_zero_gts_and_padding() -> None:
    anchors = _grid()
    scores, boxes = _predictions(anchors, 2, 3)
    assigner = TaskAlignedAssigner(topk=10, num_classes=3)
    # No gt at all in the batch (M == 0).
    out = assigner(scores, boxes, anchors, torch.zeros(2, 0, 1), torch.zeros(2, 0, 4), torch.zeros(2, 0, 1))
    assert out[0].shape == (2, 64) and out[1].shape == (2, 64, 4) and out[2].shape == (2, 64, 3)
    assert not out[3].any() and (out[2] == 0).all()
    # Image 0 has one gt, image 1 only padding (whose box would otherwise contain anchors).
    gt = torch.tensor([[[2.0, 2.0, 42.0, 34.0]], [[2.0, 2.0, 42.0, 34.0]]])
    mask = torch.tensor([[[1.0]], [[0.0]]])
    _, _, t_scores, fg, _ = assigner(scores, boxes, anchors, torch.zeros(2, 1, 1), gt, mask)
    assert fg[0].sum() == 10 and not fg[1].any() and (t_scores[1] == 0).all()


def test_hand_computed_assignment() -> None:
    """Four anchors on a row, one gt; every expected number below was worked out by hand.

    gt (0,0,30,10), class 1. Anchors at x = 5, 15, 25, 35 (y = 5): the first three lie inside it.
    Predicted boxes give IoUs 1, 1/2, 2/3 and 1; class-1 scores 0.25, 0.64, 0.81, 1.0 (class 0: 0.9).
    metric = score^0.5 * IoU^6: 0.5 * 1 = 0.5; 0.8 / 64 = 0.0125; 0.9 * 64/729 = 0.0790123; a3 is
    outside the gt, so not a candidate although its metric (1.0) is the largest.
    top-2: a0 and a2. Normalised target = metric * (best IoU 1) / (best metric 0.5): 1.0 and 0.1580247.
    """
    anchors = torch.tensor([[5.0, 5.0], [15.0, 5.0], [25.0, 5.0], [35.0, 5.0]])
    pred = torch.tensor([[[0.0, 0.0, 30.0, 10.0], [0.0, 0.0, 15.0, 10.0], [0.0, 0.0, 20.0, 10.0], [0, 0, 30, 10]]])
    scores = torch.tensor([[[0.9, 0.25], [0.9, 0.64], [0.9, 0.81], [0.9, 1.0]]])
    gt = torch.tensor([[[0.0, 0.0, 30.0, 10.0]]])
    t_labels, t_boxes, t_scores, fg, gt_idx = TaskAlignedAssigner(topk=2, num_classes=2)(
        scores, pred.float(), anchors, torch.tensor([[[1.0]]]), gt, torch.ones(1, 1, 1)
    )
    assert fg.tolist() == [[True, False, True, False]]
    assert t_labels.tolist() == [[1, 0, 1, 0]]
    assert torch.allclose(t_scores[0, :, 1], torch.tensor([1.0, 0.0, 0.1580247, 0.0]), atol=1e-6)
    assert (t_scores[0, :, 0] == 0).all()
    assert torch.equal(t_boxes[0, [0, 2]], gt[0].expand(2, 4))
