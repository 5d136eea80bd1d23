"""Optimizer construction, gradient accumulation and the learning-rate / momentum schedule.

The schedule is a pure function of the position (epoch, iteration): nothing about it needs saving
beyond the position itself, and a resumed run lands on exactly the same values.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from yolotrain.engine.horizon import Horizon
from yolotrain.errors import ConfigError

LOGGER = logging.getLogger("yolotrain")

# Iteration count below which ``optimizer=auto`` prefers AdamW: adaptive steps converge faster on short
# runs, SGD generalises better on long ones.
AUTO_SGD_MIN_ITERS = 10_000


def accumulation(batch: int, nbs: int) -> int:
    """Batches to accumulate so one optimizer step sees about ``nbs`` images."""
    return max(round(nbs / batch), 1)


def scaled_weight_decay(weight_decay: float, batch: int, accumulate: int, nbs: int) -> float:
    """Weight decay for the real images per step, so regularisation does not depend on the batch."""
    return weight_decay * batch * accumulate / nbs


def param_groups(model: nn.Module) -> tuple[list, list, list]:
    """Split parameters into (decayed weights, normalization weights, biases).

    Normalization scales and all biases are not decayed: shrinking them towards zero only hurts.
    """
    decay, no_decay_norm, bias = [], [], []
    norm_types = tuple(t for t in vars(nn).values() if isinstance(t, type) and "Norm" in t.__name__)
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if name == "bias":
                bias.append(p)
            elif isinstance(module, norm_types):
                no_decay_norm.append(p)
            else:
                decay.append(p)
    return decay, no_decay_norm, bias


def build_optimizer(
    model: nn.Module, name: str, lr0: float, momentum: float, weight_decay: float, total_iters: int, nc: int
) -> tuple[torch.optim.Optimizer, str, float]:
    """Make the optimizer with three parameter groups: [decayed weights, norm weights, biases].

    ``auto`` picks AdamW with a small, class-count-aware lr for short runs and SGD otherwise.

    Returns:
        The optimizer, the resolved name and the base learning rate used.
    """
    if name == "auto":
        if total_iters > AUTO_SGD_MIN_ITERS:
            name, lr = "SGD", lr0
        else:
            # Fewer classes tolerate a larger step; cap at 2e-3 which is stable for these heads.
            name, lr = "AdamW", round(min(0.002, max(2e-4, 0.01 / (4 + nc))), 6)
        LOGGER.info(f"optimizer: auto chose {name}(lr={lr:g}, momentum={momentum:g}) for {total_iters} optimizer steps")
    else:
        lr = lr0
    g_decay, g_norm, g_bias = param_groups(model)
    groups = [
        {"params": g_decay, "weight_decay": weight_decay},
        {"params": g_norm, "weight_decay": 0.0},
        {"params": g_bias, "weight_decay": 0.0},
    ]
    # Fused kernels where the device has them: one kernel per step instead of a few per tensor, and they skip
    # a step on the device when ``found_inf`` is set (see :func:`skippable_step`) instead of a host decision.
    fused = fused_supported(model)
    if name == "SGD":
        opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True, fused=fused or None)
        if fused:
            zero_momentum_buffers(opt)
    elif name == "Adam":
        opt = torch.optim.Adam(groups, lr=lr, betas=(momentum, 0.999), fused=fused or None)
    elif name == "AdamW":
        opt = torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999), fused=fused or None)
    else:  # config validation makes this unreachable from the CLI
        raise ConfigError(f"setting 'optimizer'={name} is not one of auto, SGD, Adam, AdamW")
    for g in opt.param_groups:
        g["initial_lr"] = lr
    return opt, name, lr


def set_group_hyperparameters(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Every group's initial lr; weight decay on the decayed group only (norms and biases get none)."""
    for g, wd in zip(optimizer.param_groups, (weight_decay, 0.0, 0.0)):
        g["initial_lr"], g["weight_decay"] = lr, wd


