"""Detection loss: CIoU box loss + BCE classification loss + distribution focal loss."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import astuple
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from yolotrain.config_sections import LossGains
from yolotrain.loss.assigner import TaskAlignedAssigner
from yolotrain.loss.boxes import bbox2dist, bbox_iou, dist2bbox, make_anchors, xywh2xyxy
from yolotrain.loss.targets import DEFAULT_MAX_BOXES, pad_targets

__all__ = ["DetectionLoss"]


# the order of the loss items every criterion call returns (logs, progress bar, results.csv)
LOSS_NAMES = ("box_loss", "cls_loss", "dfl_loss")


class DetectionLoss:
    """Loss for raw ``Detector`` outputs.

    ``loss = (box * L_box + cls * L_cls + dfl * L_dfl) * batch_size`` where every term is a sum over
    the batch divided by ``max(sum of target scores, 1)``. The learning-rate defaults assume this
    scaling (per-image sum, not mean), so keep it.

    Args:
        nc: Number of classes.
        reg_max: DFL bins per box side.
        strides: Stride of each output level.
        gains: The ``box``, ``cls`` and ``dfl`` gains; None: the settings' defaults.
        tal_topk: Positives per gt in the assigner.
        max_boxes: Cap on labels per image (see :mod:`yolotrain.loss.targets`).
        cls_weights: Optional (nc,) weight per class, multiplied into each class's BCE term (positive and
            negative) before the sum (``cls_weights=`` for long-tailed data); None weighs every class 1.
    """

    def __init__(
        self,
        nc: int,
        reg_max: int = 16,
        strides: Sequence[float] = (8, 16, 32),
        gains: LossGains | None = None,
        tal_topk: int = 10,
        max_boxes: int = DEFAULT_MAX_BOXES,
        cls_weights: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        self.nc = nc
        self.max_boxes = max_boxes
        self.cls_weights = None if cls_weights is None else torch.as_tensor(cls_weights, dtype=torch.float32)
        self.reg_max = reg_max
        self.strides = tuple(float(s) for s in strides)
        self.gains = astuple(gains or LossGains.defaults())  # (box, cls, dfl)
        self.assigner = TaskAlignedAssigner(topk=tal_topk, num_classes=nc, alpha=0.5, beta=6.0)

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        gains: LossGains | None = None,
        max_boxes: int = DEFAULT_MAX_BOXES,
        tal_topk: int = 10,
        cls_weights: Sequence[float] | None = None,
    ) -> DetectionLoss:
        """Build the loss matching a model's classes, bins and strides.

        Args:
            model: A ``Detector`` (a DDP wrapper is looked through, read-only).
            gains: The ``box``, ``cls`` and ``dfl`` gains (``LossGains.from_config(cfg)``); None: the settings'
                defaults.
            max_boxes: Cap on labels per image (the ``max_boxes`` setting).
            tal_topk: Positives per gt in the assigner.
            cls_weights: Optional weight per class for the classification loss.

        Returns:
            The loss.
        """
        model = getattr(model, "module", model)
        return cls(
            nc=model.nc,
            reg_max=model.reg_max,
            strides=model.stride.tolist(),
            gains=gains,
            tal_topk=tal_topk,
            max_boxes=max_boxes,
            cls_weights=cls_weights,
        )

    def __call__(
        self, preds: Sequence[torch.Tensor], batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute the loss.

        Args:
            preds: Raw head outputs, one (B, 4*reg_max + nc, H_i, W_i) tensor per stride.
            batch: ``batch_idx`` (N,) image index of each label, ``cls`` (N, 1) class ids and
                ``bboxes`` (N, 4) normalised xywh relative to the network input; or ``targets``, the same
                labels packed by :func:`~yolotrain.loss.targets.pad_targets`.

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

        gt_labels, gt_bboxes, mask_gt = self._targets(batch, b, img_w, img_h, device, self.max_boxes)
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
        # the (nc,) class weights broadcast over (B, A, nc): each class's terms are scaled before the sum
        w = self.cls_weights
        if w is not None and w.device != pred_logits.device:
            w = self.cls_weights = w.to(pred_logits.device)  # moved once, not copied to the device every step
        loss_cls = F.binary_cross_entropy_with_logits(pred_logits, target_scores, w, reduction="sum")
        loss_cls = loss_cls / target_scores_sum

        # Every anchor is computed and background ones are zeroed by the mask (not selected by it), so the
        # shapes never depend on how many anchors are positive: no host read, and a step a CUDA graph can
        # replay. With no positive anchor both sums are exactly zero and still connected to the box branch,
        # so every parameter gets a (zero) gradient, as DDP without find_unused_parameters requires.
        b_, a_ = fg_mask.shape
        target_bboxes = target_bboxes / stride_tensor  # pixels -> grid units of each anchor's level
        weight = target_scores.sum(-1)  # (B, A); zero for background anchors
        iou = bbox_iou(pred_bboxes, target_bboxes, CIoU=True)  # (B, A)
        loss_box = (torch.where(fg_mask, 1.0 - iou, 0.0) * weight).sum() / target_scores_sum
        target_ltrb = bbox2dist(anchor_points, target_bboxes, self.reg_max)
        dfl = self._dfl(pred_dist.view(b_, a_, 4, self.reg_max), target_ltrb)  # (B, A)
        loss_dfl = (torch.where(fg_mask, dfl, 0.0) * weight).sum() / target_scores_sum

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
            pred: (..., 4, reg_max) logits.
            target: (..., 4) distances in [0, reg_max - 1).

        Returns:
            (...) loss per anchor.
        """
        left = target.long()
        w_left = (left + 1).to(target.dtype) - target
        logp = pred.log_softmax(-1)
        lp_left = logp.gather(-1, left.unsqueeze(-1)).squeeze(-1)
        lp_right = logp.gather(-1, (left + 1).unsqueeze(-1)).squeeze(-1)
        return -(lp_left * w_left + lp_right * (1.0 - w_left)).mean(-1)

    @staticmethod
    def _targets(
        batch: Mapping[str, Any],
        b: int,
        img_w: float,
        img_h: float,
        device: torch.device,
        max_boxes: int = DEFAULT_MAX_BOXES,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch's labels as padded (B, M, ...) tensors, boxes as xyxy pixels.

        A training batch brings them packed (``targets``, :class:`~yolotrain.loss.targets.PaddedTargets`, built
        on the host by the step's batch preparation); flat labels (``batch_idx``, ``cls``, ``bboxes``) are packed
        here, on the host, which reads device tensors back when they are on a GPU (fine outside training).

        Returns:
            ``gt_labels`` (B, M, 1), ``gt_bboxes`` (B, M, 4) and ``mask_gt`` (B, M, 1) bool; M is the bucket
            of :func:`~yolotrain.loss.targets.pad_targets` (0 when the batch has no labels).
        """
        packed = batch.get("targets")
        if packed is None:
            flat = {k: batch[k].cpu() for k in ("batch_idx", "cls", "bboxes")}
            packed = pad_targets(flat, b, max_boxes)
        rows, mask = packed.rows.to(device), packed.mask.to(device)
        # scaled by Python numbers: a (4,) scale tensor made from them would be a copy from host memory, which
        # waits for the GPU's stream every step and cannot be captured in a CUDA graph
        x1, y1, x2, y2 = xywh2xyxy(rows[..., 1:5]).unbind(-1)
        gt_bboxes = torch.stack((x1 * img_w, y1 * img_h, x2 * img_w, y2 * img_h), -1)  # padding rows stay zeros
        return rows[..., :1], gt_bboxes, mask.unsqueeze(-1)
