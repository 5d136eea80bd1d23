"""Parity with the real ultralytics package, when it happens to be installed (it is never a dependency).

Run it with ultralytics importable from a scratch location, e.g.::

    pip install --target /tmp/ultra --no-deps ultralytics==8.3.* ultralytics-thop py-cpuinfo polars
    PYTHONPATH=src:/tmp/ultra python -m pytest tests/models/test_models_ultralytics_parity.py
"""

from __future__ import annotations

import pytest
import torch

ultralytics = pytest.importorskip(
    "ultralytics", reason="ultralytics is not installed (never a dependency of yolotrain; see this file's docstring)"
)

from yolotrain.models.weights_io import load_model_spec  # noqa: E402


@pytest.mark.parametrize(("yaml", "scale"), [("yolov8n.yaml", "n"), ("yolo11n.yaml", "11n")])
def test_same_raw_head_outputs_as_ultralytics(tmp_path, yaml, scale):
    torch.manual_seed(0)
    theirs = ultralytics.YOLO(yaml)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a misplaced statistic shows
        for m in theirs.model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / yaml.replace(".yaml", ".pt")
    theirs.save(str(path))  # Ultralytics' own writer: {'model': DetectionModel (fp16), ...}
    ref = ultralytics.YOLO(str(path)).model.float().eval()  # their loader (runs the pickle; fine here)
    ours, state = load_model_spec(str(path))
    assert ours.config() == {"scale": scale, "nc": 80}
    assert state["names"] == [ref.names[i] for i in range(80)]
    for size in (320, 256):
        x = torch.rand(2, 3, size, size)
        with torch.no_grad():
            want = ref(x)[1]  # eval mode returns (decoded, raw per-level outputs)
            got = ours(x)
        diff = max(float((a - b).abs().max()) for a, b in zip(got, want))
        assert diff <= 1e-4, f"{yaml} at {size}: max abs diff {diff}"
