"""The training loop: ``fit -> train_one_epoch -> train_step -> validate``.

Run it with ``yolotrain train data=path/data.yaml model=n epochs=50`` or, from Python,
``Trainer(resolve({...})).fit()``. Extras (logging, saving) plug in through named callback events.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn as nn
from tqdm import tqdm

from yolotrain.config import Config
from yolotrain.engine import distributed as dist
from yolotrain.engine.build import to_device_batch
from yolotrain.engine.callbacks import Callbacks, load_callbacks
from yolotrain.engine.checkpoint import save_checkpoint
from yolotrain.engine.loggers import register_default_loggers
from yolotrain.engine.multiscale import resize_batch
from yolotrain.engine.oom import RankOutOfMemory, is_oom, split_batch
from yolotrain.engine.persistence import CheckpointMixin
from yolotrain.engine.phases import PhaseMixin
from yolotrain.engine.resume import rng_state
from yolotrain.engine.setup import SetupMixin
from yolotrain.errors import Preempted, TrainingError
from yolotrain.eval import EvalResult, format_table
from yolotrain.utils.torch_utils import memory_mb, select_device

LOGGER = logging.getLogger("yolotrain")
LOSS_NAMES = ("box_loss", "cls_loss", "dfl_loss")


class Trainer(SetupMixin, CheckpointMixin, PhaseMixin):
    """Trains a detector as the config says and writes the run folder.

    Args:
        cfg: A resolved :class:`~yolotrain.config.Config`.
        callbacks: Extra callbacks; more can be added with ``trainer.callbacks.add(event, fn)``.

    Attributes:
        save_dir: The run folder (set by :meth:`setup`).
        best: The :class:`EvalResult` of the best epoch so far.
        metrics: The latest validation result.
    """

    def __init__(self, cfg: Config, callbacks: Callbacks | None = None):
        self.cfg = cfg
        self.callbacks = callbacks or Callbacks()
        register_default_loggers(self.callbacks)  # TensorBoard, plots; MLflow/W&B when installed
        for event, fn in load_callbacks(cfg.callbacks):  # callbacks=module:function (also in DDP workers)
            self.callbacks.add(event, fn)
        self.device = select_device(cfg.device)
        self.epoch = 0
        self.best_fitness = -math.inf
        self.best: EvalResult | None = None
        self.metrics: EvalResult | None = None
        self.history: list[dict[str, float]] = []
        self.nonfinite_streak = 0
        self.skipped_steps = 0
        self.window_has_grad = False  # whether a finite loss was back-propagated since the last step
        self.oom_events = 0
        self.stopped_early = False
        self.window_batches: list = []
        self.world = 1
        self.epoch_skipped = 0
        self.stop = False  # a callback may set this to end training after the current iteration
        self.signal_received = 0  # SIGTERM/SIGINT number: save at the next optimizer step, then exit
        self.start_epoch, self.start_iter = 0, 0  # where training (re)starts
        self.best_metrics: dict | None = None
        self.last_save_iter, self.last_save_time = 0, time.monotonic()
        self.save_due = False
        self.owns_group = False

    # ----------------------------------------------------------------------------------------- loop
    def fit(self) -> EvalResult | None:
        """Train for ``cfg.epochs`` epochs and return the best validation result."""
        try:
            self.callbacks.run("on_pretrain_routine_start", self)
            self.setup()
            self.callbacks.run("on_pretrain_routine_end", self)
            self.callbacks.run("on_train_start", self)
            t0 = time.perf_counter()
            if self.start_epoch >= self.cfg.epochs:
                LOGGER.info(
                    f"resume: this run already finished its {self.cfg.epochs} epochs; raise epochs= to train longer"
                )
                self.train_seconds = 0.0
                return self.best
            old_handlers = self.install_signal_handlers()
            try:
                for epoch in range(self.start_epoch, self.cfg.epochs):
                    self.epoch = epoch
                    self.apply_phase(epoch)  # freeze/unfreeze, its batch, lr and accumulation
                    self.callbacks.run("on_train_epoch_start", self)
                    t_epoch = time.perf_counter()
                    losses = self.train_one_epoch(epoch, self.start_iter if epoch == self.start_epoch else 0)
                    self.callbacks.run("on_train_epoch_end", self)
                    last = epoch + 1 == self.cfg.epochs
                    result = None
                    if self.validator is not None and (last or (epoch + 1) % self.cfg.val_period == 0):
                        result = self.metrics = self.validate()
                    if result is not None:
                        self.check_early_stop(epoch, float(result.map50_95))
                    self.end_epoch(epoch, losses, result, time.perf_counter() - t_epoch)
                    self.callbacks.run("on_fit_epoch_end", self)
                    self.agree_on_flags()
                    if self.signal_received:
                        raise Preempted(
                            f"stopped by {signal.Signals(self.signal_received).name} after epoch "
                            f"{epoch + 1}; continue with resume={self.wdir / 'last.pt'}"
                        )
                    if self.stop:
                        break
            finally:
                self.restore_signal_handlers(old_handlers)
            self.train_seconds = time.perf_counter() - t0
            self.callbacks.run("on_train_end", self)
            self.final_report()
            return self.best
        except BaseException:
            self.callbacks.run("on_exception", self)
            raise
        finally:
            if self.owns_group:
                dist.cleanup()

    def train_one_epoch(self, epoch: int, start: int = 0) -> dict[str, float]:
        """One pass over the training loader from batch ``start``; returns the epoch's mean losses."""
        from yolotrain.data import set_loader_epoch

        cfg = self.cfg
        # a function of the epoch, so a run resumed in its last epochs has mosaic off too
        self.train_loader.dataset.mosaic_enabled = not (cfg.close_mosaic and epoch >= cfg.epochs - cfg.close_mosaic)
        set_loader_epoch(self.train_loader, epoch, skip_batches=start)
        self.set_train_mode()
        self.window_batches = []
        self.epoch_skipped = 0
        mean = torch.zeros(3)
        seen = 0
        t0 = time.perf_counter()
        bar = tqdm(
            enumerate(self.train_loader, start=start),
            total=self.nb,
            initial=start,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not (cfg.verbose and dist.is_main()),
            dynamic_ncols=True,
            mininterval=1.0,
        )
        for i, batch in bar:
            self.callbacks.run("on_train_batch_start", self)
            self.schedule.apply(self.optimizer, epoch, i)
            items = self.run_step_with_recovery(batch, epoch, i)  # forward/backward, optimizer step at boundaries
            self.current_batch, self.loss_items, self.last_iteration = batch, items, i  # for on_train_batch_end
            n = i - start
            mean = (mean * n + items) / (n + 1)
            seen += batch["img"].shape[0] * self.world  # images of the global batch
            self.callbacks.run("on_train_batch_end", self)
            boundary = self.is_step_boundary(i)
            if boundary:
                self.agree_on_flags(i + 1)
                if i + 1 < self.nb:
                    self.save_within_epoch(epoch, i + 1)
            if self.stop and (boundary or self.world == 1):  # ranks leave the loop at the same step
                break
            bar.set_postfix_str(
                " ".join(f"{n.split('_')[0]} {v:.3f}" for n, v in zip(LOSS_NAMES, mean.tolist()))
                + f" inst {batch['cls'].shape[0]} size {self.input_size[-1]}"
                + (f" skipped {self.epoch_skipped}" if self.epoch_skipped else "")
                + f" {seen / (time.perf_counter() - t0):.1f} img/s"
            )
        self.images_per_s = seen / max(time.perf_counter() - t0, 1e-9)
        return dict(zip(LOSS_NAMES, mean.tolist()))

    def is_step_boundary(self, i: int) -> bool:
        """Whether the optimizer steps after batch ``i`` of the epoch.

        Accumulation windows never span epochs: the last batch of an epoch always steps, so an epoch-end
        checkpoint holds no pending gradient and phase changes start from a clean window.
        """
        return (i + 1) % self.accumulate == 0 or (i + 1) == self.nb

    def train_step(self, batch: dict[str, Any], epoch: int, i: int) -> torch.Tensor:
        """Forward, loss and backward of one batch, in ``micro_batches`` parts; the step is the caller's.

        A non-finite loss is never back-propagated; ``max_nonfinite`` in a row stop training. Under DDP
        the backward is local (``no_sync``) and gradients are reduced once per optimizer step, and the
        ranks meet twice per micro-batch — after the target assignment (summing the loss normaliser and
        any out-of-memory flag) and after the backward (out-of-memory flags) — at the same points
        whatever happens, so an OOM on one rank can never leave another waiting in a collective.

        Returns:
            The detached loss items (box, cls, dfl) of this batch.

        Raises:
            torch.OutOfMemoryError (or RankOutOfMemory): for the caller's recovery.
        """
        n = batch["img"].shape[0]
        parts = split_batch(batch, self.micro_batches) if self.micro_batches > 1 else [batch]
        ni = epoch * self.nb + i
        size = self.input_size_at(epoch, i, tuple(batch["img"].shape[-2:]))  # one draw for all micro-batches
        total = torch.zeros(3)
        nonfinite = False
        for part in parts:
            m = part["img"].shape[0]
            imgs = part["img"].to(self.device, non_blocking=True).float().div_(255)
            if size is not None:
                imgs = resize_batch(imgs, size)
            imgs = imgs.contiguous(memory_format=self.memory_format)
            self.input_size = tuple(imgs.shape[-2:])  # for callbacks and the progress bar (multi-scale)
            sync = self.train_model.no_sync() if self.world > 1 else nullcontext()
            with sync:
                targets, oom = None, None
                try:
                    self.inject_oom("forward", ni, m)
                    with self.precision.autocast():
                        preds = self.train_model(imgs)
                    # The loss (and target assignment) runs in fp32 outside autocast.
                    targets = self.criterion.assign(preds, to_device_batch(part, self.device))
                except Exception as e:  # noqa: BLE001 - only OOM is handled here
                    if not is_oom(e):
                        raise
                    oom = e
                norm = self.loss_normaliser(targets, oom)  # meeting point 1 (raises on every rank after an OOM)
                oom = None
                try:
                    self.inject_oom("backward", ni, m)
                    loss, items = self.criterion.finish(targets, norm)
                    if torch.isfinite(loss):
                        # DDP averages gradients over ranks, the normaliser is already global: scale back up
                        self.precision.scaler.scale(loss * self.world).backward()
                        self.window_has_grad = True
                    else:
                        nonfinite = True
                except Exception as e:  # noqa: BLE001
                    if not is_oom(e):
                        raise
                    oom = e
                self.agree_no_oom(oom)  # meeting point 2
            total += items.detach().float().cpu() * (m / n)
        if nonfinite:
            self.nonfinite_streak += 1
            LOGGER.warning(f"non-finite loss at iteration {ni}; batch skipped")
            if self.nonfinite_streak >= self.cfg.max_nonfinite:
                raise TrainingError(
                    f"{self.nonfinite_streak} consecutive non-finite losses at iteration {ni}; "
                    f"lower lr0 or check the data (see README: NaN losses)"
                )
        else:
            self.nonfinite_streak = 0
        return total

    def loss_normaliser(self, targets: dict[str, Any] | None, oom: BaseException | None) -> torch.Tensor:
        """The loss normaliser: local in one process; under DDP the target-score sum over all ranks / ranks.

        Every rank calls this once per micro-batch, also after an out-of-memory error (then it raises
        after the collective, on every rank).
        """
        if self.world == 1:
            self.agree_no_oom(oom)
            return targets["target_scores_sum"]
        total = self.agree_no_oom(oom, float(targets["target_scores_total"]) if targets is not None else 0.0)
        return torch.tensor(max(total, 1.0) / self.world, device=self.device)

    def agree_no_oom(self, oom: BaseException | None, value: float = 0.0) -> float:
        """Raise on every rank if any rank ran out of memory; else return ``value`` summed over ranks.

        One collective under DDP (the value travels with the out-of-memory flags).
        """
        total, failed = dist.all_reduce_list([value, float(oom is not None)])
        if failed:
            raise oom if oom is not None else RankOutOfMemory("CUDA out of memory on another rank")
        return total

    def optimizer_step(self) -> None:
        """Reduce gradients over ranks, unscale, clip, step (skipped on non-finite gradients), EMA."""
        has_grad = self.window_has_grad
        if self.world > 1:  # a rank whose every loss was non-finite still takes part in the average
            has_grad = dist.all_reduce_max(float(has_grad)) > 0
            if has_grad:
                dist.all_reduce_grads_([p for p in self.model.parameters() if p.requires_grad])
        if not has_grad:  # every loss in the window was non-finite: nothing to apply
            self.count_skipped()
            self.optimizer.zero_grad(set_to_none=True)
            self.window_has_grad = False
            return
        self.window_has_grad = False
        scaler = self.precision.scaler
        scaler.unscale_(self.optimizer)
        self.callbacks.run("on_before_optimizer_step", self)
        max_norm = self.cfg.clip_grad if self.cfg.clip_grad > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.grad is not None], max_norm=max_norm
        )
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
            self.count_skipped()
        self.optimizer.zero_grad(set_to_none=True)
        if stepped and self.ema is not None:
            self.ema.update(self.model)

    def count_skipped(self) -> None:
        """Count an optimizer step that did not happen (non-finite loss or gradients)."""
        self.skipped_steps += 1
        self.epoch_skipped += 1

    def validate(self) -> EvalResult:
        """Score the EMA (or the raw model) on the validation split."""
        self.callbacks.run("on_val_start", self)
        result = self.validator(self.eval_model)
        self.callbacks.run("on_val_end", self)
        return result

    @property
    def is_main(self) -> bool:
        """Whether this process is rank 0 (the one that writes the run folder)."""
        return dist.is_main()

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.ema if self.ema is not None else self.model

    # ----------------------------------------------------------------------------------------- outputs
    def end_epoch(self, epoch: int, losses: dict[str, float], m: EvalResult | None, seconds: float) -> None:
        """Record the epoch in results.csv and save last.pt / best.pt (rank 0 only).

        ``m`` is this epoch's validation result, None when the epoch was not validated.
        """
        row = {"epoch": epoch + 1, "seconds": round(seconds, 2)}
        row.update({f"train/{k}": round(v, 5) for k, v in losses.items()})
        row.update({f"lr/pg{j}": g["lr"] for j, g in enumerate(self.optimizer.param_groups)})
        for key, name in (
            ("precision", "precision"),
            ("recall", "recall"),
            ("map50", "mAP50"),
            ("map50_95", "mAP50-95"),
        ):
            row[f"metrics/{name}"] = round(float(getattr(m, key)), 5) if m is not None else ""
        row["skipped_steps"] = self.epoch_skipped
        row["amp_scale"] = self.precision.scale if self.precision.scale is not None else ""
        row["images_per_s"] = round(self.images_per_s, 2)
        self.history.append(row)
        fitness = float(m.map50_95) if m is not None else -math.inf
        improved = m is not None and fitness > self.best_fitness
        if improved:
            self.best_fitness, self.best, self.best_metrics = fitness, m, m.to_dict()
        phase = f" ({self.phase}, batch {self.phase_global_batch})" if self.freeze_prefixes else ""
        line = (
            f"epoch {epoch + 1}{phase}: {self.images_per_s:.1f} images/s, "
            f"{1000 / max(self.images_per_s, 1e-9):.1f} ms/image, mem {memory_mb(self.device):.0f} MB"
        )
        if m is not None:
            line += (
                f"; P {m.precision:.3f} R {m.recall:.3f} mAP50 {m.map50:.3f} mAP50-95 {m.map50_95:.3f} "
                f"({seconds:.1f}s, val {self.validator.seconds:.1f}s)"
            )
        LOGGER.info(line)
        rngs = dist.all_gather_object(rng_state())  # a collective: before rank 0 goes its own way
        if not dist.is_main():
            return
        self.write_csv(row)
        state = self.checkpoint_state(epoch, self.nb, complete=True, rngs=rngs)
        save_checkpoint(state, self.wdir / "last.pt")
        self.last_save_iter, self.last_save_time = 0, time.monotonic()
        if improved or (self.best is None and epoch + 1 == self.cfg.epochs):
            save_checkpoint(state, self.wdir / "best.pt")
        if self.cfg.save_epochs > 0 and (epoch + 1) % self.cfg.save_epochs == 0:
            save_checkpoint(state, self.wdir / f"epoch{epoch + 1}.pt")
        self.callbacks.run("on_model_save", self)

    def final_report(self) -> None:
        if not dist.is_main():
            return
        if self.best is not None and self.cfg.verbose:
            LOGGER.info("best epoch, per class:\n" + format_table(self.best, self.names))
        b = self.best_metrics
        summary = f"done: {self.cfg.epochs} epochs in {self.train_seconds / 60:.1f} min; results in {self.save_dir}"
        if b:
            summary += f"; best mAP50 {b['mAP50']:.3f} mAP50-95 {b['mAP50-95']:.3f}"
        LOGGER.info(summary)
        self.summary = summary
