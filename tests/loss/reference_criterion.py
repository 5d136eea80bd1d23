"""The detection loss as it was before static shapes (criterion + assigner, moved here unchanged), the reference
the padded, mask-based loss must match. Only the imports and this docstring differ from the original files."""

# ruff: noqa
from __future__ import annotations

import torch
from torch import nn

from yolotrain.loss.boxes import bbox_iou


class TaskAlignedAssigner(nn.Module):
    """Assign ground-truth boxes to anchors using the alignment metric ``score^alpha * IoU^beta``.

    For each gt, candidates are anchors whose centre lies strictly inside the gt box; the ``topk``
    candidates with the highest metric become positives. An anchor that ends up positive for several
    gts keeps only the one it overlaps most. Everything is computed on dense (B, M, A) tensors, so
    there is no Python loop over images, gts or anchors.

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
        # IoU only where it matters: boolean indexing materialises just the candidate pairs instead
        # of a dense (B, M, A, 4) copy of both box sets.
        ious = torch.zeros(b, m, a, dtype=pd_bboxes.dtype, device=device)
        gt_exp = gt_bboxes.unsqueeze(2).expand(b, m, a, 4)
        pd_exp = pd_bboxes.unsqueeze(1).expand(b, m, a, 4)
        ious[valid] = bbox_iou(gt_exp[valid], pd_exp[valid]).clamp_(min=0).to(ious.dtype)
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


from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from yolotrain.loss.boxes import bbox2dist, bbox_iou, dist2bbox, make_anchors, xywh2xyxy


# the order of the loss items every criterion call returns (logs, progress bar, results.csv)
LOSS_NAMES = ("box_loss", "cls_loss", "dfl_loss")


class ReferenceDetectionLoss:
    """Loss for raw ``Detector`` outputs.

    ``loss = (box * L_box + cls * L_cls + dfl * L_dfl) * batch_size`` where every term is a sum over
    the batch divided by ``max(sum of target scores, 1)``. The learning-rate defaults assume this
    scaling (per-image sum, not mean), so keep it.

    Args:
        nc: Number of classes.
        reg_max: DFL bins per box side.
        strides: Stride of each output level.
        box: Gain of the CIoU box loss.
        cls: Gain of the classification loss.
        dfl: Gain of the distribution focal loss.
        tal_topk: Positives per gt in the assigner.
    """

    def __init__(
        self,
        nc: int,
        reg_max: int = 16,
        strides: Sequence[float] = (8, 16, 32),
        box: float = 7.5,
        cls: float = 0.5,
        dfl: float = 1.5,
        tal_topk: int = 10,
    ) -> None:
        self.nc = nc
        self.reg_max = reg_max
        self.strides = tuple(float(s) for s in strides)
        self.gains = (box, cls, dfl)
        self.assigner = TaskAlignedAssigner(topk=tal_topk, num_classes=nc, alpha=0.5, beta=6.0)

    @classmethod
    def from_model(cls, model: nn.Module, hyp: Any = None, tal_topk: int = 10) -> "ReferenceDetectionLoss":
        """Build the loss matching a model's classes, bins and strides.

        Args:
            model: A ``Detector`` (a DDP wrapper is looked through, read-only).
            hyp: Object or mapping with ``box``, ``cls`` and ``dfl`` gains; missing ones use defaults.
            tal_topk: Positives per gt in the assigner.

        Returns:
            The loss.
        """
        model = getattr(model, "module", model)

        def gain(name: str, default: float) -> float:
            if hyp is None:
                return default
            value = hyp.get(name, default) if isinstance(hyp, Mapping) else getattr(hyp, name, default)
            return float(value)

        return cls(
            nc=model.nc,
            reg_max=model.reg_max,
            strides=model.stride.tolist(),
            box=gain("box", 7.5),
            cls=gain("cls", 0.5),
            dfl=gain("dfl", 1.5),
            tal_topk=tal_topk,
        )

    def __call__(
        self, preds: Sequence[torch.Tensor], batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute the loss.

        Args:
            preds: Raw head outputs, one (B, 4*reg_max + nc, H_i, W_i) tensor per stride.
            batch: ``batch_idx`` (N,) image index of each label, ``cls`` (N, 1) class ids and
                ``bboxes`` (N, 4) normalised xywh relative to the network input.

        Returns:
            ``loss`` (scalar, multiplied by batch size, for ``backward``) and ``loss_items`` (3,)
            detached gain-weighted [box, cls, dfl] per image, for logging.
        """
        targets = self.assign(preds, batch)
        return self.finish(targets, targets["target_scores_sum"])

    def assign(self, preds: Sequence[torch.Tensor], batch: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """First half of the loss: decode the predictions and assign targets (no collective, no loss yet).

        Returns:
            What :meth:`finish` needs, including ``target_scores_sum`` (the local normaliser). Under DDP the
            trainer sums that over ranks and passes ``global sum / ranks`` to :meth:`finish`, so every rank
            divides by the same number and the split of the batch does not change the gradient.
        """
        # Assignment compares tiny metrics (IoU^6) and sums many BCE terms; bf16/fp16 would corrupt
        # both, so the whole loss runs in float32 even when called inside an autocast region.
        with torch.autocast(device_type=preds[0].device.type, enabled=False):
            return self._assign([p.float() for p in preds], batch)

    def finish(self, t: dict[str, Any], target_scores_sum: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Second half: the three losses from :meth:`assign`'s targets, divided by ``target_scores_sum``."""
        with torch.autocast(device_type=t["pred_dist"].device.type, enabled=False):
            return self._finish(t, target_scores_sum)

    def _assign(self, preds: list[torch.Tensor], batch: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        b = preds[0].shape[0]
        device = preds[0].device
        flat = torch.cat([p.flatten(2) for p in preds], dim=2).transpose(1, 2)  # (B, A, no)
        pred_dist, pred_logits = flat.split((4 * self.reg_max, self.nc), dim=-1)
        anchor_points, stride_tensor = make_anchors(preds, self.strides, 0.5)
        img_h = preds[0].shape[2] * self.strides[0]
        img_w = preds[0].shape[3] * self.strides[0]

        gt_labels, gt_bboxes, mask_gt = self._targets(batch, b, img_w, img_h, device)
        pred_bboxes = self._decode(anchor_points, pred_dist)  # grid units

        _, target_bboxes, target_scores, fg_mask, _ = self.assigner(
            pred_logits.detach().sigmoid(),
            pred_bboxes.detach() * stride_tensor,
            anchor_points * stride_tensor,
            gt_labels,
            gt_bboxes,
            mask_gt,
        )
        return {
            "b": b,
            "pred_dist": pred_dist,
            "pred_logits": pred_logits,
            "pred_bboxes": pred_bboxes,
            "anchor_points": anchor_points,
            "stride_tensor": stride_tensor,
            "target_bboxes": target_bboxes,
            "target_scores": target_scores,
            "fg_mask": fg_mask,
            "target_scores_total": target_scores.sum().detach(),  # unclamped: summed over ranks under DDP
            "target_scores_sum": target_scores.sum().clamp(min=1).detach(),
        }

    def _finish(self, t: dict[str, Any], target_scores_sum: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, pred_dist, pred_logits, pred_bboxes = t["b"], t["pred_dist"], t["pred_logits"], t["pred_bboxes"]
        anchor_points, stride_tensor, target_bboxes = t["anchor_points"], t["stride_tensor"], t["target_bboxes"]
        target_scores, fg_mask = t["target_scores"], t["fg_mask"]
        loss_cls = F.binary_cross_entropy_with_logits(pred_logits, target_scores, reduction="sum") / target_scores_sum

        if fg_mask.any():
            target_bboxes = target_bboxes / stride_tensor  # pixels -> grid units of each anchor's level
            weight = target_scores.sum(-1)[fg_mask]  # (F,)
            iou = bbox_iou(pred_bboxes[fg_mask], target_bboxes[fg_mask], CIoU=True)
            loss_box = ((1.0 - iou) * weight).sum() / target_scores_sum
            target_ltrb = bbox2dist(anchor_points, target_bboxes, self.reg_max)
            dfl = self._dfl(pred_dist[fg_mask].view(-1, 4, self.reg_max), target_ltrb[fg_mask])
            loss_dfl = (dfl * weight).sum() / target_scores_sum
        else:
            # Exactly zero, but still connected to the box branch so every parameter gets a
            # (zero) gradient: DDP without find_unused_parameters requires that.
            loss_box = pred_dist.sum() * 0.0
            loss_dfl = pred_dist.sum() * 0.0

        box_gain, cls_gain, dfl_gain = self.gains
        items = torch.stack((loss_box * box_gain, loss_cls * cls_gain, loss_dfl * dfl_gain))
        return items.sum() * b, items.detach()

    def _decode(self, anchor_points: torch.Tensor, pred_dist: torch.Tensor) -> torch.Tensor:
        """Expected distances from DFL logits, then xyxy boxes in grid units (B, A, 4)."""
        b, a, _ = pred_dist.shape
        proj = torch.arange(self.reg_max, dtype=pred_dist.dtype, device=pred_dist.device)
        dist = pred_dist.view(b, a, 4, self.reg_max).softmax(-1) @ proj
        return dist2bbox(dist, anchor_points)

    @staticmethod
    def _dfl(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Distribution focal loss (Li et al. 2020), averaged over the four sides.

        A continuous target t between bins l = floor(t) and l + 1 is encoded as the two-bin
        distribution (l + 1 - t, t - l); the loss is that distribution's cross-entropy.

        Args:
            pred: (F, 4, reg_max) logits.
            target: (F, 4) distances in [0, reg_max - 1).

        Returns:
            (F,) loss per positive anchor.
        """
        left = target.long()
        w_left = (left + 1).to(target.dtype) - target
        logp = pred.log_softmax(-1)
        lp_left = logp.gather(-1, left.unsqueeze(-1)).squeeze(-1)
        lp_right = logp.gather(-1, (left + 1).unsqueeze(-1)).squeeze(-1)
        return -(lp_left * w_left + lp_right * (1.0 - w_left)).mean(-1)

    @staticmethod
    def _targets(
        batch: Mapping[str, torch.Tensor], b: int, img_w: float, img_h: float, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pack flat labels into padded (B, M, ...) tensors, boxes as xyxy pixels.

        Returns:
            ``gt_labels`` (B, M, 1), ``gt_bboxes`` (B, M, 4) and ``mask_gt`` (B, M, 1) bool, where M
            is the largest label count of any image (0 when the batch has no labels).
        """
        batch_idx = batch["batch_idx"].to(device).view(-1).long()
        cls = batch["cls"].to(device).view(-1).float()
        bboxes = batch["bboxes"].to(device).view(-1, 4).float()
        n = batch_idx.numel()
        counts = torch.bincount(batch_idx, minlength=b) if n else torch.zeros(b, dtype=torch.long, device=device)
        m = int(counts.max()) if n else 0
        gt_labels = torch.zeros(b, m, 1, device=device)
        gt_bboxes = torch.zeros(b, m, 4, device=device)
        mask_gt = torch.zeros(b, m, 1, dtype=torch.bool, device=device)
        if n:
            # Slot of each label within its image: rank among labels of the same image.
            order = torch.argsort(batch_idx, stable=True)
            sorted_idx = batch_idx[order]
            starts = torch.cumsum(counts, 0) - counts
            slot = torch.arange(n, device=device) - starts[sorted_idx]
            scale = torch.tensor([img_w, img_h, img_w, img_h], device=device)
            gt_labels[sorted_idx, slot, 0] = cls[order]
            gt_bboxes[sorted_idx, slot] = xywh2xyxy(bboxes[order]) * scale
            mask_gt[sorted_idx, slot, 0] = True
        return gt_labels, gt_bboxes, mask_gt
