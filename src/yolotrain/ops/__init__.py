"""Inference-side operations: decoding raw outputs, NMS and letterbox inversion."""

from yolotrain.ops.postprocess import Postprocessor, decode, non_max_suppression, scale_boxes

__all__ = ["Postprocessor", "decode", "non_max_suppression", "scale_boxes"]
