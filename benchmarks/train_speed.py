"""Training throughput of yolotrain, and of Ultralytics YOLOv8 when it happens to be installed.

Run (from the repo root, after `make test` or `make demo` created .venv):

    .venv/bin/python benchmarks/train_speed.py                       # coco128 from ../shared, n, 320, b16
    .venv/bin/python benchmarks/train_speed.py --data path/data.yaml --scale s --imgsz 640 --epochs 3
    .venv/bin/python benchmarks/train_speed.py --smoke    # seconds: 16 generated images at 64 px, yolotrain only

Each framework trains in its own child process (so peak RSS is its own) with the same data, scale,
image size, batch, workers, fp32, no pretrained weights, no plots and no validation. The timed part is
the training epochs after the first (the first pays for worker start-up and allocator warm-up); the
figure is images per second of training (forward, loss, backward, optimizer, data loading).
The last stdout line is one JSON object:
{"yolotrain": {...}, "ultralytics": {...} or null, "ratio": ours/theirs or null, "settings": {...}}
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "coco128" / "data.yaml"
# the keys a --smoke run must print (the test suite runs every benchmark's smoke mode and checks them)
SMOKE_KEYS = ("yolotrain", "settings")


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class EpochTimer:
    """Callback pair timing each training epoch (same event names in both frameworks)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t = 0.0

    def start(self, _trainer) -> None:
        self._t = time.perf_counter()

    def end(self, _trainer) -> None:
        self.times.append(time.perf_counter() - self._t)


def run_yolotrain(a: argparse.Namespace) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    from yolotrain.config import resolve
    from yolotrain.engine.trainer import Trainer
    from yolotrain.utils.logging import setup_logging

    setup_logging(verbose=False)
    timer = EpochTimer()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = resolve(
            {
                "data": a.data,
                "model": a.scale,
                "imgsz": a.imgsz,
                "batch": a.batch,
                "epochs": a.epochs,
                "workers": a.workers,
                "device": "cpu",
                "val": False,
                "plots": False,
                "verbose": False,
                "project": tmp,
                "amp": "off",
            }
        )
        trainer = Trainer(cfg)
        trainer.callbacks.add("on_train_epoch_start", timer.start)
        trainer.callbacks.add("on_train_epoch_end", timer.end)
        trainer.fit()
        n_images = len(trainer.train_loader.dataset)
    return _figures(timer.times, n_images)


def run_ultralytics(a: argparse.Namespace) -> dict:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    timer = EpochTimer()
    with tempfile.TemporaryDirectory() as tmp:
        # Ultralytics resolves a relative `path` against its own datasets folder: give it an absolute one.
        import yaml

        spec = yaml.safe_load(Path(a.data).read_text())
        spec["path"] = str((Path(a.data).parent / spec.get("path", ".")).resolve())
        data = Path(tmp) / "data.yaml"
        data.write_text(yaml.safe_dump(spec))
        model = YOLO(f"yolov8{a.scale}.yaml")
        model.add_callback("on_train_epoch_start", timer.start)
        model.add_callback("on_train_epoch_end", timer.end)
        model.train(
            data=str(data),
            epochs=a.epochs,
            imgsz=a.imgsz,
            batch=a.batch,
            workers=a.workers,
            device="cpu",
            amp=False,
            plots=False,
            val=False,
            pretrained=False,
            project=tmp,
            name="bench",
            verbose=False,
            exist_ok=True,
        )
        n_images = len(model.trainer.train_loader.dataset)
    return _figures(timer.times, n_images)


def _figures(times: list[float], n_images: int) -> dict:
    import torch  # loaded already by the framework that trained

    timed = times[1:] if len(times) > 1 else times
    epoch_s = sum(timed) / len(timed)
    return {
        "torch": torch.__version__,  # reported by the child, so the parent need not import torch for it
        "threads": torch.get_num_threads(),
        "images_per_s": round(n_images / epoch_s, 2),
        "epoch_s": round(epoch_s, 2),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "epochs_timed": len(timed),
        "images": n_images,
    }


def child(a: argparse.Namespace, which: str) -> dict | None:
    """Run one framework in a child process and parse its JSON line."""
    cmd = [
        sys.executable,
        __file__,
        "--only",
        which,
        "--data",
        a.data,
        "--scale",
        a.scale,
        "--imgsz",
        str(a.imgsz),
        "--batch",
        str(a.batch),
        "--epochs",
        str(a.epochs),
        "--workers",
        str(a.workers),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(f"{which} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}\n")
        return None
    return json.loads(lines[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--scale", default="n")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--only", choices=("yolotrain", "ultralytics"))
    p.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: keeps the script from rotting")
    a = p.parse_args()
    if a.only:
        print(json.dumps((run_yolotrain if a.only == "yolotrain" else run_ultralytics)(a)))
        return
    import importlib.util

    smoke_dir = tempfile.TemporaryDirectory(prefix="yolotrain-speed-bench-") if a.smoke else None
    if smoke_dir:
        from yolotrain.data import ensure_demo_dataset

        data = ensure_demo_dataset(Path(smoke_dir.name) / "shapes", n_train=16, n_val=4, size=64)
        a.data, a.imgsz, a.batch, a.epochs, a.workers = str(data), 64, 8, 2, 0
    ours = child(a, "yolotrain")
    peer = not a.smoke and importlib.util.find_spec("ultralytics")
    theirs = child(a, "ultralytics") if peer else None
    if smoke_dir:
        smoke_dir.cleanup()
    ratio = round(ours["images_per_s"] / theirs["images_per_s"], 3) if ours and theirs else None
    measured = ours or theirs or {}
    settings = {
        "data": a.data,
        "scale": a.scale,
        "imgsz": a.imgsz,
        "batch": a.batch,
        "epochs": a.epochs,
        "workers": a.workers,
        "device": "cpu",
        "precision": "fp32",
        "torch": measured.get("torch"),
        "threads": measured.get("threads"),
        "cpus": os.cpu_count(),
    }
    print(json.dumps({"yolotrain": ours, "ultralytics": theirs, "ratio": ratio, "settings": settings}))


if __name__ == "__main__":
    main()
