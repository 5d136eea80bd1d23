"""One training iteration, from a loader batch to (at a window's end) the optimizer step: :class:`TrainStep`.

This file owns the accumulation window and its out-of-memory replay; the parts it calls each live in their
own file: :class:`~yolotrain.engine.batch_prep.BatchPrep` (images and labels onto the device),
:class:`~yolotrain.engine.optimizer_step.OptimizerStep` (reduce, unscale, clip, step, EMA),
:mod:`~yolotrain.engine.normaliser` (the split-batch loss arithmetic) and
:class:`~yolotrain.engine.step_counters.StepCounters` (losses and skip counts kept on the device).

In one process a steady-state iteration reads nothing back from the device: the finite checks, the skip
decision and the counters stay there, and the trainer reads them at log points (:meth:`TrainStep.sync`).

Under DDP the backward is local (``no_sync``) and gradients are reduced once per optimizer step, and the
ranks meet at the same points whatever happens — after the target assignment (the loss normaliser and
out-of-memory flags) and after the backward (out-of-memory flags) — so an out-of-memory error on one
rank never leaves another waiting in a collective: all raise together and replay the window. Those
meetings read their flags on the host (a rank must know whether to raise).
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
from yolotrain.engine.batch_prep import BatchPrep
from yolotrain.engine.compile import compile_model, is_compile_error
from yolotrain.engine.cuda_graphs import GraphedForward
from yolotrain.engine.ema import ModelEMA
from yolotrain.engine.multiscale import MultiScale
from yolotrain.engine.normaliser import (
    batch_normaliser,
    gradient_correction,
    part_normaliser,
    provisional_constant,
    split_items,
)
from yolotrain.engine.oom import OOMInjector, RankOutOfMemory, free_memory, is_oom, split_batch
from yolotrain.engine.optim import set_group_hyperparameters
from yolotrain.engine.optimizer_step import OptimizerStep
from yolotrain.engine.phases import PhasePlan
from yolotrain.engine.precision import Precision
from yolotrain.engine.state import TrainState
from yolotrain.engine.step_counters import CounterValues, StepCounters
from yolotrain.errors import TrainingError
from yolotrain.loss.targets import DEFAULT_MAX_BOXES

LOGGER = logging.getLogger("yolotrain")


def oom_origin(err: BaseException) -> str:
    """Where an out-of-memory error came from, for the log: this rank's error type or another rank."""
    return "on another rank" if isinstance(err, RankOutOfMemory) else type(err).__name__


@dataclass
class StepOutcome:
    """What one call of :class:`TrainStep` did: the batch's loss items (on the device), whether it stepped."""

    items: torch.Tensor
    boundary: bool


