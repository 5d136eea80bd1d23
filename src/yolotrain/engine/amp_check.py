"""An offline self-check of mixed precision on the user's own model, with fallback.

Before training, rank 0 runs the actual model (fresh or loaded weights) on a fixed input in fp32 and
under the chosen autocast and compares the outputs, then runs one loss + backward under autocast and
requires finite, non-zero gradients. On failure it falls back fp16 -> bf16 (where the device supports
bf16) -> fp32, warning what failed and by how much. Nothing is downloaded and the model is not changed:
the checks run on a copy. The decision is broadcast so every rank trains in the same precision.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
import torch.nn as nn

from yolotrain.engine import distributed as dist
from yolotrain.engine.precision import Precision, bf16_supported

LOGGER = logging.getLogger("yolotrain")

# Largest relative error ||amp - fp32|| / ||fp32|| accepted per precision, measured on the features the
# head receives (the raw outputs of a fresh model are dominated by the head's bias prior, which would
# hide a broken backbone). Measured on scale n, fresh and trained (64 and 256 px): bf16 ~1.0%, fp16
# 0.1-0.8%. The limits leave room for deeper models without hiding real breakage: NaN, overflow or a
# wrong kernel gives errors of tens of percent or more.
TOLERANCE = {"bf16": 0.05, "fp16": 0.03}
CHECK_SIZE = 256  # pixels; large enough to exercise every stride, small enough to take a second


@dataclass
class CheckResult:
    ok: bool
    detail: str


def _fixed_inputs(device: torch.device, imgsz: int, nc: int) -> tuple[torch.Tensor, dict]:
    """A deterministic image batch and targets that do not touch the global RNG."""
    g = torch.Generator().manual_seed(0)
    s = min(imgsz, CHECK_SIZE)
    x = torch.rand(2, 3, s, s, generator=g)
    n = 6
    xy = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
    batch = {
        "batch_idx": torch.tensor([0, 0, 0, 1, 1, 1], dtype=torch.float32).to(device),
        "cls": torch.randint(0, max(nc, 1), (n, 1), generator=g).float().to(device),
        "bboxes": torch.cat((xy, wh), 1).to(device),
    }
    return x.to(device), batch


def check_precision(model: nn.Module, criterion, device: torch.device, amp: str, imgsz: int) -> CheckResult:
    """Run the forward comparison and the backward check for one precision."""
    if amp == "off":
        return CheckResult(True, "fp32")
    m = copy.deepcopy(dist.unwrap(model)).float()
    x, batch = _fixed_inputs(device, imgsz, getattr(m, "nc", 1))
    x = x.contiguous(memory_format=torch.channels_last)
    prec = Precision(device, amp)
    m.eval()
    feats: list[list[torch.Tensor]] = []
    hook = m.head.register_forward_pre_hook(lambda _mod, args: feats.append([a.float() for a in args[0]]))
    try:
        with torch.no_grad():
            m(x)
            with prec.autocast():
                out = m(x)
    finally:
        hook.remove()
    if not all(torch.isfinite(o).all() for o in out):
        return CheckResult(False, f"{amp} forward produced non-finite outputs")
    ref_f, amp_f = feats
    num = sum(float((a - r).pow(2).sum()) for a, r in zip(amp_f, ref_f))
    den = sum(float(r.pow(2).sum()) for r in ref_f)
    rel = (num / max(den, 1e-30)) ** 0.5
    if rel > TOLERANCE[amp]:
        return CheckResult(False, f"{amp} outputs differ from fp32 by {rel:.2%} (limit {TOLERANCE[amp]:.0%})")
    m.train()
    with prec.autocast():
        preds = m(x)
    loss, _ = criterion(preds, batch)
    if not torch.isfinite(loss):
        return CheckResult(False, f"{amp} loss is not finite ({loss.item()})")
    loss.backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    if not grads or not all(torch.isfinite(g).all() for g in grads):
        return CheckResult(False, f"{amp} backward produced non-finite gradients")
    if not any(g.abs().sum() > 0 for g in grads):
        return CheckResult(False, f"{amp} backward produced all-zero gradients")
    return CheckResult(True, f"{amp} outputs within {rel:.2%} of fp32, finite gradients")


def fallbacks(amp: str, device: torch.device) -> list[str]:
    """The precisions to try, best first."""
    if amp == "fp16":
        return ["fp16", "bf16", "off"] if bf16_supported(device) else ["fp16", "off"]
    if amp == "bf16":
        return ["bf16", "off"]
    return ["off"]


def choose_checked_precision(model: nn.Module, criterion, device: torch.device, amp: str, imgsz: int) -> str:
    """Return the first precision from :func:`fallbacks` that passes, decided on rank 0 and broadcast."""
    chosen = amp
    if dist.is_main():
        failures = []
        for cand in fallbacks(amp, device):
            result = check_precision(model, criterion, device, cand, imgsz)
            if result.ok:
                chosen = cand
                if failures:
                    LOGGER.warning(
                        f"AMP check: {'; '.join(failures)}; falling back to {'fp32' if cand == 'off' else cand}"
                    )
                else:
                    LOGGER.info(f"AMP check passed: {result.detail}")
                break
            failures.append(result.detail)
    return dist.broadcast_object(chosen)
