"""Builders that turn a resolved config into the objects the trainer runs: data, model, loaders."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from yolotrain.config import Config
from yolotrain.data import DetectionDataset, build_dataloader, ensure_demo_dataset, load_data_yaml, scan_split
from yolotrain.errors import ConfigError, DataError
from yolotrain.models import available_scales, weights_io

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


def per_process_batch(batch: int, world: int) -> int:
    """Each process's share of the global ``batch`` over ``world`` processes.

    Raises:
        ConfigError: When the batch does not divide over the processes, or leaves fewer than two images
            per process (BatchNorm statistics of one image are meaningless).
    """
    if world == 1:
        return batch
    if batch % world:
        raise ConfigError(
            f"setting 'batch'={batch} does not divide over {world} processes; use a multiple of "
            f"{world} (batch is the global batch, each process gets batch/{world})"
        )
    if batch // world < 2:
        raise ConfigError(
            f"setting 'batch'={batch} gives {batch // world} image per process over {world} "
            f"processes; BatchNorm needs at least 2: use batch >= {2 * world}"
        )
    return batch // world


def build_records(data: dict[str, Any], split: str):
    """Scan one split (problems are logged as warnings), log its summary, and return its records."""
    sources = data.get(split) or []
    if not sources:
        raise DataError(f"data '{data['yaml_file']}' has no '{split}' split")
    records, report = scan_split(sources, data["nc"], split=split, root=data["path"])
    LOGGER.info(f"{split}: {report.summary()}")
    return records


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
        hyp=cfg,
        stride=MAX_STRIDE,
        cache=cfg.cache if cfg.cache != "off" else False,
        seed=cfg.seed,
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
    )


def is_scale(model: str) -> bool:
    return str(model) in available_scales()


def build_train_model(cfg: Config, nc: int) -> nn.Module:
    """A fresh model, optionally initialised from a weights file (fine-tuning, not resuming).

    See :func:`yolotrain.models.weights_io.build_train_model`: yolotrain checkpoints, Ultralytics
    YOLOv8/YOLO11 checkpoints and ``.safetensors`` files; counts logged and kept in ``model.load_counts``.
    """
    return weights_io.build_train_model(str(cfg.model), cfg.pretrained, cfg.load, nc)


def run_dir(cfg: Config, create: bool = True) -> Path:
    """The run folder ``{project}/{name}``, auto-incremented unless ``exist_ok``.

    With ``create=False`` only the name is chosen; the trainer creates the folder once its set-up
    succeeded, so a run refused for bad settings or data leaves no empty folder behind.
    """
    from yolotrain.utils.files import increment_path

    path = increment_path(Path(cfg.project) / cfg.name, exist_ok=cfg.exist_ok)
    if create:
        (path / "weights").mkdir(parents=True, exist_ok=True)
    return path


def to_device_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the tensors the loss needs onto ``device``."""
    out = dict(batch)
    for k in ("cls", "bboxes", "batch_idx"):
        out[k] = batch[k].to(device, non_blocking=True)
    return out


def load_model_spec(spec: str, nc: int = 80) -> tuple[nn.Module, dict[str, Any]]:
    """The model ``model=`` names for val/predict/export/info, and its checkpoint state (empty for a scale).

    See :func:`yolotrain.models.weights_io.load_model_spec` (any weights file it reads).
    """
    return weights_io.load_model_spec(spec, nc)


def inference_imgsz(cfg: Config, state: dict[str, Any], default: int = 640) -> int:
    """``imgsz`` when the user gave it, else the checkpoint's training size, else ``default``."""
    if "imgsz" in cfg.explicit or not state:
        return cfg.imgsz if "imgsz" in cfg.explicit else default
    return state["config"]["imgsz"]
