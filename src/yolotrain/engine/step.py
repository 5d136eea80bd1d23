"""One optimizer step, from a batch to the EMA update: :class:`TrainStep`.

Each call takes one batch of the epoch. It runs forward, target assignment and backward (in
``micro_batches`` parts after an out-of-memory error), keeps the accumulation window's batches, and at
the window's end (:meth:`TrainStep.is_boundary`, the one place that decides it) reduces gradients over
ranks, unscales, clips, steps (skipped on non-finite gradients) and updates the EMA.

Under DDP the backward is local (``no_sync``) and gradients are reduced once per optimizer step, and the
ranks meet at the same points whatever happens — after the target assignment (the loss normaliser and
out-of-memory flags) and after the backward (out-of-memory flags) — so an out-of-memory error on one
rank never leaves another waiting in a collective: all raise together and replay the window.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from yolotrain.engine import distributed as dist
from yolotrain.engine.compile import compile_model, is_compile_error
from yolotrain.engine.ema import ModelEMA
from yolotrain.engine.multiscale import MultiScale, pick_synchronized, resize_batch
from yolotrain.engine.oom import OOMInjector, RankOutOfMemory, free_memory, is_oom, split_batch
from yolotrain.engine.precision import Precision
from yolotrain.engine.state import TrainState
from yolotrain.errors import TrainingError

LOGGER = logging.getLogger("yolotrain")
BOX_FIELDS = ("cls", "bboxes", "batch_idx")


def oom_origin(err: BaseException) -> str:
    """Where an out-of-memory error came from, for the log: this rank's error type or another rank."""
    return "on another rank" if isinstance(err, RankOutOfMemory) else type(err).__name__


def to_device_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the tensors the loss needs onto ``device``."""
    out = dict(batch)
    for k in BOX_FIELDS:
        out[k] = batch[k].to(device, non_blocking=True)
    return out


@dataclass
class StepOutcome:
    """What one call of :class:`TrainStep` did: the batch's loss items, and whether the optimizer stepped."""

    items: torch.Tensor
    boundary: bool


