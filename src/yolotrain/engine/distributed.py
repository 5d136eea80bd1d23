"""Everything about process groups lives here; one process is the world-size-1 case of the same code."""

from __future__ import annotations

import os

import torch
import torch.nn as nn


def rank() -> int:
    """Global rank from torchrun's environment (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def is_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP-wrap ``model`` when a process group is up; otherwise return it unchanged."""
    if not is_initialized() or world_size() == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under a DDP (or compiled) wrapper: what we save, evaluate and average."""
    while hasattr(model, "module") and isinstance(model, (nn.parallel.DistributedDataParallel,
                                                          nn.DataParallel)):
        model = model.module
    return getattr(model, "_orig_mod", model)


def barrier() -> None:
    if is_initialized():
        torch.distributed.barrier()


def broadcast_object(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank (returned unchanged in one process)."""
    if not is_initialized():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]
