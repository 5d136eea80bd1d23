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
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm import tqdm

from ..config import Config
from ..errors import CheckpointError, Preempted, TrainingError
from ..eval import EvalResult, format_table
from ..loss import DetectionLoss
from ..models import build_model, model_info
from ..utils.torch_utils import configure_backend, init_seeds, memory_mb, select_device
from . import distributed as dist
from .build import (build_loader, build_records, build_train_model, check_imgsz, per_process_batch, resolve_data,
                    run_dir, to_device_batch)
from .callbacks import Callbacks, load_callbacks
from .checkpoint import save_checkpoint
from .persistence import CheckpointMixin
from .ema import ModelEMA
from .loggers import register_default_loggers
from .optim import Schedule, accumulation, build_optimizer, scaled_weight_decay
from .precision import Precision, choose_amp
from .resume import elastic_resume, mark_elastic_run, prepare_resume, rng_state
from .validator import Validator

LOGGER = logging.getLogger("yolotrain")
LOSS_NAMES = ("box_loss", "cls_loss", "dfl_loss")


class Trainer(CheckpointMixin):
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
        self.grads_synced = True  # whether DDP all-reduced the gradients in the last backward
        self.world = 1
        self.epoch_skipped = 0
        self.stop = False  # a callback may set this to end training after the current iteration
        self.signal_received = 0  # SIGTERM/SIGINT number: save at the next optimizer step, then exit
        self.start_epoch, self.start_iter = 0, 0  # where training (re)starts
        self.best_metrics: dict | None = None
        self.last_save_iter, self.last_save_time = 0, time.monotonic()
        self.save_due = False
        self.owns_group = False

    # ----------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Join the process group, then build data, model, loss, optimizer, schedule and the run folder."""
        self.owns_group = dist.setup(self.device, self.cfg.dist_timeout)
        self.world = dist.world_size()
        state, ckpt = self.setup_run()
        cfg = self.cfg
        init_seeds(cfg.seed, cfg.deterministic)  # the same on every rank: identical initial weights
        configure_backend(self.device, cfg.deterministic)
        self.data = resolve_data(cfg)
        self.names = self.data["names"]
        self.imgsz = check_imgsz(cfg.imgsz)
        train_records = build_records(self.data, "train")
        val_records = build_records(self.data, "val") if cfg.val else None

        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        model = build_model(**state["model_cfg"]) if state else build_train_model(cfg, self.data["nc"])
        if model.nc != self.data["nc"]:
            raise CheckpointError(f"cannot resume: the checkpoint's model has {model.nc} classes, the data "
                                  f"{self.data['nc']}")
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.model.names = self.names
        info = model_info(self.model, imgsz=self.imgsz)
        LOGGER.info(f"model: scale {self.model.scale}, {info['params']:,} parameters, {info['layers']} layers, "
                    f"{info['gflops']:.1f} GFLOPs at {self.imgsz}")
        self.criterion = DetectionLoss.from_model(self.model, cfg)
        # the AMP check runs on rank 0 alone, so before anything that needs the other ranks (SyncBN, the
        # loss normaliser below)
        self.precision = self.setup_precision() if state is None else Precision(self.device, state["precision"]["amp"])
        if cfg.sync_bn and self.world > 1:
            from .sync_bn import convert_sync_bn

            self.model = convert_sync_bn(self.model, self.device)
            LOGGER.info("sync_bn: BatchNorm statistics are computed over the global batch")
        elif cfg.sync_bn:
            LOGGER.warning("sync_bn=true has no effect in one process")
        if self.world > 1:
            # every rank normalises its loss by the target count over all ranks, and the loss is scaled
            # by the world size because DDP averages gradients: the gradient is then that of one process
            # holding the whole batch, whatever the split
            self.criterion.normalizer, self.criterion.ranks = dist.all_reduce_sum_, self.world
        self.train_model = dist.wrap(self.model, self.device)

        pin = self.device.type == "cuda"
        self.batch = cfg.batch
        self.rank_batch = per_process_batch(self.batch, self.world)
        rank = dist.rank() if self.world > 1 else -1
        self.train_loader = build_loader(train_records, cfg, self.imgsz, self.rank_batch, train=True, rank=rank,
                                         world_size=self.world, pin_memory=pin)
        self.val_loader = (build_loader(val_records, cfg, self.imgsz, self.rank_batch * 2, train=False, rank=rank,
                                        world_size=self.world, pin_memory=pin) if val_records else None)
        self.nb = len(self.train_loader)
        self.accumulate = accumulation(self.batch, cfg.nbs)  # of the global batch: independent of the split
        wd = scaled_weight_decay(cfg.weight_decay, self.batch, self.accumulate, cfg.nbs)
        total_iters = math.ceil(len(train_records) / max(self.batch, cfg.nbs)) * cfg.epochs
        # on resume, the optimizer optimizer=auto chose then (extending epochs could change its choice)
        name, lr0 = (state["optimizer_name"], state["base_lr"]) if state else (cfg.optimizer, cfg.lr0)
        self.optimizer, self.optimizer_name, self.lr = build_optimizer(
            self.model, name, lr0, cfg.momentum, wd, total_iters, self.data["nc"])
        warmup = max(round(cfg.warmup_epochs * self.nb), cfg.warmup_min_iters) if cfg.warmup_epochs > 0 else 0
        self.schedule = Schedule(cfg.epochs, self.nb, cfg.lrf, cfg.cos_lr, warmup, cfg.warmup_bias_lr,
                                 cfg.warmup_momentum, cfg.momentum)
        self.ema = ModelEMA(self.model, cfg.ema_decay, cfg.ema_tau) if cfg.ema else None
        self.validator = (Validator(self.val_loader, self.names, self.device, self.precision,
                                    conf=cfg.conf if cfg.conf is not None else 0.001, iou=cfg.iou,
                                    max_det=cfg.max_det, progress=cfg.verbose and dist.is_main())
                          if self.val_loader else None)
        if dist.is_main():
            cfg.dump(self.save_dir / "args.yaml")
        if state:
            self.restore(state)
        LOGGER.info(f"train: {len(train_records)} images, batch {self.batch}"
                    + (f" ({self.rank_batch} per process x {self.world})" if self.world > 1 else "")
                    + f", accumulate {self.accumulate} (nominal batch {cfg.nbs}), weight decay {wd:g}, "
                    f"{self.nb} iterations/epoch, warmup {warmup} iterations, device {self.device}")

    def setup_run(self) -> tuple[dict[str, Any] | None, Path | None]:
        """Choose the run folder, and the checkpoint to resume from, on rank 0; every rank gets both.

        Rank 0 alone reads the checkpoint and broadcasts it, so ranks on other machines need no shared
        filesystem.
        """
        state = ckpt = None
        if dist.is_main():
            cfg, ckpt = elastic_resume(self.cfg)
            if cfg.resume:
                cfg, state, ckpt = prepare_resume(cfg)
                LOGGER.info(f"resume: continuing {ckpt} (epochs={cfg.epochs})")
            save_dir = ckpt.parent.parent if state else run_dir(cfg)
            (save_dir / "weights").mkdir(parents=True, exist_ok=True)
            mark_elastic_run(save_dir)
            shared = (cfg.to_dict(), sorted(cfg.explicit), state, str(ckpt) if ckpt else None, str(save_dir))
        else:
            shared = None
        values, explicit, state, ckpt, save_dir = dist.broadcast_object(shared)
        self.cfg = Config(values, explicit)
        self.save_dir = Path(save_dir)
        self.wdir = self.save_dir / "weights"
        return state, Path(ckpt) if ckpt else None

    def setup_precision(self) -> Precision:
        """Resolve ``amp`` for the device, check it on this model (rank 0, broadcast), log the choice."""
        amp, reason = choose_amp(self.cfg.amp, self.device)
        if self.cfg.amp_check and amp != "off":
            from .amp_check import choose_checked_precision

            checked = choose_checked_precision(self.model, self.criterion, self.device, amp, self.imgsz)
            if checked != amp:
                amp, reason = checked, f"{amp} failed the AMP check"
        precision = Precision(self.device, amp)
        LOGGER.info(f"precision: {'fp32' if amp == 'off' else amp} (amp={self.cfg.amp}: {reason})")
        return precision

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
                LOGGER.info(f"resume: this run already finished its {self.cfg.epochs} epochs; raise epochs= to "
                            f"train longer")
                self.train_seconds = 0.0
                return self.best
            old_handlers = self.install_signal_handlers()
            try:
                for epoch in range(self.start_epoch, self.cfg.epochs):
                    self.epoch = epoch
                    self.callbacks.run("on_train_epoch_start", self)
                    t_epoch = time.perf_counter()
                    losses = self.train_one_epoch(epoch, self.start_iter if epoch == self.start_epoch else 0)
                    self.callbacks.run("on_train_epoch_end", self)
                    last = epoch + 1 == self.cfg.epochs
                    result = None
                    if self.validator is not None and (last or (epoch + 1) % self.cfg.val_period == 0):
                        result = self.metrics = self.validate()
                    self.end_epoch(epoch, losses, result, time.perf_counter() - t_epoch)
                    self.callbacks.run("on_fit_epoch_end", self)
                    self.agree_on_flags()
                    if self.signal_received:
                        raise Preempted(f"stopped by {signal.Signals(self.signal_received).name} after epoch "
                                        f"{epoch + 1}; continue with resume={self.wdir / 'last.pt'}")
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
        from ..data import set_loader_epoch

        cfg = self.cfg
        if cfg.close_mosaic and epoch >= cfg.epochs - cfg.close_mosaic:
            self.train_loader.dataset.mosaic_enabled = False
        set_loader_epoch(self.train_loader, epoch, skip_batches=start)
        self.train_model.train()
        self.epoch_skipped = 0
        mean = torch.zeros(3)
        seen = 0
        t0 = time.perf_counter()
        bar = tqdm(enumerate(self.train_loader, start=start), total=self.nb, initial=start,
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (cfg.verbose and dist.is_main()),
                   dynamic_ncols=True, mininterval=1.0)
        for i, batch in bar:
            self.callbacks.run("on_train_batch_start", self)
            self.schedule.apply(self.optimizer, epoch, i)
            ni = epoch * self.nb + i
            items = self.train_step(batch, ni)
            self.current_batch, self.loss_items, self.last_iteration = batch, items, i  # for on_train_batch_end
            n = i - start
            mean = (mean * n + items) / (n + 1)
            seen += batch["img"].shape[0] * self.world  # images of the global batch
            self.callbacks.run("on_train_batch_end", self)
            boundary = self.is_step_boundary(ni)
            if boundary:
                self.agree_on_flags(i + 1)
                if i + 1 < self.nb:
                    self.save_within_epoch(epoch, i + 1)
            if self.stop and (boundary or self.world == 1):  # ranks leave the loop at the same step
                break
            bar.set_postfix_str(
                " ".join(f"{n.split('_')[0]} {v:.3f}" for n, v in zip(LOSS_NAMES, mean.tolist()))
                + f" inst {batch['cls'].shape[0]} size {batch['img'].shape[-1]}"
                + (f" skipped {self.epoch_skipped}" if self.epoch_skipped else "")
                + f" {seen / (time.perf_counter() - t0):.1f} img/s")
        self.images_per_s = seen / max(time.perf_counter() - t0, 1e-9)
        return dict(zip(LOSS_NAMES, mean.tolist()))

    def is_step_boundary(self, ni: int) -> bool:
        """Whether the optimizer stepped after global iteration ``ni`` (no gradient is pending)."""
        return (ni + 1) % self.accumulate == 0 or (ni + 1) == self.nb * self.cfg.epochs

    def train_step(self, batch: dict[str, Any], ni: int) -> torch.Tensor:
        """Forward, loss, backward; an optimizer step every ``accumulate`` iterations.

        A non-finite loss is never back-propagated; ``max_nonfinite`` in a row stop training.

        Returns:
            The detached loss items (box, cls, dfl) of this batch.
        """
        imgs = batch["img"].to(self.device, non_blocking=True).float().div_(255)
        imgs = imgs.contiguous(memory_format=self.memory_format)
        boundary = self.is_step_boundary(ni)
        # between optimizer steps DDP need not all-reduce gradients: they accumulate locally and are
        # reduced once, in the backward of the step's last batch
        sync = nullcontext() if boundary or self.world == 1 else self.train_model.no_sync()
        with sync:
            with self.precision.autocast():
                preds = self.train_model(imgs)
            # The loss (and target assignment) runs in fp32 outside autocast.
            loss, items = self.criterion(preds, to_device_batch(batch, self.device))
            finite = bool(torch.isfinite(loss)) if self.world == 1 else dist.all_reduce_min(float(torch.isfinite(loss))) > 0
            if finite:
                self.nonfinite_streak = 0
                self.precision.scaler.scale(loss * self.world).backward()
                self.window_has_grad = True
                self.grads_synced = boundary
        if not finite:  # decided together: one rank skipping a backward the others run would hang DDP
            self.nonfinite_streak += 1
            LOGGER.warning(f"non-finite loss {loss.item()} at iteration {ni}; batch skipped")
            if self.nonfinite_streak >= self.cfg.max_nonfinite:
                raise TrainingError(f"{self.nonfinite_streak} consecutive non-finite losses at iteration {ni}; "
                                    f"lower lr0 or check the data (see README: NaN losses)")
        if boundary:
            self.optimizer_step()
        return items.detach().float().cpu()

    def optimizer_step(self) -> None:
        """Unscale, clip, step (skipped on non-finite gradients), update the scaler and the EMA."""
        if not self.window_has_grad:  # every loss in the window was non-finite: nothing to apply
            self.count_skipped()
            self.optimizer.zero_grad(set_to_none=True)
            return
        self.window_has_grad = False
        if self.world > 1 and not self.grads_synced:  # the step's last batch was skipped: reduce by hand
            for p in self.model.parameters():
                if p.grad is not None:
                    dist.all_reduce_mean_(p.grad)
        scaler = self.precision.scaler
        scaler.unscale_(self.optimizer)
        self.callbacks.run("on_before_optimizer_step", self)
        max_norm = self.cfg.clip_grad if self.cfg.clip_grad > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=max_norm)
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
        for key, name in (("precision", "precision"), ("recall", "recall"), ("map50", "mAP50"),
                          ("map50_95", "mAP50-95")):
            row[f"metrics/{name}"] = round(float(getattr(m, key)), 5) if m is not None else ""
        row["skipped_steps"] = self.epoch_skipped
        row["amp_scale"] = self.precision.scale if self.precision.scale is not None else ""
        row["images_per_s"] = round(self.images_per_s, 2)
        self.history.append(row)
        fitness = float(m.map50_95) if m is not None else -math.inf
        improved = m is not None and fitness > self.best_fitness
        if improved:
            self.best_fitness, self.best, self.best_metrics = fitness, m, m.to_dict()
        if m is not None:
            LOGGER.info(f"epoch {epoch + 1}: P {m.precision:.3f} R {m.recall:.3f} mAP50 {m.map50:.3f} "
                        f"mAP50-95 {m.map50_95:.3f} ({seconds:.1f}s, val {self.validator.seconds:.1f}s, "
                        f"mem {memory_mb(self.device):.0f} MB)")
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
        summary = (f"done: {self.cfg.epochs} epochs in {self.train_seconds / 60:.1f} min; "
                   f"results in {self.save_dir}")
        if b:
            summary += f"; best mAP50 {b['mAP50']:.3f} mAP50-95 {b['mAP50-95']:.3f}"
        LOGGER.info(summary)
        self.summary = summary
