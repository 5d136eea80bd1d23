"""``cuda_graphs=true``: the training forward, target assignment, loss and backward replayed as CUDA graphs.

A training step launches a few hundred kernels; at small batches the host takes longer to launch them than the
GPU to run them. A CUDA graph records the launches once and replays them with one call. Capturing needs a
step whose shapes depend only on the input shape and that never reads the device back or copies host data to
it; the step is built that way (labels padded to a bucket, skip decisions on the device, no host copies: the
host-read counter of :mod:`yolotrain.utils.host_sync` checks all three on a CPU), so the whole of an un-split
batch's forward, assignment and loss is captured per (input shape, label bucket, autocast dtype) with
:func:`torch.cuda.make_graphed_callables`, whose backward graph holds the loss's and the model's backward.
The gradient scaler, the non-finite check and the fused optimizer step run eagerly around it (a few dozen
launches). When the whole step cannot be captured for a shape, the model alone is captured for it (the loss
runs eagerly), and when that fails too the shape trains eagerly; each after one log line. A batch split into
micro-batches after an out-of-memory error runs its parts through the model's graphs only.

Limits: CUDA only, one process (DDP's bucketed all-reduce hooks are not captured), not together with
``compile`` (its ``reduce-overhead`` mode captures graphs of its own); otherwise the setting is ignored with a
warning. Each captured shape holds its own activation memory; past :data:`MAX_GRAPHS` shapes (multi-scale sizes
times label buckets), new shapes train eagerly.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn

from yolotrain.engine import distributed as dist
from yolotrain.loss.targets import PaddedTargets

LOGGER = logging.getLogger("yolotrain")
MAX_GRAPHS = 16  # captured shapes kept (each holds its static input, output and activation memory)
WARMUP_ITERS = 3  # eager iterations on a side stream before capture (cuDNN/cuBLAS choose their kernels there)
# (what is captured, what runs when it cannot be), for the log line
WHOLE_STEP = ("the model with the loss", "the model alone is captured, the loss runs eagerly")
MODEL_ONLY = ("the model", "this shape trains eagerly")


class _Outputs(nn.Module):
    """The model's outputs as a tuple, in a module of its own: capture replaces *this* forward, one per shape."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model(x))


