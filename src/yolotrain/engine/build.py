"""Turning a resolved config into a training run: data, model, loaders, and :func:`build_run`'s parts.

:func:`build_run` builds every part in one visible order: data, model and loss, precision, input sizes and
batch, loaders, optimizer and schedule, EMA, train state, step, validator, checkpointer, run folder.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from yolotrain import __version__
from yolotrain.config import Config
from yolotrain.config_sections import AugmentSettings, LossGains
from yolotrain.data import DetectionDataset, build_dataloader, ensure_demo_dataset, load_data_yaml, scan_split
from yolotrain.data.class_balance import class_weights, epoch_length, repeat_factors
from yolotrain.data.profile import loader_advice
from yolotrain.data.select import select_records, single_class_names
from yolotrain.engine import distributed as dist
from yolotrain.engine.amp_check import choose_checked_precision
from yolotrain.engine.autobatch_probe import choose_batch
from yolotrain.engine.budget import TimeBudget
from yolotrain.engine.checkpoint import Checkpointer, StatefulModule
from yolotrain.engine.ema import ModelEMA
from yolotrain.engine.freeze import Freezer, resolve_freeze
from yolotrain.engine.horizon import FixedHorizon, Horizon, warmup_iters
from yolotrain.engine.mlflow_logger import MlflowRunRecord
from yolotrain.engine.multiscale import MultiScale
from yolotrain.engine.oom import OOMInjector
from yolotrain.engine.optim import Schedule, build_optimizer
from yolotrain.engine.phases import PhasePlanner
from yolotrain.engine.precision import Precision, choose_amp
from yolotrain.engine.preempt import shutdown_workers
from yolotrain.engine.resume import elastic_resume, mark_elastic_run, note_world_change, prepare_resume
from yolotrain.engine.state import Position, RngStreams, TrainState
from yolotrain.engine.step import TrainStep
from yolotrain.engine.sync_bn import convert_sync_bn
from yolotrain.engine.validator import Validator
from yolotrain.errors import CheckpointError, ConfigError, DataError
from yolotrain.loss import DetectionLoss
from yolotrain.models import build_model, model_info, weights_io
from yolotrain.utils.files import claim_dir, set_aside
from yolotrain.utils.torch_utils import configure_backend, init_seeds

LOGGER = logging.getLogger("yolotrain")
MAX_STRIDE = 32


def resolve_data(cfg: Config) -> dict[str, Any]:
    """Load the data YAML named by ``cfg.data``, or generate and use the built-in demo set."""
    if not cfg.data:
        path = ensure_demo_dataset()
        LOGGER.info(f"data: no data= given, using the built-in demo set at {path.parent}")
        return load_data_yaml(path)
    return load_data_yaml(cfg.data)


def check_imgsz(imgsz: int, stride: int = MAX_STRIDE) -> int:
    """Round ``imgsz`` up to a multiple of the model's largest stride, warning when it changes."""
    new = max(int(math.ceil(imgsz / stride) * stride), stride)
    if new != imgsz:
        LOGGER.warning(f"imgsz={imgsz} is not a multiple of the max stride {stride}; using imgsz={new}")
    return new


def per_process_batch(batch: int, world: int, whose: str = "setting 'batch'") -> int:
    """Each process's share of the global ``batch`` over ``world`` processes.

    Args:
        batch: The global batch.
        world: The number of processes.
        whose: What the batch is, for the message (a resumed run names its checkpoint).

    Raises:
        ConfigError: When the batch does not divide over the processes, or leaves fewer than two images
            per process (BatchNorm statistics of one image are meaningless); the message lists the
            process counts that would work.
    """
    if world == 1:
        return batch
    if batch % world == 0 and batch // world >= 2:
        return batch // world
    usable = fitting_worlds(batch)
    listed = ", ".join(map(str, usable[:-1])) + f" or {usable[-1]} processes" if len(usable) > 1 else "1 process"
    if batch % world:
        problem = f"does not divide over {world} processes"
    else:
        problem = f"gives {batch // world} image per process over {world} processes; BatchNorm needs at least 2"
    raise ConfigError(
        f"{whose}={batch} {problem}; it trains on {listed} "
        f"(batch is the global batch, each process gets batch/processes, at least 2)"
    )


