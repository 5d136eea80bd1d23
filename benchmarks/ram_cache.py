"""cache=ram memory over epochs: one JSON line with each loader process's USS/PSS after epoch 1 and epoch N.

Builds the training dataset with ``cache=ram`` (one shared-memory file per machine, see
``yolotrain.data.shm_cache``) and a loader with ``--workers`` persistent workers, runs ``--epochs``
epochs, and reads ``/proc/<pid>/smaps`` of the main process and every worker after epoch 1 and after
the last one. RSS counts a shared page in every process that maps it, so it cannot tell one shared
copy from one copy per process; the figures are USS (pages a process holds alone: where a leak or a
private copy shows) and PSS (shared pages divided among the processes mapping them; summed over the
processes, the cache file counts once).

Usage::

    python benchmarks/ram_cache.py --data /tmp/coco128 --imgsz 640 --workers 2 --epochs 3
    python benchmarks/ram_cache.py --smoke     # seconds: 16 generated images at 64 px, 1 worker, 2 epochs
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
from pathlib import Path

from yolotrain.config_sections import AugmentSettings
from yolotrain.data.dataset import DetectionDataset
from yolotrain.data.loader import build_dataloader, set_loader_epoch
from yolotrain.data.scan import scan_split

ROOT = Path(__file__).resolve().parents[1]
# the keys a --smoke run must print (the test suite runs every benchmark's smoke mode and checks them)
SMOKE_KEYS = ("images", "cache_file_mb", "cache_pss_sum_mb", "uss_sum_mb_epoch1", "uss_mb_epoch1", "pss_mb_epoch1")


def smaps_mb(pid: int, name: str) -> dict[str, float]:
    """MB: ``uss`` and ``pss`` of the whole process, ``cache_pss`` / ``cache_rss`` of the mappings of ``name``."""
    kb = dict.fromkeys(("uss", "pss", "cache_pss", "cache_rss"), 0)
    in_cache = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", head[0]):
                in_cache = name in line
                continue
            key = head[0].rstrip(":")
            value = int(head[1]) if len(head) > 1 and head[1].isdigit() else 0
            if key in ("Private_Clean", "Private_Dirty"):
                kb["uss"] += value
            elif key == "Pss":
                kb["pss"] += value
                kb["cache_pss"] += value if in_cache else 0
            elif key == "Rss" and in_cache:
                kb["cache_rss"] += value
    return {k: round(v / 1024, 1) for k, v in kb.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "coco128"))
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: keeps the script from rotting")
    args = ap.parse_args(argv)
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="yolotrain-ram-bench-") as tmp:
            from yolotrain.data import ensure_demo_dataset

            data = ensure_demo_dataset(Path(tmp) / "shapes", n_train=16, n_val=4, size=64).parent
            return main(["--data", str(data), "--imgsz", "64", "--workers", "1", "--epochs", "2", "--batch", "4"])
    img_dir = Path(args.data) / "images" / "train2017"
    if not img_dir.is_dir():  # a plain YOLO layout (images/train), as the demo set has
        img_dir = Path(args.data) / "images" / "train"
    records, _ = scan_split([str(img_dir)], nc=80, use_cache=False, log_problems=False)
    ds = DetectionDataset(records, args.imgsz, True, AugmentSettings.defaults(), cache="ram")
    if ds.images.ram is None:
        raise SystemExit("cache=ram was refused (see the warning)")
    name, file_mb = ds.images.ram.path.name, ds.images.ram.path.stat().st_size / 2**20
    loader = build_dataloader(ds, batch_size=args.batch, workers=args.workers, shuffle=True, seed=0)
    snaps = {}
    for e in range(args.epochs):
        set_loader_epoch(loader, e)
        for _ in loader:
            pass
        if e in (0, args.epochs - 1):
            workers = [w.pid for w in loader._iterator._workers] if args.workers else []
            snaps[e + 1] = {"main": smaps_mb(os.getpid(), name)} | {
                f"worker{k}": smaps_mb(pid, name) for k, pid in enumerate(workers)
            }
    first, last = snaps[1], snaps[args.epochs]
    out = {
        "images": len(records),
        "imgsz": args.imgsz,
        "workers": args.workers,
        "epochs": args.epochs,
        "cache_file_mb": round(file_mb, 1),
        "cache_pss_sum_mb": round(sum(p["cache_pss"] for p in last.values()), 1),
        "cache_rss_sum_mb": round(sum(p["cache_rss"] for p in last.values()), 1),
        "uss_sum_mb_epoch1": round(sum(v["uss"] for v in first.values()), 1),
        f"uss_sum_mb_epoch{args.epochs}": round(sum(v["uss"] for v in last.values()), 1),
        "uss_mb_epoch1": {k: v["uss"] for k, v in first.items()},
        f"uss_mb_epoch{args.epochs}": {k: v["uss"] for k, v in last.items()},
        "pss_mb_epoch1": {k: v["pss"] for k, v in first.items()},
        f"pss_mb_epoch{args.epochs}": {k: v["pss"] for k, v in last.items()},
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
