"""Evaluation: COCO-exact mAP plus precision/recall at the best-F1 confidence."""

from yolotrain.eval.coco import DetectionEvaluator
from yolotrain.eval.result import EvalResult, format_table

__all__ = ["DetectionEvaluator", "EvalResult", "format_table"]
