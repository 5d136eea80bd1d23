"""Long-tailed data: per-class AP of a rare class and overall mAP with and without the long-tail settings.

Run it with::

    nice -n 5 .venv/bin/python benchmarks/long_tail.py                  # 3 seeds x 2 variants (CPU minutes)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/long_tail.py --pool 500 --keep 0.1 --epochs 60 --jobs 2 \
        --variants shuffle,repeat_factor,cls_weights,shuffle_equal      # the figures in docs/tracking.md
    .venv/bin/python benchmarks/long_tail.py --smoke                    # tiny sizes, same code path

The long-tailed set is built from the demo generator: a pool of demo images, from which the training split
keeps every image without the rare class and only ``--keep`` (5%) of the images that hold it; validation is
the demo's untouched val split, so the rare class is scored on as many boxes as the others. Each seed trains
every variant: ``shuffle`` (the default), ``repeat_factor`` (``sampler=repeat_factor``), ``cls_weights``
(``cls_weights=auto``, shuffled), ``both``, and ``shuffle_equal``: shuffled for as many images as
``repeat_factor`` trains (its epochs are longer: they hold the repeated images), so the two compare at equal
optimizer steps, not only equal epochs. Figures are the last epoch's validation. Prints one JSON object as the
last line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SMOKE_KEYS = (
    "rare_class",
    "train_images",
    "rare_train_images",
    "epochs",
    "shuffle_map50_95",
    "repeat_factor_map50_95",
    "shuffle_rare_ap50_95",
    "repeat_factor_rare_ap50_95",
    "runs",
)
# each variant's settings over the shared ones; shuffle_equal's epochs are set in main()
VARIANTS = {
    "shuffle": {"sampler": "shuffle"},
    "repeat_factor": {"sampler": "repeat_factor"},
    "cls_weights": {"sampler": "shuffle", "cls_weights": "auto"},
    "both": {"sampler": "repeat_factor", "cls_weights": "auto"},
    "shuffle_equal": {"sampler": "shuffle"},
}


def build_long_tailed(pool_yaml: Path, out: Path, rare: int, keep: float, seed: int = 0) -> dict:
    """Write ``out/data.yaml``: the pool's train images without class ``rare`` plus ``keep`` of those with it."""
    import yaml

    pool = pool_yaml.parent
    labels = sorted((pool / "labels" / "train").glob("*.txt"))
    has_rare = [p for p in labels if any(line.split()[0] == str(rare) for line in p.read_text().splitlines())]
    others = [p for p in labels if p not in set(has_rare)]
    rng = np.random.default_rng(seed)
    kept_rare = sorted(rng.choice(len(has_rare), max(1, round(keep * len(has_rare))), replace=False).tolist())
    chosen = others + [has_rare[i] for i in kept_rare]
    for split in ("train", "val"):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    for lab in chosen:
        img = next((pool / "images" / "train").glob(lab.stem + ".*"))
        link = out / "images" / "train" / img.name
        if not link.exists():
            link.symlink_to(img.resolve())
        (out / "labels" / "train" / lab.name).write_text(lab.read_text())
    for img in (pool / "images" / "val").iterdir():
        if not (out / "images" / "val" / img.name).exists():
            (out / "images" / "val" / img.name).symlink_to(img.resolve())
    for lab in (pool / "labels" / "val").glob("*.txt"):
        (out / "labels" / "val" / lab.name).write_text(lab.read_text())
    names = yaml.safe_load(pool_yaml.read_text())["names"]
    (out / "data.yaml").write_text(yaml.safe_dump({"path": str(out), "train": "images/train", "val": "images/val",
                                                   "names": names}))  # fmt: skip
    return {"train_images": len(chosen), "rare_train_images": len(kept_rare), "names": names}


def repeat_epoch_images(data_yaml: Path, threshold: float) -> tuple[int, int]:
    """(images, images per repeat-factor epoch) of the set's train split, scanned as training scans it."""
    from yolotrain.data.class_balance import epoch_length, repeat_factors
    from yolotrain.data.data_yaml import load_data_yaml
    from yolotrain.data.scan import scan_split

    data = load_data_yaml(data_yaml)
    records, _ = scan_split(data["train"], data["nc"], split="train", root=data["path"], log_problems=False)
    return len(records), epoch_length(repeat_factors([r.cls for r in records], data["nc"], threshold))


