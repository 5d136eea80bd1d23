"""Model summary: parameter counts, layer count and GFLOPs."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["model_info", "format_info"]


def model_info(model: nn.Module, imgsz: int = 640) -> dict:
    """Summarise a model.

    Args:
        model: The model (unwrapped, not DDP).
        imgsz: Square input size for the FLOP count; 0 skips the count (gflops is then None).

    Returns:
        ``params`` (all parameters), ``gradients`` (parameters with requires_grad), ``layers``
        (number of leaf modules, i.e. modules without children: every conv, norm, activation and
        pool counts once) and ``gflops`` (FLOPs / 1e9 for one (1, 3, imgsz, imgsz) image, where a
        multiply-add counts as 2 FLOPs, as ``torch.utils.flop_counter`` reports).
    """
    params = sum(p.numel() for p in model.parameters())
    gradients = sum(p.numel() for p in model.parameters() if p.requires_grad)
    layers = sum(1 for m in model.modules() if not any(True for _ in m.children()))
    gflops = None
    if imgsz:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        dtype = p.dtype if p is not None else torch.float32
        x = torch.zeros(1, 3, imgsz, imgsz, device=device, dtype=dtype)
        was_training = model.training
        # eval(): BatchNorm must not update running stats from the dummy image.
        model.eval()
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                model(x)
        finally:
            model.train(was_training)
        gflops = counter.get_total_flops() / 1e9
    return {"params": params, "gradients": gradients, "layers": layers, "gflops": gflops}


def format_info(d: dict) -> str:
    """Format a ``model_info`` dict as one line."""
    gflops = "n/a" if d.get("gflops") is None else f"{d['gflops']:.1f}"
    return f"{d['layers']} layers, {d['params']:,} parameters, {d['gradients']:,} gradients, {gflops} GFLOPs"
