"""What the commands run, shared by the command line (:mod:`yolotrain.cli`) and the Python API
(:mod:`yolotrain.api`): training, loading a model for inference, validation, prediction and model info
from a resolved config.

Both reach these functions through :mod:`yolotrain.commands` when a command runs, never at start-up,
so torch and the engine are imported here at the top.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from yolotrain.checkpoint_file import load_checkpoint
from yolotrain.config import Config
from yolotrain.data import load_data_yaml
from yolotrain.data.select import select_records
from yolotrain.engine.build import (
    build_loader,
    build_records,
    check_imgsz,
    inference_imgsz,
    resolve_data,
    single_class_data,
)
from yolotrain.engine.callbacks import Callbacks
from yolotrain.engine.launch import launch, processes_wanted
from yolotrain.engine.precision import Precision, inference_dtype
from yolotrain.engine.trainer import Trainer
from yolotrain.engine.validator import Validator
from yolotrain.errors import ConfigError
from yolotrain.eval import EvalResult
from yolotrain.models import model_info
from yolotrain.models.weights_io import load_model_spec
from yolotrain.predict import run_predict
from yolotrain.utils.files import increment_path
from yolotrain.utils.logging import LOGGER
from yolotrain.utils.torch_utils import select_device


def run_train(
    cfg: Config, callbacks: Callbacks | None = None, keep: Callable[[Trainer], None] | None = None
) -> tuple[Trainer | None, Path]:
    """Train as ``cfg`` says: in this process, or in worker processes (``nproc=N``, ``device=0,1``).

    Args:
        cfg: The resolved settings.
        callbacks: The caller's callbacks (sent to worker processes by name).
        keep: Given the trainer before it fits, so the caller holds it even when fitting raises.

    Returns:
        The trainer after ``fit`` (None when worker processes trained) and the run's weights folder.
    """
    n = processes_wanted(cfg)
    if n > 1:  # torchrun starts the workers, which come back here with WORLD_SIZE set
        # they re-import the callbacks by name; ones that cannot be are refused up front
        return None, launch(cfg, n, callbacks.items() if callbacks else ()) / "weights"
    trainer = Trainer(cfg, callbacks=callbacks)
    if keep is not None:
        keep(trainer)
    trainer.fit()
    return trainer, trainer.wdir


def best_result(wdir: Path) -> EvalResult | None:
    """The best epoch's EvalResult recorded in ``wdir``'s checkpoint (after a multi-process run)."""
    last = wdir / "last.pt"
    best = load_checkpoint(last).get("best_metrics") if last.is_file() else None
    return EvalResult.from_dict(best) if best else None


def load_for_inference(cfg: Config):
    """Model, device and precision for val/predict from ``model=`` (a checkpoint or a fresh scale)."""
    device = select_device(cfg.device)
    model, state = load_model_spec(cfg.model)
    model = model.to(device)
    precision = Precision(device, cfg.amp)
    if cfg.half:
        dtype = inference_dtype(device)
        if dtype is None:
            LOGGER.warning(f"half=true: {device.type} has no fast fp16/bf16 here; running in fp32")
        else:
            model = model.to(dtype)
            precision = Precision(device, "off")  # the weights themselves are reduced; no autocast
            LOGGER.info(f"half=true: running the model in {str(dtype).replace('torch.', '')}")
    return model, device, precision, state


def run_val(cfg: Config):
    """Validate ``cfg.model`` on ``cfg.split``; returns the EvalResult (with ``seconds`` set)."""
    model, device, precision, state = load_for_inference(cfg)
    if cfg.data:
        data = load_data_yaml(cfg.data)
    elif state.get("data_yaml") and Path(state["data_yaml"]).is_file():
        data = load_data_yaml(state["data_yaml"])
    else:
        data = resolve_data(cfg)
    # like the peers, a model trained with single_cls=true is validated as one class unless told otherwise
    recorded = (state.get("config") or {}).get("single_cls", False) if state else False
    single_cls = cfg.single_cls if "single_cls" in cfg.explicit else bool(cfg.single_cls or recorded)
    nc = 1 if single_cls else data["nc"]  # checked before the split is scanned
    if nc != model.nc:
        raise ConfigError(f"data '{data['yaml_file']}' has {nc} classes but the model has {model.nc}")
    imgsz = check_imgsz(inference_imgsz(cfg, state, default=cfg.imgsz))
    records = build_records(data, cfg.split)
    records = select_records(records, data["nc"], cfg.split, single_cls=single_cls, classes=cfg.classes)
    if single_cls:
        data = single_class_data(data)
    loader = build_loader(records, cfg, imgsz, cfg.batch, train=False)
    validator = Validator(
        loader,
        data["names"],
        device,
        precision,
        conf=cfg.conf if cfg.conf is not None else 0.001,
        iou=cfg.iou,
        max_det=cfg.max_det,
        agnostic=cfg.agnostic_nms,
        multi_label=cfg.multi_label,
        ap_style=cfg.ap_style,
        progress=cfg.verbose and not cfg.json,
    )
    result = validator(model)
    result.seconds = validator.seconds
    result.names = data["names"]
    return result


def run_predict_cfg(cfg: Config):
    """Predict as ``cfg`` says; returns the list of Prediction and the folder they were saved in."""
    if not cfg.source:
        raise ConfigError("setting 'source' is required for predict (an image, folder or glob)")
    model, device, precision, state = load_for_inference(cfg)
    imgsz = check_imgsz(inference_imgsz(cfg, state, default=cfg.imgsz))
    project = cfg.project if "project" in cfg.explicit else "runs/predict"
    save_dir = increment_path(Path(project) / cfg.name, exist_ok=cfg.exist_ok)
    preds = run_predict(
        model,
        cfg.source,
        save_dir,
        imgsz,
        device,
        conf=cfg.conf if cfg.conf is not None else 0.25,
        iou=cfg.iou,
        max_det=cfg.max_det,
        agnostic=cfg.agnostic_nms,
        save_txt=cfg.save_txt,
        batch=min(cfg.batch, 32),
        autocast=precision.autocast,
    )
    return preds, save_dir


def run_info(cfg: Config) -> tuple[Any, int, dict[str, Any]]:
    """The model ``model=`` names (on the CPU unless ``device`` is given), the image size its cost is
    counted at (``imgsz`` when given, else 640), and :func:`~yolotrain.models.model_info` of it."""
    model, _, _, _ = load_for_inference(cfg.replace(device="cpu") if not cfg.device else cfg)
    imgsz = cfg.imgsz if "imgsz" in cfg.explicit else 640
    return model, imgsz, model_info(model, imgsz=imgsz)
