"""single_cls, classes, fraction and the extra augmentations through the CLI and the Python API (tiny runs)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from yolotrain import Detector
from yolotrain.checkpoint_file import Checkpoint
from yolotrain.cli import main
from yolotrain.config import resolve
from yolotrain.config_sections import AugmentSettings
from yolotrain.data.dataset import DetectionDataset, SampleKey
from yolotrain.data.scan import scan_split


def _label_rows(folder: Path) -> list[list[int]]:
    """Class ids per label file, read straight from the text (not through the scanner)."""
    return [
        [int(line.split()[0]) for line in f.read_text().split("\n") if line.strip()]
        for f in sorted(folder.glob("*.txt"))
    ]


@pytest.mark.slow
def test_single_cls_trains_one_class_and_val_keeps_it(tiny_data, tmp_path, capsys):
    args = ["train", f"data={tiny_data}", "epochs=1", "imgsz=64", "batch=8", "workers=0", f"project={tmp_path}"]
    assert main([*args, "single_cls=true", "verbose=false"]) == 0
    state = Checkpoint(torch.load(tmp_path / "exp" / "weights" / "best.pt", weights_only=True))
    assert state["model_cfg"]["nc"] == 1 and state["names"] == ["object"]
    capsys.readouterr()
    # the checkpoint's single_cls is kept by val, on the 4-class data YAML
    model = tmp_path / "exp" / "weights" / "best.pt"
    assert main(["val", f"model={model}", f"data={tiny_data}", "imgsz=64", "json=true", "workers=0"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    val_rows = _label_rows(tiny_data.parent / "labels" / "val")
    assert out["instances"] == sum(map(len, val_rows))  # every box, as one class


@pytest.mark.slow
def test_classes_and_fraction_through_the_api(tiny_data, tmp_path, capsys):
    seen_cls, seen_files = set(), set()

    def on_batch(trainer):
        seen_cls.update(trainer.current_batch["cls"].flatten().int().tolist())
        seen_files.update(trainer.current_batch["im_file"])

    det = Detector("n")
    det.add_callback("on_train_batch_end", on_batch)
    det.train(
        data=str(tiny_data), epochs=1, imgsz=64, batch=8, workers=0, project=str(tmp_path), classes=[0, 2],
        fraction=0.5, close_mosaic=0,
    )  # fmt: skip
    err = capsys.readouterr().err
    assert "fraction=0.5: training on 12 of 24 images" in err
    val_rows = _label_rows(tiny_data.parent / "labels" / "val")
    dropped = sum(c not in (0, 2) for row in val_rows for c in row)
    images = sum(any(c not in (0, 2) for c in row) for row in val_rows)
    assert dropped > 0
    assert f"val: classes=[0, 2]: dropped {dropped} labels of other classes in {images} images" in err
    assert "train: classes=[0, 2]: dropped" in err
    assert seen_cls <= {0, 2} and seen_cls  # mosaic brings partners' boxes: still only these classes
    assert len(seen_files) == 12  # the main images of one epoch: the subset
    state = Checkpoint(torch.load(tmp_path / "exp" / "weights" / "last.pt", weights_only=True))
    assert state["model_cfg"]["nc"] == 4  # ids kept: the model keeps the data's classes


@pytest.mark.slow
def test_new_augmentations_reach_the_plotted_batches(tiny_data, tmp_path):
    """A run with every new augmentation: the batches it plots are the augmented samples (flipud=1: upside down)."""
    settings = dict(mixup=1.0, cutmix=0.5, perspective=0.001, flipud=1.0, seed=3, close_mosaic=0)
    captured = []

    def on_batch(trainer):
        if not captured:
            b = trainer.current_batch
            captured.append((trainer.epoch, b["index"].tolist(), b["im_file"], b["img"].clone()))

    det = Detector("n")
    det.add_callback("on_train_batch_end", on_batch)
    det.train(data=str(tiny_data), epochs=1, imgsz=64, batch=8, workers=0, project=str(tmp_path), val=False, **settings)
    run = tmp_path / "exp"
    assert (run / "train_batch0.jpg").is_file()
    args = (run / "args.yaml").read_text()
    assert "mixup: 1.0" in args and "flipud: 1.0" in args and "perspective: 0.001" in args

    epoch, indices, files, imgs = captured[0]
    records, _ = scan_split([str(tiny_data.parent / "images" / "train")], 4, use_cache=False)
    assert [records[i].im_file for i in indices] == list(files)  # the same records, in the same order
    upright_cfg = resolve({**settings, "flipud": 0.0, "imgsz": 64})
    upright = DetectionDataset(records, 64, True, AugmentSettings.from_config(upright_cfg), seed=3)
    for img, i in zip(imgs, indices):
        want = upright[SampleKey(i, epoch, True)]["img"]
        assert torch.equal(img, want.flip(1)), i  # the plotted image is the sample, upside down
    assert not np.array_equal(imgs[0].numpy(), imgs[0].flip(1).numpy())


STOPPER = """
import os, signal, sys
from yolotrain.config import parse_cli_args, resolve
from yolotrain.errors import Preempted
from yolotrain.utils.logging import setup_logging
from yolotrain.utils.startup import start_program
setup_logging(False)
cfg = resolve(parse_cli_args(sys.argv[2:]))
start_program("train", cfg)  # imports as `yolotrain train` does
from yolotrain.engine.trainer import Trainer
t = Trainer(cfg)
seen = [0]
def stop(tr):
    seen[0] += 1
    if seen[0] == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGTERM)  # saves at the next optimizer step, then exits 75
t.callbacks.add("on_train_batch_end", stop)
try:
    t.fit()
except Preempted:
    sys.exit(75)
"""


@pytest.mark.slow
def test_resume_with_selection_and_new_augmentations_is_exact(tiny_data, tmp_path):
    """Stopped in epoch 2 and resumed, a run with every new setting ends with the uninterrupted run's weights."""
    args = [
        f"data={tiny_data}", "model=n", "epochs=2", "imgsz=64", "batch=4", "nbs=8", "workers=0", "seed=3",
        "close_mosaic=0", "verbose=false", "val=false", "fraction=0.5", "classes=[0,2]", "mixup=0.5", "cutmix=0.5",
        "perspective=0.0005", "flipud=0.5",
    ]  # fmt: skip
    assert main(["train", *args, f"project={tmp_path / 'ref'}"]) == 0
    stopped = subprocess.run(
        [sys.executable, "-c", STOPPER, "4", *args, f"project={tmp_path / 'cut'}"], capture_output=True, text=True
    )  # 12 images / batch 4: 3 iterations per epoch; stopped after the first iteration of epoch 2
    assert stopped.returncode == 75, stopped.stderr[-2000:]
    last = tmp_path / "cut" / "exp" / "weights" / "last.pt"
    assert Checkpoint(torch.load(last, weights_only=True))["position"]["epoch"] == 1  # mid-epoch 2 (0-based 1)
    assert main(["train", f"resume={last}"]) == 0
    ref = Checkpoint(torch.load(tmp_path / "ref" / "exp" / "weights" / "last.pt", weights_only=True))
    got = Checkpoint(torch.load(last, weights_only=True))
    for part in ("model", "ema"):
        diff = [k for k in ref[part] if not torch.equal(ref[part][k], got[part][k])]
        assert not diff, f"{part}: {len(diff)} tensors differ, e.g. {diff[:3]}"
