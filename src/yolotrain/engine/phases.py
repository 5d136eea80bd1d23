"""The trainer's phases and memory handling, kept out of the loop in ``trainer.py``.

- Freeze/unfreeze (``freeze=``, ``freeze_epochs=``, ``freeze_batch=``, ``scale_lr=``): the phase is a pure
  function of the epoch; :meth:`PhaseMixin.apply_phase` is called at every epoch start (and when
  resuming) and is idempotent, so a resumed run lands in the right phase with the right batch.
- Multi-scale (``multi_scale=`` or ``min_size=``/``max_size=``): a size per iteration, drawn on rank 0.
- AutoBatch (``batch=-1`` or a fraction): probes the real model + loss step before the loaders exist.
- Out-of-memory recovery: an OOM in a training step splits the batch into micro-batches (same
  effective batch and lr), replaying the current accumulation window; under DDP all ranks switch.
- Early stopping (``patience=``), decided on rank 0 and broadcast.

:class:`~yolotrain.engine.trainer.Trainer` inherits these methods.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import torch

from yolotrain.engine import distributed as dist
from yolotrain.engine.autobatch import autobatch, autobatch_fraction
from yolotrain.engine.build import MAX_STRIDE, build_loader, per_process_batch
from yolotrain.engine.freeze import FROZEN, keep_frozen_bn_eval, phase_at, resolve_freeze, scale_lr, set_frozen
from yolotrain.engine.multiscale import MultiScale, pick_synchronized
from yolotrain.engine.oom import OOMInjector, RankOutOfMemory, free_memory, is_oom
from yolotrain.engine.optim import accumulation, scaled_weight_decay
from yolotrain.errors import TrainingError

LOGGER = logging.getLogger("yolotrain")


class PhaseMixin:
    """Freeze phases, multi-scale sizes, AutoBatch, OOM micro-batching and early stopping."""

    # ------------------------------------------------------------------------------------- set-up
    def setup_phases(self) -> None:
        """Resolve the freeze spec and multi-scale sampler (after the model exists, before the loaders)."""
        cfg = self.cfg
        spec = cfg.freeze
        if isinstance(spec, str) and "," in spec:
            spec = [s.strip() for s in spec.split(",") if s.strip()]
        self.freeze_prefixes = resolve_freeze(self.model, spec)
        # freeze= without freeze_epochs keeps the part frozen for the whole run
        self.freeze_until = (cfg.freeze_epochs or cfg.epochs) if self.freeze_prefixes else 0
        self.phase: str | None = None
        max_size = cfg.max_size or (round(self.imgsz * 1.667) if cfg.min_size else None)
        self.multiscale = MultiScale(
            self.imgsz,
            stride=MAX_STRIDE,
            fraction=cfg.multi_scale,
            min_sizes=cfg.min_size or None,
            max_size=max_size,
            seed=cfg.seed,
        )
        if self.multiscale.enabled:
            h, w = self.multiscale.largest((self.imgsz, self.imgsz))
            LOGGER.info(f"multi-scale: a new size every iteration, up to {h}x{w} (decided on rank 0)")
        self.micro_batches = 1  # the batch is split into this many parts after an out-of-memory error
        self.oom_injector = OOMInjector.from_env()  # YOLOTRAIN_INJECT_OOM, for tests and drills
        only = os.environ.get("YOLOTRAIN_INJECT_OOM_RANK")
        if only is not None and only.strip() != str(dist.rank()):  # inject on one rank of a DDP job only
            self.oom_injector = None
        from yolotrain.engine.early_stop import EarlyStopping

        self.early_stop = EarlyStopping(cfg.patience)

    def phase_batch(self, phase: str) -> int:
        """The global batch of a phase: ``freeze_batch`` while frozen (when set), else ``batch``."""
        return self.cfg.freeze_batch if phase == FROZEN and self.cfg.freeze_batch else self.batch

    def apply_phase(self, epoch: int) -> None:
        """Put the model, loader, accumulation, weight decay and lr in the state of ``epoch``'s phase.

        Idempotent: nothing changes when the phase is the one already applied.
        """
        phase = phase_at(epoch, self.freeze_until)
        if phase == self.phase:
            return
        first = self.phase is None
        self.phase = phase
        cfg = self.cfg
        if self.freeze_prefixes:
            n = set_frozen(self.model, self.freeze_prefixes, phase == FROZEN)
            self.train_model = dist.wrap(self.model, self.device)  # DDP registers the trainable set at wrap
            if n:
                LOGGER.info(
                    f"phase: {phase} from epoch {epoch + 1} ({n:,} parameters "
                    f"{'frozen' if phase == FROZEN else 'unfrozen'}: {', '.join(self.freeze_prefixes)})"
                )
        batch = self.phase_batch(phase)
        rank_batch = per_process_batch(batch, self.world)
        if first or rank_batch != self.rank_batch:
            self.rank_batch = rank_batch
            if not first:
                self.train_loader = build_loader(
                    self.train_records,
                    cfg,
                    self.imgsz,
                    rank_batch,
                    train=True,
                    rank=self.rank_or_none,
                    world_size=self.world,
                    pin_memory=self.pin,
                )
            self.nb = len(self.train_loader)
            self.schedule.iters_per_epoch = self.nb
        self.phase_global_batch = batch
        if cfg.scale_lr:  # bubbliiiing-style: fit the lr to the batch, one optimizer step per batch
            self.accumulate = 1
            lr = scale_lr(batch, cfg.nbs, self.lr, self.optimizer_name)
        else:  # accumulate to the nominal batch; the lr stays
            self.accumulate = accumulation(batch, cfg.nbs)
            lr = self.lr
        self.weight_decay = scaled_weight_decay(cfg.weight_decay, batch, self.accumulate, cfg.nbs)
        for g, wd in zip(self.optimizer.param_groups, (self.weight_decay, 0.0, 0.0)):
            g["initial_lr"], g["weight_decay"] = lr, wd
        self.phase_lr = lr
        if not first or self.freeze_prefixes:
            LOGGER.info(
                f"phase: {phase}, batch {batch}, accumulate {self.accumulate}, lr {lr:g}, weight decay "
                f"{self.weight_decay:g}, {self.nb} iterations/epoch"
            )

    def set_train_mode(self) -> None:
        """``train()`` the model, keeping the BatchNorm of a frozen part in eval mode (its statistics fixed)."""
        self.train_model.train()
        if self.phase == FROZEN and self.freeze_prefixes:
            keep_frozen_bn_eval(self.model, self.freeze_prefixes)

    @property
    def rank_or_none(self) -> int:
        return dist.rank() if self.world > 1 else -1

    # ------------------------------------------------------------------------------------- AutoBatch
    def choose_batch(self) -> int:
        """``batch`` as a count: the setting itself, or AutoBatch's choice (global, over all processes)."""
        fraction = autobatch_fraction(self.cfg.batch)
        if fraction is None:
            return int(self.cfg.batch)
        h, w = self.multiscale.largest((self.imgsz, self.imgsz))
        LOGGER.info(
            f"AutoBatch: probing the {self.precision.amp} training step at {h}x{w} for {fraction:.0%} of "
            f"{'device' if self.device.type == 'cuda' else 'available'} memory"
        )
        per_rank = autobatch(
            lambda b: self.probe_step(b, (h, w)),
            self.device,
            fraction=fraction,
            batch_sizes=(1, 2, 4, 8, 16, 32),
            multiple_of=1,
        )
        if self.world > 1:
            per_rank = max(per_rank, 2)  # BatchNorm needs 2 per process; the minimum over ranks came back
        batch = per_rank * self.world
        LOGGER.info(f"AutoBatch: batch {batch}" + (f" ({per_rank} per process)" if self.world > 1 else ""))
        self.cfg = self.cfg.replace(batch=batch)  # recorded in args.yaml and checkpoints: resume reuses it
        return batch

    def probe_step(self, b: int, size: tuple[int, int]) -> None:
        """One forward + loss + backward of the plain model at batch ``b`` on synthetic data, then cleaned up."""
        g = torch.Generator().manual_seed(b)
        imgs = torch.rand(b, 3, *size, generator=g).to(self.device).contiguous(memory_format=self.memory_format)
        n = 8 * b  # a few boxes per image: the assigner's memory grows with them
        xy = torch.rand(n, 2, generator=g) * 0.8 + 0.1
        wh = torch.rand(n, 2, generator=g) * 0.2 + 0.05
        batch = {
            "cls": torch.randint(0, self.model.nc, (n, 1), generator=g).float().to(self.device),
            "bboxes": torch.cat([xy, wh], 1).to(self.device),
            "batch_idx": torch.arange(b).repeat_interleave(8).float().to(self.device),
        }
        try:
            self.model.train()
            with self.precision.autocast():
                preds = self.model(imgs)
            loss, _ = self.criterion(preds, batch)
            loss.backward()
        finally:
            self.model.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------------------------- multi-scale
    def input_size_at(self, epoch: int, i: int, shape_hw: tuple[int, int]) -> tuple[int, int] | None:
        """This iteration's multi-scale size (every rank calls; rank 0 draws), None when multi-scale is off."""
        if not self.multiscale.enabled:
            return None
        return pick_synchronized(self.multiscale, epoch, i, shape_hw)

    # ------------------------------------------------------------------------------------- OOM recovery
    def run_step_with_recovery(self, batch: dict[str, Any], epoch: int, i: int) -> torch.Tensor:
        """Run a training step; on out-of-memory, split into more micro-batches and replay the window.

        The accumulation window's batches are kept (CPU tensors) until the optimizer steps, so a retry
        recomputes the whole window's gradient with the smaller micro-batches: the effective batch, the
        gradient and the lr are those of the original batch. Under DDP ``train_step`` raises on every rank
        when any rank ran out of memory (the ranks compare flags after each forward and backward), so all
        switch together.
        """
        self.window_batches.append((batch, i))
        try:
            items = self.train_step(batch, epoch, i)
        except Exception as e:  # noqa: BLE001 - only OOM is handled; everything else re-raised
            if not is_oom(e):  # train_step raises on every rank when any rank ran out of memory
                raise
            err: BaseException | None = e
            while err is not None:
                self.recover_from_oom(err, epoch, i)
                items, err = self.replay_window(epoch)
        if self.is_step_boundary(i):
            self.optimizer_step()
            self.window_batches = []
        return items

    def recover_from_oom(self, err: BaseException | None, epoch: int, i: int) -> None:
        """Free memory, drop the window's partial gradient and double the number of micro-batches."""
        self.optimizer.zero_grad(set_to_none=True)
        self.window_has_grad = False
        free_memory(self.device)
        per_micro = math.ceil(self.rank_batch / (self.micro_batches * 2))
        if self.micro_batches >= self.rank_batch:
            raise TrainingError(
                f"out of memory at epoch {epoch + 1}, iteration {i} even with one image per "
                f"micro-batch (imgsz {self.imgsz}); lower imgsz or use a smaller model"
            )
        self.micro_batches = min(self.micro_batches * 2, self.rank_batch)
        self.oom_events += 1
        LOGGER.warning(
            f"out of memory at epoch {epoch + 1}, iteration {i}"
            + (" (on another rank)" if isinstance(err, RankOutOfMemory) else f" ({type(err).__name__})")
            + f": retrying with {self.micro_batches} micro-batches of <= {per_micro} images "
            f"(same effective batch {self.phase_global_batch} and lr)"
        )

    def replay_window(self, epoch: int) -> tuple[torch.Tensor | None, BaseException | None]:
        """Recompute the gradient of the window's batches (each at its own iteration) with the current split.

        Returns:
            The last batch's loss items and None, or None and the error when memory ran out again.
        """
        items = None
        for batch, j in self.window_batches:
            try:
                items = self.train_step(batch, epoch, j)
            except Exception as e:  # noqa: BLE001 - raised on every rank together (see Trainer.train_step)
                if not is_oom(e):
                    raise
                return None, e
        return items, None

    def inject_oom(self, where: str, step: int, micro: int) -> None:
        if self.oom_injector is not None:
            self.oom_injector.check(step, where, micro)

    # ------------------------------------------------------------------------------------- early stop
    def check_early_stop(self, epoch: int, fitness: float | None) -> None:
        """Update early stopping on rank 0 and make every rank take its decision."""
        stop = self.early_stop.update(epoch, fitness) if dist.is_main() else False
        stop = bool(dist.broadcast_object(stop))
        if stop:
            LOGGER.info(self.early_stop.message())
            self.stop = True
            self.stopped_early = True
