"""Build a real-image detection set from what scikit-learn ships: handwritten digits pasted onto photos.

scikit-learn carries 1,797 real handwritten digits (``load_digits``: 8x8 scans from 43 writers, 10 classes)
and two real photos (``load_sample_images``: china.jpg and flower.jpg, 427x640) inside its wheel, so
this set is made without downloading anything at run time. Each image is a random crop of one photo
(random scale, flip and brightness), with 1-6 digits pasted at random free
(non-overlapping) positions and sizes in a random
ink colour (the digit's intensity is the ink's opacity); a box is the tight box of the pasted ink.
Train and val use disjoint digit samples (the first 1,400 scans for train, the rest for val).

    pip install --target /tmp/benchdeps scikit-learn      # or: pip install -e .[bench]
    PYTHONPATH=/tmp/benchdeps python benchmarks/build_digits_dataset.py --out /tmp/digits
    yolotrain train data=/tmp/digits/data.yaml imgsz=160
    python benchmarks/build_digits_dataset.py --smoke      # 8 + 4 images into a temporary folder, seconds

The last stdout line is one JSON object: {"data": ".../data.yaml", "train": N, "val": M, "boxes": ...}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

try:
    from sklearn.datasets import load_digits, load_sample_images
except ImportError:  # scikit-learn is a benchmark extra, never a dependency of yolotrain
    sys.exit(
        "build_digits_dataset.py needs scikit-learn: pip install -e .[bench] "
        "(or pip install --target /tmp/benchdeps scikit-learn and PYTHONPATH=/tmp/benchdeps)"
    )

# the keys a --smoke run must print (the test suite runs every benchmark's smoke mode and checks them), and
# the modules it needs: the suite skips this script where they are not importable
SMOKE_KEYS = ("data", "train", "val", "boxes")
SMOKE_NEEDS = ("sklearn",)
TRAIN_SCANS = 1400  # digit scans [0, 1400) for train, [1400, 1797) for val


def make_image(rng: np.random.Generator, photos: list[np.ndarray], digits, scans: np.ndarray, size: int):
    """One image (BGR, size x size) and its labels [(cls, x1, y1, x2, y2)]."""
    photo = photos[rng.integers(len(photos))]
    h, w = photo.shape[:2]
    crop = int(rng.uniform(0.3, 1.0) * min(h, w))
    y0, x0 = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
    img = cv2.resize(photo[y0 : y0 + crop, x0 : x0 + crop], (size, size), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    img = np.clip(img.astype(np.float32) * rng.uniform(0.6, 1.3), 0, 255)
    labels, placed = [], []
    for _ in range(rng.integers(1, 7)):
        k = scans[rng.integers(len(scans))]
        side = int(rng.uniform(0.12, 0.4) * size)
        aspect = rng.uniform(0.75, 1.3)
        dw, dh = max(int(side * aspect), 8), max(side, 8)
        ink = cv2.resize(digits.images[k] / 16.0, (dw, dh), interpolation=cv2.INTER_CUBIC).clip(0, 1)
        for _try in range(10):  # a free spot: a hidden digit would be a label nobody can see
            x, y = rng.integers(0, size - dw + 1), rng.integers(0, size - dh + 1)
            if all(x >= b[3] or x + dw <= b[1] or y >= b[4] or y + dh <= b[2] for b in placed):
                break
        else:
            continue
        placed.append((0, x, y, x + dw, y + dh))
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        if abs(float(colour.mean()) - float(img[y : y + dh, x : x + dw].mean())) < 60:  # keep the ink visible
            colour = 255.0 - colour
        alpha = ink[..., None] * rng.uniform(0.75, 1.0)
        img[y : y + dh, x : x + dw] = img[y : y + dh, x : x + dw] * (1 - alpha) + colour * alpha
        ys, xs = np.nonzero(ink > 0.15)
        if len(xs):
            labels.append((int(digits.target[k]), x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1))
    return img.astype(np.uint8), labels


def build(out: Path, n_train: int, n_val: int, size: int, seed: int) -> dict:
    digits = load_digits()
    photos = [cv2.cvtColor(p, cv2.COLOR_RGB2BGR) for p in load_sample_images().images]
    all_scans = np.arange(len(digits.images))
    boxes = 0
    for split, n, scans in (
        ("train", n_train, all_scans[:TRAIN_SCANS]),
        ("val", n_val, all_scans[TRAIN_SCANS:]),
    ):
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, labels = make_image(rng, photos, digits, scans, size)
            cv2.imwrite(str(out / "images" / split / f"{i:05d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            rows = [
                f"{c} {(x1 + x2) / 2 / size:.6f} {(y1 + y2) / 2 / size:.6f} {(x2 - x1) / size:.6f} "
                f"{(y2 - y1) / size:.6f}"
                for c, x1, y1, x2, y2 in labels
            ]
            (out / "labels" / split / f"{i:05d}.txt").write_text("\n".join(rows) + "\n")
            boxes += len(rows)
    names = "\n".join(f"  {i}: '{i}'" for i in range(10))
    (out / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return {"data": str(out / "data.yaml"), "train": n_train, "val": n_val, "boxes": boxes, "imgsz": size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/digits"))
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="8 train + 4 val images in a temporary folder: seconds")
    args = ap.parse_args()
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="digits-smoke-") as tmp:
            out = build(Path(tmp), 8, 4, 64, args.seed)
            assert len(list((Path(tmp) / "images" / "train").glob("*.jpg"))) == 8
        print(json.dumps(out))
        return
    print(json.dumps(build(args.out, args.train, args.val, args.size, args.seed)))


if __name__ == "__main__":
    main()
