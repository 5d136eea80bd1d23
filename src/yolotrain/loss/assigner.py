"""Task-aligned one-to-many label assignment (TOOD, Feng et al. 2021), vectorized."""

from __future__ import annotations

import torch
from torch import nn

from yolotrain.loss.boxes import bbox_iou

__all__ = ["TaskAlignedAssigner"]


class TaskAlignedAssigner(nn.Module):
    """Assign ground-truth boxes to anchors using the alignment metric ``score^alpha * IoU^beta``.

    For each gt, candidates are anchors whose centre lies strictly inside the gt box; the ``topk``
    candidates with the highest metric become positives. An anchor that ends up positive for several
    gts keeps only the one it overlaps most. Everything is computed on dense (B, M, A) tensors, so
    there is no Python loop over images, gts or anchors, and no shape depends on the values (padded
    gts, ``mask_gt`` False, are never candidates).

    Args:
        topk: Positives per gt.
        num_classes: Number of classes.
        alpha: Exponent of the classification score in the metric.
        beta: Exponent of the IoU in the metric.
        eps: Numerical guard for the centre test and normalisation.
    """

    def __init__(
        self, topk: int = 10, num_classes: int = 80, alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9
    ) -> None:
        super().__init__()
        self.topk = topk
        self.num_classes = num_classes
        self.alpha = alpha
        self.beta = beta
        self.eps = eps

    @torch.no_grad()
    def forward(
        self,
        pd_scores: torch.Tensor,
        pd_bboxes: torch.Tensor,
        anc_points: torch.Tensor,
        gt_labels: torch.Tensor,
        gt_bboxes: torch.Tensor,
        mask_gt: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Compute training targets.

        Args:
            pd_scores: (B, A, C) predicted class probabilities (after sigmoid).
            pd_bboxes: (B, A, 4) predicted xyxy boxes, same units as the gts (pixels).
            anc_points: (A, 2) anchor centres, same units.
            gt_labels: (B, M, 1) class ids, padded.
            gt_bboxes: (B, M, 4) xyxy gt boxes, padded.
            mask_gt: (B, M, 1) True/1 for real gts, False/0 for padding.

        Returns:
            ``target_labels`` (B, A) long, ``target_bboxes`` (B, A, 4), ``target_scores`` (B, A, C)
            one-hot scaled by the normalised alignment metric, ``fg_mask`` (B, A) bool and
            ``target_gt_idx`` (B, A) long index into M. Background anchors have label 0, a zero
            score row and fg_mask False.
        """
        b, a, c = pd_scores.shape
        m = gt_bboxes.shape[1]
        device = pd_scores.device
        if m == 0:
            return (
                torch.zeros(b, a, dtype=torch.long, device=device),
                torch.zeros(b, a, 4, dtype=pd_bboxes.dtype, device=device),
                torch.zeros_like(pd_scores),
                torch.zeros(b, a, dtype=torch.bool, device=device),
                torch.zeros(b, a, dtype=torch.long, device=device),
            )

        labels = gt_labels.view(b, m).long().clamp(0, c - 1)
        valid = self._centres_in_boxes(anc_points, gt_bboxes) & mask_gt.view(b, m, 1).bool()  # (B, M, A)

        # Score of each gt's own class at every anchor: out[b, a, j] = pd_scores[b, a, labels[b, j]].
        scores = pd_scores.gather(2, labels.unsqueeze(1).expand(b, a, m)).transpose(1, 2)  # (B, M, A)
        # IoU of every (gt, anchor) pair by broadcasting (B, M, 1, 4) against (B, 1, A, 4), zero off the
        # candidates: dense, so the shapes do not depend on how many candidates there are (no host read).
        ious = bbox_iou(gt_bboxes.unsqueeze(2), pd_bboxes.unsqueeze(1)).clamp_(min=0).to(pd_bboxes.dtype)
        ious = torch.where(valid, ious, 0.0)
        metric = scores.pow(self.alpha) * ious.pow(self.beta) * valid

        # Top-k per gt. Non-candidates rank below every candidate (-1), so a gt gets exactly
        # min(topk, #anchors inside it) positives even when candidate metrics are 0.
        k = min(self.topk, a)
        topk_idx = torch.where(valid, metric, -1.0).topk(k, dim=-1).indices  # (B, M, k)
        in_topk = torch.zeros_like(valid).scatter_(-1, topk_idx, True)
        mask_pos = in_topk & valid  # (B, M, A)

        # An anchor positive for several gts keeps the one with the largest IoU among those gts.
        multi = mask_pos.sum(1, keepdim=True) > 1  # (B, 1, A)
        # max(1).indices, not argmax(1): same result, but argmax over a middle dim is ~15x slower on CPU.
        best = torch.where(mask_pos, ious, -1.0).max(1).indices  # (B, A)
        best_onehot = torch.zeros_like(mask_pos).scatter_(1, best.unsqueeze(1), True)  # (B, M, A)
        mask_pos = torch.where(multi, best_onehot & mask_pos, mask_pos)

        fg_mask = mask_pos.any(1)  # (B, A)
        # At most one positive per anchor now, so a weighted sum finds its index (0 for background).
        target_gt_idx = (mask_pos * torch.arange(m, device=device).view(1, m, 1)).sum(1)  # (B, A)
        flat_idx = target_gt_idx + torch.arange(b, device=device).unsqueeze(1) * m
        target_labels = labels.flatten()[flat_idx]  # (B, A)
        target_bboxes = gt_bboxes.reshape(-1, 4)[flat_idx]  # (B, A, 4)

        # TOOD normalisation: rescale each gt's metrics so its best positive gets that gt's best IoU;
        # soft targets then reflect localisation quality instead of the raw (tiny) metric.
        metric = metric * mask_pos
        pos_metric = metric.amax(-1, keepdim=True)  # (B, M, 1)
        pos_iou = (ious * mask_pos).amax(-1, keepdim=True)  # (B, M, 1)
        norm = (metric * pos_iou / (pos_metric + self.eps)).amax(1)  # (B, A)
        # scatter instead of F.one_hot: one_hot materialises an int64 (B, A, C) tensor.
        weights = (norm * fg_mask).unsqueeze(-1).to(pd_scores.dtype)
        target_scores = torch.zeros_like(pd_scores).scatter_(-1, target_labels.unsqueeze(-1), weights)
        target_labels = torch.where(fg_mask, target_labels, 0)
        return target_labels, target_bboxes, target_scores, fg_mask, target_gt_idx

    def _centres_in_boxes(self, anc_points: torch.Tensor, gt_bboxes: torch.Tensor) -> torch.Tensor:
        """Return (B, M, A) True where anchor centre a lies strictly inside gt box m."""
        ax = anc_points[:, 0].view(1, 1, -1)
        ay = anc_points[:, 1].view(1, 1, -1)
        x1, y1, x2, y2 = gt_bboxes.unsqueeze(-1).unbind(2)  # each (B, M, 1)
        # Four (B, M, A) comparisons rather than a (B, M, A, 4) distance tensor: less memory.
        return (ax - x1 > self.eps) & (ay - y1 > self.eps) & (x2 - ax > self.eps) & (y2 - ay > self.eps)
