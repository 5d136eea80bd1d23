"""From a loader batch to the step's inputs: images on the device in the step's size and memory format, labels
packed to a fixed-size tensor.

The loader hands uint8 images (pinned on CUDA); they are copied as uint8 (a quarter of the float bytes) without
waiting (``non_blocking``), then converted and scaled to [0, 1] on the device. The multi-scale size is drawn
once per batch (every micro-batch of it uses the same), on rank 0 and broadcast.
"""

from __future__ import annotations

from typing import Any

import torch

from yolotrain.engine.multiscale import MultiScale, pick_synchronized, resize_batch
from yolotrain.loss.targets import DEFAULT_MAX_BOXES, PaddedTargets, pad_targets


class BatchPrep:
    """Prepares batches for :class:`~yolotrain.engine.step.TrainStep`.

    Args:
        device: Where the model runs.
        memory_format: ``torch.channels_last`` or ``torch.contiguous_format`` for the images.
        multiscale: The per-iteration size sampler, or None (the loader's size).
        max_boxes: Cap on labels per image (see :mod:`yolotrain.loss.targets`).
    """

    def __init__(
        self,
        device: torch.device,
        memory_format: torch.memory_format = torch.contiguous_format,
        multiscale: MultiScale | None = None,
        max_boxes: int = DEFAULT_MAX_BOXES,
    ):
        self.device, self.memory_format, self.multiscale, self.max_boxes = device, memory_format, multiscale, max_boxes
        self.input_size: tuple[int, int] = (0, 0)  # the last input size, for logs and callbacks
        self.dropped_boxes = 0  # labels past max_boxes left out so far (a host count: packing is host work)

    @property
    def varies(self) -> bool:
        """Whether the input size changes between iterations (multi-scale)."""
        return self.multiscale is not None and self.multiscale.enabled

    def size(self, batch: dict[str, Any], epoch: int, i: int) -> tuple[int, int] | None:
        """The input size of batch ``i`` of ``epoch`` (a collective under DDP: every rank calls it), or None."""
        if not self.varies:
            return None
        return pick_synchronized(self.multiscale, epoch, i, tuple(batch["img"].shape[-2:]))

    def images(self, part: dict[str, Any], size: tuple[int, int] | None) -> torch.Tensor:
        """The part's images on the device: float in [0, 1], resized to ``size``, in the step's memory format."""
        imgs = part["img"].to(self.device, non_blocking=True).float().div_(255)
        if size is not None:
            imgs = resize_batch(imgs, size)
        imgs = imgs.contiguous(memory_format=self.memory_format)
        self.input_size = (int(imgs.shape[-2]), int(imgs.shape[-1]))  # shape ints, not a device read
        return imgs

    def labels(self, part: dict[str, Any]) -> dict[str, Any]:
        """The part's labels packed on the host (a bucketed size, see :func:`pad_targets`), then on the device."""
        packed: PaddedTargets = pad_targets(part, int(part["img"].shape[0]), self.max_boxes)
        self.dropped_boxes += packed.dropped
        return {"targets": packed.to(self.device)}
