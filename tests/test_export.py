"""ONNX export: the file runs in onnxruntime and gives the PyTorch model's decoded output."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from yolotrain import Detector
from yolotrain.checkpoint_file import save_checkpoint
from yolotrain.cli import main
from yolotrain.config import resolve
from yolotrain.errors import ConfigError
from yolotrain.export import DecodedDetector, export_onnx
from yolotrain.models import build_model
from yolotrain.ops import decode

# onnx and onnxruntime are imported where a test reads a file, not at collection: every pytest-xdist worker
# collects this module and only one runs it
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="onnx and onnxruntime are not installed (export extra)",
)

NAMES = ["circle", "rectangle", "triangle"]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model(scale="n", nc=3).eval()
    # Random but non-trivial head outputs: a freshly initialised head gives near-uniform DFL bins, which
    # would hide a wrong decoding.
    with torch.no_grad():
        for p in m.head.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    m.names = NAMES
    return m


def _run(path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"images": x.numpy()})[0]


def test_onnx_matches_pytorch_for_batch_1_and_3(model: torch.nn.Module, tmp_path: Path) -> None:
    import onnx

    path = export_onnx(model, tmp_path / "m.onnx", imgsz=64)
    assert path == tmp_path / "m.onnx" and model.training is False
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is left alone
    for batch in (1, 3):
        x = torch.rand(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            ref = decode(model(x), model.stride, model.reg_max).transpose(1, 2).numpy()
        out = _run(path, x)
        assert out.shape == (batch, 4 + 3, (8 * 8 + 4 * 4 + 2 * 2))
        np.testing.assert_allclose(out[:, :4], ref[:, :4], atol=1e-3, rtol=1e-4)  # pixels up to 64
        np.testing.assert_allclose(out[:, 4:], ref[:, 4:], atol=1e-4)
        assert out[:, 4:].min() >= 0 and out[:, 4:].max() <= 1  # sigmoid scores
    # dynamic=True (default) also accepts other multiples of 32
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        ref = DecodedDetector(model)(x).numpy()
    np.testing.assert_allclose(_run(path, x), ref, atol=1e-3)

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["names"]) == NAMES and json.loads(meta["stride"]) == [8.0, 16.0, 32.0]
    assert json.loads(meta["imgsz"]) == [64, 64] and proto.opset_import[0].version == 17
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]


def test_bad_export_arguments_raise_config_errors(model: torch.nn.Module, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="imgsz"):
        export_onnx(model, tmp_path / "x.onnx", imgsz=50)
    with pytest.raises(ConfigError, match="opset"):
        export_onnx(model, tmp_path / "x.onnx", imgsz=64, opset=9)
    with pytest.raises(ConfigError, match="opset"):
        resolve({"opset": 30})


def _checkpoint(model: torch.nn.Module, path: Path) -> Path:
    state = {
        "model_cfg": model.config(),
        "names": NAMES,
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "ema": None,
        "config": resolve({"imgsz": 64}).to_dict(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(state, path)
    return path


def test_cli_export_next_to_checkpoint_and_unknown_format(
    model: torch.nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import onnx

    ckpt = _checkpoint(model, tmp_path / "weights" / "best.pt")
    assert main(["export", f"model={ckpt}", "format=onnx", "opset=17"]) == 0
    out = tmp_path / "weights" / "best.onnx"
    assert out.is_file() and str(out) in capsys.readouterr().out
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["imgsz"]) == [64, 64]  # the checkpoint's training size
    assert json.loads(meta["names"]) == NAMES

    assert main(["export", f"model={ckpt}", "format=tflite"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "format" in err and "onnx" in err


def test_detector_export_static_hw_other_opset(model: torch.nn.Module, tmp_path: Path) -> None:
    import onnx

    ckpt = _checkpoint(model, tmp_path / "last.pt")
    path = Detector(ckpt).export(imgsz=96, opset=13, dynamic=False, out=str(tmp_path / "sub" / "det.onnx"))
    assert path == tmp_path / "sub" / "det.onnx" and path.is_file()
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version == 13
    out_dims = [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
    assert out_dims == ["batch", 7, 12 * 12 + 6 * 6 + 3 * 3]  # fixed H/W, still a dynamic batch
    x = torch.rand(3, 3, 96, 96)
    with torch.no_grad():
        ref = DecodedDetector(model)(x).numpy()
    np.testing.assert_allclose(_run(path, x), ref, atol=1e-3)
