"""The public surface: `yolotrain train/val/predict/info` end to end on a tiny generated set."""

import csv
import json
import subprocess
import sys

import pytest
import torch

from yolotrain.checkpoint_file import Checkpoint
from yolotrain.cli import main


def test_train_writes_run_folder(trained_run):
    assert (trained_run / "args.yaml").is_file()
    rows = list(csv.DictReader((trained_run / "results.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for col in (
        "seconds",
        "train/box_loss",
        "train/cls_loss",
        "train/dfl_loss",
        "lr/pg0",
        "metrics/precision",
        "metrics/recall",
        "metrics/mAP50",
        "metrics/mAP50-95",
    ):
        assert col in rows[0] and rows[-1][col] != ""
    for name in ("last.pt", "best.pt"):
        state = Checkpoint(torch.load(trained_run / "weights" / name, weights_only=True))  # plain data only
        assert state["model_cfg"]["nc"] == 4 and state["ema"] and state["names"][0] == "circle"
        assert state["epoch"] == (1 if name == "last.pt" else state["epoch"])
    args = (trained_run / "args.yaml").read_text()
    assert "epochs: 2" in args and "imgsz: 64" in args


@pytest.mark.slow
def test_run_folder_increments(tiny_data, tmp_path):
    args = [
        "train",
        f"data={tiny_data}",
        "epochs=1",
        "imgsz=64",
        "batch=8",
        "workers=0",
        f"project={tmp_path}",
        "verbose=false",
        "val=false",
    ]
    assert main(args) == 0 and main(args) == 0
    assert (tmp_path / "exp" / "weights" / "last.pt").is_file()
    assert (tmp_path / "exp2" / "weights" / "last.pt").is_file()
    # without validation there is no best fitness, but the last epoch still gives a best.pt
    assert (tmp_path / "exp" / "weights" / "best.pt").is_file()


def test_val_json_last_line(trained_run, tiny_data, capsys):
    code = main(
        [
            "val",
            f"model={trained_run / 'weights' / 'best.pt'}",
            f"data={tiny_data}",
            "imgsz=64",
            "json=true",
            "workers=0",
        ]
    )
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    out = json.loads(last)
    for key in ("mAP50", "mAP50-95", "precision", "recall", "images", "instances", "seconds"):
        assert key in out
    assert out["images"] == 8 and out["instances"] > 0
    assert 0.0 <= out["mAP50"] <= 1.0


def test_val_like_for_like_settings_reach_the_evaluator_and_loader(trained_run, tiny_data, monkeypatch, capsys):
    import yolotrain.engine.validator as validator_module
    from yolotrain.data.image_source import ImageSource

    styles, modes = [], []
    real_evaluator, real_decode = validator_module.DetectionEvaluator, ImageSource.decode

    def evaluator(names, **kw):
        styles.append(kw.get("ap_style"))
        return real_evaluator(names, **kw)

    def decode(self, i):
        modes.append(self.resize_mode)
        return real_decode(self, i)

    monkeypatch.setattr(validator_module, "DetectionEvaluator", evaluator)
    monkeypatch.setattr(ImageSource, "decode", decode)
    model = f"model={trained_run / 'weights' / 'best.pt'}"
    args = ["val", model, f"data={tiny_data}", "imgsz=64", "workers=0", "json=true"]
    assert main([*args, "ap_style=ultralytics", "val_resize=bilinear", "multi_label=true"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert styles == ["ultralytics"] and set(modes) == {"bilinear"} and 0.0 <= out["mAP50-95"] <= 0.995
    styles.clear(), modes.clear()
    assert main([*args]) == 0
    assert styles == ["coco"] and set(modes) == {"area"}
    assert main([*args, "ap_style=voc"]) == 2
    assert "ap_style" in capsys.readouterr().err


def test_val_prints_per_class_table(trained_run, capsys):
    # data comes from the checkpoint when not given
    assert main(["val", f"model={trained_run / 'weights' / 'last.pt'}", "workers=0"]) == 0
    out = capsys.readouterr().out
    assert "all" in out and "circle" in out and "mAP50-95" in out


def test_predict_saves_images_and_labels(trained_run, tiny_data, tmp_path, capsys):
    src = tiny_data.parent / "images" / "val"
    code = main(
        [
            "predict",
            f"model={trained_run / 'weights' / 'best.pt'}",
            f"source={src}",
            "conf=0.0",
            f"project={tmp_path}",
            "name=pred",
            "max_det=5",
        ]
    )
    assert code == 0
    out_dir = tmp_path / "pred"
    images = sorted(p.name for p in src.iterdir())
    assert sorted(p.name for p in out_dir.iterdir() if p.is_file()) == sorted(images + ["predictions.json"])
    labels = sorted((out_dir / "labels").iterdir())
    assert len(labels) == len(images)
    rows = [ln.split() for ln in labels[0].read_text().splitlines()]
    assert rows and all(len(r) == 6 for r in rows) and len(rows) <= 5
    dets = json.loads((out_dir / "predictions.json").read_text())
    assert {d["file_name"] for d in dets} <= set(images) and all(d["frame"] == -1 for d in dets)
    assert all(0 <= float(v) <= 1 for r in rows for v in r[1:5])


def test_info_reports_params_and_gflops(capsys):
    assert main(["info", "model=n", "json=true"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 3.0e6 < info["params"] < 3.4e6 and info["imgsz"] == 640
    assert 7.5 < info["gflops"] < 10.0 and info["layers"] > 100


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path):
    def run(*args):
        p = subprocess.run([sys.executable, "-m", "yolotrain", *args], capture_output=True, text=True)
        return p.returncode, p.stderr.strip()

    code, err = run("train", "epoch=3")
    assert code == 2 and err == "error: unknown setting 'epoch'; did you mean 'epochs'?"
    code, err = run("train", "imgsz=abc")
    assert code == 2 and "'imgsz'" in err and len(err.splitlines()) == 1
    code, err = run("train", f"data={tmp_path / 'nope.yaml'}", "epochs=1")
    assert code == 2 and "nope.yaml" in err and len(err.splitlines()) == 1
    code, err = run("fly")
    assert code == 2 and "unknown command" in err
    code, _ = run("help")
    assert code == 0


def test_predict_video_glob_and_predictions_json(trained_run, tiny_data, tmp_path):
    import cv2

    src = sorted((tiny_data.parent / "images" / "val").iterdir())
    video = tmp_path / "clip.mp4"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (64, 64))
    for p in src[:5]:
        w.write(cv2.imread(str(p)))
    w.release()
    code = main(
        [
            "predict",
            f"model={trained_run / 'weights' / 'best.pt'}",
            f"source={tmp_path / '*.mp4'}",
            "conf=0.0",
            "max_det=2",
            f"project={tmp_path}",
            "name=vid",
            "batch=2",
        ]
    )
    assert code == 0
    out = tmp_path / "vid"
    assert (out / "clip.mp4").stat().st_size > 0
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    cap.release()
    assert sorted(p.name for p in (out / "labels").iterdir()) == [f"clip_{i}.txt" for i in range(5)]
    dets = json.loads((out / "predictions.json").read_text())
    assert len(dets) == 10 and {d["frame"] for d in dets} == set(range(5))
    assert all(
        len(d["bbox"]) == 4 and 0 <= d["score"] <= 1 and d["category"] in ("circle", "rectangle", "triangle", "cross")
        for d in dets
    )
