"""Import an Ultralytics YOLOv8 / YOLO11 detection checkpoint without ultralytics and without running it.

The file (``yolov8n.pt``, ``yolo11s.pt``, a ``best.pt``/``last.pt`` of an Ultralytics run) is read by
:func:`yolotrain.models.safe_pickle.safe_load`: its model is a tree of inert records of
``torch.nn.Module`` state (``_parameters``, ``_buffers``, ``_modules``) plus the attributes Ultralytics
keeps (``yaml``, ``names``, ``stride``, ``nc``). From that tree come the architecture (family from the
layer types, depth/width/max-channels from the yaml's scale or, without a yaml, from the tensor shapes),
the class names, and the tensors, renamed onto our modules by
:mod:`yolotrain.models.ultralytics_map`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from yolotrain.errors import CheckpointError, ConfigError
from yolotrain.models.detector import Detector
from yolotrain.models.registry import registered_archs, validate_model_cfg
from yolotrain.models.safe_pickle import Inert, safe_load
from yolotrain.models.ultralytics_map import map_state_dict

__all__ = ["ImportedCheckpoint", "import_ultralytics", "ultralytics_from", "is_ultralytics", "LAYERS"]

# Layer types of the published detection yamls, in order; the file's own layer list must equal one of them.
_V8_NECK = ["Upsample", "Concat", "C2f", "Upsample", "Concat", "C2f", "Conv", "Concat", "C2f", "Conv", "Concat", "C2f"]
_11_NECK = [t.replace("C2f", "C3k2") for t in _V8_NECK]
LAYERS = {
    "v8": ["Conv", "Conv", "C2f", "Conv", "C2f", "Conv", "C2f", "Conv", "C2f", "SPPF", *_V8_NECK, "Detect"],
    "11": ["Conv", "Conv", *["C3k2", "Conv"] * 3, "C3k2", "SPPF", "C2PSA", *_11_NECK, "Detect"],
}
# Where each layer takes its input from ("f" in the yaml): the neck's skip connections.
_FROM = {
    "v8": [-1] * 10 + [-1, [-1, 6], -1, -1, [-1, 4], -1, -1, [-1, 12], -1, -1, [-1, 9], -1, [15, 18, 21]],
    "11": [-1] * 11 + [-1, [-1, 6], -1, -1, [-1, 4], -1, -1, [-1, 13], -1, -1, [-1, 10], -1, [16, 19, 22]],
}
# Published multipliers, tried in turn when the file carries no yaml scale (shapes decide).
_DEPTHS = (0.33, 0.5, 0.67, 1.0)
_WIDTHS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
_MAX_CHANNELS = (1024, 768, 512)


@dataclass
class ImportedCheckpoint:
    """What an Ultralytics file holds, in our terms.

    Attributes:
        model_cfg: Validated ``build_model`` keywords (a registered scale such as ``11n`` when the
            architecture is a published one, else a ``custom`` description).
        weights: Our tensor names -> fp32 tensors (every tensor of the model, ``stride`` included).
        names: Class names, index order.
        imgsz: The training image size recorded in the file, if any.
        which: ``"ema"`` or ``"model"``: which of the file's weights were taken.
        summary: One line for the log.
    """

    model_cfg: dict
    weights: dict[str, torch.Tensor]
    names: list[str]
    imgsz: int | None = None
    which: str = "model"
    summary: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# Where Ultralytics' trainer keeps the model in a checkpoint dict, and the module its model classes live in.
_MODEL_KEYS = ("model", "ema")
_MODEL_MODULE = "ultralytics.nn.tasks."


def is_ultralytics(obj: Any) -> bool:
    """Whether a loaded checkpoint is Ultralytics', from its structure: a dict whose ``model`` or ``ema``
    holds an object of a class from ``ultralytics.nn.tasks`` (text elsewhere in the file does not count)."""
    return isinstance(obj, dict) and any(
        isinstance(obj.get(k), Inert) and obj[k].cls_name.startswith(_MODEL_MODULE) for k in _MODEL_KEYS
    )


def _short(inert: Any) -> str:
    return inert.cls_name.rsplit(".", 1)[-1] if isinstance(inert, Inert) else type(inert).__name__


def _tensors(module: Inert, prefix: str, out: dict[str, torch.Tensor], where: str) -> None:
    """Collect a module tree's persistent parameters and buffers the way ``state_dict`` names them."""
    if not isinstance(module.get("_modules"), dict):
        raise CheckpointError(f"'{where}': {module.cls_name} at '{prefix or 'model'}' holds no module state")
    skip = module.get("_non_persistent_buffers_set")
    skip = skip if isinstance(skip, (set, frozenset, list, tuple)) else ()
    for group in ("_parameters", "_buffers"):
        members = module.get(group) or {}
        if not isinstance(members, dict):
            raise CheckpointError(f"'{where}': {group} of '{prefix or 'model'}' is a {type(members).__name__}")
        for name, t in members.items():
            if t is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(t, torch.Tensor):
                raise CheckpointError(f"'{where}': {prefix}{name} is a {type(t).__name__}, not a tensor")
            out[f"{prefix}{name}"] = t
    for name, child in module.get("_modules").items():
        if child is None:
            continue
        if not isinstance(child, Inert):
            raise CheckpointError(f"'{where}': module {prefix}{name} is a {type(child).__name__}")
        _tensors(child, f"{prefix}{name}.", out, where)


