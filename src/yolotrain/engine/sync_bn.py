"""``sync_bn=true``: BatchNorm statistics over the global batch instead of each rank's share.

On CUDA this is PyTorch's own :class:`torch.nn.SyncBatchNorm`. That class refuses CPU tensors, so for
CPU (gloo) training we provide :class:`GlooSyncBatchNorm`: per-channel sums and counts, then squared
deviations, are summed across ranks by an all-reduce whose backward is an all-reduce too, which routes
the gradient of the statistics back to every rank. With it, two processes with a batch of
``b`` each compute the same normalisation as one process with ``2b``.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from yolotrain.errors import ConfigError

LOGGER = logging.getLogger("yolotrain")


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward is again a sum over ranks (each rank's statistics feed every rank)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        torch.distributed.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad)
        return grad


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover all ranks (CPU tensors, any process group)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.distributed.is_available() and torch.distributed.is_initialized()):
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()  # statistics in fp32 even under bf16 autocast
        count = torch.full((1,), xf.numel() / c, dtype=xf.dtype, device=xf.device)
        stats = _AllReduceSum.apply(torch.cat([xf.sum((0, 2, 3)), count]))
        n = stats[-1]
        mean = stats[:c] / n
        centered = xf - mean[None, :, None, None]
        # two passes (mean, then squared deviations) as BatchNorm itself does: E[x^2] - E[x]^2 loses digits
        var = _AllReduceSum.apply(centered.square().sum((0, 2, 3))) / n  # biased, what BatchNorm normalises by
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp(min=1), m)
        y = centered * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def convert_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm2d of ``model`` with a synchronised one for ``device``'s backend.

    Raises:
        ConfigError: On devices torch.distributed cannot synchronise (MPS).
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if device.type != "cpu":
        raise ConfigError(f"setting 'sync_bn'=true is not supported on device {device.type}; use sync_bn=false")
    return _convert_cpu(model)


def _convert_cpu(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlooSyncBatchNorm):
        new = GlooSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        new.load_state_dict(module.state_dict())  # same names: checkpoints stay interchangeable
        new.train(module.training)
        if module.affine:
            new.weight.requires_grad_(module.weight.requires_grad)
            new.bias.requires_grad_(module.bias.requires_grad)
        return new
    for name, child in module.named_children():
        setattr(module, name, _convert_cpu(child))
    return module
