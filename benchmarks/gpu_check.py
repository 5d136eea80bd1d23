"""One prepared check for a machine with an NVIDIA GPU, printing one JSON line.

On a GPU (default, meant to finish in under 8 minutes on one card):

- training images/s of scales n and s at imgsz 640 in fp16 and in bf16 (workers = CPU cores),
  each with its data-wait share (the loader's ``stats.wait_share``);
- a real CUDA out-of-memory recovery: memory capped with
  ``torch.cuda.set_per_process_memory_fraction`` and a batch that cannot fit at once; passes when
  training finishes after at least one recovery;
- AutoBatch (``batch=-1``): the batch it chose against the peak memory it then used;
- ``compile=true`` images/s, when the setting exists.

``--smoke`` runs the same code paths on the CPU in seconds (imgsz 64, scale n, fp32 and bf16, the
out-of-memory error injected with ``YOLOTRAIN_INJECT_OOM`` instead of a memory cap, no AutoBatch), so
the test suite keeps this script from rotting while no GPU is at hand.

Usage::

    python benchmarks/gpu_check.py                 # on the GPU machine
    python benchmarks/gpu_check.py --smoke         # anywhere (the test suite runs this)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from yolotrain.api import Detector
from yolotrain.config import SETTINGS


def make_dataset(root: Path, n: int, size: int) -> Path:
    """``n`` noisy images with one bright box each (one class) and their data YAML."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n if split == "train" else max(2, n // 8)):
            img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            w, h = (int(v) for v in rng.integers(size // 4, size // 2, 2))
            x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            img[y0 : y0 + h, x0 : x0 + w] = 255
            cv2.imwrite(str(root / "images" / split / f"{i}.jpg"), img)
            text = f"0 {(x0 + w / 2) / size} {(y0 + h / 2) / size} {w / size} {h / size}\n"
            (root / "labels" / split / f"{i}.txt").write_text(text)
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [box]\n")
    return root / "data.yaml"


def train_once(data: Path, project: Path, **settings: Any) -> dict[str, Any]:
    """One short training run; what the trainer measured, read from its ``on_train_end`` callback."""
    seen: dict[str, Any] = {}

    def grab(trainer: Any) -> None:
        loader = trainer.train_loader
        seen["images_per_s"] = round(float(trainer.images_per_s), 1)
        seen["data_wait_share"] = round(float(loader.stats.wait_share), 3) if hasattr(loader, "stats") else None
        seen["batch"] = int(trainer.cfg.batch)  # AutoBatch's choice is recorded in the run's config
        seen["oom_events"] = int(trainer.run.state.oom_events)
        seen["micro_batches"] = int(trainer.run.state.micro_batches)

    det = Detector(settings.pop("model", "n"))
    det.add_callback("on_train_end", grab)
    t0 = time.perf_counter()
    det.train(data=str(data), project=str(project), exist_ok=True, val=False, verbose=False, **settings)
    seen["seconds"] = round(time.perf_counter() - t0, 1)
    return seen


@contextlib.contextmanager
def env(**values: str):
    """Environment variables set for the block (restored after)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(smoke: bool) -> dict[str, Any]:
    cuda = torch.cuda.is_available() and not smoke
    if not smoke and not cuda:
        raise SystemExit("no CUDA device: run with --smoke for the CPU check")
    out: dict[str, Any] = {"mode": "smoke-cpu" if smoke else "cuda", "torch": torch.__version__}
    if cuda:
        out["device"] = torch.cuda.get_device_name(0)
    imgsz, n_img = (64, 8) if smoke else (640, 512)
    base = {"imgsz": imgsz, "epochs": 1, "device": "cpu" if smoke else "0", "workers": 0 if smoke else os.cpu_count()}
    base["batch"] = 4 if smoke else 32
    scales = ("n",) if smoke else ("n", "s")
    precisions = ("off", "bf16") if smoke else ("fp16", "bf16")
    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp) / "data", n_img, imgsz)
        project = Path(tmp) / "runs"
        for scale in scales:
            for amp in precisions:
                r = train_once(data, project, model=scale, amp=amp, name=f"{scale}_{amp}", **base)
                out[f"{scale} amp={amp}"] = r
        # Out-of-memory recovery: a real capped CUDA allocator, or an injected error on the CPU.
        if cuda:
            torch.cuda.set_per_process_memory_fraction(0.08, 0)
            r = train_once(data, project, model="n", amp="fp16", name="oom", **{**base, "batch": 256})
            torch.cuda.set_per_process_memory_fraction(1.0, 0)
        else:
            with env(YOLOTRAIN_INJECT_OOM="0:1"):  # step 0: micro-batches above 1 image fail
                r = train_once(data, project, model="n", amp="off", name="oom", **base)
        r["recovered"] = r["oom_events"] > 0 and r["micro_batches"] > 1
        out["oom_recovery"] = r
        if cuda:
            torch.cuda.reset_peak_memory_stats(0)
            r = train_once(data, project, model="n", amp="fp16", name="autobatch", **{**base, "batch": -1})
            total = torch.cuda.get_device_properties(0).total_memory
            r["peak_memory_fraction"] = round(torch.cuda.max_memory_reserved(0) / total, 3)
            out["autobatch"] = r
        if "compile" in SETTINGS:
            amp = "off" if smoke else "bf16"
            out["compile"] = train_once(data, project, model="n", amp=amp, name="compile", compile=True, **base)
        else:
            out["compile"] = "no compile setting yet"
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU smoke mode: the same code paths in seconds")
    args = ap.parse_args(argv)
    out = run(args.smoke)
    print(json.dumps(out))
    sys.stdout.flush()
    return out


if __name__ == "__main__":
    main()