def _family(layers: list[Inert], where: str) -> str:
    kinds = [_short(m) for m in layers]
    for family, expected in LAYERS.items():
        if kinds == expected:
            froms = [m.get("f") for m in layers]
            if all(f is not None for f in froms) and froms != _FROM[family]:
                i = next(i for i, (a, b) in enumerate(zip(froms, _FROM[family])) if a != b)
                raise CheckpointError(
                    f"'{where}': layer {i} takes input from {froms[i]}, YOLO{family} from {_FROM[family][i]}"
                )
            return family
    # Name the first difference from the closer family.
    family = "11" if "C3k2" in kinds else "v8"
    expected = LAYERS[family]
    i = next((i for i, (a, b) in enumerate(zip(kinds, expected)) if a != b), min(len(kinds), len(expected)))
    got = kinds[i] if i < len(kinds) else "nothing"
    want = expected[i] if i < len(expected) else "nothing"
    raise CheckpointError(
        f"'{where}' is not a YOLOv8/YOLO11 detection model: layer {i} is {got}, YOLO{family} has {want} "
        f"({len(kinds)} layers; other Ultralytics architectures are not supported)"
    )


def _arch_from_yaml(yaml: Any, family: str) -> dict | None:
    if not isinstance(yaml, dict):
        return None
    scales, scale = yaml.get("scales"), yaml.get("scale")
    if isinstance(scales, dict) and scales:
        scale = scale if scale in scales else next(iter(scales))  # Ultralytics' own fallback
        depth, width, max_channels = scales[scale]
    elif "depth_multiple" in yaml or "width_multiple" in yaml:
        depth, width, max_channels = yaml.get("depth_multiple", 1.0), yaml.get("width_multiple", 1.0), 8192
    else:
        return None
    if isinstance(max_channels, float) and max_channels == float("inf"):
        max_channels = 8192
    return {"family": family, "depth": depth, "width": width, "max_channels": int(max_channels)}


def _shapes_of(cfg: dict) -> dict[str, torch.Tensor]:
    """Our state dict for ``cfg`` as meta tensors: names and shapes, nothing allocated."""
    with torch.device("meta"):
        model = Detector(**{k: v for k, v in cfg.items() if k != "scale"})
    return model.state_dict()


def _arch_from_shapes(family: str, tensors: dict[str, torch.Tensor], nc: int, c3k: bool) -> dict | None:
    """Try the published scales, then other published multipliers, until one gives exactly the file's shapes.

    Some multipliers give the same network (YOLO11's repeat counts of 2 round to 1 for depth 0.33 and
    0.5 alike); trying the registered scales first names such a file by its published scale.
    """
    known = [a for a in registered_archs().values() if a["family"] == family]
    grid = [
        {"family": family, "depth": d, "width": w, "max_channels": mc}
        for d in _DEPTHS
        for w in _WIDTHS
        for mc in _MAX_CHANNELS
    ]
    for arch in known + grid:
        cfg = {**arch, "nc": nc}
        if family == "11":
            cfg["c3k"] = c3k
        try:
            map_state_dict(family, tensors, _shapes_of(cfg), "?")
        except CheckpointError:
            continue
        return cfg
    return None


def import_ultralytics(path: str | Path, prefer_ema: bool = True) -> ImportedCheckpoint:
    """Read an Ultralytics YOLOv8/YOLO11 detection checkpoint safely and express it in our terms.

    Args:
        path: The ``.pt`` file.
        prefer_ema: Take the EMA weights when the file has them (what Ultralytics validates with).

    Raises:
        UnsafeFileError: The file needs code to load (see :mod:`yolotrain.models.safe_pickle`).
        CheckpointError: It is not a YOLOv8/YOLO11 detection model, or a tensor has no place here / a
            different shape (all such tensors are listed).
    """
    return ultralytics_from(safe_load(path), str(path), prefer_ema)


