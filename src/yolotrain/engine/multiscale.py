"""Multi-scale training: a new input size per iteration, the same on every rank.

Two modes:

- ``fraction`` (``multi_scale=0.5``): the long side is drawn uniformly from the stride multiples in
  ``[imgsz*(1-f), imgsz*(1+f)]``; a square batch becomes a square of that side.
- ``min_sizes`` (``min_size=[640,672,...] max_size=1600``): the short side is drawn from the list, the
  long side follows the batch's aspect ratio and is capped at ``max_size`` (the short side then shrinks
  to keep the ratio).

Every size is a multiple of the stride. A draw depends only on (seed, epoch, iteration) through a local
RNG, never the global one, so a resumed run draws the same sizes. Usage in a training step::

    ms = MultiScale(imgsz, stride=32, fraction=cfg.multi_scale, seed=cfg.seed)
    size = pick_synchronized(ms, epoch, i, imgs.shape[-2:])   # every rank must call it
    imgs = resize_batch(imgs, size)                           # boxes are normalized: unchanged
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from yolotrain.engine import distributed as dist
from yolotrain.errors import ConfigError

Size = tuple[int, int]


class MultiScale:
    """Draws a training input size per iteration.

    Args:
        imgsz: Nominal training size (the loader's output side).
        stride: The model's largest stride; every size is a positive multiple of it.
        fraction: Mode A when > 0: relative size range around ``imgsz``, in [0, 1).
        min_sizes: Mode B when given: candidate short sides.
        max_size: Mode B: cap on the long side (None: no cap); must be >= stride.
        seed: Base seed of the draws.

    Raises:
        ConfigError: For out-of-range settings or both modes at once.
    """

    def __init__(
        self,
        imgsz: int,
        stride: int = 32,
        fraction: float = 0.0,
        min_sizes: Sequence[int] | None = None,
        max_size: int | None = None,
        seed: int = 0,
    ) -> None:
        if stride < 1:
            raise ConfigError(f"multi-scale: stride must be >= 1, got {stride}")
        if imgsz < 1:
            raise ConfigError(f"setting 'imgsz'={imgsz} must be positive")
        if not 0.0 <= fraction < 1.0:
            raise ConfigError(f"setting 'multi_scale'={fraction} must be in [0, 1)")
        sizes = list(min_sizes or [])
        if any(isinstance(s, bool) or not isinstance(s, (int, float)) or s <= 0 for s in sizes):
            raise ConfigError(f"setting 'min_size'={sizes} must hold positive sizes")
        if max_size is not None and max_size < stride:
            raise ConfigError(f"setting 'max_size'={max_size} must be >= the model stride {stride}")
        if fraction > 0 and sizes:
            raise ConfigError("settings 'multi_scale' and 'min_size' are two multi-scale modes; set only one")
        self.imgsz, self.stride, self.fraction, self.seed = int(imgsz), int(stride), float(fraction), int(seed)
        self.min_sizes = [int(s) for s in sizes]
        self.max_size = None if max_size is None else int(max_size)

    @property
    def enabled(self) -> bool:
        """Whether sizes vary at all."""
        return self.fraction > 0 or bool(self.min_sizes)

    def _side_range(self) -> tuple[int, int]:
        """Mode A: the smallest and largest stride multiple (in units of stride) inside the range."""
        s = self.stride
        lo = max(1, math.ceil(self.imgsz * (1 - self.fraction) / s))
        hi = math.floor(self.imgsz * (1 + self.fraction) / s)
        if hi < lo:  # the range holds no multiple of the stride: use imgsz rounded to the stride
            lo = hi = max(1, round(self.imgsz / s))
        return lo, hi

    def _round(self, x: float, cap: int | None = None) -> int:
        """``x`` rounded to the nearest positive stride multiple, not above ``cap`` (rounded down)."""
        k = max(1, round(x / self.stride))
        if cap is not None:
            k = min(k, max(1, cap // self.stride))
        return k * self.stride

    def _fit(self, long_side: float, shape_hw: Sequence[int] | None) -> Size:
        """Mode A: scale ``shape_hw`` so its long side is ``long_side``, keeping the aspect ratio."""
        if shape_hw is None or shape_hw[0] == shape_hw[1]:
            side = int(long_side)
            return side, side
        h, w = (int(v) for v in shape_hw)
        r = long_side / max(h, w)
        return self._round(h * r), self._round(w * r)

    def _short_side(self, short: float, shape_hw: Sequence[int] | None) -> Size:
        """Mode B: short side ``short``, long side by aspect ratio, long side capped at ``max_size``."""
        h, w = (1, 1) if shape_hw is None else (int(v) for v in shape_hw)
        aspect = max(h, w) / min(h, w)
        long = short * aspect
        if self.max_size is not None and long > self.max_size:
            long = self.max_size
            short = long / aspect
        short_r = self._round(short, self.max_size)
        long_r = self._round(long, self.max_size)
        return (short_r, long_r) if h <= w else (long_r, short_r)

    def pick(self, epoch: int, iteration: int, shape_hw: Sequence[int] | None = None) -> Size:
        """The (H, W) for this iteration; a pure function of (seed, epoch, iteration, shape_hw).

        Args:
            epoch: 0-based epoch.
            iteration: Iteration within the epoch.
            shape_hw: The batch's (H, W); its aspect ratio is kept. None means square.

        Returns:
            The target size; ``shape_hw`` unchanged (or (imgsz, imgsz)) when multi-scale is off.
        """
        if not self.enabled:
            return (int(shape_hw[0]), int(shape_hw[1])) if shape_hw is not None else (self.imgsz, self.imgsz)
        # A string seed is hashed with SHA-512 by random.Random: stable across processes and Python runs.
        rng = random.Random(f"multiscale:{self.seed}:{int(epoch)}:{int(iteration)}")
        if self.min_sizes:
            return self._short_side(rng.choice(self.min_sizes), shape_hw)
        lo, hi = self._side_range()
        return self._fit(rng.randint(lo, hi) * self.stride, shape_hw)

    def largest(self, shape_hw: Sequence[int] | None = None) -> Size:
        """The largest size :meth:`pick` can return (AutoBatch probes memory at it).

        Args:
            shape_hw: The batch shape. None means square in mode A and, in mode B, the worst case over
                aspect ratios: the largest short side by ``max_size`` (or a square without a cap).

        Returns:
            (H, W).
        """
        if not self.enabled:
            return self.pick(0, 0, shape_hw)
        if self.min_sizes:
            if shape_hw is None:
                short = self._round(max(self.min_sizes), self.max_size)
                return short, (self._round(self.max_size, self.max_size) if self.max_size else short)
            sizes = [self._short_side(s, shape_hw) for s in self.min_sizes]
            return max(sizes, key=lambda hw: hw[0] * hw[1])
        return self._fit(self._side_range()[1] * self.stride, shape_hw)


def resize_batch(imgs: torch.Tensor, size_hw: Sequence[int]) -> torch.Tensor:
    """Bilinearly resize a float image batch (B, C, H, W) to ``size_hw``; a no-op at the same size.

    Boxes are normalized xywh, so they need no change.

    Raises:
        ValueError: For an integer image tensor (convert to float first: interpolation needs it).
    """
    size = (int(size_hw[0]), int(size_hw[1]))
    if tuple(imgs.shape[-2:]) == size:
        return imgs
    if not imgs.is_floating_point():
        raise ValueError(f"resize_batch needs float images, got {imgs.dtype}")
    return F.interpolate(imgs, size=size, mode="bilinear", align_corners=False)


def pick_synchronized(ms: MultiScale, epoch: int, iteration: int, shape_hw: Sequence[int] | None = None) -> Size:
    """:meth:`MultiScale.pick` on rank 0, broadcast so every rank uses the same size.

    Collective under DDP: every rank must call it at every iteration (it returns without communicating
    when multi-scale is off, which the shared config makes the same on every rank).
    """
    if not ms.enabled:
        return ms.pick(epoch, iteration, shape_hw)
    if not dist.is_initialized():
        return ms.pick(epoch, iteration, shape_hw)
    # Only rank 0 draws: other ranks may differ in seed or batch shape, and must still agree.
    size = ms.pick(epoch, iteration, shape_hw) if torch.distributed.get_rank() == 0 else None
    size = dist.broadcast_object(size, src=0)
    return int(size[0]), int(size[1])
