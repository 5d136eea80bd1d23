"""Export a detector to ONNX with decoding built in.

Run it with ``yolotrain export model=runs/train/exp/weights/best.pt format=onnx`` (writes ``best.onnx``
next to the checkpoint) or, from Python, ``export_onnx(model, "model.onnx", imgsz=640)``.

The exported graph takes float images (B, 3, H, W) in [0, 1] named ``images`` and returns ``output``
of shape (B, 4 + nc, A): rows 0-3 are xyxy boxes in input pixels, the rest sigmoid class scores, one
column per anchor. NMS is left to the runtime, so any NMS (or none) can follow. The batch axis is
always dynamic; ``dynamic=True`` also makes height and width dynamic (multiples of 32).

Which exporter: opsets up to 20 use torch's TorchScript-based exporter (``dynamo=False``). On torch
2.14 it is deprecated but still shipped, needs only ``onnx``, honours the requested opset exactly and
exports the nano model in about a second. The torch.export-based exporter (the default of
``torch.onnx.export`` since torch 2.9) needs ``onnxscript``, takes about 10 s for the same model and
only implements opset 18 and above (it silently keeps 18 when asked for less), so it is used for
opsets 21-23, which the TorchScript exporter cannot produce.
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yolotrain import __version__
from yolotrain.errors import ConfigError
from yolotrain.models.weights_io import is_scale, load_model_spec
from yolotrain.ops import decode

LOGGER = logging.getLogger("yolotrain")

FORMATS = ("onnx",)
MIN_OPSET = 11  # below 11 ONNX cannot express the neck's upsampling or a dynamic split size
MAX_TORCHSCRIPT_OPSET = 20  # the TorchScript exporter's newest opset; above it the dynamo exporter is used


class DecodedDetector(nn.Module):
    """Wraps a detector so its output is decoded boxes and scores, shaped (B, 4 + nc, A).

    Args:
        model: A :class:`~yolotrain.models.Detector` (raw head outputs per level).
        decode_dtype: Dtype the decoding runs in. fp32 by default even for an fp16 network: fp16
            cannot tell neighbouring pixels apart above 2048, and ONNX Runtime's CPU ``Range`` (used for
            the anchor grid) refuses fp16.
    """

    def __init__(self, model: nn.Module, decode_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = model
        # Python floats, not the stride buffer: torch.export turns a buffer's .tolist() into data-dependent
        # symbols it then cannot reason about.
        self.strides = [float(s) for s in model.stride.tolist()]
        self.reg_max = int(model.reg_max)
        self.decode_dtype = decode_dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        preds = [p.to(self.decode_dtype) for p in self.model(images)]
        return decode(preds, self.strides, self.reg_max).transpose(1, 2)


def _require(module: str, why: str) -> Any:
    """Import an optional dependency or explain, in one line, how to install it."""

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{why} needs the '{module}' package: pip install 'yolotrain[export]'") from None


def _check_imgsz(imgsz: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(int(v) for v in imgsz)
    if h <= 0 or w <= 0 or h % 32 or w % 32:
        raise ConfigError(f"setting 'imgsz'={imgsz} must be a positive multiple of 32 for export")
    return h, w


def export_onnx(
    model: nn.Module,
    path: str | Path,
    imgsz: int | tuple[int, int] = 640,
    opset: int = 17,
    dynamic: bool = True,
    half: bool = False,
    names: list[str] | None = None,
) -> Path:
    """Export ``model`` with decoding to an ONNX file, check it, and record metadata in it.

    The model is copied, so the caller's module keeps its mode, dtype and device.

    Args:
        model: A detector returning raw head outputs (``stride`` and ``reg_max`` attributes).
        path: Output file; parent folders are created.
        imgsz: Example input size (square int or (h, w)); the fixed size when ``dynamic`` is False.
        opset: ONNX opset, 11 to 23.
        dynamic: Also make height and width dynamic (the batch axis always is).
        half: fp16 weights and input (for GPU runtimes); decoding and the output stay fp32.
        names: Class names for the metadata; defaults to ``model.names`` or the class indices.

    Returns:
        The path written.

    Raises:
        ConfigError: Bad ``imgsz``/``opset``, a missing optional package, or an export failure.
    """
    onnx = _require("onnx", "ONNX export")
    h, w = _check_imgsz(imgsz)
    if not MIN_OPSET <= opset <= 23:
        raise ConfigError(f"setting 'opset'={opset} is not supported for export (use {MIN_OPSET} to 23)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [str(n) for n in (names or getattr(model, "names", None) or range(model.nc))]

    # Tracing happens on CPU in fp32 unless half: the graph does not depend on the device it was traced on.
    dtype = torch.float16 if half else torch.float32
    net = copy.deepcopy(model).to("cpu", dtype).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    wrapper = DecodedDetector(net).eval()
    example = torch.zeros(1, 3, h, w, dtype=dtype)

    if opset <= MAX_TORCHSCRIPT_OPSET:
        _export_torchscript(wrapper, example, path, opset, dynamic)
    else:
        _require("onnxscript", f"ONNX export at opset {opset}")
        _export_dynamo(wrapper, example, path, opset, dynamic)

    proto = onnx.load(str(path))
    n_anchors = sum((h // int(s)) * (w // int(s)) for s in wrapper.strides)
    _declare_io_shapes(proto, len(names), dynamic, (h, w), n_anchors)
    meta = {
        "names": json.dumps(names),
        "nc": str(len(names)),
        "stride": json.dumps(wrapper.strides),
        "imgsz": json.dumps([h, w]),
        "dynamic": json.dumps(bool(dynamic)),
        "output": "(batch, 4 + nc, anchors): xyxy pixels, then sigmoid class scores",
        "producer": "yolotrain",
    }

    meta["version"] = __version__
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:  # the checker raises several types; all mean an invalid file
        raise ConfigError(f"exported file '{path}' failed the ONNX checker: {_first_line(e)}") from None
    onnx.save(proto, str(path))
    size_mb = path.stat().st_size / 2**20
    LOGGER.info(
        f"export: wrote {path} ({size_mb:.1f} MB, opset {opset}, input (batch, 3, "
        f"{'height, width' if dynamic else f'{h}, {w}'}), {'fp16' if half else 'fp32'})"
    )
    return path


def _declare_io_shapes(proto: Any, nc: int, dynamic: bool, hw: tuple[int, int], n_anchors: int) -> None:
    """Give the graph's input and output readable, exporter-independent dimension names and sizes.

    The exporters leave names such as ``s53`` or ``Transposeoutput_dim_1`` even where the size is known
    (4 + nc rows); runtimes and users read these declared shapes, so state them plainly.
    """
    dims_in: list[int | str] = ["batch", 3, "height", "width"] if dynamic else ["batch", 3, *hw]
    dims_out: list[int | str] = ["batch", 4 + nc, "anchors" if dynamic else n_anchors]
    for value, dims in ((proto.graph.input[0], dims_in), (proto.graph.output[0], dims_out)):
        shape = value.type.tensor_type.shape
        for dim, v in zip(shape.dim, dims):
            if isinstance(v, int):
                dim.dim_value = v
            else:
                dim.dim_param = v


def _export_torchscript(wrapper: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic: bool) -> None:
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"}
    out_axes = {0: "batch", 2: "anchors"} if dynamic else {0: "batch"}
    with warnings.catch_warnings():
        # The exporter announces its own deprecation and traces a few Python-side shape reads; both are
        # expected here and would only alarm users.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                wrapper,
                (example,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=["images"],
                output_names=["output"],
                dynamic_axes={"images": axes, "output": out_axes},
                do_constant_folding=True,
            )
        except Exception as e:
            raise ConfigError(f"ONNX export at opset {opset} failed: {_first_line(e)}") from None


def _export_dynamo(wrapper: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic: bool) -> None:
    from torch.export import Dim  # noqa: PLC0415 - the dynamo exporter loads only when asked for

    shapes: dict[int, Any] = {0: Dim("batch", min=1, max=4096)}
    if dynamic:
        shapes.update({2: Dim.AUTO, 3: Dim.AUTO})
    # torch.export specializes any size it sees as 1, so trace with a batch of 2 to keep the axis symbolic.
    example = example.expand(2, -1, -1, -1).contiguous()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                wrapper,
                (example,),
                str(path),
                dynamo=True,
                opset_version=opset,
                input_names=["images"],
                output_names=["output"],
                dynamic_shapes={"images": shapes},
                verbose=False,
                external_data=False,
            )
        except Exception as e:
            raise ConfigError(f"ONNX export at opset {opset} failed: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    lines = [s for s in str(e).strip().splitlines() if s.strip()]
    return (lines[0] if lines else type(e).__name__)[:200]


def default_export_path(model_setting: str, fmt: str = "onnx") -> Path:
    """Where ``yolotrain export`` writes by default: next to the checkpoint, or ``yolotrain_<scale>``."""
    p = Path(model_setting)
    if p.suffix == ".pt":
        return p.with_suffix(f".{fmt}")
    return Path(f"yolotrain_{model_setting}.{fmt}")


def export_from_config(cfg, nc: int | None = None) -> Path:
    """Export ``cfg.model`` as ``cfg.format`` says (the ``yolotrain export`` command).

    The image size is ``imgsz`` when given, else the checkpoint's training size (640 for a fresh
    scale); ``out`` overrides the default path.

    Args:
        cfg: A resolved :class:`~yolotrain.config.Config`.
        nc: Classes of a fresh scale (``model=n``); 80 when not given. Checkpoints carry their own.

    Returns:
        The path written.
    """
    from yolotrain.engine.build import inference_imgsz  # noqa: PLC0415 - the engine loads only when exporting

    if cfg.format not in FORMATS:  # config validation already refuses it; kept for direct callers
        raise ConfigError(f"setting 'format'={cfg.format!r} is not supported (one of {', '.join(FORMATS)})")
    model, state = load_model_spec(cfg.model, nc=nc or 80)
    if is_scale(cfg.model):
        LOGGER.warning(f"export: model={cfg.model} is a fresh, untrained scale (pass a .pt checkpoint)")
    imgsz = inference_imgsz(cfg, state)
    out = Path(cfg.out) if cfg.out else default_export_path(cfg.model, cfg.format)
    return export_onnx(model, out, imgsz=imgsz, opset=cfg.opset, dynamic=cfg.dynamic, half=cfg.half)


__all__ = ["DecodedDetector", "FORMATS", "default_export_path", "export_from_config", "export_onnx"]
