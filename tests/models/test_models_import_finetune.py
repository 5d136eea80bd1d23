"""Fine-tuning from an imported Ultralytics-shaped checkpoint: freeze phases, class-branch re-init, load=backbone."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from ultralytics_fixtures import write_ultralytics_checkpoint

from yolotrain.cli import main
from yolotrain.models import build_model
from yolotrain.models.transfer import transfer_weights
from yolotrain.models.weights_io import read_weights


@pytest.mark.slow
def test_cli_finetune_from_imported_file_runs_both_phases(tiny_data, tmp_path, capsys):
    torch.manual_seed(0)
    src = build_model("11n", nc=5).eval()  # the data has 4 classes: the class outputs cannot be kept
    path = write_ultralytics_checkpoint(tmp_path / "yolo11n-5cls.pt", src, "11")
    code = main(
        [
            "train",
            f"data={tiny_data}",
            f"model={path}",
            "freeze=backbone",
            "freeze_epochs=1",
            "epochs=2",
            "imgsz=64",
            "batch=8",
            "workers=0",
            f"project={tmp_path / 'runs'}",
            "verbose=true",
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "Ultralytics 8.3.0 checkpoint, 11n" in err
    # YOLO11n's class branch is 64 wide for 4 and 5 classes alike, so only the three output convs
    # (weight + bias each) depend on the class count: 6 tensors re-initialised, everything else loaded.
    total = len(build_model("11n", nc=4).state_dict())
    m = re.search(r"model: loaded (\d+) tensors from .*, re-initialised (\d+): (.*)", err)
    assert m, err[-2000:]
    assert (int(m.group(1)), int(m.group(2))) == (total - 6, 6)
    assert "6 in the head's class branch (the file has 5 classes, the model 4)" in m.group(3)
    assert "phase: frozen from epoch 1" in err and "phase: unfrozen from epoch 2" in err


def test_load_backbone_takes_only_the_backbone(tmp_path):
    torch.manual_seed(1)
    src = build_model("n", nc=80).eval()
    path = write_ultralytics_checkpoint(tmp_path / "yolov8n.pt", src, "v8")
    lw = read_weights(path)
    torch.manual_seed(2)
    model = build_model("n", nc=4)
    fresh = copy.deepcopy(model.state_dict())
    counts = transfer_weights(model, lw.weights, load="backbone")
    now = model.state_dict()
    for k, v in now.items():
        if k.startswith("backbone.") and v.is_floating_point():
            assert torch.equal(v, src.state_dict()[k]), k
        elif k != "stride" and v.is_floating_point() and v.numel() > 1 and "running" not in k:
            assert torch.equal(v, fresh[k]), k  # neck and head keep their fresh initialisation
    assert counts["reasons"][0][1] == "outside the backbone (load=backbone)"
    assert counts["matched"] + counts["reinitialised"] == len(now)
