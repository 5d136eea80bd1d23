"""Training-loader throughput on ONE core, ours and (when installed) Ultralytics', as one JSON line.

Both loaders run the default training augmentation (mosaic on) with ``workers=0`` and one thread
(torch and OpenCV), over the same copy of the dataset, for ``--epochs`` epochs after a warm-up
epoch. Ours also reports the per-stage breakdown in ms/image (read, decode, resize, mosaic, affine,
hsv, flip, letterbox, format, collate; CPU time) from the loader's own clocks. The peer runs in a child
process so its imports and settings cannot touch ours.

Usage::

    python benchmarks/loader.py                                   # coco128, imgsz 320 and 640
    python benchmarks/loader.py --imgsz 320 --cache ram --epochs 1
    python benchmarks/loader.py --repeat 8       # 1024 images: more than either loader's buffer
    python benchmarks/loader.py --val --imgsz 640  # validation: square vs rectangular batches
    PYTHONPATH=/tmp/ultra python benchmarks/loader.py             # peer installed outside the project
    python benchmarks/loader.py --smoke      # seconds: 16 generated images at 64 px, train and val loaders

The dataset is copied to a temporary folder first (the peer writes a label cache beside the labels).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "coco128"
# the keys a --smoke run must print (the test suite runs every benchmark's smoke mode and checks them)
SMOKE_KEYS = ("data", "batch", "epochs", "cache=off imgsz=64", "val imgsz=64")

PEER_CODE = r"""
import json, sys, time
import cv2, torch
torch.set_num_threads(1)
from ultralytics.cfg import get_cfg
from ultralytics.data import build_dataloader, build_yolo_dataset
from ultralytics.utils import DEFAULT_CFG
cv2.setNumThreads(1)  # after the import: ultralytics sets its own value
img_path, imgsz, batch, epochs, cache = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
cfg = get_cfg(DEFAULT_CFG, {"imgsz": imgsz, "cache": cache if cache != "off" else False, "workers": 0})
data = {"names": {i: str(i) for i in range(80)}, "nc": 80, "channels": 3}
ds = build_yolo_dataset(cfg, img_path, batch, data, mode="train", stride=32)
loader = build_dataloader(ds, batch, 0, shuffle=True)
n = 0
for e in range(epochs + 1):
    if e == 1:
        t0, c0, n = time.perf_counter(), time.process_time(), 0
    for b in loader:
        n += b["img"].shape[0]
print(json.dumps({"images_per_s": n / (time.perf_counter() - t0), "images_per_cpu_s": n / (time.process_time() - c0)}))
"""


def peer_available() -> bool:
    """True when ``ultralytics`` imports in a child process with the current environment."""
    r = subprocess.run([sys.executable, "-c", "import ultralytics"], capture_output=True, env=os.environ.copy())
    return r.returncode == 0


def run_peer(img_dir: Path, imgsz: int, batch: int, epochs: int, cache: str) -> dict | None:
    """The peer's training-loader images/s and images per CPU-second (child process), or None."""
    r = subprocess.run(
        [sys.executable, "-c", PEER_CODE, str(img_dir), str(imgsz), str(batch), str(epochs), cache],
        capture_output=True,
        text=True,
        env={**os.environ, "YOLO_VERBOSE": "False", "OMP_NUM_THREADS": "1"},
    )
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode or not lines:
        print(f"peer failed: {r.stderr.strip().splitlines()[-1:] or r.returncode}", file=sys.stderr)
        return None
    return json.loads(lines[-1])


def run_ours(img_dir: Path, imgsz: int, batch: int, epochs: int, cache: str) -> dict:
    """Our training loader's images/s and ms/image per stage."""
    import cv2
    import torch

    from yolotrain.config import resolve
    from yolotrain.config_sections import AugmentSettings
    from yolotrain.data import DetectionDataset, build_dataloader, scan_split, set_loader_epoch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    cfg = resolve({"imgsz": imgsz})
    records, _ = scan_split([str(img_dir)], 80, use_cache=False, log_problems=False)
    augmentation = AugmentSettings.from_config(cfg)
    ds = DetectionDataset(records, imgsz, True, augmentation, cache=cache if cache != "off" else False, seed=0)
    loader = build_dataloader(ds, batch, 0, shuffle=True, seed=0)
    set_loader_epoch(loader, 0)
    for _ in loader:  # warm-up epoch
        pass
    n, stage_ms, stage_images, t0, c0 = 0, {}, 0, time.perf_counter(), time.process_time()
    for e in range(1, epochs + 1):
        set_loader_epoch(loader, e)
        for b in loader:
            n += b["img"].shape[0]
        for k, v in loader.stats.stage_ms.items():
            stage_ms[k] = stage_ms.get(k, 0.0) + v
        stage_images += loader.stats.stage_images
    return {
        "images_per_s": n / (time.perf_counter() - t0),
        "images_per_cpu_s": n / (time.process_time() - c0),
        "stage_ms_per_image": {k: round(v / stage_images, 3) for k, v in stage_ms.items()},
    }


