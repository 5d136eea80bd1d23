"""The detector: backbone -> neck -> head, returning raw head outputs."""

from __future__ import annotations

import math

import torch
from torch import nn

from yolotrain.models.backbone import Backbone
from yolotrain.models.head import DetectHead
from yolotrain.models.neck import PANNeck

__all__ = ["Detector", "scale_width", "scale_depth"]

# Reference (scale 1.0) widths of the stem, four backbone stages, and bottleneck counts of the four
# backbone C2f stages and of the neck's C2f blocks.
_BASE_CHANNELS = (64, 128, 256, 512, 1024)
_BASE_DEPTHS = (3, 6, 6, 3)
_BASE_NECK_DEPTH = 3
_STRIDES = (8.0, 16.0, 32.0)


def scale_width(channels: int, width: float, max_channels: int) -> int:
    """Scale a reference channel count, cap it and round up to a multiple of 8 (hardware-friendly).

    Args:
        channels: Reference channel count.
        width: Width multiplier.
        max_channels: Cap applied before scaling.

    Returns:
        The scaled channel count.
    """
    return int(math.ceil(min(channels, max_channels) * width / 8) * 8)


def scale_depth(n: int, depth: float) -> int:
    """Scale a reference repeat count, keeping at least one repeat.

    Args:
        n: Reference repeat count.
        depth: Depth multiplier.

    Returns:
        The scaled repeat count.
    """
    return max(round(n * depth), 1)


class Detector(nn.Module):
    """Anchor-free YOLO-style detector.

    ``forward`` returns the raw head outputs, one (B, 4*reg_max + nc, H/s, W/s) tensor per stride
    s in ``stride``. Target assignment and loss live in ``yolotrain.loss``, decoding and NMS in
    ``yolotrain.ops``.

    Args:
        nc: Number of classes.
        depth: Depth multiplier.
        width: Width multiplier.
        max_channels: Channel cap applied before the width multiplier.
        scale: Name of the scale, stored so ``config()`` can rebuild the model.
        reg_max: DFL bins per box side.
    """

    def __init__(
        self, nc: int, depth: float, width: float, max_channels: int, scale: str = "custom", reg_max: int = 16
    ) -> None:
        super().__init__()
        if nc < 1:
            raise ValueError(f"nc must be >= 1, got {nc}")
        self.nc = nc
        self.reg_max = reg_max
        self.scale = scale
        channels = [scale_width(c, width, max_channels) for c in _BASE_CHANNELS]
        depths = [scale_depth(n, depth) for n in _BASE_DEPTHS]
        self.backbone = Backbone(channels, depths)
        self.neck = PANNeck(self.backbone.out_channels, scale_depth(_BASE_NECK_DEPTH, depth))
        self.head = DetectHead(nc, self.neck.out_channels, reg_max, _STRIDES)
        # A buffer (not a plain attribute) so it follows .to(device) and is saved in state_dict.
        self.register_buffer("stride", torch.tensor(_STRIDES), persistent=True)

    def config(self) -> dict:
        """Return the keyword arguments that rebuild this model with ``build_model(**cfg)``."""
        return {"scale": self.scale, "nc": self.nc}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Run the network.

        Args:
            x: Float images (B, 3, H, W) in [0, 1]; H and W must be multiples of 32.

        Returns:
            Raw head outputs for strides 8, 16 and 32.
        """
        # Eager-mode check only: while tracing/exporting it would add shape guards to the graph.
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            h, w = x.shape[-2:]
            if h % 32 or w % 32:
                # Otherwise the neck fails later with an obscure concatenation size mismatch.
                raise ValueError(f"Detector input height and width must be multiples of 32, got {h}x{w}")
        return self.head(self.neck(self.backbone(x)))
