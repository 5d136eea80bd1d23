"""The optimizer step at the end of an accumulation window: reduce, unscale, clip, step, EMA; decided on the device.

A step is skipped when the window had no finite loss or its gradients are not finite (an fp16 overflow, a
NaN). Today's GPUs would stall if the host had to learn that first, so the decision stays a device bool:
the fused optimizer takes it as ``found_inf`` (:func:`~yolotrain.engine.optim.skippable_step`), the EMA as a
zero weight, the counters add it. A skipped step changes nothing: weights, moments, momentum buffers, step
counts and the EMA are as before it. The host learns about it at the next log point.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn

from yolotrain.engine import distributed as dist
from yolotrain.engine.ema import ModelEMA
from yolotrain.engine.optim import skippable_step
from yolotrain.engine.precision import Precision
from yolotrain.engine.step_counters import StepCounters


class OptimizerStep:
    """Applies a window's gradient.

    Args:
        model: The plain (unwrapped) model whose parameters the optimizer steps.
        optimizer: Its optimizer (fused where the device has the kernels).
        precision: Autocast and the gradient scaler (enabled for fp16 only).
        ema: The EMA, or None.
        counters: Where skipped steps are counted.
        clip_grad: Max gradient norm (<= 0: no clipping).
        before_step: Called after unscaling, before clipping (the ``on_before_optimizer_step`` event).
        before_step_wanted: Whether anyone listens to that event. Only then is the window's "has a finite loss"
            flag read back, so the event keeps firing for steps that apply a gradient only (one host read per
            step, paid only by runs that register such a callback).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        precision: Precision,
        ema: ModelEMA | None,
        counters: StepCounters,
        *,
        clip_grad: float = 10.0,
        before_step: Callable[[], None] | None = None,
        before_step_wanted: Callable[[], bool] | None = None,
    ):
        self.model, self.optimizer, self.precision, self.ema = model, optimizer, precision, ema
        self.counters, self.clip_grad = counters, clip_grad
        self.before_step = before_step
        self.before_step_wanted = before_step_wanted or (lambda: before_step is not None)
        self.world = dist.world_size()
        self.params = list(model.parameters())  # listed once, not every step

    def __call__(self, has_grad: torch.Tensor) -> None:
        """Apply the gradient unless ``has_grad`` (device bool: any finite loss) is False or it is not finite."""
        if self.world > 1:  # a rank whose every loss was non-finite still takes part in the average
            flag = has_grad.to(torch.float32)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)  # on the device, nothing read
            has_grad = flag > 0
            dist.all_reduce_grads_([p for p in self.params if p.requires_grad])
        # every step back-propagates (a non-finite loss as zero), so the trainable parameters have gradients
        scaler = self.precision.scaler
        scaler.unscale_(self.optimizer)  # a no-op when the scaler is off (bf16, fp32)
        if self.before_step is not None and self.before_step_wanted() and bool(has_grad):
            self.before_step()
        max_norm = self.clip_grad if self.clip_grad > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm=max_norm)  # skips parameters without a gradient
        skip = ~has_grad | ~torch.isfinite(norm)
        skippable_step(self.optimizer, skip)
        scaler.update()  # fp16: halves the scale after an overflow (its own found-inf record), on the device
        self.counters.add_skipped(skip)
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model, skip)
