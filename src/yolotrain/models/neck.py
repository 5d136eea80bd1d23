"""PAN-FPN neck: a top-down pass spreads semantics to fine levels, a bottom-up pass returns detail."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from yolotrain.models.blocks import C2f, Conv

__all__ = ["PANNeck"]


class PANNeck(nn.Module):
    """Path-aggregation FPN over three levels.

    Top-down: upsample the coarser map, concatenate with the lateral backbone map, fuse with a C2f.
    Bottom-up: downsample with a stride-2 conv, concatenate with the top-down map, fuse with a C2f.
    Output channels equal the input channels so the head sees the same widths as the backbone.

    Args:
        channels: Channels of (P3, P4, P5) from the backbone.
        depth: Bottleneck count of every C2f in the neck.
    """

    def __init__(self, channels: Sequence[int], depth: int) -> None:
        super().__init__()
        c3, c4, c5 = channels
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        # The neck's C2f blocks have no residuals: their input is a concatenation of two sources,
        # so an identity path of one of them would not be meaningful.
        self.td4 = C2f(c5 + c4, c4, depth, shortcut=False)
        self.td3 = C2f(c4 + c3, c3, depth, shortcut=False)
        self.down3 = Conv(c3, c3, 3, 2)
        self.bu4 = C2f(c3 + c4, c4, depth, shortcut=False)
        self.down4 = Conv(c4, c4, 3, 2)
        self.bu5 = C2f(c4 + c5, c5, depth, shortcut=False)
        self.out_channels = (c3, c4, c5)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Fuse (P3, P4, P5) and return the three fused maps, finest first."""
        p3, p4, p5 = feats
        t4 = self.td4(torch.cat((self.up(p5), p4), dim=1))
        n3 = self.td3(torch.cat((self.up(t4), p3), dim=1))
        n4 = self.bu4(torch.cat((self.down3(n3), t4), dim=1))
        n5 = self.bu5(torch.cat((self.down4(n4), p5), dim=1))
        return [n3, n4, n5]