def fitting_worlds(batch: int) -> list[int]:
    """The process counts a global ``batch`` divides over with at least two images each (and 1)."""
    return [1] + [w for w in range(2, batch // 2 + 1) if batch % w == 0]


def build_records(data: dict[str, Any], split: str):
    """Scan one split (problems are logged as warnings), log its summary, and return its records."""
    sources = data.get(split) or []
    if not sources:
        raise DataError(f"data '{data['yaml_file']}' has no '{split}' split")
    records, report = scan_split(sources, data["nc"], split=split, root=data["path"])
    LOGGER.info(f"{split}: {report.summary()}")
    return records


def select_data(cfg: Config, data: dict[str, Any], train_records, val_records):
    """Apply ``fraction``, ``classes`` and ``single_cls`` (:mod:`yolotrain.data.select`) to the scanned splits.

    Returns:
        ``(data, train_records, val_records)``; under ``single_cls`` the data's ``nc`` is 1 and its names one name.
    """
    if not (cfg.single_cls or cfg.classes or cfg.fraction < 1.0):
        return data, train_records, val_records
    kw = dict(nc=data["nc"], single_cls=cfg.single_cls, classes=cfg.classes, fraction=cfg.fraction, seed=cfg.seed)
    train_records = select_records(train_records, split="train", **kw)
    if val_records is not None:
        val_records = select_records(val_records, split="val", **kw)
    return single_class_data(data) if cfg.single_cls else data, train_records, val_records


def single_class_data(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with one class (``single_cls``): ``nc`` 1 and :func:`~yolotrain.data.select.single_class_names`."""
    names = single_class_names(data["names"])
    if data["nc"] != 1:
        LOGGER.info(f"single_cls: the {data['nc']} classes are trained and validated as one, '{names[0]}'")
    return {**data, "nc": 1, "names": names}


def build_loader(
    records,
    cfg: Config,
    imgsz: int,
    batch: int,
    train: bool,
    rank: int = -1,
    world_size: int = 1,
    pin_memory: bool = False,
):
    """A dataset and loader for training (augmented, shuffled) or evaluation (letterboxed, in order)."""
    dataset = DetectionDataset(
        records,
        imgsz=imgsz,
        augment=train,
        augmentation=AugmentSettings.from_config(cfg) if train else None,
        stride=MAX_STRIDE,
        cache=cfg.cache if cfg.cache != "off" else False,
        seed=cfg.seed,
        rect=cfg.rect,
        val_resize=cfg.val_resize,
    )
    return build_dataloader(
        dataset,
        batch_size=batch,
        workers=cfg.workers,
        shuffle=train,
        seed=cfg.seed,
        rank=rank,
        world_size=world_size,
        pin_memory=pin_memory,
        drop_last=False,
        repeat_factors=train_repeat_factors(records, cfg) if train else None,
    )


def train_class_weights(cfg: Config, records, names: list[str]) -> np.ndarray | None:
    """The classification loss's per-class weights that ``cls_weights=`` asks for, logged per class."""
    nc = len(names)
    boxes = np.bincount(np.concatenate([r.cls for r in records] or [np.zeros(0, np.int64)]), minlength=nc)[:nc]
    weights = class_weights(cfg.cls_weights, boxes)
    if weights is not None:
        LOGGER.info("cls_weights: " + ", ".join(f"{n} {w:.3g} ({b} boxes)" for n, w, b in zip(names, weights, boxes)))
    return weights


def train_repeat_factors(records, cfg: Config) -> np.ndarray | None:
    """Each training image's repeat factor under ``sampler=repeat_factor`` (None for plain shuffling)."""
    if cfg.sampler != "repeat_factor":
        return None
    classes = [r.cls for r in records]
    nc = 1 + max((int(c.max()) for c in classes if len(c)), default=-1)
    factors = repeat_factors(classes, nc, cfg.rfs_threshold)
    LOGGER.info(
        f"sampler: repeat_factor (rfs_threshold={cfg.rfs_threshold:g}): {epoch_length(factors)} images per epoch "
        f"from {len(records)}; {int((factors > 1).sum())} images repeat, up to {factors.max():.2f}x"
    )
    return factors


def run_dir(cfg: Config, create: bool = True) -> Path:
    """Claim the run folder ``{project}/{name}``: created now, atomically, with the next free number when the
    name is taken (unless ``exist_ok``), so runs started at once never share a folder.

    With ``create=False`` only the folder itself is made; the trainer adds ``weights/`` once its set-up
    succeeded, and removes the folder again if the set-up failed (``utils.files.released_on_failure``), so a
    run refused for bad settings or data leaves no empty folder behind.
    """
    path = claim_dir(Path(cfg.project) / cfg.name, exist_ok=cfg.exist_ok)
    if create:
        (path / "weights").mkdir(parents=True, exist_ok=True)
    return path


def inference_imgsz(cfg: Config, state: dict[str, Any], default: int = 640) -> int:
    """``imgsz`` when the user gave it, else the checkpoint's training size, else ``default``."""
    if "imgsz" in cfg.explicit or not state:
        return cfg.imgsz if "imgsz" in cfg.explicit else default
    return state["config"]["imgsz"]


# ------------------------------------------------------------------------------------------------ the run
class TrainLoaders:
    """The training and validation loaders; the training loader is rebuilt when a phase changes the batch.

    Args:
        cfg: The run's config.
        train_records: The training split's records.
        val_records: The validation split's records (None: no validation).
        imgsz: The training image size.
        device: Where the model runs (pinned memory on CUDA).
        val_batch: The validation batch per process.
    """

    def __init__(self, cfg: Config, train_records, val_records, imgsz: int, device: torch.device, val_batch: int):
        self.cfg, self.train_records, self.imgsz = cfg, train_records, imgsz
        self.world = dist.world_size()
        self.rank = dist.rank() if self.world > 1 else -1
        self.pin = device.type == "cuda"
        self.rank_batch = 0
        self.train_loader = None
        self.iters_per_epoch = 0  # batches per epoch of the training loader
        self.val_loader = (
            build_loader(val_records, cfg, imgsz, val_batch, False, self.rank, self.world, self.pin)
            if val_records
            else None
        )

    def use_batch(self, batch: int) -> int:
        """Make the training loader serve ``batch`` (global) images per step; returns its batches per epoch."""
        rank_batch = per_process_batch(batch, self.world)
        if rank_batch != self.rank_batch:
            self.rank_batch = rank_batch
            self.train_loader = build_loader(
                self.train_records, self.cfg, self.imgsz, rank_batch, True, self.rank, self.world, self.pin
            )
            # counted before any set_epoch: a resumed epoch's skipped batches shorten that epoch, not the others
            self.iters_per_epoch = len(self.train_loader)
        return self.iters_per_epoch

    def data_wait(self, advise: bool) -> float:
        """The last training pass's share of step time spent waiting for batches; ``advise`` logs the
        ``profile=true`` advice on it (rank 0, once)."""
        loader = self.train_loader
        if advise and self.cfg.profile and dist.is_main():
            cfg = self.cfg
            for line in loader_advice(loader, workers=cfg.workers, imgsz=cfg.imgsz, cache=cfg.cache):
                LOGGER.info(f"profile: {line}")
        stats = getattr(loader, "stats", None)  # the loader measures how long each batch was waited for
        return stats.wait_share if stats is not None else 0.0

    def shutdown(self) -> None:
        """Stop the loaders' worker processes now (they would otherwise be stopped at exit)."""
        shutdown_workers(self.train_loader)
        shutdown_workers(self.val_loader)


@dataclass
class Run:
    """The parts a training run is made of, built in one visible order by :func:`build_run`."""

    cfg: Config  # the resolved settings, with the batch AutoBatch chose recorded in it
    save_dir: Path
    data: dict[str, Any]
    names: list[str]
    imgsz: int
    device: torch.device
    model: nn.Module  # plain (unwrapped); the step holds the DDP-wrapped one
    criterion: DetectionLoss
    precision: Precision
    loaders: TrainLoaders
    optimizer: torch.optim.Optimizer
    optimizer_name: str
    base_lr: float
    schedule: Schedule
    ema: ModelEMA | None
    state: TrainState
    rngs: RngStreams
    step: TrainStep
    freezer: Freezer
    planner: PhasePlanner
    validator: Validator | None
    checkpointer: Checkpointer
    first_epoch: int  # where training (re)starts
    horizon: FixedHorizon | TimeBudget  # the epoch count and what is fitted to it (time=: refitted)
    mlflow: MlflowRunRecord | None = None  # mlflow=: the MLflow run this run logs to (kept in checkpoints)

    @property
    def wdir(self) -> Path:
        return self.save_dir / "weights"

    @property
    def eval_model(self) -> nn.Module:
        """What validation scores: the EMA, or the model when there is none."""
        return self.ema.ema if self.ema is not None else self.model


def run_view(path: str, doc: str | None = None, settable: bool = False) -> property:
    """A trainer property that reads ``trainer.run.<path>`` (the part that owns it stays the owner);
    ``settable``: callbacks may also replace the value (it is written into that part)."""
    read = attrgetter(path)
    owner_path, _, name = path.rpartition(".")
    owner = attrgetter(owner_path) if owner_path else (lambda run: run)

    def write(trainer: Any, value: Any) -> None:
        setattr(owner(trainer.run), name, value)

    return property(lambda trainer: read(trainer.run), write if settable else None, doc=doc)


def resolve_run(cfg: Config) -> tuple[Config, dict[str, Any] | None, Path]:
    """Choose the run folder and the checkpoint to resume from on rank 0; every rank gets both.

    Rank 0 alone reads the checkpoint and broadcasts it, so ranks on other machines need no shared
    filesystem.

    Returns:
        The config (the checkpoint's when resuming), the checkpoint's state or None, and the run folder.
    """
    shared = None
    if dist.is_main():
        cfg = elastic_resume(cfg)
        state, save_dir = None, None
        if cfg.resume:
            cfg, state, ckpt = prepare_resume(cfg)
            LOGGER.info(f"resume: continuing {ckpt} (epochs={cfg.epochs})")
            save_dir = ckpt.parent.parent
        save_dir = save_dir or run_dir(cfg, create=False)
        shared = (cfg.to_dict(), sorted(cfg.explicit), state, str(save_dir))
    values, explicit, state, save_dir = dist.broadcast_object(shared)
    return Config(values, explicit), state, Path(save_dir)


def build_run(
    cfg: Config,
    resume_state: dict[str, Any] | None,
    save_dir: Path,
    device: torch.device,
    before_optimizer_step=None,
    before_step_wanted=None,
) -> Run:
    """Build every part of a run, in order, on every rank; restore ``resume_state`` when given.

    Args:
        cfg: The settings (from :func:`resolve_run`).
        resume_state: The checkpoint to continue, or None for a new run.
        save_dir: The run folder (created here, on rank 0, once everything else succeeded).
        device: Where the model runs (the process group was set up for it).
        before_optimizer_step: Called by the step after unscaling (the ``on_before_optimizer_step`` event).
        before_step_wanted: Whether that event has listeners (the step reads its skip flag back only then).
    """
    state_in = resume_state
    init_seeds(cfg.seed, cfg.deterministic)  # the same on every rank: identical initial weights
    configure_backend(device, cfg.deterministic)
    world = dist.world_size()

    # data: the YAML, then every split scanned (every rank scans; rank 0 reports the problems)
    data = resolve_data(cfg)
    with dist.main_rank_warnings(LOGGER):
        train_records = build_records(data, "train")
        val_records = build_records(data, "val") if cfg.val else None
        data, train_records, val_records = select_data(cfg, data, train_records, val_records)
    names, imgsz = data["names"], check_imgsz(cfg.imgsz)

    # model and loss
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = (
        build_model(**state_in["model_cfg"])
        if state_in
        else weights_io.build_train_model(str(cfg.model), cfg.pretrained, cfg.load, data["nc"])
    )
    if model.nc != data["nc"]:
        raise CheckpointError(f"cannot resume: the checkpoint's model has {model.nc} classes, the data {data['nc']}")
    model = model.to(device, memory_format=memory_format)
    model.names = names
    info = model_info(model, imgsz=imgsz)
    LOGGER.info(
        f"model: scale {model.scale}, {info['params']:,} parameters, {info['layers']} layers, "
        f"{info['gflops']:.1f} GFLOPs at {imgsz}"
    )
    criterion = DetectionLoss.from_model(
        model, LossGains.from_config(cfg), cfg.max_boxes, cls_weights=train_class_weights(cfg, train_records, names)
    )

    # precision: checked on rank 0 alone, so before anything that needs the other ranks (SyncBN)
    if state_in:
        precision = Precision(device, state_in["precision"]["amp"])
    else:
        precision = build_precision(cfg, model, criterion, device, imgsz)

    # input sizes and the batch (AutoBatch probes the plain model, before SyncBN and DDP)
    max_size = cfg.max_size or (round(imgsz * 1.667) if cfg.min_size else None)
    multiscale = MultiScale(
        imgsz, stride=MAX_STRIDE, fraction=cfg.multi_scale, min_sizes=cfg.min_size or None, max_size=max_size,
        seed=cfg.seed,
    )  # fmt: skip
    largest = multiscale.largest((imgsz, imgsz))
    if multiscale.enabled:
        LOGGER.info(f"multi-scale: a new size every iteration, up to {largest[0]}x{largest[1]} (decided on rank 0)")
    per_rank_images = math.ceil(len(train_records) / world)
    batch = choose_batch(cfg.batch, model, criterion, precision, device, largest, world, memory_format, per_rank_images)
    # recorded in the config, so args.yaml and checkpoints hold the batch a resume must reuse
    cfg = cfg.replace(batch=batch)
    if cfg.sync_bn and world > 1:
        model = convert_sync_bn(model, device)
        LOGGER.info("sync_bn: BatchNorm statistics are computed over the global batch")
    elif cfg.sync_bn:
        LOGGER.warning("sync_bn=true has no effect in one process")
    if state_in:
        note_world_change(state_in, world, batch, cfg.sync_bn)

    # loaders, optimizer and schedule
    whose = f"resume={cfg.resume}: the run's 'batch'" if state_in else "setting 'batch'"
    loaders = TrainLoaders(cfg, train_records, val_records, imgsz, device, per_process_batch(batch, world, whose) * 2)
    position = Position(**state_in["position"]) if state_in else Position()
    first_epoch = position.next_start()[0]
    spec = cfg.freeze
    if isinstance(spec, str) and "," in spec:
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    freezer = Freezer(model, resolve_freeze(model, spec))
    # on resume, the optimizer that optimizer=auto chose then (extending epochs could change its choice)
    name, lr0 = (state_in["optimizer_name"], state_in["base_lr"]) if state_in else (cfg.optimizer, cfg.lr0)
    total_iters = math.ceil(len(train_records) / max(batch, cfg.nbs)) * cfg.epochs
    # built over every parameter before anything is frozen: frozen ones get no gradient and are skipped
    # by the step, and unfreezing needs no new optimizer
    optimizer, optimizer_name, base_lr = build_optimizer(
        model, name, lr0, cfg.momentum, cfg.weight_decay, total_iters, data["nc"]
    )
    planner = PhasePlanner(cfg, freezer.prefixes, batch, base_lr, optimizer_name)
    nb = loaders.use_batch(planner.batch_at(first_epoch))  # the loader of the phase training starts in
    warmup = warmup_iters(cfg, nb)
    schedule = Schedule(
        cfg.epochs, nb, cfg.lrf, cfg.cos_lr, warmup, cfg.warmup_bias_lr, cfg.warmup_momentum, cfg.momentum
    )

    # the step and what it updates
    ema = ModelEMA(model, cfg.ema_decay, cfg.ema_tau) if cfg.ema else None
    state = TrainState(patience=cfg.patience, processes=world)
    oom_injector = OOMInjector.from_env()  # YOLOTRAIN_INJECT_OOM, for tests and drills
    only = os.environ.get("YOLOTRAIN_INJECT_OOM_RANK")
    if only is not None and only.strip() != str(dist.rank()):  # inject on one rank of a DDP job only
        oom_injector = None
    step = TrainStep(
        model, criterion, optimizer, precision, ema, state, device=device, memory_format=memory_format,
        multiscale=multiscale, clip_grad=cfg.clip_grad, max_nonfinite=cfg.max_nonfinite,
        oom_injector=oom_injector, before_optimizer_step=before_optimizer_step, before_step_wanted=before_step_wanted,
        compile=cfg.compile, max_boxes=cfg.max_boxes, cuda_graphs=cfg.cuda_graphs,
    )  # fmt: skip
    validator = None
    if loaders.val_loader is not None:
        conf = cfg.conf if cfg.conf is not None else 0.001
        progress = cfg.verbose and dist.is_main()
        validator = Validator(
            loaders.val_loader, names, device, precision, conf=conf, iou=cfg.iou, max_det=cfg.max_det,
            progress=progress, multi_label=cfg.multi_label, ap_style=cfg.ap_style,
        )  # fmt: skip
        validator.oom_injector = oom_injector

    # the checkpoint: the run description and the union of the parts' states
    rngs = RngStreams(dist.rank(), world, cfg.seed, lambda: state.position)
    parts = {
        "model": StatefulModule("model", model, copy=True), "optimizer": StatefulModule("optimizer", optimizer),
        "precision": precision, "train": state, "rng": rngs,
    }  # fmt: skip
    if ema is not None:
        parts["ema"] = ema
    if cfg.time > 0:
        horizon = TimeBudget(cfg.time, cfg.epochs, warmup, cfg.warmup_epochs, cfg.close_mosaic, cfg.val_period, cfg.val)
        parts["budget"] = horizon
    else:
        horizon = FixedHorizon(Horizon(cfg.epochs, warmup, cfg.close_mosaic))
    mlflow_record = MlflowRunRecord() if cfg.mlflow else None
    if mlflow_record is not None:
        parts["mlflow"] = mlflow_record
    run_info = {
        "model_cfg": model.config(), "names": list(names), "config": cfg.to_dict(),
        "data_yaml": data["yaml_file"], "optimizer_name": optimizer_name, "base_lr": base_lr,
        "versions": {"yolotrain": __version__, "torch": torch.__version__},
    }  # fmt: skip
    checkpointer = Checkpointer(save_dir / "weights", parts, run_info)
    if dist.is_main():  # the set-up succeeded: now the run folder is filled
        (save_dir / "weights").mkdir(parents=True, exist_ok=True)
        if resume_state is None:  # a fresh run in a used folder (exist_ok=true): its rows start a fresh results.csv
            old = set_aside(save_dir / "results.csv")
            if old is not None:
                LOGGER.info(f"results: {save_dir / 'results.csv'} of an earlier run kept aside as {old.name}")
        mark_elastic_run(save_dir)
        cfg.dump(save_dir / "args.yaml")
    return Run(
        cfg, save_dir, data, names, imgsz, device, model, criterion, precision, loaders, optimizer, optimizer_name,
        base_lr, schedule, ema, state, rngs, step, freezer, planner, validator, checkpointer, first_epoch, horizon,
        mlflow_record,
    )  # fmt: skip


def build_precision(cfg: Config, model: nn.Module, criterion, device: torch.device, imgsz: int) -> Precision:
    """Resolve ``amp`` for the device, check it on this model (rank 0, broadcast), log the choice."""
    amp, reason = choose_amp(cfg.amp, device)
    if cfg.amp_check and amp != "off":
        checked = choose_checked_precision(model, criterion, device, amp, imgsz)
        if checked != amp:
            amp, reason = checked, f"{amp} failed the AMP check"
    LOGGER.info(f"precision: {'fp32' if amp == 'off' else amp} (amp={cfg.amp}: {reason})")
    return Precision(device, amp)
