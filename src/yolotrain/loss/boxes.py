"""Box geometry: anchor grids, distance <-> box conversion and IoU variants.

Boxes are ``xyxy`` unless a function says otherwise; all functions broadcast over leading dims.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["make_anchors", "dist2bbox", "bbox2dist", "bbox_iou", "xywh2xyxy", "xyxy2xywh"]


def xywh2xyxy(x: torch.Tensor) -> torch.Tensor:
    """Convert (..., 4) centre-size boxes to corner boxes."""
    xy, wh = x[..., :2], x[..., 2:4]
    return torch.cat((xy - wh / 2, xy + wh / 2), dim=-1)


def xyxy2xywh(x: torch.Tensor) -> torch.Tensor:
    """Convert (..., 4) corner boxes to centre-size boxes."""
    x1y1, x2y2 = x[..., :2], x[..., 2:4]
    return torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), dim=-1)


def make_anchors(
    feats: Sequence[torch.Tensor], strides: Sequence[float] | torch.Tensor, offset: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build anchor centres for every cell of every level, in grid units of their own level.

    Args:
        feats: Per-level maps (B, C, H_i, W_i); only their sizes, dtype and device are used.
        strides: Stride of each level.
        offset: Position of the anchor inside its cell (0.5 = cell centre).

    Returns:
        ``anchor_points`` (A, 2) as (x, y) and ``stride_tensor`` (A, 1), with A = sum(H_i * W_i),
        levels concatenated finest first and cells in row-major order (matching ``flatten(2)``).
    """
    points, stride_list = [], []
    dtype, device = feats[0].dtype, feats[0].device
    for feat, s in zip(feats, strides):
        h, w = feat.shape[-2:]
        sx = torch.arange(w, device=device, dtype=dtype) + offset
        sy = torch.arange(h, device=device, dtype=dtype) + offset
        gy, gx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((gx, gy), dim=-1).view(-1, 2))
        stride_list.append(torch.full((h * w, 1), float(s), dtype=dtype, device=device))
    return torch.cat(points), torch.cat(stride_list)


def dist2bbox(distance: torch.Tensor, anchor_points: torch.Tensor, xywh: bool = False) -> torch.Tensor:
    """Turn (left, top, right, bottom) distances from anchor points into boxes.

    Args:
        distance: (..., 4) distances, same units as ``anchor_points``.
        anchor_points: (..., 2) anchor (x, y), broadcastable against ``distance``.
        xywh: Return centre-size boxes instead of corners.

    Returns:
        (..., 4) boxes.
    """
    lt, rb = distance[..., :2], distance[..., 2:4]
    x1y1 = anchor_points - lt
    x2y2 = anchor_points + rb
    if xywh:
        return torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), dim=-1)
    return torch.cat((x1y1, x2y2), dim=-1)


def bbox2dist(anchor_points: torch.Tensor, bbox: torch.Tensor, reg_max: int) -> torch.Tensor:
    """Inverse of ``dist2bbox`` for DFL targets, clamped to the representable bin range.

    Args:
        anchor_points: (..., 2) anchor (x, y) in grid units.
        bbox: (..., 4) xyxy boxes in grid units.
        reg_max: Number of DFL bins (as in the model). Distances are clamped to
            [0, reg_max - 1 - 0.01] so the right bin of the two-bin target always exists.

    Returns:
        (..., 4) distances (left, top, right, bottom).
    """
    x1y1, x2y2 = bbox[..., :2], bbox[..., 2:4]
    return torch.cat((anchor_points - x1y1, x2y2 - anchor_points), dim=-1).clamp_(0, reg_max - 1 - 0.01)


def bbox_iou(
    box1: torch.Tensor, box2: torch.Tensor, xywh: bool = False, CIoU: bool = False, eps: float = 1e-7
) -> torch.Tensor:
    """Elementwise IoU (or Complete IoU) of broadcastable box tensors.

    CIoU follows Zheng et al. (2020): ``IoU - rho^2/c^2 - alpha*v`` where rho is the distance
    between centres, c the diagonal of the smallest enclosing box,
    ``v = 4/pi^2 * (atan(w2/h2) - atan(w1/h1))^2`` and ``alpha = v / (1 - IoU + v)``; alpha is
    treated as a constant in back-propagation, as in the paper.

    Args:
        box1: (..., 4) boxes.
        box2: (..., 4) boxes, broadcastable against ``box1``.
        xywh: Inputs are centre-size boxes instead of corners.
        CIoU: Return Complete IoU instead of IoU.
        eps: Guards divisions by zero for degenerate boxes.

    Returns:
        Tensor with the broadcast shape of the inputs minus the last dim.
    """
    if xywh:
        box1, box2 = xywh2xyxy(box1), xywh2xyxy(box2)
    b1x1, b1y1, b1x2, b1y2 = box1.unbind(-1)
    b2x1, b2y1, b2x2, b2y2 = box2.unbind(-1)
    w1, h1 = b1x2 - b1x1, (b1y2 - b1y1).clamp(min=eps)
    w2, h2 = b2x2 - b2x1, (b2y2 - b2y1).clamp(min=eps)

    inter = (torch.minimum(b1x2, b2x2) - torch.maximum(b1x1, b2x1)).clamp(min=0) * (
        torch.minimum(b1y2, b2y2) - torch.maximum(b1y1, b2y1)
    ).clamp(min=0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if not CIoU:
        return iou

    cw = torch.maximum(b1x2, b2x2) - torch.minimum(b1x1, b2x1)
    ch = torch.maximum(b1y2, b2y2) - torch.minimum(b1y1, b2y1)
    c2 = cw**2 + ch**2 + eps
    rho2 = ((b2x1 + b2x2 - b1x1 - b1x2) ** 2 + (b2y1 + b2y2 - b1y1 - b1y2) ** 2) / 4
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)
