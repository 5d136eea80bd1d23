"""One entry point for every weights file ``model=`` / ``pretrained=`` may name.

    read_weights("runs/train/exp/weights/best.pt")   # a yolotrain checkpoint
    read_weights("yolo11s.pt")                        # an Ultralytics YOLOv8/YOLO11 detection checkpoint
    read_weights("best.safetensors")                  # written by `yolotrain ckpt strip ... format=safetensors`

Each gives a :class:`LoadedWeights`: the validated model description, the (EMA when present) weights
under our names, the class names and the training image size. The kind is decided from the file itself:
a ``.safetensors`` header, else a torch.save file read by the bounded, restricted unpickler
(:mod:`yolotrain.models.safe_pickle`, nothing runs) whose structure says which: an object of an
``ultralytics.nn.tasks`` class under ``model``/``ema`` is Ultralytics', a dict tagged with our format is ours
(either checkpoint version, read through :class:`~yolotrain.checkpoint_file.Checkpoint`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from yolotrain.checkpoint_file import checkpoint_from
from yolotrain.errors import CheckpointError, ConfigError
from yolotrain.models.registry import available_scales, build_model, validate_model_cfg
from yolotrain.models.safe_pickle import safe_load
from yolotrain.models.transfer import describe_transfer, transfer_weights
from yolotrain.models.ultralytics_import import is_ultralytics, ultralytics_from

LOGGER = logging.getLogger("yolotrain")

__all__ = [
    "LoadedWeights",
    "read_weights",
    "model_from_weights",
    "load_model_spec",
    "build_train_model",
    "save_safetensors",
    "WEIGHT_SUFFIXES",
]

WEIGHT_SUFFIXES = (".pt", ".pth", ".safetensors")
SAFETENSORS_FORMAT = "yolotrain-weights-1"


@dataclass
class LoadedWeights:
    """A weights file in our terms.

    Attributes:
        path: The file.
        kind: ``"yolotrain"``, ``"ultralytics"`` or ``"safetensors"``.
        model_cfg: Validated ``build_model`` keywords.
        weights: Our tensor names -> tensors (EMA weights when the file has them).
        names: Class names (index order), or None when the file has none.
        imgsz: Training image size the file records, or None.
        state: The whole yolotrain checkpoint (empty for other kinds); ``data_yaml``, ``config``, ...
        summary: One line describing what was read, for the log.
    """

    path: str
    kind: str
    model_cfg: dict
    weights: dict[str, torch.Tensor]
    names: list[str] | None = None
    imgsz: int | None = None
    state: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""

    def inference_state(self) -> Mapping[str, Any]:
        """The checkpoint-like dict val/predict/export read (``names``, ``config.imgsz``, ``data_yaml``)."""
        if self.state:
            return self.state
        return {"names": self.names, "config": {"imgsz": self.imgsz or 640}, "model_cfg": self.model_cfg}


def read_weights(path: str | Path, prefer_ema: bool = True) -> LoadedWeights:
    """Read any supported weights file (see the module docstring).

    Raises:
        CheckpointError: One line naming the file: missing, unsafe, corrupt, or not a model we can build.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"weights file '{p}' does not exist")
    if p.suffix == ".safetensors":
        return _read_safetensors(p)
    obj = safe_load(p)  # every torch.save file is read once, within the bounds of safe_pickle
    if is_ultralytics(obj):  # the kind follows from the structure: where the model classes sit
        imp = ultralytics_from(obj, str(p), prefer_ema=prefer_ema)
        return LoadedWeights(str(p), "ultralytics", imp.model_cfg, imp.weights, imp.names, imp.imgsz, {}, imp.summary)
    state = checkpoint_from(obj, p)
    try:
        cfg = validate_model_cfg(state.get("model_cfg"), where=f"checkpoint '{p}' model_cfg")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    which = "ema" if prefer_ema and state.get("ema") else "model"
    weights = state.get(which)
    if not weights:
        raise CheckpointError(f"checkpoint '{p}' holds no model weights")
    imgsz = (state.get("config") or {}).get("imgsz")
    summary = f"yolotrain checkpoint, {cfg['scale']}, {cfg['nc']} classes, {which} weights"
    return LoadedWeights(str(p), "yolotrain", cfg, weights, state.get("names"), imgsz, state, summary)


