"""Blocks of the YOLO11 family: the C3k2 stage, the C2PSA attention stage.

Attribute names (``cv1``, ``m``, ``attn.qkv``, ...) follow the published YOLO11 layout so a checkpoint's
tensors map onto these modules by name (see ``yolotrain.models.ultralytics_map``).
"""

from __future__ import annotations

import torch
from torch import nn

from yolotrain.models.blocks import Bottleneck, C2f, Conv

__all__ = ["C3k", "C3k2", "Attention", "PSABlock", "C2PSA"]


class C3k(nn.Module):
    """CSP block with two 3x3 bottlenecks on one half and a 1x1 bypass on the other.

    Args:
        c1: Input channels.
        c2: Output channels.
        n: Number of bottlenecks.
        shortcut: Residual bottlenecks.
        e: Hidden width relative to ``c2``.
    """

    def __init__(self, c1: int, c2: int, n: int = 2, shortcut: bool = True, e: float = 0.5) -> None:
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 1)
        self.cv2 = Conv(c1, hidden, 1)
        self.cv3 = Conv(2 * hidden, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Bottlenecks on one branch, 1x1 on the other, fuse."""
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), dim=1))


class C3k2(C2f):
    """C2f whose inner blocks are either slim bottlenecks (hidden width halved) or C3k blocks.

    The split/concatenate structure is C2f's; only the inner blocks differ, so ``forward`` is inherited.

    Args:
        c1: Input channels.
        c2: Output channels.
        n: Number of inner blocks.
        c3k: Use C3k inner blocks (the larger YOLO11 scales and the deep stages use them).
        e: Width of each half relative to ``c2``.
        shortcut: Residual inner blocks (YOLO11 keeps them on everywhere, the neck included).
    """

    def __init__(self, c1: int, c2: int, n: int = 1, c3k: bool = False, e: float = 0.5, shortcut: bool = True) -> None:
        super().__init__(c1, c2, n, shortcut, e)
        self.m = nn.ModuleList(
            C3k(self.c, self.c, 2, shortcut) if c3k else Bottleneck(self.c, self.c, shortcut, e=0.5) for _ in range(n)
        )


class Attention(nn.Module):
    """Multi-head self-attention over all positions of a feature map, plus a depthwise positional conv.

    Queries and keys are half the width of values (``attn_ratio``) to save compute; one 1x1 conv
    produces all three.

    Args:
        dim: Channels.
        num_heads: Heads (``dim`` must divide by it).
        attn_ratio: Key width relative to the head width.
    """

    def __init__(self, dim: int, num_heads: int = 8, attn_ratio: float = 0.5) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"Attention: {dim} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim**-0.5
        self.qkv = Conv(dim, dim + 2 * self.key_dim * num_heads, 1, act=False)
        self.proj = Conv(dim, dim, 1, act=False)
        self.pe = Conv(dim, dim, 3, 1, g=dim, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the H*W positions and add the positional conv of the values."""
        b, c, h, w = x.shape
        n = h * w
        q, k, v = (
            self.qkv(x)
            .view(b, self.num_heads, 2 * self.key_dim + self.head_dim, n)
            .split((self.key_dim, self.key_dim, self.head_dim), dim=2)
        )
        attn = ((q.transpose(-2, -1) @ k) * self.scale).softmax(dim=-1)  # (B, heads, N, N)
        out = (v @ attn.transpose(-2, -1)).view(b, c, h, w) + self.pe(v.reshape(b, c, h, w))
        return self.proj(out)


class PSABlock(nn.Module):
    """Residual attention followed by a residual two-layer 1x1 feed-forward.

    Args:
        c: Channels.
        attn_ratio: Key width relative to the head width.
        num_heads: Attention heads.
    """

    def __init__(self, c: int, attn_ratio: float = 0.5, num_heads: int = 4) -> None:
        super().__init__()
        self.attn = Attention(c, num_heads=num_heads, attn_ratio=attn_ratio)
        self.ffn = nn.Sequential(Conv(c, 2 * c, 1), Conv(2 * c, c, 1, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + attn(x), then + ffn."""
        x = x + self.attn(x)
        return x + self.ffn(x)


class C2PSA(nn.Module):
    """Attention stage: split in two halves, run PSA blocks on one, concatenate and fuse.

    Attention is quadratic in the number of positions, so YOLO11 places it only after the stride-32
    stage, where a 640 input leaves 20x20 positions.

    Args:
        c1: Input (= output) channels.
        n: Number of PSA blocks.
        e: Width of each half relative to ``c1``.
    """

    def __init__(self, c1: int, n: int = 1, e: float = 0.5) -> None:
        super().__init__()
        self.c = int(c1 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1)
        self.cv2 = Conv(2 * self.c, c1, 1)
        # One head per 64 channels, as published.
        self.m = nn.Sequential(*(PSABlock(self.c, attn_ratio=0.5, num_heads=max(self.c // 64, 1)) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Keep one half, attend over the other, fuse."""
        a, b = self.cv1(x).split((self.c, self.c), dim=1)
        return self.cv2(torch.cat((a, self.m(b)), dim=1))
