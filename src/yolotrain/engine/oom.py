"""Out-of-memory building blocks: recognise the error, free memory, split a batch, inject failures.

Recovery (in the trainer) is: catch an error for which :func:`is_oom` is true, :func:`free_memory`,
then redo the step as ``split_batch(batch, parts)`` micro-batches with gradient accumulation, so the
effective batch and the lr stay the same.

Testing recovery needs an out-of-memory error on demand; :class:`OOMInjector` raises one at chosen
steps when a micro-batch is larger than a limit. It reads ``YOLOTRAIN_INJECT_OOM``, a comma-separated
list of ``[WHERE@]STEP:LIMIT`` entries::

    YOLOTRAIN_INJECT_OOM=3:4,7:2      # step 3: micro-batches above 4 images fail; step 7: above 2
    YOLOTRAIN_INJECT_OOM=val@0:1      # only where="val" checks at step 0 fail above 1 image
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Mapping
from typing import Any

import torch

from yolotrain.errors import ConfigError

ENV_VAR = "YOLOTRAIN_INJECT_OOM"

# Message fragments of out-of-memory errors raised as plain RuntimeError: the CUDA caching allocator in
# older releases, the MPS backend, the CPU allocator ("DefaultCPUAllocator: can't allocate memory") and
# cuBLAS failing to get a workspace.
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cublas_status_alloc_failed")
_OOM_TYPES: tuple[type[BaseException], ...] = tuple(
    {
        t
        for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
        if isinstance(t, type)
    }
) + (MemoryError,)  # MemoryError: Python/numpy allocations on the CPU side (e.g. in collate)
# The exception the injector raises: the real torch class, so code paths see what a GPU would raise.
_INJECTED_TYPE: type[Exception] = getattr(torch, "OutOfMemoryError", None) or getattr(
    torch.cuda, "OutOfMemoryError", RuntimeError
)


class RankOutOfMemory(RuntimeError):
    """Raised on every rank when another rank of a DDP job ran out of memory (all switch to micro-batches)."""


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error of any device."""
    if isinstance(exc, _OOM_TYPES + (RankOutOfMemory,)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MESSAGES)


def free_memory(device: torch.device | str | None = None) -> None:
    """Collect garbage and return cached device memory to the driver.

    Call after the failing step's tensors are out of scope (leave the ``except`` block first: the
    traceback keeps the frames and their tensors alive).

    Args:
        device: The training device; None empties every available accelerator cache.
    """
    gc.collect()
    kind = None if device is None else torch.device(device).type
    if kind in (None, "cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if kind in (None, "mps") and mps is not None and torch.backends.mps.is_available():
        mps.empty_cache()


# Per-box fields of a collated batch (first dimension = number of boxes); see data.loader.collate.
BOX_KEYS = ("cls", "bboxes", "batch_idx")


def split_batch(batch: Mapping[str, Any], parts: int) -> list[dict[str, Any]]:
    """Split a collated batch into ``parts`` micro-batches along the image dimension.

    Micro-batch sizes differ by at most one (the first ones are larger). Per-image tensors (first
    dimension B, e.g. ``img``, ``index``) and lists of length B are sliced; per-box fields
    (:data:`BOX_KEYS`) are selected with one boolean mask per part and ``batch_idx`` is renumbered from
    0 within each part. Other values are shared unchanged.

    Args:
        batch: A batch from :func:`yolotrain.data.loader.collate`.
        parts: Number of micro-batches, 1..B.

    Returns:
        The micro-batches, in order.

    Raises:
        ValueError: When ``parts`` is outside 1..B.
    """
    n_img = int(batch["img"].shape[0])
    if not 1 <= parts <= n_img:
        raise ValueError(f"cannot split a batch of {n_img} images into {parts} micro-batches")
    base, extra = divmod(n_img, parts)
    bounds = [0]
    for k in range(parts):
        bounds.append(bounds[-1] + base + (1 if k < extra else 0))
    bidx = batch["batch_idx"]
    out = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        mask = (bidx >= start) & (bidx < end)  # one vectorised comparison per part, none per box
        micro: dict[str, Any] = {}
        for key, value in batch.items():
            if key in BOX_KEYS:
                micro[key] = value[mask]
            elif isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == n_img:
                micro[key] = value[start:end]
            elif isinstance(value, (list, tuple)) and len(value) == n_img:
                micro[key] = value[start:end]
            else:
                micro[key] = value
        micro["batch_idx"] = micro["batch_idx"] - start
        out.append(micro)
    return out


_ENTRY = re.compile(r"^(?:(?P<where>[A-Za-z_]\w*)@)?(?P<step>\d+):(?P<limit>\d+)$")


class OOMInjector:
    """Raises an out-of-memory error at chosen steps when a micro-batch is too large (tests, debugging).

    Args:
        steps: ``{step: limit}``: at ``step``, a micro-batch of more than ``limit`` images fails. A key may
            also be ``(where, step)`` to fail only checks made with that ``where``. A set of steps means
            limit 0 there (every attempt fails: the unrecoverable case).

    Attributes:
        fired: ``(step, where, micro_batch_size)`` of every injected failure, in order.
    """

    def __init__(self, steps: set[int] | Mapping[int | tuple[str, int], int]) -> None:
        items = {s: 0 for s in steps} if isinstance(steps, (set, frozenset)) else dict(steps)
        self.limits: dict[tuple[str | None, int], int] = {}
        for key, limit in items.items():
            where, step = key if isinstance(key, tuple) else (None, key)
            self.limits[(where, int(step))] = int(limit)
        self.fired: list[tuple[int, str, int]] = []

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OOMInjector | None:
        """Build from ``YOLOTRAIN_INJECT_OOM`` (see the module docstring); None when unset or empty.

        Raises:
            ConfigError: When the variable is malformed.
        """
        text = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
        if not text:
            return None
        steps: dict[int | tuple[str, int], int] = {}
        for entry in text.split(","):
            m = _ENTRY.match(entry.strip())
            if m is None:
                raise ConfigError(
                    f"{ENV_VAR}={text!r}: entry {entry.strip()!r} is not [WHERE@]STEP:LIMIT (e.g. 3:4,7:2)"
                )
            step, limit = int(m["step"]), int(m["limit"])
            steps[(m["where"], step) if m["where"] else step] = limit
        return cls(steps)

    def check(self, step: int, where: str, micro_batch_size: int) -> None:
        """Raise an out-of-memory error if ``step`` is configured and the micro-batch exceeds its limit.

        Args:
            step: The trainer's step counter (e.g. the global iteration).
            where: The phase checking, e.g. "forward", "backward" or "val".
            micro_batch_size: Images in the micro-batch about to run.
        """
        limit = self.limits.get((where, step), self.limits.get((None, step)))
        if limit is not None and micro_batch_size > limit:
            self.fired.append((step, where, micro_batch_size))
            raise _INJECTED_TYPE(
                f"out of memory (injected by {ENV_VAR} at step {step}, {where}: micro-batch "
                f"{micro_batch_size} > {limit} images)"
            )
