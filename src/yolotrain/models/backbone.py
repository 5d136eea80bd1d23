"""CSP backbone producing the P3, P4 and P5 feature maps (strides 8, 16, 32)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from yolotrain.models.blocks import SPPF, C2f, Conv

__all__ = ["Backbone", "BlockFactory"]

# f(c1, c2, n, position) -> module, where position names the place ("stage2".."stage5", "td4", ...):
# the families differ only in which CSP block sits at each place and how it is configured.
BlockFactory = Callable[[int, int, int, str], nn.Module]


def c2f_block(c1: int, c2: int, n: int, position: str) -> nn.Module:
    """YOLOv8's block: C2f, residual in the backbone, plain in the neck."""
    return C2f(c1, c2, n, shortcut=position.startswith("stage"))


class Backbone(nn.Module):
    """Stem plus four stride-2 stages, each a strided 3x3 conv followed by a CSP block.

    Args:
        channels: Output channels of the stem and the four strided convs (5 values, strides 2..32).
        depths: Repeat counts of the CSP block in the four stages (4 values).
        block_channels: Output channels of the four stages' CSP blocks (default: ``channels[1:]``).
        block: Factory of the CSP block (default: YOLOv8's C2f).
        tail: Extra modules after the last stage's SPPF (YOLO11's attention stage).
    """

    def __init__(
        self,
        channels: Sequence[int],
        depths: Sequence[int],
        block_channels: Sequence[int] | None = None,
        block: BlockFactory = c2f_block,
        tail: Sequence[nn.Module] = (),
    ) -> None:
        super().__init__()
        outs = list(block_channels or channels[1:])
        if len(channels) != 5 or len(depths) != 4 or len(outs) != 4:
            raise ValueError(
                f"Backbone needs 5 channels, 4 depths and 4 block widths, "
                f"got {len(channels)}, {len(depths)}, {len(outs)}"
            )
        self.stem = Conv(3, channels[0], 3, 2)
        prev = channels[0]
        for i in range(4):
            name = f"stage{i + 2}"
            mods = [Conv(prev, channels[i + 1], 3, 2), block(channels[i + 1], outs[i], depths[i], name)]
            if i == 3:
                mods += [SPPF(outs[3], outs[3], 5), *tail]
            setattr(self, name, nn.Sequential(*mods))
            prev = outs[i]
        self.out_channels = (outs[1], outs[2], outs[3])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (P3, P4, P5)."""
        x = self.stage2(self.stem(x))
        p3 = self.stage3(x)
        p4 = self.stage4(p3)
        p5 = self.stage5(p4)
        return p3, p4, p5
