"""Box geometry, task-aligned assignment and the detection loss."""

from yolotrain.loss.assigner import TaskAlignedAssigner
from yolotrain.loss.boxes import bbox2dist, bbox_iou, dist2bbox, make_anchors, xywh2xyxy, xyxy2xywh
from yolotrain.loss.criterion import LOSS_NAMES, DetectionLoss

__all__ = [
    "LOSS_NAMES",
    "DetectionLoss",
    "TaskAlignedAssigner",
    "bbox2dist",
    "bbox_iou",
    "dist2bbox",
    "make_anchors",
    "xywh2xyxy",
    "xyxy2xywh",
]