FUSED_DEVICES = ("cpu", "cuda")  # where torch has fused SGD/Adam/AdamW kernels that honour found_inf


def fused_supported(model: nn.Module) -> bool:
    """Whether every parameter is a floating-point tensor on a device with fused optimizer kernels."""
    params = list(model.parameters())
    return bool(params) and all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)


def zero_momentum_buffers(opt: torch.optim.Optimizer) -> None:
    """Give every SGD parameter a zero momentum buffer before the first step.

    Fused SGD allocates the buffers uninitialised (``empty_like``) on its first step and fills them from the
    gradient; when that first step is skipped (``found_inf``) they stay uninitialised and the next step reads
    garbage. A zero buffer gives the same first step (``0 * momentum + grad``) and a skipped first step leaves it
    zero. With a buffer present the fused kernel never takes that first-step path.
    """
    for group in opt.param_groups:
        if group["momentum"] == 0:
            continue
        for p in group["params"]:
            opt.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def skippable_step(opt: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """Step ``opt`` unless ``skip`` (a device bool) is True, decided on the device: nothing read back.

    Fused optimizers take the decision as ``found_inf`` (the attribute GradScaler hands them): params, moments,
    momentum buffers and step counts are all left unchanged on a skipped step. Others cannot skip on the device,
    so the decision is read back (one host read; ``build_optimizer`` makes fused ones where it can).
    """
    if getattr(opt, "_step_supports_amp_scaling", False):
        opt.grad_scale, opt.found_inf = None, skip.to(torch.float32)
        try:
            opt.step()
        finally:
            del opt.grad_scale, opt.found_inf
    elif not bool(skip):
        opt.step()


@dataclass
class Schedule:
    """Warmup by iterations, then linear or cosine decay from 1 to ``lrf`` (as a factor of lr0).

    During warmup, decayed and norm groups ramp their lr from 0, the bias group ramps *down* from
    ``warmup_bias_lr``, and momentum (or Adam's beta1) ramps from ``warmup_momentum``.
    """

    epochs: int
    iters_per_epoch: int
    lrf: float
    cos_lr: bool
    warmup_iters: int
    warmup_bias_lr: float
    warmup_momentum: float
    momentum: float

    def fit(self, horizon: Horizon, iters_per_epoch: int) -> None:
        """Decay over the horizon's epochs after its warmup, at the phase's batches per epoch.

        The one place the schedule changes: when a phase changes the batch, and when ``time=`` refits the horizon.
        """
        self.epochs, self.warmup_iters, self.iters_per_epoch = horizon.epochs, horizon.warmup_iters, iters_per_epoch

    def factor(self, epoch_pos: float) -> float:
        """Decay factor at a fractional epoch position."""
        x = min(max(epoch_pos / self.epochs, 0.0), 1.0)
        if self.cos_lr:
            return ((1 - math.cos(x * math.pi)) / 2) * (self.lrf - 1) + 1
        return (1 - x) * (1.0 - self.lrf) + self.lrf

    def apply(self, optimizer: torch.optim.Optimizer, epoch: int, i: int) -> None:
        """Set every group's lr and momentum for iteration ``i`` of ``epoch``."""
        ni = epoch * self.iters_per_epoch + i
        f = self.factor(epoch + i / max(self.iters_per_epoch, 1))
        warm = ni < self.warmup_iters
        t = ni / self.warmup_iters if warm else 1.0
        for j, g in enumerate(optimizer.param_groups):
            target = g["initial_lr"] * f
            if warm:
                start = self.warmup_bias_lr if j == 2 else 0.0
                g["lr"] = start + (target - start) * t
            else:
                g["lr"] = target
            mom = self.warmup_momentum + (self.momentum - self.warmup_momentum) * t
            if "momentum" in g:
                g["momentum"] = mom
            elif "betas" in g:
                g["betas"] = (mom, g["betas"][1])
