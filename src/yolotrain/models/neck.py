"""PAN-FPN neck: a top-down pass spreads semantics to fine levels, a bottom-up pass returns detail."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from yolotrain.models.backbone import BlockFactory, c2f_block
from yolotrain.models.blocks import Conv

__all__ = ["PANNeck"]


class PANNeck(nn.Module):
    """Path-aggregation FPN over three levels.

    Top-down: upsample the coarser map, concatenate with the lateral backbone map, fuse with a CSP block.
    Bottom-up: downsample with a stride-2 conv, concatenate with the top-down map, fuse with a CSP block.

    Args:
        channels: Channels of (P3, P4, P5) from the backbone.
        depth: Repeat count of every CSP block in the neck.
        out_channels: Output channels (N3, N4, N5); default: the input channels.
        block: Factory of the CSP block (default: YOLOv8's C2f without residuals).
    """

    def __init__(
        self,
        channels: Sequence[int],
        depth: int,
        out_channels: Sequence[int] | None = None,
        block: BlockFactory = c2f_block,
    ) -> None:
        super().__init__()
        c3, c4, c5 = channels
        o3, o4, o5 = out_channels or channels
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.td4 = block(c5 + c4, o4, depth, "td4")
        self.td3 = block(o4 + c3, o3, depth, "td3")
        self.down3 = Conv(o3, o3, 3, 2)
        self.bu4 = block(o3 + o4, o4, depth, "bu4")
        self.down4 = Conv(o4, o4, 3, 2)
        self.bu5 = block(o4 + c5, o5, depth, "bu5")
        self.out_channels = (o3, o4, o5)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Fuse (P3, P4, P5) and return the three fused maps, finest first."""
        p3, p4, p5 = feats
        t4 = self.td4(torch.cat((self.up(p5), p4), dim=1))
        n3 = self.td3(torch.cat((self.up(t4), p3), dim=1))
        n4 = self.bu4(torch.cat((self.down3(n3), t4), dim=1))
        n5 = self.bu5(torch.cat((self.down4(n4), p5), dim=1))
        return [n3, n4, n5]
