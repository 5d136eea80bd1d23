"""Precision as one setting with one code path: an autocast context plus a scaler for fp16 only."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast context and gradient scaler for (device type, dtype).

    bf16 and fp32 leave the scaler disabled (its calls become pass-throughs), so the training step is
    the same code for every precision.

    Args:
        device: Where the model runs.
        amp: ``off``, ``bf16`` or ``fp16``.
    """

    def __init__(self, device: torch.device, amp: str = "off"):
        self.device_type = device.type
        self.amp = amp
        self.dtype = _DTYPES[amp]
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=self.dtype is torch.float16)

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context for forward passes; a no-op in fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"amp": self.amp, "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
