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
   ours) against ``yolotrain val`` at the same imgsz, conf 0.001, iou 0.7, max_det 300, first with our
   defaults, then removing the by-design differences one setting at a time: ``multi_label=true`` (their
   NMS), ``val_resize=bilinear`` (their resize: full decode, bilinear, size rounded up) and
   ``ap_style=ultralytics`` (their AP definition, our code). Each entry also scores the very same
   detections with Ultralytics' own matching and ``ap_per_class`` (``ultralytics_ap_code``): an
   independent check of ``ap_style=ultralytics``.

``--smoke`` runs part 1 at one small size (64 px) in seconds; the test suite runs it where ultralytics is
importable.

The last stdout line is one JSON object: {"outputs": {name: {size: max_abs_diff}}, "map": {...}}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from ultralytics import YOLO
from ultralytics.utils.metrics import ap_per_class, box_iou

import yolotrain.eval as eval_module
from yolotrain.config import resolve
from yolotrain.models.weights_io import load_model_spec
from yolotrain.runners import run_val

# the keys a --smoke run must print (the test suite runs every benchmark's smoke mode and checks them), and
# the modules it needs: the suite skips this script where they are not importable
SMOKE_KEYS = ("outputs",)
SMOKE_NEEDS = ("ultralytics",)


def ultralytics_ap(images: list[dict]) -> tuple[float, float]:
    """Score captured detections with Ultralytics' matching (greedy by IoU per threshold) and ap_per_class."""
    iouv = np.linspace(0.5, 0.95, 10)
    tps, confs, pcls, tcls = [], [], [], []
    for kw in images:
        pred = torch.as_tensor(kw["pred"]).reshape(-1, 6).float()
        gt = torch.as_tensor(kw["gt_boxes"]).reshape(-1, 4).float()
        gcls = torch.as_tensor(kw["gt_cls"]).reshape(-1)
        tp = np.zeros((len(pred), 10), dtype=bool)
        if len(pred) and len(gt):
            iou = (box_iou(gt, pred[:, :4]) * (gcls[:, None] == pred[:, 5][None])).numpy()
            for t, thr in enumerate(iouv):
                m = np.array(np.nonzero(iou >= thr)).T
                if len(m) > 1:
                    m = m[iou[m[:, 0], m[:, 1]].argsort()[::-1]]
                    m = m[np.unique(m[:, 1], return_index=True)[1]]
                    m = m[np.unique(m[:, 0], return_index=True)[1]]
                if len(m):
                    tp[m[:, 1].astype(int), t] = True
        tps.append(tp)
        confs.append(pred[:, 4].numpy())
        pcls.append(pred[:, 5].numpy())
        tcls.append(gcls.numpy())
    ap = ap_per_class(np.concatenate(tps), np.concatenate(confs), np.concatenate(pcls), np.concatenate(tcls))[5]
    return float(ap[:, 0].mean()), float(ap.mean())


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
    ap.add_argument("--smoke", action="store_true", help="the output check at 64 px only: seconds")
    args = ap.parse_args()
    sizes = (64,) if args.smoke else (320, 256)

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
            result["outputs"][yaml] = output_diffs(path, sizes)
    if args.weights:
        result["outputs"][Path(args.weights).name] = output_diffs(Path(args.weights), sizes)
    if args.weights and args.data:
        common = {"imgsz": args.imgsz, "batch": args.batch, "conf": 0.001, "iou": 0.7, "max_det": 300}
        theirs = YOLO(args.weights).val(data=args.data, rect=False, plots=False, device="cpu", **common)
        result["map"] = {
            "ultralytics": {"mAP50": float(theirs.box.map50), "mAP50-95": float(theirs.box.map)},
            "settings": common,
        }
        captured: list[dict] = []
        add = eval_module.DetectionEvaluator.add

        def capture(self, **kw):
            captured.append(kw)
            return add(self, **kw)

        eval_module.DetectionEvaluator.add = capture
        # (val_resize, ap_style, multi_label): our default, then one difference at a time down to like for like.
        variants = [
            ("area", "coco", False),
            ("area", "coco", True),
            ("bilinear", "coco", True),
            ("bilinear", "ultralytics", True),
        ]
        for resize, ap_style, multi in variants:
            captured.clear()
            settings = {"val_resize": resize, "ap_style": ap_style, "multi_label": multi}
            cfg = resolve({"model": args.weights, "data": args.data, "workers": 0, "rect": False, **settings, **common})
            r = run_val(cfg)
            u50, u = ultralytics_ap(captured)  # the same detections scored by Ultralytics' own AP code
            key = f"yolotrain val_resize={resize} ap_style={ap_style} multi_label={str(multi).lower()}"
            result["map"][key] = {
                "mAP50": r.map50,
                "mAP50-95": r.map50_95,
                "diff_mAP50-95": r.map50_95 - result["map"]["ultralytics"]["mAP50-95"],
                "ultralytics_ap_code": [u50, u],
            }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