class TrainStep:
    """Owns the optimizer step: micro-batching, the OOM replay window, DDP reduction, scaler, clip, EMA.

    Args:
        model: The plain (unwrapped) model; the optimizer's parameters.
        criterion: The loss, with ``assign`` and ``finish`` halves (see :mod:`yolotrain.loss.criterion`).
        optimizer: Steps the model's parameters.
        precision: Autocast and the gradient scaler.
        ema: The EMA updated after every step taken, or None.
        state: The run's :class:`TrainState` (skipped steps, micro-batches and OOM counts live there).
        device: Where the model runs.
        memory_format: ``torch.channels_last`` or ``torch.contiguous_format`` for the input images.
        multiscale: The per-iteration input size sampler (disabled: the loader's size).
        clip_grad: Max gradient norm (<= 0: no clipping).
        max_nonfinite: Consecutive non-finite losses that stop training.
        oom_injector: Raises out-of-memory errors on demand (tests and drills), or None.
        before_optimizer_step: Called after unscaling, before clipping (the ``on_before_optimizer_step`` event).
        compile: ``off``, or the ``torch.compile`` backend the training forward runs through (see
            :mod:`yolotrain.engine.compile`).
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: Any,
        optimizer: torch.optim.Optimizer,
        precision: Precision,
        ema: ModelEMA | None,
        state: TrainState,
        *,
        device: torch.device,
        memory_format: torch.memory_format = torch.contiguous_format,
        multiscale: MultiScale | None = None,
        clip_grad: float = 10.0,
        max_nonfinite: int = 10,
        oom_injector: OOMInjector | None = None,
        before_optimizer_step: Callable[[], None] | None = None,
        compile: str = "off",
    ):
        self.model, self.criterion, self.optimizer = model, criterion, optimizer
        self.precision, self.ema, self.state = precision, ema, state
        self.device, self.memory_format, self.multiscale = device, memory_format, multiscale
        self.clip_grad, self.max_nonfinite = clip_grad, max_nonfinite
        self.oom_injector, self.before_optimizer_step = oom_injector, before_optimizer_step
        self.world = dist.world_size()
        # the compiled module trains; the plain one is stepped, averaged, validated and saved
        dynamic = multiscale is not None and multiscale.enabled
        self.compiled = compile_model(model, compile, dynamic) if compile != "off" else None
        self.train_model = dist.wrap(model if self.compiled is None else self.compiled, device)
        self.accumulate, self.iters_per_epoch = 1, 1  # set for each phase by configure()
        self.window: list[tuple[dict[str, Any], int]] = []  # the window's batches, kept for an OOM replay
        # every BatchNorm's running statistics, and a copy of them taken at each window's start (restored
        # before an OOM replay); one fused copy per optimizer step, into buffers allocated once
        self.bn_buffers = [
            b
            for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for b in (m.running_mean, m.running_var, m.num_batches_tracked)
            if b is not None
        ]
        self.bn_snapshot = [b.detach().clone() for b in self.bn_buffers]
        self.window_has_grad = False  # whether a finite loss was back-propagated since the last step
        self.nonfinite_streak = 0
        self.input_size: tuple[int, int] = (0, 0)  # the last input size (multi-scale), for logs and callbacks

    # --------------------------------------------------------------------------------------- set-up
    def configure(self, accumulate: int, iters_per_epoch: int) -> None:
        """Set the phase's accumulation and batches per epoch (a new phase starts with an empty window)."""
        self.accumulate, self.iters_per_epoch = accumulate, iters_per_epoch
        self.window = []

    def rewrap(self) -> None:
        """Wrap the model for DDP again: DDP registers the trainable parameters when it wraps."""
        self.train_model = dist.wrap(self.model if self.compiled is None else self.compiled, self.device)

    def compile_failed(self, e: BaseException) -> None:
        """Log a compile failure once and train the plain model from now on."""
        lines = [x.strip() for x in str(e).splitlines() if x.strip()]
        first = " ".join(lines[:2])[:300]  # torch's wrapper line, then the compiler's own error
        LOGGER.warning(f"compile: torch.compile failed ({type(e).__name__}: {first}); training without compiling")
        self.compiled = None
        self.rewrap()

    def is_boundary(self, i: int) -> bool:
        """Whether the optimizer steps after batch ``i`` of the epoch.

        Accumulation windows never span epochs: the last batch of an epoch always steps, so an epoch-end
        checkpoint holds no pending gradient and a phase change starts from a clean window.
        """
        return (i + 1) % self.accumulate == 0 or (i + 1) == self.iters_per_epoch

    # --------------------------------------------------------------------------------------- the step
    def __call__(self, batch: dict[str, Any], epoch: int, i: int) -> StepOutcome:
        """Forward and backward of batch ``i`` of ``epoch``; the optimizer step when its window ends.

        On out-of-memory: restore the window's BatchNorm statistics, double the micro-batches and replay
        the window, each batch at its own iteration, so the effective batch, gradient and lr are unchanged.
        """
        if not self.window and self.bn_buffers:
            torch._foreach_copy_(self.bn_snapshot, self.bn_buffers)
        self.window.append((batch, i))
        failure = None
        try:
            items = self.forward_backward(batch, epoch, i)
        except Exception as e:  # noqa: BLE001 - only OOM is handled; forward_backward raises on every rank
            if not is_oom(e):
                raise
            failure = oom_origin(e)
        # The replay runs after the except block: the error's traceback holds the failed attempt's frames,
        # and with them its activations and autograd graph; kept alive, no split would ever fit (seen on
        # an H200 with a capped allocator: every retry failed down to one image per micro-batch).
        while failure is not None:
            self._prepare_replay(failure, epoch, i)
            items, failure = self._replay_window(epoch)
        boundary = self.is_boundary(i)
        if boundary:
            self.optimizer_step()
            self.window = []
        return StepOutcome(items, boundary)

    def forward_backward(self, batch: dict[str, Any], epoch: int, i: int) -> torch.Tensor:
        """Forward, loss and backward of one batch in ``state.micro_batches`` parts; returns its loss items.

        One part: the loss is normalised by the batch's target-score sum (over all ranks under DDP). Several
        parts: each is back-propagated unnormalised (times a common constant) and the batch's gradient is
        divided by the whole batch's normaliser at the end, so a split batch gets the gradient of the
        un-split one (up to BatchNorm, which sees smaller batches). A non-finite loss is never
        back-propagated; ``max_nonfinite`` in a row stop training.

        Raises:
            torch.OutOfMemoryError (or RankOutOfMemory): on every rank when any rank ran out of memory.
        """
        n = batch["img"].shape[0]
        parts = split_batch(batch, self.state.micro_batches) if self.state.micro_batches > 1 else [batch]
        ni = epoch * self.iters_per_epoch + i
        size = None  # one draw for all micro-batches (a collective on every rank)
        if self.multiscale is not None and self.multiscale.enabled:
            size = pick_synchronized(self.multiscale, epoch, i, tuple(batch["img"].shape[-2:]))
        split = len(parts) > 1
        earlier = self._take_grads() if split else None  # the window's gradient so far, set aside
        total, scores, common = torch.zeros(3), 0.0, None
        nonfinite = False
        for part in parts:
            m = part["img"].shape[0]
            imgs = part["img"].to(self.device, non_blocking=True).float().div_(255)
            if size is not None:
                imgs = resize_batch(imgs, size)
            imgs = imgs.contiguous(memory_format=self.memory_format)
            self.input_size = tuple(imgs.shape[-2:])
            with self.train_model.no_sync() if self.world > 1 else nullcontext():
                targets, oom = None, None
                try:
                    self._inject_oom("forward", ni, m)
                    with self.precision.autocast():
                        preds = self.forward(imgs)
                    # the target assignment and the loss run in fp32, outside autocast
                    targets = self.criterion.assign(preds, to_device_batch(part, self.device))
                except Exception as e:  # noqa: BLE001 - only OOM is handled here
                    if not is_oom(e):
                        raise
                    oom = e
                if split:  # meeting point 1: out-of-memory flags only; the normaliser is the batch's
                    self._agree_no_oom(oom)
                    scores += float(targets["target_scores_total"])
                    common = common or max(float(targets["target_scores_sum"]) * n / m, 1.0)
                    norm = torch.tensor(common / (n / m), device=self.device)  # finish() multiplies by m
                else:
                    norm = self._normaliser(targets, oom)  # meeting point 1
                oom = None
                try:
                    self._inject_oom("backward", ni, m)
                    loss, items = self.criterion.finish(targets, norm)
                    if torch.isfinite(loss):
                        # DDP averages gradients over ranks and the normaliser is already global: scale up
                        self.precision.scaler.scale(loss * self.world).backward()
                        self.window_has_grad = True
                    else:
                        nonfinite = True
                except Exception as e:  # noqa: BLE001
                    if not is_oom(e):
                        raise
                    oom = e
                self._agree_no_oom(oom)  # meeting point 2
            # split: items are raw_p / norm = raw_p * n / (common * m), so items * m * common / n = raw_p
            total += items.detach().float().cpu() * (m if split else m / n)
        if split:
            batch_norm = max(self._agree_no_oom(None, scores), 1.0) / self.world
            self._restore_grads(earlier, common / batch_norm)  # n * raw / common -> n * raw / batch_norm
            total *= common / (n * batch_norm)
        self._count_nonfinite(nonfinite, ni)
        return total

    def forward(self, imgs: torch.Tensor) -> Any:
        """The training forward; a compile failure (at the first call) falls back to the plain model."""
        try:
            return self.train_model(imgs)
        except Exception as e:  # noqa: BLE001 - only the compiler's own errors are handled
            if self.compiled is None or not is_compile_error(e):
                raise
            self.compile_failed(e)
            return self.train_model(imgs)

    def optimizer_step(self) -> None:
        """Reduce gradients over ranks, unscale, clip, step (skipped on non-finite gradients), update the EMA."""
        has_grad = self.window_has_grad
        self.window_has_grad = False
        if self.world > 1:  # a rank whose every loss was non-finite still takes part in the average
            has_grad = dist.all_reduce_max(float(has_grad)) > 0
            if has_grad:
                dist.all_reduce_grads_([p for p in self.model.parameters() if p.requires_grad])
        if not has_grad:  # every loss in the window was non-finite: nothing to apply
            self.state.count_skipped()
            self.optimizer.zero_grad(set_to_none=True)
            return
        scaler = self.precision.scaler
        scaler.unscale_(self.optimizer)
        if self.before_optimizer_step is not None:
            self.before_optimizer_step()
        max_norm = self.clip_grad if self.clip_grad > 0 else math.inf
        grads = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(grads, max_norm=max_norm)
        if scaler.is_enabled():
            scale = scaler.get_scale()
            scaler.step(self.optimizer)  # skips the step itself when gradients hold inf/NaN
            scaler.update()
            stepped = scaler.get_scale() >= scale
        else:
            stepped = bool(torch.isfinite(norm))
            if stepped:
                self.optimizer.step()
        if not stepped:
            self.state.count_skipped()
        self.optimizer.zero_grad(set_to_none=True)
        if stepped and self.ema is not None:
            self.ema.update(self.model)

    # --------------------------------------------------------------------------------------- helpers
    def _normaliser(self, targets: dict[str, Any] | None, oom: BaseException | None) -> torch.Tensor:
        """The loss normaliser of an un-split batch: local in one process; under DDP the global sum / ranks."""
        if self.world == 1:
            self._agree_no_oom(oom)
            return targets["target_scores_sum"]
        total = self._agree_no_oom(oom, float(targets["target_scores_total"]) if targets is not None else 0.0)
        return torch.tensor(max(total, 1.0) / self.world, device=self.device)

    def _agree_no_oom(self, oom: BaseException | None, value: float = 0.0) -> float:
        """Raise on every rank if any rank ran out of memory; else return ``value`` summed over ranks."""
        total, failed = dist.all_reduce_list([value, float(oom is not None)])
        if failed:
            raise oom if oom is not None else RankOutOfMemory("CUDA out of memory on another rank")
        return total

    def _count_nonfinite(self, nonfinite: bool, ni: int) -> None:
        if not nonfinite:
            self.nonfinite_streak = 0
            return
        self.nonfinite_streak += 1
        LOGGER.warning(f"non-finite loss at iteration {ni}; batch skipped")
        if self.nonfinite_streak >= self.max_nonfinite:
            raise TrainingError(
                f"{self.nonfinite_streak} consecutive non-finite losses at iteration {ni}; "
                f"lower lr0 or check the data (see README: NaN losses)"
            )

    def _take_grads(self) -> list[torch.Tensor | None]:
        """Detach the accumulated gradients (the window's earlier batches) and leave the model's empty."""
        grads = []
        for p in self.model.parameters():
            grads.append(p.grad)
            p.grad = None
        return grads

    def _restore_grads(self, earlier: list[torch.Tensor | None], factor: float) -> None:
        """Scale this batch's gradient by ``factor`` and add back the window's earlier gradient."""
        for p, g in zip(self.model.parameters(), earlier):
            if p.grad is not None:
                p.grad.mul_(factor)
                if g is not None:
                    p.grad.add_(g)
            elif g is not None:
                p.grad = g

    def _prepare_replay(self, origin: str, epoch: int, i: int) -> None:
        """Drop the window's partial gradient and BatchNorm updates, free memory, double the micro-batches.

        Restoring the BatchNorm statistics keeps the failed attempt's forward passes from counting: after
        the replay they are those of a window run with the new split from the start.
        """
        self.optimizer.zero_grad(set_to_none=True)
        self.window_has_grad = False
        if self.bn_buffers:
            with torch.no_grad():
                torch._foreach_copy_(self.bn_buffers, self.bn_snapshot)
        free_memory(self.device)
        rank_batch = int(self.window[-1][0]["img"].shape[0])
        if self.state.micro_batches >= rank_batch:
            raise TrainingError(
                f"out of memory at epoch {epoch + 1}, iteration {i} even with one image per micro-batch "
                f"(input {self.input_size[0]}x{self.input_size[1]}); lower imgsz or use a smaller model"
            )
        self.state.micro_batches = min(self.state.micro_batches * 2, rank_batch)
        self.state.oom_events += 1
        per_micro = math.ceil(rank_batch / self.state.micro_batches)
        LOGGER.warning(
            f"out of memory at epoch {epoch + 1}, iteration {i} ({origin}): retrying with "
            f"{self.state.micro_batches} micro-batches of <= {per_micro} images (same effective batch and lr)"
        )

    def _replay_window(self, epoch: int) -> tuple[torch.Tensor | None, str | None]:
        """Recompute the window's gradient (each batch at its own iteration) with the current split.

        Returns:
            The last batch's loss items and None, or None and where the error came from (:func:`oom_origin`)
            when memory ran out again; never the error itself (its traceback would keep the attempt's tensors).
        """
        items = None
        for batch, j in self.window:
            try:
                items = self.forward_backward(batch, epoch, j)
            except Exception as e:  # noqa: BLE001 - raised on every rank together
                if not is_oom(e):
                    raise
                return None, oom_origin(e)
        return items, None

    def _inject_oom(self, where: str, step: int, micro: int) -> None:
        if self.oom_injector is not None:
            self.oom_injector.check(step, where, micro)
