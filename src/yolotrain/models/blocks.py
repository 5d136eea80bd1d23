"""Building blocks shared by the backbone, neck and head.

Every block is a plain ``nn.Module`` whose constructor takes input/output channel counts first, so
the scale factories only have to compute channel widths and repeat counts.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Conv", "Bottleneck", "C2f", "SPPF", "DFL"]


class Conv(nn.Module):
    """Conv2d (no bias) followed by BatchNorm2d and SiLU.

    The bias is omitted because BatchNorm's shift makes it redundant. BatchNorm uses eps=1e-3 and
    momentum=0.03: the small momentum keeps running statistics stable with the small per-GPU batches
    detection training typically uses.

    Args:
        c1: Input channels.
        c2: Output channels.
        k: Kernel size.
        s: Stride.
        p: Padding; ``None`` means "same" padding for odd kernels (``k // 2``).
        g: Groups.
        act: Apply SiLU when True, identity otherwise.
    """

    def __init__(
        self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1, act: bool = True
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2 if p is None else p, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply conv, norm and activation."""
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two 3x3 convs with an optional residual connection.

    Args:
        c1: Input channels.
        c2: Output channels.
        shortcut: Add the input to the output (only possible when ``c1 == c2``).
        e: Hidden-channel expansion ratio relative to ``c2``.
    """

    def __init__(self, c1: int, c2: int, shortcut: bool = True, e: float = 0.5) -> None:
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 3)
        self.cv2 = Conv(hidden, c2, 3)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run both convs and add the residual when enabled."""
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP stage: split into two halves, chain ``n`` bottlenecks on one half, concatenate everything.

    Concatenating every intermediate bottleneck output (not only the last) gives the final 1x1 conv
    features from several receptive-field sizes at little extra cost.

    Args:
        c1: Input channels.
        c2: Output channels.
        n: Number of bottlenecks.
        shortcut: Use residual bottlenecks (True in the backbone, False in the neck).
        e: Width of each half relative to ``c2``.
    """

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, e: float = 0.5) -> None:
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, e=1.0) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Split, chain the bottlenecks, concatenate and fuse."""
        ys = list(self.cv1(x).split((self.c, self.c), dim=1))
        for m in self.m:
            ys.append(m(ys[-1]))
        return self.cv2(torch.cat(ys, dim=1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast variant: three chained stride-1 max-pools.

    Chaining three k x k pools is equivalent to parallel pools of sizes k, 2k-1 and 3k-2 but cheaper.

    Args:
        c1: Input channels.
        c2: Output channels.
        k: Max-pool kernel size.
    """

    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        hidden = c1 // 2
        self.cv1 = Conv(c1, hidden, 1)
        self.cv2 = Conv(hidden * 4, c2, 1)
        self.pool = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool three times and fuse the four feature maps."""
        y0 = self.cv1(x)
        y1 = self.pool(y0)
        y2 = self.pool(y1)
        y3 = self.pool(y2)
        return self.cv2(torch.cat((y0, y1, y2, y3), dim=1))


class DFL(nn.Module):
    """Distribution Focal Loss integral: turns per-side bin logits into an expected distance.

    The head predicts, for each of the four box sides, ``reg_max`` logits over the distances
    0..reg_max-1 (in grid cells). The distance is the expectation under the softmax, computed as a
    frozen 1x1 conv whose weights are ``arange(reg_max)`` so it exports to ONNX as a plain conv.

    Args:
        reg_max: Number of distance bins per side.
    """

    def __init__(self, reg_max: int = 16) -> None:
        super().__init__()
        self.reg_max = reg_max
        self.conv = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(reg_max, dtype=torch.float).view(1, reg_max, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, 4*reg_max, A) logits to (B, 4, A) distances in grid units."""
        b, _, a = x.shape
        # (B, 4, R, A) -> (B, R, 4, A): bins become channels of the 1x1 conv.
        probs = x.view(b, 4, self.reg_max, a).transpose(1, 2).softmax(1)
        return self.conv(probs).view(b, 4, a)
