"""Helpers for the engine tests that compare checkpoints tensor by tensor (not a test module)."""

from __future__ import annotations

import torch


def flat_tensors(state: dict, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Every tensor under ``state[key]`` for ``key`` in ``keys``, by its path (``model/conv.weight``, ...)."""
    out = {}

    def walk(prefix, o):
        if isinstance(o, torch.Tensor):
            out[prefix] = o
        elif isinstance(o, dict):
            for k, v in o.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(o, (list, tuple)):
            for i, v in enumerate(o):
                walk(f"{prefix}/{i}", v)

    for key in keys:
        walk(key, state[key])
    return out