class _StepLoss(nn.Module):
    """An un-split batch's forward, target assignment and loss in one module: captured whole, one per shape."""

    def __init__(self, model: nn.Module, criterion: Any):
        super().__init__()
        self.model = model
        self.criterion = criterion

    def forward(self, imgs: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        targets = self.criterion.assign(self.model(imgs), {"targets": PaddedTargets(rows, mask, 0)})
        return self.criterion.finish(targets, targets["target_scores_sum"])  # one process: the local normaliser


class GraphedForward:
    """Runs the step's forward (and loss) through captured graphs, one per shape (eager where there is none).

    Args:
        model: The plain model (its parameters are the graph's inputs; BatchNorm buffers are updated in it).
        criterion: The loss (``assign`` and ``finish``), captured with the model.
        capture: The capturing function (:func:`torch.cuda.make_graphed_callables`; tests pass a stand-in).
    """

    def __init__(self, model: nn.Module, criterion: Any, capture: Any = None):
        self.model = model
        self.criterion = criterion
        self.capture = capture or torch.cuda.make_graphed_callables
        self.graphs: dict[tuple, Any] = {}  # the model's forward and backward, per input
        self.eager: set[tuple] = set()  # inputs whose model capture failed, or past MAX_GRAPHS
        self.losses: dict[tuple, Any] = {}  # forward, assignment, loss and their backward, per input and bucket
        self.loss_eager: set[tuple] = set()  # whole-step captures that failed: the model's graph and an eager loss
        self.bn_buffers = [
            b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for b in m.buffers()
        ]

    @classmethod
    def create(
        cls, enabled: bool, model: nn.Module, criterion: Any, device: torch.device, compiled: bool
    ) -> GraphedForward | None:
        """The graphed forward when ``cuda_graphs=true`` can work here; else None, with one warning saying why."""
        if not enabled:
            return None
        why = None
        if device.type != "cuda":
            why = f"it needs a CUDA device and this run trains on {device.type}"
        elif dist.world_size() > 1:
            why = "it runs in one process only (DDP's gradient hooks cannot be captured)"
        elif compiled:
            why = "compile is on (use one or the other)"
        if why is not None:
            LOGGER.warning(f"cuda_graphs=true is ignored: {why}; training eagerly")
            return None
        return cls(model, criterion)

    def counts(self) -> dict[str, int]:
        """Shapes captured whole, captured as the model alone, and whose capture failed (or was past the cap)."""
        return {
            "whole_step": len(self.losses), "model_only": len(self.graphs),
            "whole_step_failed": len(self.loss_eager), "model_failed": len(self.eager),
        }  # fmt: skip

    def reset(self) -> None:
        """Drop every captured graph (the set of trainable parameters changed: a freeze phase, a re-wrap)."""
        for kept in (self.graphs, self.eager, self.losses, self.loss_eager):
            kept.clear()

    def __call__(self, train_model: nn.Module, imgs: torch.Tensor) -> Any:
        """The model's raw outputs for ``imgs`` (the caller's autocast must have ``cache_enabled=False``)."""
        key = _input_key(imgs)
        graphed = self.graphs.get(key)
        if graphed is None and key not in self.eager:
            graphed = self._capture(key, _Outputs(self.model), (imgs,), self.graphs, self.eager, MODEL_ONLY)
        if graphed is None:
            return train_model(imgs)
        return graphed(imgs)

    def loss(self, imgs: torch.Tensor, targets: PaddedTargets) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(loss, loss_items)`` of an un-split batch through its whole-step graph, as ``criterion.finish`` has them.

        None when the whole step is not captured for this shape: then call the model through ``self(...)`` and
        the loss eagerly. The outputs are the graph's own memory: use them before the next call.
        """
        key = (*_input_key(imgs), tuple(targets.rows.shape))
        graphed = self.losses.get(key)
        if graphed is None and key not in self.loss_eager:
            module = _StepLoss(self.model, self.criterion)
            args = (imgs, targets.rows, targets.mask)
            graphed = self._capture(key, module, args, self.losses, self.loss_eager, WHOLE_STEP)
        if graphed is None:
            return None
        return graphed(imgs, targets.rows, targets.mask)

    def _capture(self, key: tuple, module: nn.Module, args: tuple, kept: dict, failed: set, what: tuple) -> Any:
        """Capture ``module`` for ``args``' shapes into ``kept[key]``; on failure (or past MAX_GRAPHS) into ``failed``.

        ``what``: what is captured and what runs instead when it is not (:data:`WHOLE_STEP`, :data:`MODEL_ONLY`).
        """
        name, instead = what
        if len(self.graphs) + len(self.losses) >= MAX_GRAPHS:
            LOGGER.info(f"cuda_graphs: {MAX_GRAPHS} graphs captured; at input {key[0]} {instead}")
            failed.add(key)
            return None
        # the warm-up iterations run real forwards: keep them from moving BatchNorm's running statistics
        saved = [b.detach().clone() for b in self.bn_buffers]
        try:
            graphed = self.capture(module, tuple(a.detach().clone() for a in args), num_warmup_iters=WARMUP_ITERS)
        except Exception as e:  # noqa: BLE001 - any capture failure falls back for this shape
            why = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
            LOGGER.warning(f"cuda_graphs: capturing {name} failed at input {key[0]} ({why}); {instead}")
            failed.add(key)
            graphed = None
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.bn_buffers, saved)
        if graphed is not None:
            kept[key] = graphed
        return graphed


def _input_key(imgs: torch.Tensor) -> tuple:
    """What a captured graph is specific to: the input's shape and dtype, and the autocast in force."""
    return (tuple(imgs.shape), imgs.dtype, torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
