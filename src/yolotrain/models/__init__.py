"""Anchor-free YOLO-style detectors: building blocks, scales and summaries."""

from yolotrain.models.detector import Detector
from yolotrain.models.info import format_info, model_info
from yolotrain.models.registry import available_scales, build_model, register_scale

__all__ = ["Detector", "build_model", "available_scales", "register_scale", "model_info", "format_info"]
