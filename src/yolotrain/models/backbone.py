"""CSP backbone producing the P3, P4 and P5 feature maps (strides 8, 16, 32)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from yolotrain.models.blocks import SPPF, C2f, Conv

__all__ = ["Backbone"]


class Backbone(nn.Module):
    """Stem plus four stride-2 stages, each a strided 3x3 conv followed by a residual C2f.

    Args:
        channels: Output channels of the stem and the four stages (5 values, strides 2..32).
        depths: Bottleneck counts of the C2f in the four stages (4 values).
    """

    def __init__(self, channels: Sequence[int], depths: Sequence[int]) -> None:
        super().__init__()
        if len(channels) != 5 or len(depths) != 4:
            raise ValueError(f"Backbone needs 5 channels and 4 depths, got {len(channels)} and {len(depths)}")
        c1, c2, c3, c4, c5 = channels
        self.stem = Conv(3, c1, 3, 2)
        self.stage2 = nn.Sequential(Conv(c1, c2, 3, 2), C2f(c2, c2, depths[0], shortcut=True))
        self.stage3 = nn.Sequential(Conv(c2, c3, 3, 2), C2f(c3, c3, depths[1], shortcut=True))
        self.stage4 = nn.Sequential(Conv(c3, c4, 3, 2), C2f(c4, c4, depths[2], shortcut=True))
        self.stage5 = nn.Sequential(Conv(c4, c5, 3, 2), C2f(c5, c5, depths[3], shortcut=True), SPPF(c5, c5, 5))
        self.out_channels = (c3, c4, c5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (P3, P4, P5)."""
        x = self.stage2(self.stem(x))
        p3 = self.stage3(x)
        p4 = self.stage4(p3)
        p5 = self.stage5(p4)
        return p3, p4, p5
