"""What the commands run, shared by the command line (:mod:`yolotrain.cli`) and the Python API
(:mod:`yolotrain.api`): loading a model for inference, validation and prediction from a resolved config.
"""

from __future__ import annotations

from pathlib import Path

from yolotrain.config import Config
from yolotrain.errors import ConfigError
from yolotrain.utils.logging import LOGGER


def load_for_inference(cfg: Config):
    """Model, device and precision for val/predict from ``model=`` (a checkpoint or a fresh scale)."""
    from yolotrain.engine.precision import Precision  # noqa: PLC0415 - torch and the engine load only when a command runs (fast CLI start)
    from yolotrain.models.weights_io import load_model_spec  # noqa: PLC0415 - torch and the engine load only when a command runs (fast CLI start)
    from yolotrain.utils.torch_utils import select_device  # noqa: PLC0415 - torch and the engine load only when a command runs (fast CLI start)

    device = select_device(cfg.device)
    model, state = load_model_spec(cfg.model)
    model = model.to(device)
    precision = Precision(device, cfg.amp)
    if cfg.half:
        from yolotrain.engine.precision import inference_dtype  # noqa: PLC0415 - torch and the engine load only when a command runs (fast CLI start)

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
    from yolotrain.data import load_data_yaml  # noqa: PLC0415 - torch and the engine load only when a command runs (fast CLI start)
    from yolotrain.data.select import select_records  # noqa: PLC0415 - torch and the engine load only when a command runs (fast CLI start)
    from yolotrain.engine.build import (  # noqa: PLC0415 - torch and the engine load only when a command runs (fast CLI start)
        build_loader,
        build_records,
        check_imgsz,
        inference_imgsz,
        resolve_data,
        single_class_data,
    )
    from yolotrain.engine.validator import Validator  # noqa: PLC0415 - torch and the engine load only when a command runs (fast CLI start)

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
    """Predict as ``cfg`` says; returns the list of Prediction and sets ``save_dir`` on the list."""
    from yolotrain.engine.build import check_imgsz, inference_imgsz  # noqa: PLC0415 - torch and the engine load only when a command runs (fast CLI start)
    from yolotrain.predict import run_predict  # noqa: PLC0415 - torch and the engine load only when a command runs (fast CLI start)
    from yolotrain.utils.files import increment_path  # noqa: PLC0415 - torch and the engine load only when a command runs (fast CLI start)

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
