"""Parity with Ultralytics: raw head outputs of imported checkpoints, and mAP of ``yolotrain val`` vs theirs.

Needs ultralytics importable from a scratch location (never installed into .venv, never a dependency):

    pip install --target /tmp/ultra --no-deps ultralytics==8.3.* ultralytics-thop py-cpuinfo polars polars-runtime-32
    PYTHONPATH=src:/tmp/ultra .venv/bin/python benchmarks/ultralytics_parity.py
    PYTHONPATH=src:/tmp/ultra .venv/bin/python benchmarks/ultralytics_parity.py \\
        --weights runs/detect/train/weights/best.pt --data coco16/data.yaml --imgsz 224

1. Outputs: for YOLOv8n and YOLO11n built from Ultralytics' yaml (BatchNorm statistics randomised so a
   misplaced statistic would show), saved with Ultralytics' own ``save``, imported by yolotrain; and for
   ``--weights`` when given: the max absolute difference of the raw per-level head outputs, fp32, on
   random inputs at two sizes (batch 2).
2. mAP (with ``--weights --data``): Ultralytics' ``val`` (rect=False, so square letterboxed batches like
   ours; its NMS is multi-label) against ``yolotrain val`` with ``multi_label=true`` and with the default
   single-label NMS, same imgsz, conf 0.001, iou 0.7, max_det 300.

The last stdout line is one JSON object: {"outputs": {name: {size: max_abs_diff}}, "map": {...}}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from ultralytics import YOLO

from yolotrain.config import resolve
from yolotrain.models.weights_io import load_model_spec
from yolotrain.runners import run_val


def output_diffs(path: Path, sizes=(320, 256)) -> dict:
    ref = YOLO(str(path)).model.float().eval()
    ours, _ = load_model_spec(str(path))
    out = {"scale": ours.config().get("scale")}
    for size in sizes:
        x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            diff = max(float((a - b).abs().max()) for a, b in zip(ours(x), ref(x)[1]))
        out[str(size)] = diff
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", help="an Ultralytics detection .pt (e.g. a best.pt of a short run)")
    ap.add_argument("--data", help="data yaml for the mAP comparison")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()

    result: dict = {"outputs": {}, "map": None}
    with tempfile.TemporaryDirectory() as tmp:
        for yaml in ("yolov8n.yaml", "yolo11n.yaml"):
            torch.manual_seed(0)
            model = YOLO(yaml)
            with torch.no_grad():
                for m in model.model.modules():
                    if isinstance(m, torch.nn.BatchNorm2d):
                        m.running_mean.normal_(0, 0.1)
                        m.running_var.uniform_(0.5, 1.5)
            path = Path(tmp) / yaml.replace(".yaml", ".pt")
            model.save(str(path))
            result["outputs"][yaml] = output_diffs(path)
    if args.weights:
        result["outputs"][Path(args.weights).name] = output_diffs(Path(args.weights))
    if args.weights and args.data:
        common = {"imgsz": args.imgsz, "batch": args.batch, "conf": 0.001, "iou": 0.7, "max_det": 300}
        theirs = YOLO(args.weights).val(data=args.data, rect=False, plots=False, device="cpu", **common)
        result["map"] = {
            "ultralytics": {"mAP50": float(theirs.box.map50), "mAP50-95": float(theirs.box.map)},
            "settings": common,
        }
        for multi in (True, False):
            cfg = resolve({"model": args.weights, "data": args.data, "multi_label": multi, "workers": 0, **common})
            r = run_val(cfg)
            key = "yolotrain_multi_label" if multi else "yolotrain_single_label"
            result["map"][key] = {"mAP50": r.map50, "mAP50-95": r.map50_95}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
