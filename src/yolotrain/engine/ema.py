"""Exponential moving average of the weights, kept in fp32, with a ramped decay."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn as nn


class ModelEMA:
    """EMA of a model's parameters and buffers.

    The decay ramps from 0 towards ``decay`` as ``decay * (1 - exp(-updates / tau))`` so early,
    still-random weights are forgotten quickly.

    Args:
        model: The (unwrapped) model to follow.
        decay: Decay once ramped up.
        tau: Ramp length in updates.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0):
        self.ema = copy.deepcopy(model).eval().float()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.tau = tau
        self.updates = updates
        # state_dict tensors share storage with the EMA's parameters and buffers, and loading a state
        # copies into them in place, so this list stays valid for the EMA's lifetime.
        esd = self.ema.state_dict()
        self._float_keys = [k for k, v in esd.items() if v.dtype.is_floating_point]
        self._float_tensors = [esd[k] for k in self._float_keys]

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend ``model``'s floating-point state into the EMA."""
        self.updates += 1
        d = self.current_decay()
        msd = model.state_dict()
        model_t = [msd[k].detach().float() for k in self._float_keys]
        # One fused lerp over all tensors: ema += (1 - d) * (model - ema). A per-tensor Python loop
        # cost ~10% of a CPU training step when the optimizer steps every batch.
        torch._foreach_lerp_(self._float_tensors, model_t, 1.0 - d)

    KEYS = ("ema", "ema_updates")  # its checkpoint keys

    def state_dict(self) -> dict[str, Any]:
        return {"ema": {k: v.detach().clone() for k, v in self.ema.state_dict().items()}, "ema_updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["ema"] is None:  # a run trained with ema=false, resumed with the EMA on: start it afresh
            return
        self.ema.load_state_dict(state["ema"])
        self.updates = int(state["ema_updates"])
