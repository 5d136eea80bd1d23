"""Precision as one setting with one code path: an autocast context plus a scaler for fp16 only."""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path
from typing import Any

import torch

LOGGER = logging.getLogger("yolotrain")
_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def bf16_supported(device: torch.device) -> bool:
    """Whether autocast to bf16 is usable (and not merely emulated) on ``device``."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def choose_amp(requested: str, device: torch.device) -> tuple[str, str]:
    """Resolve ``amp=auto`` for ``device``.

    Returns:
        The precision (``off``, ``bf16`` or ``fp16``) and why it was chosen.
    """
    if requested != "auto":
        return requested, "as requested"
    if device.type == "cuda":
        return "fp16", "CUDA device"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16", "CPU with native bf16 (avx512_bf16/amx)"
    if device.type == "mps":
        return "off", "MPS: autocast support varies, staying in fp32"
    return "off", "CPU without native bf16: emulated bf16 would be slower than fp32"


class Precision:
    """Autocast context and gradient scaler for (device type, dtype).

    bf16 and fp32 leave the scaler disabled (its calls become pass-throughs), so the training step is
    the same code for every precision.

    Args:
        device: Where the model runs.
        amp: ``auto``, ``off``, ``bf16`` or ``fp16``.
    """

    def __init__(
        self, device: torch.device, amp: str = "off", growth_interval: int = 2000, init_scale: float = 2.0**16
    ):
        self.device_type = device.type
        self.amp, self.reason = choose_amp(amp, device)
        self.dtype = _DTYPES[self.amp]
        self.scaler = torch.amp.GradScaler(
            self.device_type,
            enabled=self.dtype is torch.float16,
            growth_interval=growth_interval,
            init_scale=init_scale,
        )

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    def autocast(self, cache: bool = True) -> contextlib.AbstractContextManager:
        """Context for forward passes; a no-op in fp32.

        Args:
            cache: Keep the low-precision copies of weights for the region (off under CUDA-graph capture,
                which must not hold tensors made outside the graph).
        """
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype, cache_enabled=cache)

    KEYS = ("precision",)  # its checkpoint key

    def state_dict(self) -> dict[str, Any]:
        return {"precision": {"amp": self.amp, "scaler": self.scaler.state_dict()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["precision"]
        if saved.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(saved["scaler"])

    @property
    def scale(self) -> float | None:
        """The current loss scale (fp16), else None."""
        return self.scaler.get_scale() if self.scaler.is_enabled() else None


def inference_dtype(device: torch.device) -> torch.dtype | None:
    """The reduced precision ``half=true`` uses on ``device``, or None where only fp32 is sensible."""
    if device.type in ("cuda", "mps"):
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None
