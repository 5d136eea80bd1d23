"""The detector: backbone -> neck -> head, returning raw head outputs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from yolotrain.models.backbone import Backbone, BlockFactory, c2f_block
from yolotrain.models.blocks11 import C2PSA, C3k2
from yolotrain.models.head import DetectHead
from yolotrain.models.neck import PANNeck

__all__ = ["Detector", "FAMILIES", "Family", "scale_width", "scale_depth"]

_STRIDES = (8.0, 16.0, 32.0)


@dataclass(frozen=True)
class Family:
    """Reference (scale 1.0) layout of one detector family; scales multiply depths and widths.

    Attributes:
        name: ``"v8"`` (YOLOv8) or ``"11"`` (YOLO11).
        conv_channels: Widths of the stem and of the four strided convs.
        block_channels: Output widths of the four backbone stages' CSP blocks.
        backbone_depths: Repeat counts of those blocks.
        neck_channels: Output widths of the neck (N3, N4, N5), i.e. the head's input widths.
        neck_depth: Repeat count of every neck block.
        psa_depth: PSA blocks of the attention stage after SPPF (0: no attention stage).
        dw_cls: Depthwise-separable class branch in the head.
    """

    name: str
    conv_channels: tuple[int, ...]
    block_channels: tuple[int, ...]
    backbone_depths: tuple[int, ...]
    neck_channels: tuple[int, ...]
    neck_depth: int
    psa_depth: int
    dw_cls: bool


FAMILIES = {
    "v8": Family("v8", (64, 128, 256, 512, 1024), (128, 256, 512, 1024), (3, 6, 6, 3), (256, 512, 1024), 3, 0, False),
    "11": Family("11", (64, 128, 256, 512, 1024), (256, 512, 512, 1024), (2, 2, 2, 2), (256, 512, 1024), 2, 2, True),
}


def c3k2_factory(c3k_all: bool) -> BlockFactory:
    """YOLO11's block placement: C3k2 everywhere; C3k inner blocks in the two deepest backbone stages and
    the last neck block (everywhere when ``c3k_all``); quarter-width halves in the two shallow stages."""

    def make(c1: int, c2: int, n: int, position: str) -> nn.Module:
        deep = position in ("stage4", "stage5", "bu5")
        e = 0.25 if position in ("stage2", "stage3") else 0.5
        return C3k2(c1, c2, n, c3k=c3k_all or deep, e=e)

    return make


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
        scale: Name of the registered scale, or ``"custom"``; ``config()`` uses it to rebuild the model.
        reg_max: DFL bins per box side.
        family: ``"v8"`` (YOLOv8 layout) or ``"11"`` (YOLO11: C3k2 blocks, C2PSA attention, depthwise
            class branch).
        c3k: YOLO11 only: C3k inner blocks in every C3k2 (published for scales m/l/x); ``None`` picks it
            from the width (on for width >= 1, which are exactly the m/l/x scales).
    """

    def __init__(
        self,
        nc: int,
        depth: float,
        width: float,
        max_channels: int,
        scale: str = "custom",
        reg_max: int = 16,
        family: str = "v8",
        c3k: bool | None = None,
    ) -> None:
        super().__init__()
        if nc < 1:
            raise ValueError(f"nc must be >= 1, got {nc}")
        if family not in FAMILIES:
            raise ValueError(f"unknown detector family {family!r}; known: {', '.join(FAMILIES)}")
        fam = FAMILIES[family]
        self.nc = nc
        self.reg_max = reg_max
        self.scale = scale
        self.family = family
        self.arch = {"family": family, "depth": depth, "width": width, "max_channels": max_channels}
        if family == "11":
            self.arch["c3k"] = bool(width >= 1.0 if c3k is None else c3k)
            block = c3k2_factory(self.arch["c3k"])
        else:
            block = c2f_block

        def w(c: int) -> int:
            return scale_width(c, width, max_channels)

        tail = [C2PSA(w(fam.block_channels[-1]), scale_depth(fam.psa_depth, depth))] if fam.psa_depth else []
        self.backbone = Backbone(
            [w(c) for c in fam.conv_channels],
            [scale_depth(n, depth) for n in fam.backbone_depths],
            [w(c) for c in fam.block_channels],
            block,
            tail,
        )
        self.neck = PANNeck(
            self.backbone.out_channels, scale_depth(fam.neck_depth, depth), [w(c) for c in fam.neck_channels], block
        )
        self.head = DetectHead(nc, self.neck.out_channels, reg_max, _STRIDES, dw_cls=fam.dw_cls)
        # A buffer (not a plain attribute) so it follows .to(device) and is saved in state_dict.
        self.register_buffer("stride", torch.tensor(_STRIDES), persistent=True)

    def config(self) -> dict:
        """Return the keyword arguments that rebuild this model with ``build_model(**cfg)``.

        A registered scale is named; any other architecture (e.g. an imported checkpoint of a
        non-standard size) is spelled out.
        """
        if self.scale != "custom":
            return {"scale": self.scale, "nc": self.nc}
        return {"scale": "custom", **self.arch, "nc": self.nc}

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
