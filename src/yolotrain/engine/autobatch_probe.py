"""The batch size a run trains with: the ``batch`` setting, or AutoBatch's choice from probing the real step.

AutoBatch (``batch=-1`` or a fraction of memory) times and measures one forward + loss + backward of the
plain model (before SyncBN and DDP) on synthetic data at the largest multi-scale size; the search itself is
:func:`yolotrain.engine.autobatch.autobatch`. Under DDP the minimum over ranks is used.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from yolotrain.engine.autobatch import autobatch, autobatch_fraction
from yolotrain.engine.precision import Precision

LOGGER = logging.getLogger("yolotrain")


def choose_batch(
    batch_setting: float,
    model: nn.Module,
    criterion,
    precision: Precision,
    device: torch.device,
    size_hw: tuple[int, int],
    world: int,
    memory_format: torch.memory_format = torch.contiguous_format,
    max_images: int | None = None,
) -> int:
    """The global batch: ``batch_setting`` itself, or AutoBatch's choice (over all processes).

    Args:
        batch_setting: The ``batch`` setting (-1 or a fraction in (0, 1) ask for AutoBatch).
        model: The plain model (not wrapped, no SyncBN).
        criterion: The loss.
        precision: The training precision (its autocast is probed).
        device: Where the model runs.
        size_hw: The largest input size training will use.
        world: The number of processes.
        memory_format: The input images' memory format.
        max_images: The images one process trains on per epoch: AutoBatch never picks more.
    """
    fraction = autobatch_fraction(batch_setting)
    if fraction is None:
        return int(batch_setting)
    h, w = size_hw
    LOGGER.info(
        f"AutoBatch: probing the {precision.amp} training step at {h}x{w} for {fraction:.0%} of "
        f"{'device' if device.type == 'cuda' else 'available'} memory"
    )

    def probe(b: int) -> None:
        probe_step(model, criterion, precision, device, b, size_hw, memory_format)

    per_rank = autobatch(
        probe, device, fraction=fraction, batch_sizes=(1, 2, 4, 8, 16, 32), multiple_of=1, max_images=max_images
    )
    if world > 1:
        per_rank = max(per_rank, 2)  # BatchNorm needs 2 per process; the minimum over ranks came back
    batch = per_rank * world
    LOGGER.info(f"AutoBatch: batch {batch}" + (f" ({per_rank} per process)" if world > 1 else ""))
    return batch


def probe_step(
    model: nn.Module,
    criterion,
    precision: Precision,
    device: torch.device,
    b: int,
    size_hw: tuple[int, int],
    memory_format: torch.memory_format = torch.contiguous_format,
) -> None:
    """One forward + loss + backward at batch ``b`` on synthetic data (8 boxes an image), then cleaned up."""
    g = torch.Generator().manual_seed(b)
    # the images are drawn where they are used: drawn on the CPU and copied, they cost more than the GPU step
    # itself (an H200 probe at batch 128 took 8.9 ms an image against 2.3 ms in training), and the timing
    # that picks the batch measured the CPU
    on_device = g if device.type == "cpu" else torch.Generator(device=device).manual_seed(b)
    imgs = torch.rand(b, 3, *size_hw, generator=on_device, device=device).contiguous(memory_format=memory_format)
    n = 8 * b  # a few boxes per image: the assigner's memory grows with them
    xy = torch.rand(n, 2, generator=g) * 0.8 + 0.1
    wh = torch.rand(n, 2, generator=g) * 0.2 + 0.05
    batch = {
        "cls": torch.randint(0, model.nc, (n, 1), generator=g).float().to(device),
        "bboxes": torch.cat([xy, wh], 1).to(device),
        "batch_idx": torch.arange(b).repeat_interleave(8).float().to(device),
    }
    try:
        model.train()
        with precision.autocast():
            preds = model(imgs)
        loss, _ = criterion(preds, batch)
        loss.backward()
    finally:
        model.zero_grad(set_to_none=True)
