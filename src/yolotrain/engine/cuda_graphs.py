"""``cuda_graphs=true``: the model's training forward and backward replayed as CUDA graphs, one per input shape.

A training step launches a few hundred kernels; at small batches the host takes longer to launch them than the
GPU to run them. A CUDA graph records the launches once and replays them with one call. Capturing needs a
step whose shapes depend only on the input shape and that never reads the device back; the step is built that
way (labels padded to a bucket, skip decisions on the device), so here the model is captured per
(input shape, autocast dtype) with :func:`torch.cuda.make_graphed_callables`. The loss, the assigner and the
fused optimizer step run eagerly around it (their launches are a few dozen).

Limits: CUDA only, one process (DDP's bucketed all-reduce hooks are not captured), not together with
``compile`` (its ``reduce-overhead`` mode captures graphs of its own); otherwise the setting is ignored with a
warning. A shape whose capture fails trains eagerly from then on, after one log line. Multi-scale sizes each get
a graph, up to :data:`MAX_GRAPHS`; later sizes train eagerly.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn

from yolotrain.engine import distributed as dist

LOGGER = logging.getLogger("yolotrain")
MAX_GRAPHS = 16  # captured shapes kept (each holds its static input, output and activation memory)
WARMUP_ITERS = 3  # eager iterations on a side stream before capture (cuDNN/cuBLAS choose their kernels there)


class _Outputs(nn.Module):
    """The model's outputs as a tuple, in a module of its own: capture replaces *this* forward, one per shape."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model(x))


class GraphedForward:
    """Calls the model through a captured graph for its input's shape (an eager call where there is none).

    Args:
        model: The plain model (its parameters are the graph's inputs; BatchNorm buffers are updated in it).
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.graphs: dict[tuple, Any] = {}
        self.eager: set[tuple] = set()  # shapes whose capture failed, or past MAX_GRAPHS
        self.bn_buffers = [
            b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for b in m.buffers()
        ]

    @classmethod
    def create(cls, enabled: bool, model: nn.Module, device: torch.device, compiled: bool) -> GraphedForward | None:
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
        return cls(model)

    def reset(self) -> None:
        """Drop every captured graph (the set of trainable parameters changed: a freeze phase, a re-wrap)."""
        self.graphs.clear()
        self.eager.clear()

    def __call__(self, train_model: nn.Module, imgs: torch.Tensor) -> Any:
        """The model's raw outputs for ``imgs`` (the caller's autocast must have ``cache_enabled=False``)."""
        key = (tuple(imgs.shape), imgs.dtype, torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        graphed = self.graphs.get(key)
        if graphed is None and key not in self.eager:
            graphed = self._capture(key, imgs)
        if graphed is None:
            return train_model(imgs)
        return graphed(imgs)

    def _capture(self, key: tuple, imgs: torch.Tensor) -> Any:
        if len(self.graphs) >= MAX_GRAPHS:
            LOGGER.info(f"cuda_graphs: {MAX_GRAPHS} input shapes captured; shape {key[0]} trains eagerly")
            self.eager.add(key)
            return None
        # the warm-up iterations run real forwards: keep them from moving BatchNorm's running statistics
        saved = [b.detach().clone() for b in self.bn_buffers]
        try:
            graphed = torch.cuda.make_graphed_callables(
                _Outputs(self.model), (imgs.detach().clone(),), num_warmup_iters=WARMUP_ITERS
            )
        except Exception as e:  # noqa: BLE001 - any capture failure falls back to eager for this shape
            first = " ".join(str(e).split())[:200]
            LOGGER.warning(f"cuda_graphs: capture failed at input {key[0]} ({type(e).__name__}: {first}); eager")
            self.eager.add(key)
            graphed = None
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.bn_buffers, saved)
        if graphed is not None:
            self.graphs[key] = graphed
        return graphed
