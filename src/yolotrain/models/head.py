"""Decoupled anchor-free detection head returning raw per-level outputs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from yolotrain.models.blocks import Conv

__all__ = ["DetectHead"]


class DetectHead(nn.Module):
    """Per level, a box branch (4*reg_max DFL logits) and a class branch (nc logits).

    Outputs are raw: no DFL decoding and no sigmoid. Decoding belongs to the postprocessor and the
    loss, so the model stays a pure function of the image (and exports cleanly).

    Args:
        nc: Number of classes.
        channels: Input channels of each level, finest first.
        reg_max: DFL bins per box side.
        strides: Stride of each level, used only for the class-bias prior.
        dw_cls: Build YOLO11's class branch: two (depthwise 3x3, pointwise 1x1) pairs instead of two
            full 3x3 convs, which cuts the branch's cost several-fold at the same width.
    """

    def __init__(
        self,
        nc: int,
        channels: Sequence[int],
        reg_max: int = 16,
        strides: Sequence[float] = (8.0, 16.0, 32.0),
        dw_cls: bool = False,
    ) -> None:
        super().__init__()
        if len(channels) != len(strides):
            raise ValueError(f"DetectHead got {len(channels)} levels but {len(strides)} strides")
        self.nc = nc
        self.reg_max = reg_max
        self.no = 4 * reg_max + nc
        # Branch widths scale with the finest level's width; the floor values keep tiny models
        # from bottlenecking the 64 box logits or the class logits.
        c_box = max(16, channels[0] // 4, 4 * reg_max)
        c_cls = max(channels[0], min(nc, 100))
        self.box = nn.ModuleList(
            nn.Sequential(Conv(c, c_box, 3), Conv(c_box, c_box, 3), nn.Conv2d(c_box, 4 * reg_max, 1)) for c in channels
        )
        self.cls = nn.ModuleList(
            nn.Sequential(
                nn.Sequential(Conv(c, c, 3, g=c), Conv(c, c_cls, 1)),
                nn.Sequential(Conv(c_cls, c_cls, 3, g=c_cls), Conv(c_cls, c_cls, 1)),
                nn.Conv2d(c_cls, nc, 1),
            )
            if dw_cls
            else nn.Sequential(Conv(c, c_cls, 3), Conv(c_cls, c_cls, 3), nn.Conv2d(c_cls, nc, 1))
            for c in channels
        )
        self.init_biases(strides)

    @torch.no_grad()
    def init_biases(self, strides: Sequence[float]) -> None:
        """Set the prior biases so early training is stable.

        Box logits start equal (bias 1.0), i.e. a uniform distribution over bins. Class logits start
        at the log-odds of about 5 objects per 640x640 image spread over nc classes and the level's
        (640/s)^2 cells, so the classification loss does not explode from ~all-background anchors.

        Args:
            strides: Stride of each level.
        """
        for box, cls, s in zip(self.box, self.cls, strides):
            box[-1].bias.fill_(1.0)
            cls[-1].bias.fill_(math.log(5 / self.nc / (640 / float(s)) ** 2))

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Return one (B, 4*reg_max + nc, H_i, W_i) tensor per level (box logits first)."""
        return [torch.cat((box(x), cls(x)), dim=1) for x, box, cls in zip(feats, self.box, self.cls)]