class TrainStep:
    """Owns the iteration: micro-batching, the OOM replay window, the parts that prepare and apply.

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
        max_nonfinite: Consecutive non-finite losses that stop training (checked at log points).
        oom_injector: Raises out-of-memory errors on demand (tests and drills), or None.
        before_optimizer_step: Called after unscaling, before clipping (the ``on_before_optimizer_step`` event).
        before_step_wanted: Whether that event has listeners now (see :class:`OptimizerStep`).
        compile: ``off``, or the ``torch.compile`` backend the training forward runs through (see
            :mod:`yolotrain.engine.compile`).
        max_boxes: Cap on labels per image (see :mod:`yolotrain.loss.targets`).
        cuda_graphs: Replay the forward, loss and backward as CUDA graphs, one per shape (CUDA only; see
            :mod:`yolotrain.engine.cuda_graphs`).
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
        before_step_wanted: Callable[[], bool] | None = None,
        compile: str = "off",
        max_boxes: int = DEFAULT_MAX_BOXES,
        cuda_graphs: bool = False,
    ):
        self.model, self.criterion, self.optimizer = model, criterion, optimizer
        self.state, self.device = state, device
        self.max_nonfinite, self.oom_injector = max_nonfinite, oom_injector
        self.world = dist.world_size()
        self.prep = BatchPrep(device, memory_format, multiscale, max_boxes)
        self.counters = StepCounters(device, max_nonfinite)
        self.apply = OptimizerStep(
            model, optimizer, precision, ema, self.counters, clip_grad=clip_grad,
            before_step=before_optimizer_step, before_step_wanted=before_step_wanted,
        )  # fmt: skip
        # the compiled module trains; the plain one is stepped, averaged, validated and saved
        self.compiled = compile_model(model, compile, self.prep.varies) if compile != "off" else None
        self.train_model = dist.wrap(model if self.compiled is None else self.compiled, device)
        self.graphs = GraphedForward.create(cuda_graphs, model, criterion, device, compiled=self.compiled is not None)
        self.accumulate, self.iters_per_epoch = 1, 1  # set for each phase by configure()
        self.frozen: tuple[str, ...] = ()  # the prefixes frozen when the model was last wrapped
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
        self._false = torch.zeros((), dtype=torch.bool, device=device)
        self.window_has_grad = self._false  # device bool: a finite loss was back-propagated since the last step
        self.batch_nonfinite = self._false  # device bool: the last batch had a non-finite loss
        self.dropped_logged = 0

    # --------------------------------------------------------------------------------------- parts
    @property
    def precision(self) -> Precision:
        return self.apply.precision

    @precision.setter
    def precision(self, value: Precision) -> None:
        self.apply.precision = value

    @property
    def ema(self) -> ModelEMA | None:
        return self.apply.ema

    @property
    def input_size(self) -> tuple[int, int]:
        """The last input size (multi-scale), for logs and callbacks."""
        return self.prep.input_size

    @property
    def multiscale(self) -> MultiScale | None:
        return self.prep.multiscale

    # --------------------------------------------------------------------------------------- set-up
    def enter_phase(self, plan: PhasePlan, iters_per_epoch: int) -> None:
        """The step's share of a phase plan: the wrap of the trainable parameters, the optimizer groups' lr and
        weight decay, the accumulation and batches per epoch (the freezer has set the trainable parameters)."""
        if plan.frozen != self.frozen:
            self.frozen = plan.frozen
            self.rewrap()
        set_group_hyperparameters(self.optimizer, plan.lr, plan.weight_decay)
        # a plan that changes only what the loader does (mosaic) keeps the window and the captured graphs
        if (plan.accumulate, iters_per_epoch) != (self.accumulate, self.iters_per_epoch):
            self.configure(plan.accumulate, iters_per_epoch)

    def configure(self, accumulate: int, iters_per_epoch: int) -> None:
        """Set the phase's accumulation and batches per epoch (a new phase starts with an empty window)."""
        self.accumulate, self.iters_per_epoch = accumulate, iters_per_epoch
        self.window = []
        if self.graphs is not None:  # a phase may freeze or unfreeze parameters: capture again
            self.graphs.reset()

    def rewrap(self) -> None:
        """Wrap the model for DDP again: DDP registers the trainable parameters when it wraps."""
        self.train_model = dist.wrap(self.model if self.compiled is None else self.compiled, self.device)
        if self.graphs is not None:
            self.graphs.reset()  # captured graphs hold the old set of trainable parameters

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
        self.counters.add_batch(items, self.batch_nonfinite, epoch * self.iters_per_epoch + i)
        boundary = self.is_boundary(i)
        if boundary:
            self.optimizer_step()
            self.window = []
        return StepOutcome(items, boundary)

    def forward_backward(self, batch: dict[str, Any], epoch: int, i: int) -> torch.Tensor:
        """Forward, loss and backward of one batch in ``state.micro_batches`` parts; returns its loss items.

        One part: the loss is normalised by the batch's target-score sum (over all ranks under DDP). Several
        parts: see :mod:`yolotrain.engine.normaliser`; a split batch gets the gradient of the un-split one
        (up to BatchNorm, which sees smaller batches). A non-finite loss is back-propagated as zero and marks
        the batch (``batch_nonfinite``, a device bool); a window without a finite loss is not applied, and
        ``max_nonfinite`` in a row stop training at the next log point.

        Raises:
            torch.OutOfMemoryError (or RankOutOfMemory): on every rank when any rank ran out of memory.
        """
        n = batch["img"].shape[0]
        parts = split_batch(batch, self.state.micro_batches) if self.state.micro_batches > 1 else [batch]
        ni = epoch * self.iters_per_epoch + i
        size = self.prep.size(batch, epoch, i)  # one draw for all micro-batches (a collective on every rank)
        split = len(parts) > 1
        earlier = self._take_grads() if split else None  # the window's gradient so far, set aside
        weighted = torch.zeros(3, device=self.device)
        scores = torch.zeros((), device=self.device)  # split: the parts' target-score sums
        common = None
        nonfinite = self._false
        for part in parts:
            m = part["img"].shape[0]
            imgs = self.prep.images(part, size)
            labels = self.prep.labels(part)
            with self.train_model.no_sync() if self.world > 1 else nullcontext():
                targets, graphed, oom = None, None, None
                try:
                    self._inject_oom("forward", ni, m)
                    with self.precision.autocast(cache=self.graphs is None):
                        if self.graphs is not None and not split:  # one process: the normaliser is local
                            graphed = self.graphs.loss(imgs, labels["targets"])  # (loss, items) or None
                        if graphed is None:
                            preds = self.forward(imgs)
                    if graphed is None:  # the target assignment and the loss run in fp32, outside autocast
                        targets = self.criterion.assign(preds, labels)
                except Exception as e:  # noqa: BLE001 - only OOM is handled here
                    if not is_oom(e):
                        raise
                    oom = e
                if split:  # meeting point 1: out-of-memory flags only; the normaliser is the batch's
                    self._agree_no_oom(oom)
                    scores = scores + targets["target_scores_total"]
                    if common is None:
                        common = provisional_constant(targets["target_scores_sum"], n, m)
                    norm = part_normaliser(common, n, m)
                elif graphed is None:
                    norm = self._normaliser(targets, oom)  # meeting point 1
                else:
                    self._agree_no_oom(oom)  # the graph divided by the local normaliser
                oom = None
                try:
                    self._inject_oom("backward", ni, m)
                    loss, items = graphed if graphed is not None else self.criterion.finish(targets, norm)
                    finite = torch.isfinite(loss)
                    # decided on the device: a non-finite loss goes back as zero (DDP averages gradients over
                    # ranks and the normaliser is already global: scale up by the world size)
                    self.precision.scaler.scale(torch.where(finite, loss, 0.0) * self.world).backward()
                    self.window_has_grad = self.window_has_grad | finite
                    nonfinite = nonfinite | ~finite
                except Exception as e:  # noqa: BLE001
                    if not is_oom(e):
                        raise
                    oom = e
                self._agree_no_oom(oom)  # meeting point 2
            weighted = weighted + items.detach().float() * (m if split else m / n)
        if split:
            total = scores if self.world == 1 else self._agree_no_oom(None, float(scores))
            batch_norm = batch_normaliser(total, self.world)
            self._restore_grads(earlier, gradient_correction(common, batch_norm))
            weighted = split_items(weighted, common, n, batch_norm)
        self.batch_nonfinite = nonfinite
        return weighted

    def forward(self, imgs: torch.Tensor) -> Any:
        """The training forward (a replayed CUDA graph when enabled); a compile failure falls back to eager."""
        if self.graphs is not None:
            return self.graphs(self.train_model, imgs)
        try:
            return self.train_model(imgs)
        except Exception as e:  # noqa: BLE001 - only the compiler's own errors are handled
            if self.compiled is None or not is_compile_error(e):
                raise
            self.compile_failed(e)
            return self.train_model(imgs)

    def optimizer_step(self) -> None:
        """Apply the window's gradient (see :class:`OptimizerStep`; skipped on the device when nothing is finite)."""
        has_grad, self.window_has_grad = self.window_has_grad, self._false
        self.apply(has_grad)

    def sync(self, check: bool = True) -> CounterValues:
        """Read the device counters (the host read of a log point) into the train state; log what they found.

        Args:
            check: Raise when ``max_nonfinite`` consecutive losses were not finite (False: only count).

        Raises:
            TrainingError: When the limit of consecutive non-finite losses was reached.
        """
        values = self.counters.read()
        if values.skipped:
            self.state.count_skipped(values.skipped)
        if values.nonfinite:
            LOGGER.warning(
                f"non-finite loss in {values.nonfinite} batch(es) since the last log point (the latest at iteration "
                f"{values.last_nonfinite}); their gradients were not applied"
            )
        dropped = self.prep.dropped_boxes
        if dropped > self.dropped_logged:
            LOGGER.warning(
                f"{dropped - self.dropped_logged} labels past max_boxes={self.prep.max_boxes} per image were left "
                "out of the loss; raise max_boxes if images hold that many objects"
            )
            self.dropped_logged = dropped
        if check and values.stop_at >= 0:
            raise TrainingError(
                f"{self.max_nonfinite} consecutive non-finite losses at iteration {values.stop_at}; "
                f"lower lr0 or check the data (see README: NaN losses)"
            )
        return values

    # --------------------------------------------------------------------------------------- helpers
    def _normaliser(self, targets: dict[str, Any] | None, oom: BaseException | None) -> torch.Tensor:
        """The loss normaliser of an un-split batch: local in one process; under DDP the global sum / ranks."""
        if self.world == 1:
            self._agree_no_oom(oom)
            return targets["target_scores_sum"]
        total = self._agree_no_oom(oom, float(targets["target_scores_total"]) if targets is not None else 0.0)
        return torch.tensor(batch_normaliser(total, self.world), device=self.device)

    def _agree_no_oom(self, oom: BaseException | None, value: float = 0.0) -> float:
        """Raise on every rank if any rank ran out of memory; else return ``value`` summed over ranks.

        In one process nothing is exchanged: an error raises, ``value`` is returned as it is.
        """
        if self.world == 1:
            if oom is not None:
                raise oom
            return value
        total, failed = dist.all_reduce_list([value, float(oom is not None)])
        if failed:
            raise oom if oom is not None else RankOutOfMemory("CUDA out of memory on another rank")
        return total

    def _take_grads(self) -> list[torch.Tensor | None]:
        """Detach the accumulated gradients (the window's earlier batches) and leave the model's empty."""
        grads = []
        for p in self.model.parameters():
            grads.append(p.grad)
            p.grad = None
        return grads

    def _restore_grads(self, earlier: list[torch.Tensor | None], factor: float | torch.Tensor) -> None:
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
        self.window_has_grad = self._false
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