def train_once(data: Path, project: Path, variant: str, seed: int, epochs: int, a: argparse.Namespace) -> dict:
    from yolotrain.config import resolve
    from yolotrain.engine.trainer import Trainer

    settings = {
        "data": str(data), "model": "n", "epochs": epochs, "imgsz": a.imgsz, "batch": a.batch, "nbs": a.batch,
        "workers": a.workers, "seed": seed, "rfs_threshold": a.rfs_threshold,
        "close_mosaic": max(1, epochs // 3), "project": str(project), "name": f"{variant}_seed{seed}",
        "exist_ok": True, "verbose": False, "plots": False, "val_period": epochs,  # validate once, at the end
        **VARIANTS[variant],
    }  # fmt: skip
    t0 = time.process_time()
    trainer = Trainer(resolve(settings))
    trainer.fit()
    m = trainer.metrics  # the last epoch's validation
    rare = next((c for c in m.per_class if c["class_id"] == a.rare), {"map50": 0.0, "map50_95": 0.0})
    return {
        "variant": variant, "seed": seed, "epochs": epochs,
        "map50": round(m.map50, 4), "map50_95": round(m.map50_95, 4),
        "rare_ap50": round(float(rare["map50"]), 4), "rare_ap50_95": round(float(rare["map50_95"]), 4),
        "images_per_epoch": len(trainer.train_loader.sampler), "iterations_per_epoch": trainer.nb,
        "cpu_seconds": round(time.process_time() - t0, 1),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--pool", type=int, default=300, help="demo train images the long-tailed split is cut from")
    ap.add_argument("--val", type=int, default=60)
    ap.add_argument("--size", type=int, default=96, help="demo image size")
    ap.add_argument("--imgsz", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--rare", type=int, default=3, help="the class made rare (demo: 3 = cross)")
    ap.add_argument("--keep", type=float, default=0.05, help="share of the rare class's train images kept")
    ap.add_argument("--rfs-threshold", type=float, default=None, help="default: what yolotrain data check suggests")
    ap.add_argument("--out", default="runs/long_tail")
    ap.add_argument("--jobs", type=int, default=1, help="trainings run in parallel processes")
    ap.add_argument("--variants", default="shuffle,repeat_factor", help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)  # a child: "variant,seed,epochs"
    a = ap.parse_args()
    if a.smoke:
        a.seeds, a.epochs, a.pool, a.val, a.size, a.imgsz, a.batch, a.keep = "0", 1, 24, 4, 64, 64, 8, 0.2
        a.workers = 0
        a.out = str(Path(a.out) / "smoke")
    logging.basicConfig(level=logging.WARNING)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from yolotrain.data import ensure_demo_dataset

    out = Path(a.out).resolve()  # the data YAML names its folder; a relative one would resolve twice
    data_dir = out / f"long_tail_{a.pool}_{a.size}_rare{a.rare}_keep{a.keep:g}"
    variants = a.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    if a.one:  # a child of --jobs: one training on the set the parent built, its JSON on the last line
        variant, seed, epochs = a.one.split(",")
        run = train_once(data_dir / "data.yaml", out / "runs", variant, int(seed), int(epochs), a)
        print(json.dumps(run), flush=True)
        return
    pool_yaml = ensure_demo_dataset(out / f"pool_{a.pool}_{a.val}_{a.size}", n_train=a.pool, n_val=a.val, size=a.size)
    info = build_long_tailed(pool_yaml, data_dir, a.rare, a.keep)
    if a.rfs_threshold is None:  # the median class's image share, as `yolotrain data check` suggests
        from yolotrain.data.check import check_dataset, suggested_rfs_threshold

        _, checks = check_dataset(str(data_dir / "data.yaml"), use_cache=False)
        stats = next(c.stats for c in checks if c.name == "train")
        a.rfs_threshold = suggested_rfs_threshold(stats["class_images"], stats["images"])
        info["class_images"] = stats["class_images"]
    images, repeat_images = repeat_epoch_images(data_dir / "data.yaml", a.rfs_threshold)
    equal_epochs = max(1, round(a.epochs * repeat_images / images))  # shuffle_equal: repeat_factor's images
    epochs_of = {v: equal_epochs if v == "shuffle_equal" else a.epochs for v in variants}
    todo = [(v, int(seed)) for seed in a.seeds.split(",") for v in variants]
    runs = []
    for i in range(0, len(todo), a.jobs):
        batch = todo[i : i + a.jobs]
        children = [
            subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--rfs-threshold", str(a.rfs_threshold),
                              "--one", f"{v},{seed},{epochs_of[v]}"], stdout=subprocess.PIPE, text=True)
            for v, seed in batch
        ]  # fmt: skip
        for child in children:
            out_text, _ = child.communicate()
            if child.returncode:
                raise SystemExit(f"a training failed (exit {child.returncode})")
            r = json.loads(out_text.strip().splitlines()[-1])
            print(json.dumps(r), flush=True)
            runs.append(r)

    def mean(variant: str, key: str) -> float:
        return round(statistics.mean(r[key] for r in runs if r["variant"] == variant), 4)

    result = {
        "rare_class": info["names"][a.rare], "keep": a.keep, "train_images": info["train_images"],
        "rare_train_images": info["rare_train_images"], "epochs": a.epochs, "rfs_threshold": a.rfs_threshold,
        "class_images": info.get("class_images"), "seeds": a.seeds, "load": os.getloadavg()[0],
        "epochs_per_variant": epochs_of,
    }  # fmt: skip
    for v in variants:
        for key in ("map50_95", "map50", "rare_ap50_95", "rare_ap50", "images_per_epoch", "cpu_seconds"):
            result[f"{v}_{key}"] = mean(v, key)
    result["runs"] = runs
    print(json.dumps(result))


if __name__ == "__main__":
    main()
