"""Frozen vs unfrozen training: time and memory per image of the two phases of ``freeze=``.

Run (from the repo root, after `make test` or `make demo` created .venv):

    .venv/bin/python benchmarks/freeze.py                  # demo set, scale n, imgsz 160, batch 16
    .venv/bin/python benchmarks/freeze.py --freeze 10      # the first 10 layers instead of the backbone
    .venv/bin/python benchmarks/freeze.py --smoke          # seconds: 1 epoch at 64 px on 16 generated images

Each phase is trained for --epochs epochs in its own child process (so peak memory is its own): once with
the ``--freeze`` part frozen for the whole run (``freeze_epochs=epochs``), once with nothing frozen, same
seed, data, batch and precision. Reported per phase: images/s of the last epoch (the first includes
start-up), milliseconds per image, and the child's peak RSS (CPU) or CUDA peak allocation.
The last stdout line is one JSON object:
{"frozen": {"images_per_s", "ms_per_image", "peak_mem_mb"}, "unfrozen": {...},
 "frozen_vs_unfrozen": {"time_per_image": ratio, "peak_mem": ratio}, "settings": {...}}
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the keys a --smoke run must print (the test suite runs every benchmark's smoke mode and checks them)
SMOKE_KEYS = ("frozen", "unfrozen", "frozen_vs_unfrozen", "settings")

CHILD = """
import json, sys, torch
from yolotrain.config import resolve
from yolotrain.engine.trainer import Trainer
from yolotrain.utils.logging import setup_logging
from yolotrain.utils.torch_utils import peak_rss_mb
setup_logging(False)
t = Trainer(resolve(json.loads(sys.argv[1])))
t.fit()
mem = torch.cuda.max_memory_allocated() / 2**20 if t.device.type == "cuda" else peak_rss_mb()
print(json.dumps({"images_per_s": t.history[-1]["images_per_s"], "peak_mem_mb": round(mem, 1)}))
"""


def run(settings: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(settings)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit("training child failed")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["ms_per_image"] = round(1000.0 / out["images_per_s"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="", help="data YAML (default: the built-in demo set)")
    ap.add_argument("--model", default="n")
    ap.add_argument("--freeze", default="backbone", help="backbone, a layer count, or module names")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--amp", default="off")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: keeps the script from rotting")
    args = ap.parse_args()
    freeze = int(args.freeze) if args.freeze.isdigit() else args.freeze
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="yolotrain-freeze-bench-") as tmp:
        if args.smoke:
            from yolotrain.data import ensure_demo_dataset

            data = ensure_demo_dataset(Path(tmp) / "shapes", n_train=16, n_val=4, size=64)
            args.data, args.epochs, args.imgsz, args.batch, args.workers = str(data), 1, 64, 8, 0
        base = {
            "model": args.model,
            "epochs": args.epochs,
            "imgsz": args.imgsz,
            "batch": args.batch,
            "nbs": args.batch,
            "workers": args.workers,
            "amp": args.amp,
            "val": False,
            "plots": False,
            "verbose": False,
            "project": tmp,
            "seed": 0,
        }
        if args.data:
            base["data"] = args.data
        out["frozen"] = run({**base, "name": "frozen", "freeze": freeze, "freeze_epochs": args.epochs})
        print(f"frozen: {out['frozen']}", file=sys.stderr)
        out["unfrozen"] = run({**base, "name": "unfrozen"})
        print(f"unfrozen: {out['unfrozen']}", file=sys.stderr)
    out["frozen_vs_unfrozen"] = {
        "time_per_image": round(out["frozen"]["ms_per_image"] / out["unfrozen"]["ms_per_image"], 3),
        "peak_mem": round(out["frozen"]["peak_mem_mb"] / out["unfrozen"]["peak_mem_mb"], 3),
    }
    out["settings"] = vars(args)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