def ultralytics_from(obj: Any, where: str, prefer_ema: bool = True) -> ImportedCheckpoint:
    """:func:`import_ultralytics` of a file already read by :func:`safe_load` (``where`` names it)."""
    try:
        return _ultralytics_from(obj, where, prefer_ema)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError, RuntimeError) as e:
        # a field of an unexpected type (a tensor where a number belongs...): one line, not a traceback
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise CheckpointError(f"'{where}' is not a well-formed Ultralytics checkpoint: {detail}") from None


def _ultralytics_from(obj: Any, where: str, prefer_ema: bool) -> ImportedCheckpoint:
    if not isinstance(obj, dict):
        raise CheckpointError(f"'{where}' holds a {type(obj).__name__}, not an Ultralytics checkpoint dict")
    order = ("ema", "model") if prefer_ema else ("model", "ema")
    which = next((k for k in order if isinstance(obj.get(k), Inert)), None)
    if which is None:
        raise CheckpointError(f"'{where}' holds no model ('model' and 'ema' are both empty)")
    root = obj[which]
    if _short(root) != "DetectionModel":
        raise CheckpointError(
            f"'{where}' holds an Ultralytics {_short(root)}; only DetectionModel (detect) is supported"
        )
    seq = (root.get("_modules") or {}).get("model")
    layers = list((seq.get("_modules") or {}).values()) if isinstance(seq, Inert) else []
    if not layers or not all(isinstance(m, Inert) for m in layers):
        raise CheckpointError(f"'{where}': the DetectionModel holds no layer list")
    family = _family(layers, where)
    head = layers[-1]
    if head.get("end2end") or head.get("reg_max", 16) != 16:
        raise CheckpointError(f"'{where}': only Detect heads with reg_max 16 and no end-to-end branch are supported")
    tensors: dict[str, torch.Tensor] = {}
    _tensors(root, "", tensors, where)
    cls_out = tensors.get(f"model.{len(layers) - 1}.cv3.0.2.weight")
    if cls_out is None:
        raise CheckpointError(f"'{where}': the Detect head has no class output conv")
    nc = int(cls_out.shape[0])
    c3k = "model.2.m.0.cv3.conv.weight" in tensors  # C3k (not Bottleneck) even in the shallowest stage
    arch = _arch_from_yaml(root.get("yaml"), family)
    how = "yaml"
    if arch is None:
        arch, how = _arch_from_shapes(family, tensors, nc, c3k), "tensor shapes"
        if arch is None:
            raise CheckpointError(f"'{where}': no yaml scale and no published scale matches its tensor shapes")
    if family == "11":
        arch["c3k"] = c3k
    try:
        cfg = validate_model_cfg({"scale": "custom", **arch, "nc": nc}, where=where)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    full = cfg if cfg["scale"] == "custom" else {"scale": "custom", **arch, "nc": nc}
    weights = map_state_dict(family, tensors, _shapes_of(full), where)
    stride = root.get("stride")
    if not isinstance(stride, torch.Tensor) or stride.tolist() != [8.0, 16.0, 32.0]:
        raise CheckpointError(f"'{where}': strides {stride!r} differ from (8, 16, 32)")
    weights = {k: (v.float() if v.is_floating_point() else v) for k, v in weights.items()}
    weights["stride"] = stride.float()
    raw_names = root.get("names")
    if isinstance(raw_names, dict) and sorted(raw_names) == list(range(nc)):
        names = [str(raw_names[i]) for i in range(nc)]
    elif isinstance(raw_names, list) and len(raw_names) == nc:
        names = [str(n) for n in raw_names]
    else:
        names = [str(i) for i in range(nc)]
    args = obj.get("train_args") if isinstance(obj.get("train_args"), dict) else {}
    imgsz = args.get("imgsz") if isinstance(args.get("imgsz"), int) else None
    label = cfg["scale"] if cfg["scale"] != "custom" else f"YOLO{family} custom {arch}"
    summary = (
        f"Ultralytics {obj.get('version', '?')} checkpoint, {label} (architecture from {how}), {nc} classes, "
        f"{which} weights, {len(weights)} tensors mapped"
    )
    return ImportedCheckpoint(cfg, weights, names, imgsz, which, summary)
