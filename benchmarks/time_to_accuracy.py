"""Time to accuracy: the same wall-clock budget for yolotrain and (when importable) Ultralytics, then mAP50-95.

Each system trains from scratch in its own child process, one after the other, for ``--minutes`` of
wall-clock time (its own ``time=`` setting: both fit their epoch count to the budget), on the same data,
model scale (YOLOv8n) and image size; everything else is each system's default, except that yolotrain
uses its fastest settings (``amp=auto``: bf16 on CPUs that have it, one optimizer step per batch
``nbs=batch``, decoded images cached in RAM) and both use the same number of loader workers.

    # the built-in demo set (shapes) and a real-image set built from scikit-learn's digits and photos
    PYTHONPATH=src:/tmp/ultra .venv/bin/python benchmarks/time_to_accuracy.py --data demo --minutes 6
    PYTHONPATH=/tmp/benchdeps .venv/bin/python benchmarks/build_digits_dataset.py --out /tmp/digits
    PYTHONPATH=src:/tmp/ultra .venv/bin/python benchmarks/time_to_accuracy.py --data /tmp/digits/data.yaml \\
        --imgsz 160 --minutes 6

``--smoke`` trains yolotrain alone for 5 seconds on 16 generated images at 64 px (the same code path).

Ultralytics is read from ``PYTHONPATH`` (``pip install --target /tmp/ultra --no-deps ultralytics ...``, see
benchmarks/ultralytics_parity.py); it is never a dependency. Without it only yolotrain runs.

The last stdout line is one JSON object: {"data", "imgsz", "minutes", "load", "yolotrain": {...},
"ultralytics": {...} or null, "margin"}; each system's entry has its final mAP50-95 (the best
epoch's, as each system reports at the end), mAP50, epochs trained and the wall seconds the child took.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from yolotrain.data import ensure_demo_dataset

# the keys a --smoke run must print (the test suite runs every benchmark's smoke mode and checks them)
SMOKE_KEYS = ("data", "imgsz", "minutes", "yolotrain")

ULTRA_CHILD = """
import json, sys
from ultralytics import YOLO
data, imgsz, hours, workers, project = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
model = YOLO("yolov8n.yaml")  # from scratch: the architecture only
r = model.train(data=data, imgsz=imgsz, time=hours, workers=workers, device="cpu", project=project, name="exp",
                pretrained=False, plots=False, verbose=False, exist_ok=True)
print(json.dumps({"map50_95": float(r.box.map), "map50": float(r.box.map50)}))
"""


def absolute_yaml(data_yaml: Path, out: Path) -> Path:
    """A copy of the data YAML with an absolute ``path`` (Ultralytics resolves relative ones elsewhere)."""
    spec = yaml.safe_load(data_yaml.read_text())
    spec["path"] = str((data_yaml.parent / spec.get("path", ".")).resolve())
    out.write_text(yaml.safe_dump(spec))
    return out


def csv_rows(path: Path) -> list[dict]:
    with open(path) as f:
        return [{k.strip(): v.strip() for k, v in row.items()} for row in csv.DictReader(f)]


def run_yolotrain(data: str | None, imgsz: int, minutes: float, workers: int, project: Path) -> dict:
    args = [f"time={minutes / 60:.6f}", f"imgsz={imgsz}", "model=n", "amp=auto", "cache=ram", f"workers={workers}",
            "batch=16", "nbs=16", f"project={project}", "name=exp", "exist_ok=true", "verbose=false",
            "plots=false"]  # fmt: skip
    if data:
        args.append(f"data={data}")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "yolotrain", "train", *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"yolotrain failed:\n{proc.stderr[-3000:]}")
    rows = csv_rows(project / "exp" / "results.csv")
    best = max(rows, key=lambda r: float(r["metrics/mAP50-95"] or -1))
    return {
        "map50_95": float(best["metrics/mAP50-95"]),
        "map50": float(best["metrics/mAP50"]),
        "last_map50_95": float(rows[-1]["metrics/mAP50-95"]),
        "epochs": len(rows),
        "wall_s": round(wall, 1),
        "settings": " ".join(a for a in args if not a.startswith(("project=", "name=", "exist_ok"))),
    }


def run_ultralytics(data_yaml: Path, imgsz: int, minutes: float, workers: int, project: Path) -> dict:
    data = absolute_yaml(data_yaml, project / "data.yaml")
    cmd = [sys.executable, "-c", ULTRA_CHILD, str(data), str(imgsz), f"{minutes / 60:.6f}", str(workers), str(project)]
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"ultralytics failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = csv_rows(project / "exp" / "results.csv")
    out.update(
        epochs=len(rows),
        last_map50_95=float(rows[-1]["metrics/mAP50-95(B)"]),
        wall_s=round(wall, 1),
        settings=f"yolov8n.yaml time={minutes / 60:.6f} imgsz={imgsz} workers={workers} device=cpu pretrained=False",
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="demo", help="'demo' (the built-in set) or a data YAML")
    ap.add_argument("--minutes", type=float, default=6.0, help="the wall-clock budget of each system")
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--systems", default="yolotrain,ultralytics")
    ap.add_argument("--out", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    ap.add_argument("--smoke", action="store_true", help="5 s on 16 tiny images: keeps the script from rotting")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tta-") as tmp:
        if args.smoke:
            data = ensure_demo_dataset(Path(tmp) / "shapes", n_train=16, n_val=4, size=64)
            args.data, args.minutes, args.imgsz, args.workers, args.systems = str(data), 5 / 60, 64, 0, "yolotrain"
        run(args, args.out or Path(tmp))


def run(args: argparse.Namespace, root: Path) -> None:
    """Train each system in ``args.systems`` under ``root`` and print the JSON line."""
    systems = args.systems.split(",")
    demo = args.data == "demo"
    data_yaml = ensure_demo_dataset() if demo else Path(args.data)
    result: dict = {"data": "demo" if demo else str(data_yaml), "imgsz": args.imgsz, "minutes": args.minutes}
    result["load"] = os.getloadavg()[0]
    result["yolotrain"] = result["ultralytics"] = None
    if "yolotrain" in systems:
        # the demo set without data= also takes the demo recipe (DEMO_DEFAULTS: epochs 12, close_mosaic 4)
        result["yolotrain"] = run_yolotrain(None if demo else str(data_yaml), args.imgsz, args.minutes,
                                            args.workers, root / "yolotrain")  # fmt: skip
        print(f"yolotrain: {result['yolotrain']}", file=sys.stderr)
    if "ultralytics" in systems:
        if importlib.util.find_spec("ultralytics") is None:
            print("ultralytics is not importable: only yolotrain ran", file=sys.stderr)
        else:
            (root / "ultralytics").mkdir(parents=True, exist_ok=True)
            result["ultralytics"] = run_ultralytics(data_yaml, args.imgsz, args.minutes, args.workers,
                                                    root / "ultralytics")  # fmt: skip
            print(f"ultralytics: {result['ultralytics']}", file=sys.stderr)
    if result["yolotrain"] and result["ultralytics"]:
        result["margin"] = round(result["yolotrain"]["map50_95"] - result["ultralytics"]["map50_95"], 4)
    result["load_after"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
