"""Real Ultralytics checkpoints (golden files written by Ultralytics' own trainer, see golden/make_golden.py)
import with our reader and give the raw head outputs Ultralytics' own model gave on the same input.

Unlike the fixtures of ultralytics_fixtures.py (our model dressed in Ultralytics class names), these files
come from the real package, so a change of the real format shows here on every run, without ultralytics.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from yolotrain.models.safe_pickle import Inert, safe_load
from yolotrain.models.weights_io import load_model_spec, read_weights

GOLDEN = Path(__file__).with_name("golden")
FILES = [("yolov8", "best"), ("yolov8", "epoch1"), ("yolo11", "best")]


def _ours_flat(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Our per-level outputs laid out as Ultralytics 8.4 returns them: (B, 64, anchors), (B, nc, anchors)."""
    with torch.no_grad():
        levels = model(x)
    flat = torch.cat([o.flatten(2) for o in levels], dim=2)
    return flat[:, :64], flat[:, 64:]


@pytest.mark.parametrize(("family", "kind"), FILES)
def test_golden_file_imports_and_matches_ultralytics_outputs(family, kind):
    path = GOLDEN / f"{family}_{kind}.pt"
    ref = torch.load(GOLDEN / f"{family}_ref.pt", weights_only=True)
    lw = read_weights(path)
    assert lw.kind == "ultralytics" and lw.names == ref["names"] == ["square", "bar", "dot"]
    assert lw.model_cfg["family"] == {"yolov8": "v8", "yolo11": "11"}[family]
    assert (lw.model_cfg["depth"], lw.model_cfg["width"], lw.model_cfg["max_channels"]) == (0.33, 0.0625, 64)
    model, state = load_model_spec(str(path))
    assert state["names"] == ref["names"]
    boxes, scores = _ours_flat(model, ref["input"])
    want = ref["outputs"][kind]
    assert boxes.shape == want["boxes"].shape and scores.shape == want["scores"].shape
    # the weights are fp16 in the file; both sides compute in fp32 from the same values
    torch.testing.assert_close(boxes, want["boxes"], rtol=0, atol=1e-4)
    torch.testing.assert_close(scores, want["scores"], rtol=0, atol=1e-4)


def test_golden_mid_run_file_keeps_the_trainer_fields():
    """The mid-run file is the trainer's whole dict: EMA model, optimizer state, args (read, nothing run)."""
    obj = safe_load(GOLDEN / "yolov8_epoch1.pt")
    assert obj["model"] is None and isinstance(obj["ema"], Inert)
    assert obj["ema"].cls_name == "ultralytics.nn.tasks.DetectionModel"
    assert obj["epoch"] == 1 and obj["train_args"]["imgsz"] == 64
    moments = [v for s in obj["optimizer"]["state"].values() for v in s.values() if isinstance(v, torch.Tensor)]
    assert any(t.dim() == 4 for t in moments)  # momentum buffers of the conv weights
    assert read_weights(GOLDEN / "yolov8_epoch1.pt").imgsz == 64
