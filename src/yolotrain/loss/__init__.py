"""Box geometry, task-aligned assignment and the detection loss."""

from yolotrain.loss.assigner import TaskAlignedAssigner
from yolotrain.loss.boxes import bbox2dist, bbox_iou, box_iou, dist2bbox, make_anchors, xywh2xyxy, xyxy2xywh
from yolotrain.loss.criterion import DetectionLoss

__all__ = [
    "DetectionLoss",
    "TaskAlignedAssigner",
    "bbox2dist",
    "bbox_iou",
    "box_iou",
    "dist2bbox",
    "make_anchors",
    "xywh2xyxy",
    "xyxy2xywh",
]
