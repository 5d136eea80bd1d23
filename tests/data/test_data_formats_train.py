"""Training end to end on a VOC dataset with difficult objects (crowd in records, not in targets)."""

from __future__ import annotations

import csv

import pytest
from format_helpers import write_voc

from yolotrain.cli import main


@pytest.mark.slow
def test_train_and_val_on_voc_with_difficult_objects(tmp_path):
    y = write_voc(tmp_path / "voc")
    code = main(["train", f"data={y}", "model=n", "epochs=1", "imgsz=64", "batch=4", "workers=0",
                 f"project={tmp_path / 'runs'}", "name=exp", "verbose=false", "plots=false", "amp=off"])  # fmt: skip
    run = tmp_path / "runs" / "exp"
    assert code == 0 and (run / "weights" / "last.pt").is_file()
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert rows and rows[-1]["metrics/mAP50"] != ""  # validation ran with the difficult boxes as crowd
    assert main(["val", f"model={run / 'weights' / 'last.pt'}", f"data={y}", "imgsz=64", "workers=0"]) == 0