def repeat_images(img_dir: Path, times: int) -> None:
    """Copy every image (and its label) ``times - 1`` more times under new names.

    A set larger than both loaders' recent-image buffers (128 images at batch 16) makes every
    sample pay its decode, as on a real dataset.
    """
    lbl_dir = Path(str(img_dir).replace(f"{os.sep}images", f"{os.sep}labels", 1))
    for f in sorted(img_dir.iterdir()) if times > 1 else []:
        for k in range(1, times):
            shutil.copy(f, f.with_name(f"{f.stem}_r{k}{f.suffix}"))
            lab = lbl_dir / f"{f.stem}.txt"
            if lab.is_file():
                shutil.copy(lab, lbl_dir / f"{f.stem}_r{k}.txt")


def run_val(img_dir: Path, imgsz: int, batch: int) -> dict:
    """Validation loader, square against rectangular batches: input pixels, loader and model-n forward CPU-s."""
    import torch

    from yolotrain.data import DetectionDataset, build_dataloader, scan_split, set_loader_epoch
    from yolotrain.models import build_model

    torch.set_num_threads(1)
    records, _ = scan_split([str(img_dir)], 80, use_cache=False, log_problems=False)
    model = build_model(scale="n", nc=80).eval()
    out = {}
    for rect in (False, True):
        loader = build_dataloader(DetectionDataset(records, imgsz, False, rect=rect), batch, 0, shuffle=False)
        set_loader_epoch(loader, 0)
        c0 = time.process_time()
        batches = list(loader)
        data_s = time.process_time() - c0
        c0 = time.process_time()
        with torch.no_grad():
            for b in batches:
                model(b["img"].float().div_(255).contiguous(memory_format=torch.channels_last))
        out[f"rect={str(rect).lower()}"] = {
            "input_mpixels": round(sum(b["img"][:, 0].numel() for b in batches) / 1e6, 2),
            "loader_cpu_s": round(data_s, 2),
            "forward_cpu_s": round(time.process_time() - c0, 2),
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="YOLO dataset folder with images/train2017 or images/")
    ap.add_argument("--imgsz", type=int, nargs="+", default=[320, 640])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=2, help="measured epochs after one warm-up epoch")
    ap.add_argument("--cache", nargs="+", default=["off"], choices=["off", "ram", "disk"])
    ap.add_argument("--repeat", type=int, default=1, help="copies of each image (8: 1024 images from coco128)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating ours/peer rounds; the best of each counts")
    ap.add_argument("--val", action="store_true", help="instead: validation loader, square vs rect (model n forward)")
    ap.add_argument("--with-val", action="store_true", help=argparse.SUPPRESS)  # --smoke: both loaders in one run
    ap.add_argument("--no-peer", action="store_true", help="skip Ultralytics even when installed")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: keeps the script from rotting")
    args = ap.parse_args(argv)
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="yolotrain-loader-bench-") as tmp:
            from yolotrain.data import ensure_demo_dataset

            data = ensure_demo_dataset(Path(tmp) / "shapes", n_train=16, n_val=4, size=64).parent
            smoke = ["--data", str(data), "--imgsz", "64", "--batch", "4", "--epochs", "1", "--rounds", "1"]
            return main([*smoke, "--no-peer", "--with-val"])

    src = Path(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / src.name
        shutil.copytree(src, dst)
        os.environ["YOLOTRAIN_CACHE"] = str(Path(tmp) / "cache")  # cache=disk files stay in the temporary folder
        img_dir = next(
            p for p in (dst / "images" / "train2017", dst / "images" / "train", dst / "images") if p.is_dir()
        )
        repeat_images(img_dir, args.repeat)
        if args.val:
            out = {f"val imgsz={imgsz}": run_val(img_dir, imgsz, args.batch) for imgsz in args.imgsz}
            print(json.dumps(out))
            return out
        peer = not args.no_peer and peer_available()
        out: dict = {
            "data": src.name,
            "repeat": args.repeat,
            "batch": args.batch,
            "epochs": args.epochs,
            "workers": 0,
            "threads": 1,
        }
        out["cpu"] = os.cpu_count()
        for cache in args.cache:
            for imgsz in args.imgsz:
                # Rounds alternate ours and the peer so both see the same machine load; the best
                # round of each counts. "per CPU-second" (process time) is the per-core figure.
                best: dict = {}
                for _ in range(args.rounds):
                    runs = {"ours": run_ours(img_dir, imgsz, args.batch, args.epochs, cache)}
                    if peer:
                        runs["peer"] = run_peer(img_dir, imgsz, args.batch, args.epochs, cache)
                    for who, r in runs.items():
                        if r and r["images_per_cpu_s"] > best.get(who, {}).get("images_per_cpu_s", 0):
                            best[who] = r
                ours = best["ours"]
                row = {
                    "ours_images_per_s": round(ours["images_per_s"], 1),
                    "ours_images_per_cpu_s": round(ours["images_per_cpu_s"], 1),
                    "stages_ms": ours["stage_ms_per_image"],
                }
                if "peer" in best:
                    p = best["peer"]
                    row["peer_images_per_s"] = round(p["images_per_s"], 1)
                    row["peer_images_per_cpu_s"] = round(p["images_per_cpu_s"], 1)
                    row["ratio_per_cpu_s"] = round(ours["images_per_cpu_s"] / p["images_per_cpu_s"], 2)
                out[f"cache={cache} imgsz={imgsz}"] = row
        if args.with_val:
            out[f"val imgsz={args.imgsz[0]}"] = run_val(img_dir, args.imgsz[0], args.batch)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
