"""Exponential moving average of the weights, kept in fp32, with a ramped decay; updated on the device."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn as nn


class ModelEMA:
    """EMA of a model's parameters and buffers.

    The decay ramps from 0 towards ``decay`` as ``decay * (1 - exp(-updates / tau))`` so early,
    still-random weights are forgotten quickly. The update count lives on the device and an update can be
    cancelled there (``skip``), so the step never reads back whether it stepped.

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
        device = next(iter(self.ema.state_dict().values())).device
        self._updates = torch.tensor(float(updates), dtype=torch.float64, device=device)  # exact up to 2**53
        # state_dict tensors share storage with the EMA's parameters and buffers, and loading a state
        # copies into them in place, so this list stays valid for the EMA's lifetime.
        esd = self.ema.state_dict()
        self._float_keys = [k for k, v in esd.items() if v.dtype.is_floating_point]
        self._float_tensors = [esd[k] for k in self._float_keys]
        self._sources: tuple[int, list[torch.Tensor], bool] | None = None  # (id(model), its tensors, all fp32)

    @property
    def updates(self) -> int:
        """Updates applied so far (a host read of the device counter: for logs, tests and checkpoints)."""
        return int(self._updates)

    @updates.setter
    def updates(self, value: int) -> None:
        self._updates.fill_(float(value))

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / self.tau))

    def _model_tensors(self, model: nn.Module) -> list[torch.Tensor]:
        """The model's floating-point state in the EMA's order, looked up once per model (not every step)."""
        if self._sources is None or self._sources[0] != id(model):
            msd = model.state_dict(keep_vars=True)
            tensors = [msd[k].detach() for k in self._float_keys]
            self._sources = (id(model), tensors, all(t.dtype == torch.float32 for t in tensors))
        _, tensors, fp32 = self._sources
        return tensors if fp32 else [t.float() for t in tensors]  # a reduced-precision model: blend fp32 copies

    @torch.no_grad()
    def update(self, model: nn.Module, skip: torch.Tensor | None = None) -> None:
        """Blend ``model``'s floating-point state into the EMA; nothing changes where ``skip`` (device bool) is True."""
        keep = torch.ones((), dtype=torch.float64, device=self._updates.device) if skip is None else (~skip).double()
        self._updates.add_(keep)
        d = self.decay * (1 - torch.exp(-self._updates / self.tau))
        weight = ((1.0 - d) * keep).float()
        # One fused lerp over all tensors: ema += w * (model - ema), w = 0 on a skipped step. A per-tensor
        # Python loop cost ~10% of a CPU training step when the optimizer steps every batch.
        torch._foreach_lerp_(self._float_tensors, self._model_tensors(model), weight)

    KEYS = ("ema", "ema_updates")  # its checkpoint keys

    def state_dict(self) -> dict[str, Any]:
        return {"ema": {k: v.detach().clone() for k, v in self.ema.state_dict().items()}, "ema_updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["ema"] is None:  # a run trained with ema=false, resumed with the EMA on: start it afresh
            return
        self.ema.load_state_dict(state["ema"])
        self.updates = int(state["ema_updates"])