def _read_safetensors(p: Path) -> LoadedWeights:
    # Optional-feeling but declared dependency; imported here to keep it off the CLI start-up path.
    from safetensors import SafetensorError, safe_open  # noqa: PLC0415 - safetensors loads only for .safetensors files

    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            weights = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"'{p}' is not a readable safetensors file: {str(e).splitlines()[0][:120]}") from None
    if meta.get("format") != SAFETENSORS_FORMAT:
        raise CheckpointError(
            f"'{p}' has no yolotrain model description in its metadata (format={meta.get('format')!r}); "
            "write it with `yolotrain ckpt strip ... format=safetensors`"
        )
    try:
        cfg = validate_model_cfg(json.loads(meta.get("model_cfg", "null")), where=f"'{p}' metadata model_cfg")
        names = json.loads(meta["names"]) if "names" in meta else None
        imgsz = int(meta["imgsz"]) if meta.get("imgsz") else None
    except (json.JSONDecodeError, ValueError, ConfigError) as e:
        raise CheckpointError(f"'{p}' metadata is malformed: {str(e).splitlines()[0][:160]}") from None
    if names is not None and (not isinstance(names, list) or len(names) != cfg["nc"]):
        raise CheckpointError(f"'{p}' metadata names do not list {cfg['nc']} classes")
    return LoadedWeights(str(p), "safetensors", cfg, weights, names, imgsz, {}, f"safetensors, {cfg['scale']}")


def save_safetensors(lw: LoadedWeights, out: str | Path, half: bool = True) -> Path:
    """Write ``lw``'s weights as ``.safetensors`` with the model description and names in its metadata.

    Args:
        lw: What :func:`read_weights` returned.
        out: The file to write.
        half: Store floating-point tensors in fp16 (as ``ckpt strip`` does for ``.pt``).
    """
    from safetensors.torch import save_file  # noqa: PLC0415 - safetensors loads only for .safetensors files

    tensors = {k: (v.half() if half and v.is_floating_point() else v) for k, v in lw.weights.items()}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {
        "format": SAFETENSORS_FORMAT,
        "model_cfg": json.dumps(lw.model_cfg),
        "names": json.dumps(lw.names or [str(i) for i in range(lw.model_cfg["nc"])]),
        "imgsz": str(lw.imgsz or ""),
        "source": f"{lw.kind}:{Path(lw.path).name}",
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata=meta)
    return out


def model_from_weights(lw: LoadedWeights) -> nn.Module:
    """Build the model ``lw`` describes and load every one of its tensors (strict), fp32, eval mode."""
    model = build_model(**lw.model_cfg)
    weights = {k: v.float() if v.is_floating_point() else v for k, v in lw.weights.items()}
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        detail = str(e).splitlines()[0][:160]
        raise CheckpointError(f"'{lw.path}': weights do not fit the model it describes: {detail}") from None
    model.names = lw.names or [str(i) for i in range(model.nc)]
    return model.float().eval()


def is_scale(spec: Any) -> bool:
    return str(spec) in available_scales()


def _check_spec(spec: str) -> None:
    if not spec.endswith(WEIGHT_SUFFIXES):
        raise ConfigError(
            f"setting 'model'={spec} is neither a scale ({', '.join(available_scales())}) "
            f"nor a weights file ({', '.join(WEIGHT_SUFFIXES)})"
        )


def load_model_spec(spec: str, nc: int = 80) -> tuple[nn.Module, Mapping[str, Any]]:
    """The model ``model=`` names for val/predict/export/info, and its checkpoint-like state (empty for a scale)."""
    spec = str(spec)
    if is_scale(spec):
        return build_model(scale=spec, nc=nc), {}
    _check_spec(spec)
    lw = read_weights(spec)
    if lw.kind != "yolotrain":
        LOGGER.info(f"model: {spec}: {lw.summary}")
    return model_from_weights(lw), lw.inference_state()


def build_train_model(spec: str, pretrained: str | None, load: str, nc: int) -> nn.Module:
    """A fresh model for training, optionally initialised from a weights file (fine-tuning, not resuming).

    ``model=n pretrained=w.pt`` builds scale n; ``model=w.pt`` (any kind :func:`read_weights` reads)
    builds the file's architecture with the data's ``nc``. Tensors whose names and shapes match are
    copied; with another number of classes the head's class branch is re-initialised; ``load=backbone``
    copies only the backbone. What was loaded and re-initialised, and why, is logged and kept in
    ``model.load_counts``.
    """
    spec = str(spec)
    source = pretrained or None
    file_weights = None
    if is_scale(spec):
        model = build_model(scale=spec, nc=nc)
    else:
        _check_spec(spec)
        file_weights = read_weights(spec)
        model = build_model(**{**file_weights.model_cfg, "nc": nc})
        source = source or spec
    if source:
        lw = file_weights if file_weights is not None and source == spec else read_weights(source)
        LOGGER.info(f"model: {source}: {lw.summary}")
        counts = transfer_weights(model, lw.weights, load=load)
        if counts["matched"] == 0:
            raise CheckpointError(f"'{source}': not one tensor fits model {spec}; is it the same family?")
        LOGGER.info(describe_transfer(counts, source))
        model.load_counts = counts
    return model
