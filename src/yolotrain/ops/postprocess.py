"""Post-processing: decode raw head outputs, non-maximum suppression, undo the letterbox."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from yolotrain.loss.boxes import dist2bbox, make_anchors

__all__ = ["decode", "non_max_suppression", "Postprocessor", "scale_boxes"]


def decode(preds: Sequence[torch.Tensor], strides: torch.Tensor | Sequence[float], reg_max: int) -> torch.Tensor:
    """Turn raw head outputs into boxes and class probabilities.

    Args:
        preds: Raw outputs, one (B, 4*reg_max + nc, H_i, W_i) tensor per level.
        strides: Stride of each level (e.g. ``model.stride``).
        reg_max: DFL bins per box side.

    Returns:
        (B, A, 4 + nc): xyxy boxes in input-image pixels followed by sigmoid class scores.
    """
    if isinstance(strides, torch.Tensor):
        strides = strides.tolist()
    flat = torch.cat([p.flatten(2) for p in preds], dim=2)  # (B, no, A)
    box_logits, cls_logits = flat.split((4 * reg_max, flat.shape[1] - 4 * reg_max), dim=1)
    anchor_points, stride_tensor = make_anchors(preds, strides, 0.5)
    # The DFL expectation written out (softmax over bins, then a dot product with the bin values) rather
    # than a DFL module built here: a module created inside forward breaks ONNX export and torch.export.
    b, _, a = box_logits.shape
    probs = box_logits.reshape(b, 4, reg_max, a).softmax(2)
    bins = torch.arange(reg_max, device=flat.device, dtype=flat.dtype)
    dist = torch.matmul(bins, probs)  # (R,) @ (B, 4, R, A) -> (B, 4, A)
    boxes = dist2bbox(dist.transpose(1, 2), anchor_points) * stride_tensor  # (B, A, 4)
    return torch.cat((boxes, cls_logits.sigmoid().transpose(1, 2)), dim=-1)


def non_max_suppression(
    decoded: torch.Tensor,
    conf: float = 0.25,
    iou: float = 0.7,
    max_det: int = 300,
    agnostic: bool = False,
    classes: Sequence[int] | None = None,
    max_nms: int = 30000,
    multi_label: bool = False,
) -> list[torch.Tensor]:
    """Class-aware NMS per image.

    Single-label (the default): each anchor keeps only its best class. Multi-label: every (anchor,
    class) pair scoring above ``conf`` is a candidate, so one box may be reported under several
    classes (Ultralytics' validation does this; it raises mAP a little and is off by default because a
    prediction then shows one object several times). Candidates above ``conf`` (and in ``classes``, if
    given) are cut to the ``max_nms`` highest before NMS, so a badly calibrated early model cannot make
    NMS quadratic in the number of anchors.

    Args:
        decoded: (B, A, 4 + nc) output of ``decode``.
        conf: Minimum class score.
        iou: IoU above which the lower-scoring box of the same class is suppressed.
        max_det: Maximum detections kept per image.
        agnostic: Suppress across classes too.
        classes: Keep only these class ids.
        max_nms: Maximum candidates passed to NMS per image.
        multi_label: Consider every class above ``conf`` per anchor, not only the best one.

    Returns:
        Per image a (n, 6) tensor [x1, y1, x2, y2, score, cls], sorted by decreasing score.
    """
    if multi_label and decoded.shape[-1] > 5:
        return [_nms_multi_label(d, conf, iou, max_det, agnostic, classes, max_nms) for d in decoded]
    scores, labels = decoded[..., 4:].max(-1)  # (B, A)
    keep_mask = scores > conf
    if classes is not None:
        allowed = torch.as_tensor(list(classes), device=decoded.device)
        keep_mask &= torch.isin(labels, allowed)
    out = []
    for i in range(decoded.shape[0]):
        idx = keep_mask[i].nonzero().squeeze(1)
        if idx.numel() > max_nms:
            idx = idx[scores[i, idx].topk(max_nms).indices]
        boxes, s, c = decoded[i, idx, :4], scores[i, idx], labels[i, idx]
        kept = _batched_nms(boxes, s, torch.zeros_like(c) if agnostic else c, iou)[:max_det]
        out.append(torch.cat((boxes[kept], s[kept, None], c[kept, None].to(boxes.dtype)), dim=1))
    return out


def _batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou: float) -> torch.Tensor:
    """torchvision's class-aware NMS in float32 (half precision would misjudge overlaps).

    torchvision loads here, on the first call, not with the module: importing ``torchvision.ops`` imports
    ``torch._dynamo`` (about 2 CPU-seconds per process on this project's CPU), which the processes that import the
    training path but never train would otherwise pay: the DDP launcher (of each ``nproc=`` run and distributed trial).
    (A process that trains loads dynamo anyway: ``torch.optim`` wraps ``add_param_group`` with dynamo's disable.)
    """
    from torchvision.ops import batched_nms  # noqa: PLC0415 - loads on first NMS, see above

    return batched_nms(boxes.float(), scores.float(), groups, iou)


def _nms_multi_label(
    decoded: torch.Tensor,
    conf: float,
    iou: float,
    max_det: int,
    agnostic: bool,
    classes: Sequence[int] | None,
    max_nms: int,
) -> torch.Tensor:
    """Multi-label NMS of one image's (A, 4 + nc) decoded predictions; see ``non_max_suppression``."""
    anchor, label = (decoded[:, 4:] > conf).nonzero(as_tuple=True)
    if classes is not None:
        keep = torch.isin(label, torch.as_tensor(list(classes), device=decoded.device))
        anchor, label = anchor[keep], label[keep]
    scores = decoded[anchor, 4 + label]
    if scores.numel() > max_nms:
        top = scores.topk(max_nms).indices
        anchor, label, scores = anchor[top], label[top], scores[top]
    boxes = decoded[anchor, :4]
    kept = _batched_nms(boxes, scores, torch.zeros_like(label) if agnostic else label, iou)[:max_det]
    return torch.cat((boxes[kept], scores[kept, None], label[kept, None].to(boxes.dtype)), dim=1)


class Postprocessor:
    """``decode`` followed by ``non_max_suppression`` with fixed thresholds.

    Args:
        conf: Minimum class score.
        iou: NMS IoU threshold.
        max_det: Maximum detections per image.
        agnostic: Class-agnostic NMS.
        classes: Keep only these class ids.
        max_nms: Maximum candidates passed to NMS per image.
        multi_label: Multi-label NMS (see ``non_max_suppression``).
    """

    def __init__(
        self,
        conf: float = 0.25,
        iou: float = 0.7,
        max_det: int = 300,
        agnostic: bool = False,
        classes: Sequence[int] | None = None,
        max_nms: int = 30000,
        multi_label: bool = False,
    ) -> None:
        self.multi_label = multi_label
        self.conf = conf
        self.iou = iou
        self.max_det = max_det
        self.agnostic = agnostic
        self.classes = classes
        self.max_nms = max_nms

    @torch.no_grad()
    def __call__(
        self, preds: Sequence[torch.Tensor], strides: torch.Tensor | Sequence[float], reg_max: int = 16
    ) -> list[torch.Tensor]:
        """Return per image a (n, 6) tensor [x1, y1, x2, y2, score, cls] in input pixels."""
        return non_max_suppression(
            decode(preds, strides, reg_max),
            conf=self.conf,
            iou=self.iou,
            max_det=self.max_det,
            agnostic=self.agnostic,
            classes=self.classes,
            max_nms=self.max_nms,
            multi_label=self.multi_label,
        )


def scale_boxes(
    boxes: torch.Tensor | np.ndarray,
    ratio_pad: tuple[tuple[float, float], tuple[float, float]],
    ori_shape: tuple[int, int],
) -> torch.Tensor | np.ndarray:
    """Map xyxy boxes from the letterboxed network input back to original-image pixels.

    The letterbox resized the original by (rw, rh) and then padded (padw, padh) on the left/top, so
    the inverse subtracts the padding, divides by the ratio, and clips to the original image.

    Args:
        boxes: (n, >=4) boxes whose first four columns are xyxy in network-input pixels; extra
            columns (score, class) are passed through.
        ratio_pad: ``((rw, rh), (padw, padh))``.
        ori_shape: Original image (height, width).

    Returns:
        A new array/tensor of the same type and shape with the first four columns mapped.
    """
    (rw, rh), (padw, padh) = ratio_pad
    h, w = ori_shape[:2]
    out = boxes.clone() if isinstance(boxes, torch.Tensor) else np.array(boxes, copy=True)
    out[:, [0, 2]] = (out[:, [0, 2]] - padw) / rw
    out[:, [1, 3]] = (out[:, [1, 3]] - padh) / rh
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out
