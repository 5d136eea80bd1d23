"""The trainer's set-up: process group, run folder and resume, data, model, precision, optimizer.

Kept apart from the loop in ``trainer.py``; :class:`~yolotrain.engine.trainer.Trainer` inherits it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch

from yolotrain.config import Config
from yolotrain.engine import distributed as dist
from yolotrain.engine.build import (
    build_loader,
    build_records,
    build_train_model,
    check_imgsz,
    per_process_batch,
    resolve_data,
    run_dir,
)
from yolotrain.engine.ema import ModelEMA
from yolotrain.engine.freeze import phase_at
from yolotrain.engine.optim import Schedule, build_optimizer
from yolotrain.engine.precision import Precision, choose_amp
from yolotrain.engine.resume import elastic_resume, mark_elastic_run, prepare_resume
from yolotrain.engine.validator import Validator
from yolotrain.errors import CheckpointError
from yolotrain.loss import DetectionLoss
from yolotrain.models import build_model, model_info
from yolotrain.utils.torch_utils import configure_backend, init_seeds

LOGGER = logging.getLogger("yolotrain")


class SetupMixin:
    """Builds everything :meth:`Trainer.fit` needs, on every rank."""

    def setup(self) -> None:
        """Join the process group, then build data, model, loss, optimizer, schedule and the run folder."""
        self.owns_group = dist.setup(self.device, self.cfg.dist_timeout)
        self.world = dist.world_size()
        state = self.setup_run()
        cfg = self.cfg
        init_seeds(cfg.seed, cfg.deterministic)  # the same on every rank: identical initial weights
        configure_backend(self.device, cfg.deterministic)
        self.data = resolve_data(cfg)
        self.names = self.data["names"]
        self.imgsz = check_imgsz(cfg.imgsz)
        with dist.main_rank_warnings(LOGGER):  # every rank scans the same files; rank 0 reports them
            train_records = build_records(self.data, "train")
            val_records = build_records(self.data, "val") if cfg.val else None

        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        model = build_model(**state["model_cfg"]) if state else build_train_model(cfg, self.data["nc"])
        if model.nc != self.data["nc"]:
            raise CheckpointError(
                f"cannot resume: the checkpoint's model has {model.nc} classes, the data {self.data['nc']}"
            )
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.model.names = self.names
        info = model_info(self.model, imgsz=self.imgsz)
        LOGGER.info(
            f"model: scale {self.model.scale}, {info['params']:,} parameters, {info['layers']} layers, "
            f"{info['gflops']:.1f} GFLOPs at {self.imgsz}"
        )
        self.criterion = DetectionLoss.from_model(self.model, cfg)
        # the AMP check runs on rank 0 alone, so before anything that needs the other ranks (SyncBN)
        self.precision = self.setup_precision() if state is None else Precision(self.device, state["precision"]["amp"])
        self.setup_phases()
        self.batch = self.choose_batch()  # AutoBatch probes the plain model, before SyncBN and DDP
        cfg = self.cfg
        if cfg.sync_bn and self.world > 1:
            from yolotrain.engine.sync_bn import convert_sync_bn

            self.model = convert_sync_bn(self.model, self.device)
            LOGGER.info("sync_bn: BatchNorm statistics are computed over the global batch")
        elif cfg.sync_bn:
            LOGGER.warning("sync_bn=true has no effect in one process")
        self.train_model = dist.wrap(self.model, self.device)

        self.pin = self.device.type == "cuda"
        self.train_records = train_records
        first_epoch = 0
        if state:
            pos = state["position"]
            first_epoch = pos["epoch"] + 1 if pos["complete"] else pos["epoch"]
        # the loader of the phase training (re)starts in; apply_phase rebuilds it when the phase changes
        self.rank_batch = per_process_batch(self.phase_batch(phase_at(first_epoch, self.freeze_until)), self.world)
        self.train_loader = build_loader(
            train_records,
            cfg,
            self.imgsz,
            self.rank_batch,
            train=True,
            rank=self.rank_or_none,
            world_size=self.world,
            pin_memory=self.pin,
        )
        self.val_loader = (
            build_loader(
                val_records,
                cfg,
                self.imgsz,
                per_process_batch(self.batch, self.world) * 2,
                train=False,
                rank=self.rank_or_none,
                world_size=self.world,
                pin_memory=self.pin,
            )
            if val_records
            else None
        )
        self.nb = len(self.train_loader)
        total_iters = math.ceil(len(train_records) / max(self.batch, cfg.nbs)) * cfg.epochs
        # on resume, the optimizer optimizer=auto chose then (extending epochs could change its choice)
        name, lr0 = (state["optimizer_name"], state["base_lr"]) if state else (cfg.optimizer, cfg.lr0)
        # built over every parameter before anything is frozen: frozen ones have no gradient and are
        # skipped by the step, and unfreezing needs no new optimizer. apply_phase below sets the phase's
        # lr, weight decay and accumulation.
        self.optimizer, self.optimizer_name, self.lr = build_optimizer(
            self.model, name, lr0, cfg.momentum, cfg.weight_decay, total_iters, self.data["nc"]
        )
        warmup = max(round(cfg.warmup_epochs * self.nb), cfg.warmup_min_iters) if cfg.warmup_epochs > 0 else 0
        self.schedule = Schedule(
            cfg.epochs, self.nb, cfg.lrf, cfg.cos_lr, warmup, cfg.warmup_bias_lr, cfg.warmup_momentum, cfg.momentum
        )
        self.apply_phase(first_epoch)
        self.ema = ModelEMA(self.model, cfg.ema_decay, cfg.ema_tau) if cfg.ema else None
        self.validator = (
            Validator(
                self.val_loader,
                self.names,
                self.device,
                self.precision,
                conf=cfg.conf if cfg.conf is not None else 0.001,
                iou=cfg.iou,
                max_det=cfg.max_det,
                multi_label=cfg.multi_label,
                progress=cfg.verbose and dist.is_main(),
            )
            if self.val_loader
            else None
        )
        if self.validator is not None:
            self.validator.oom_injector = self.oom_injector
        if dist.is_main():  # the set-up succeeded: now the run folder exists
            self.wdir.mkdir(parents=True, exist_ok=True)
            mark_elastic_run(self.save_dir)
            cfg.dump(self.save_dir / "args.yaml")
        if state:
            self.restore(state)
        LOGGER.info(
            f"train: {len(train_records)} images, batch {self.phase_global_batch}"
            + (f" ({self.rank_batch} per process x {self.world})" if self.world > 1 else "")
            + f", accumulate {self.accumulate} (nominal batch {cfg.nbs}), weight decay {self.weight_decay:g}, "
            f"{self.nb} iterations/epoch, warmup {warmup} iterations, device {self.device}"
        )

    def setup_run(self) -> dict[str, Any] | None:
        """Choose the run folder, and the checkpoint to resume from, on rank 0; every rank gets both.

        Rank 0 alone reads the checkpoint and broadcasts it, so ranks on other machines need no shared
        filesystem.

        Returns:
            The checkpoint's state to restore, or None for a new run.
        """
        state = None
        if dist.is_main():
            cfg = elastic_resume(self.cfg)
            if cfg.resume:
                cfg, state, ckpt = prepare_resume(cfg)
                LOGGER.info(f"resume: continuing {ckpt} (epochs={cfg.epochs})")
            save_dir = ckpt.parent.parent if state else run_dir(cfg, create=False)
            shared = (cfg.to_dict(), sorted(cfg.explicit), state, str(save_dir))
        else:
            shared = None
        values, explicit, state, save_dir = dist.broadcast_object(shared)
        self.cfg = Config(values, explicit)
        self.save_dir = Path(save_dir)
        self.wdir = self.save_dir / "weights"
        return state

    def setup_precision(self) -> Precision:
        """Resolve ``amp`` for the device, check it on this model (rank 0, broadcast), log the choice."""
        amp, reason = choose_amp(self.cfg.amp, self.device)
        if self.cfg.amp_check and amp != "off":
            from yolotrain.engine.amp_check import choose_checked_precision

            checked = choose_checked_precision(self.model, self.criterion, self.device, amp, self.imgsz)
            if checked != amp:
                amp, reason = checked, f"{amp} failed the AMP check"
        precision = Precision(self.device, amp)
        LOGGER.info(f"precision: {'fp32' if amp == 'off' else amp} (amp={self.cfg.amp}: {reason})")
        return precision
