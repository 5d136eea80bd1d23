"""Write the Ultralytics golden files: tiny YOLOv8 and YOLO11 checkpoints saved by Ultralytics' own trainer.

Never run by the test suite (it needs the real ``ultralytics`` package, which yolotrain never depends on).
Run it in a scratch environment outside the tree, then commit what it writes next to this script::

    python3 -m venv /tmp/ulvenv
    /tmp/ulvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 ultralytics
    YOLO_OFFLINE=1 /tmp/ulvenv/bin/python tests/models/golden/make_golden.py

For each family it writes a model yaml with a tiny custom scale (so each file is a few hundred KB), trains
it for 2 epochs on 8 generated 64-pixel images (CPU, nothing downloaded), and keeps:

- ``yolov8_epoch1.pt``: the trainer's checkpoint of epoch 1, as written mid-run (``save_period=1``): EMA
  in fp16, optimizer state, train args, metrics (YOLOv8 only, to keep the files small);
- ``<family>_best.pt``: the final ``best.pt`` after the trainer's ``strip_optimizer``;
- ``<family>_ref.pt``: a fixed input and, for each of the two files, the raw head outputs of
  Ultralytics' own model loaded from it (``YOLO(file).model.float().eval()(x)[1]``), plus the class names
  and the ultralytics version (plain tensors and lists: ``torch.load(weights_only=True)`` reads it).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
FAMILIES = {"yolov8": "v8/yolov8.yaml", "yolo11": "11/yolo11.yaml"}
SCALE = "[0.33, 0.0625, 64]"  # depth, width, max channels: a few hundred KB per file
NAMES = ["square", "bar", "dot"]


def make_dataset(root: Path) -> Path:
    """8 images of coloured rectangles with YOLO labels, and their data yaml."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(8 if split == "train" else 4):
            img = np.full((64, 64, 3), 40, np.uint8)
            rows = []
            for _ in range(2):
                c = int(rng.integers(0, 3))
                w, h = rng.integers(10, 30, 2)
                x, y = rng.integers(0, 64 - w), rng.integers(0, 64 - h)
                img[y : y + h, x : x + w] = (80 * c + 60, 200 - 60 * c, 120)
                rows.append(f"{c} {(x + w / 2) / 64:.6f} {(y + h / 2) / 64:.6f} {w / 64:.6f} {h / 64:.6f}")
            Image.fromarray(img).save(root / "images" / split / f"{i}.png")
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(rows) + "\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: {NAMES}\n")
    return data


def model_yaml(family: str, out: Path) -> Path:
    """The published yaml of ``family`` with one tiny scale ``t`` in place of n/s/m/l/x."""
    import ultralytics  # noqa: PLC0415 - only in the scratch environment

    src = Path(ultralytics.__file__).parent / "cfg" / "models" / FAMILIES[family]
    lines, skip = [], False
    for line in src.read_text().splitlines():
        if line.startswith("scales:"):
            lines += ["scales:", f"  t: {SCALE}"]
            skip = True
            continue
        if skip and line.startswith("  "):
            continue
        skip = False
        lines.append(line.replace("nc: 80", f"nc: {len(NAMES)}"))
    path = out / f"{family}t.yaml"  # the trailing 't' picks scale t, as 'yolov8n.yaml' picks n
    path.write_text("\n".join(lines) + "\n")
    return path


def raw_outputs(path: Path, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The head's raw outputs over all levels: ``boxes`` (B, 4 x 16, anchors) DFL logits and ``scores``
    (B, nc, anchors) class logits, levels P3, P4, P5 in order (Ultralytics 8.4's ``Detect`` returns them)."""
    from ultralytics import YOLO  # noqa: PLC0415 - only in the scratch environment

    model = YOLO(str(path)).model.float().eval()
    with torch.no_grad():
        raw = model(x)[1]
    return {"boxes": raw["boxes"].clone(), "scores": raw["scores"].clone()}


def main() -> None:
    import ultralytics  # noqa: PLC0415 - only in the scratch environment
    from ultralytics import YOLO  # noqa: PLC0415 - only in the scratch environment

    os.environ.setdefault("YOLO_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="golden-"))
    try:
        data = make_dataset(work / "data")
        for family in FAMILIES:
            torch.manual_seed(0)
            model = YOLO(str(model_yaml(family, work)))
            model.train(
                data=str(data), epochs=2, imgsz=64, batch=4, workers=0, device="cpu", plots=False, amp=False,
                save_period=1, project=str(work / "runs"), name=family, exist_ok=True, seed=0, deterministic=True,
                mosaic=0.0, val=True, verbose=False,
            )  # fmt: skip
            wdir = work / "runs" / family / "weights"
            files = {"best": HERE / f"{family}_best.pt"}
            if family == "yolov8":  # one mid-run file (optimizer state included) is enough: ~1.8 MB
                files["epoch1"] = HERE / f"{family}_epoch1.pt"
            for kind, path in files.items():
                shutil.copyfile(wdir / f"{kind}.pt", path)
            x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
            ref = {
                "input": x,
                "outputs": {k: raw_outputs(p, x) for k, p in files.items()},
                "names": NAMES,
                "ultralytics": ultralytics.__version__,
                "torch": str(torch.__version__),  # a str subclass, which weights_only loading refuses
            }
            torch.save(ref, HERE / f"{family}_ref.pt")
            print(family, {k: p.stat().st_size for k, p in files.items()})
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
