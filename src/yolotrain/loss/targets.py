"""Labels as a fixed-size padded tensor: the loss's shapes depend on the batch size and a bucket, never on values.

A collated batch holds its labels flat (``batch_idx``, ``cls``, ``bboxes``: one row per box). The loss
needs them per image, so they are packed into ``(B, M, 5)`` rows ``[cls, x, y, w, h]`` with a ``(B, M)``
mask. ``M`` is a *bucket*: the next power of two of the largest per-image count, capped at ``max_boxes``.
The packing runs on the host, on the loader's CPU tensors, before the copy to the device; so the device
never has to report a count back (a host read), and a step sees only a handful of label shapes (a CUDA
graph per shape). Boxes past the cap in an image are dropped and counted (the trainer logs them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from yolotrain.config import SETTINGS
from yolotrain.utils.host_sync import host_data

# for parts built without a config (tests, benchmarks): the setting's own default, declared once in config.py
DEFAULT_MAX_BOXES = SETTINGS["max_boxes"].default


def bucket(count: int, cap: int) -> int:
    """The padded label count for a largest per-image ``count``: the next power of two, at most ``cap`` (0 for 0)."""
    if count <= 0:
        return 0
    return min(1 << (count - 1).bit_length(), cap)


@dataclass
class PaddedTargets:
    """Labels packed per image.

    Attributes:
        rows: ``(B, M, 5)`` float ``[cls, x, y, w, h]`` (normalised xywh), zeros where ``mask`` is False.
        mask: ``(B, M)`` bool, True for a real box.
        dropped: Boxes left out because their image had more than ``M`` (the cap).
    """

    rows: torch.Tensor
    mask: torch.Tensor
    dropped: int

    def to(self, device: torch.device) -> PaddedTargets:
        """On ``device``, copied asynchronously (from pinned memory when the batch was pinned)."""
        if device.type != "cuda":
            return PaddedTargets(self.rows.to(device), self.mask.to(device), self.dropped)
        # from pageable memory a copy waits for the stream; from pinned memory it is queued like a kernel
        rows, mask = self.rows.pin_memory(), self.mask.pin_memory()
        return PaddedTargets(rows.to(device, non_blocking=True), mask.to(device, non_blocking=True), self.dropped)


def pad_targets(batch: Mapping[str, torch.Tensor], n_images: int, max_boxes: int = DEFAULT_MAX_BOXES) -> PaddedTargets:
    """Pack a batch's flat labels into :class:`PaddedTargets` (host tensors; no loop over boxes).

    Args:
        batch: ``batch_idx`` (N,) image of each box, ``cls`` (N, 1) and ``bboxes`` (N, 4) normalised xywh, on the
            host (the loader's tensors).
        n_images: Images in the batch (B).
        max_boxes: The cap on ``M``; boxes past it in one image are dropped (the first ``max_boxes`` are kept).

    Returns:
        The packed labels; a box keeps its order among its image's boxes (slot = rank within the image).
    """
    with host_data():  # the loader's CPU tensors: counting them is host work, not a device read
        batch_idx = batch["batch_idx"].reshape(-1).long().cpu()
        n = batch_idx.numel()
        counts = torch.bincount(batch_idx, minlength=n_images) if n else torch.zeros(n_images, dtype=torch.long)
        m = bucket(int(counts.max()) if n else 0, max_boxes)
        rows = torch.zeros(n_images, m, 5)
        mask = torch.zeros(n_images, m, dtype=torch.bool)
        if n == 0 or m == 0:
            return PaddedTargets(rows, mask, n)
        order = torch.argsort(batch_idx, stable=True)
        image = batch_idx[order]
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(n) - starts[image]
        keep = slot < m
        dropped = int(n - keep.sum())
        image, slot, order = image[keep], slot[keep], order[keep]
        values = torch.cat((batch["cls"].reshape(-1, 1).float().cpu(), batch["bboxes"].reshape(-1, 4).float().cpu()), 1)
        rows[image, slot] = values[order]
        mask[image, slot] = True
    return PaddedTargets(rows, mask, dropped)
