"""Data-parallel scaling on this machine: training images/s with 1 and 2 processes (CPU, gloo).

Run (from the repo root, after `make test` or `make demo` created .venv):

    .venv/bin/python benchmarks/ddp.py                 # demo set, scale n, imgsz 160, global batch 16
    .venv/bin/python benchmarks/ddp.py --epochs 3 --imgsz 224
    .venv/bin/python benchmarks/ddp.py --smoke         # 1 epoch at 64 px on 16 generated images

Each setting is one ``yolotrain train`` run in a child process: ``nproc=1`` trains in that process with
torch's default threads (all cores); ``nproc=2`` starts two torchrun workers, which torchrun limits to
one thread each (OMP_NUM_THREADS=1), so both settings use the same cores. The figure is the global
images/s of the last epoch (the first includes start-up, the loader's first batches and allocator
warm-up), read from the run's results.csv; validation is off. The global batch is the same in both, so
each process of the 2-process run computes half of every batch.

The last stdout line is one JSON object:
{"1": {"images_per_s", "epoch_s", "wall_s"}, "2": {...}, "speedup_2_vs_1": ..., "settings": {...}}
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the keys a --smoke run must print (the test suite runs every benchmark's smoke mode and checks them)
SMOKE_KEYS = ("1", "2", "speedup_2_vs_1", "settings")


def run(n: int, args: argparse.Namespace, project: Path) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "yolotrain",
        "train",
        f"nproc={n}",
        f"model={args.model}",
        f"epochs={args.epochs}",
        f"imgsz={args.imgsz}",
        f"batch={args.batch}",
        f"nbs={args.batch}",
        f"workers={args.workers}",
        f"amp={args.amp}",
        "val=false",
        "plots=false",
        "verbose=false",
        f"project={project}",
        f"name=n{n}",
    ]
    if args.data:
        cmd.append(f"data={args.data}")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "WORLD_SIZE", "RANK")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"nproc={n} failed with exit code {proc.returncode}")
    with (project / f"n{n}" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    last = rows[-1]
    return {"images_per_s": float(last["images_per_s"]), "epoch_s": float(last["seconds"]), "wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="", help="data YAML (default: the built-in demo set)")
    ap.add_argument("--model", default="n")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--batch", type=int, default=16, help="global batch")
    ap.add_argument("--workers", type=int, default=1, help="loader workers per process")
    ap.add_argument("--amp", default="off", help="off (fp32) or bf16")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: keeps the script from rotting")
    args = ap.parse_args()
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="yolotrain-ddp-bench-") as tmp:
        if args.smoke:
            from yolotrain.data import ensure_demo_dataset

            data = ensure_demo_dataset(Path(tmp) / "shapes", n_train=16, n_val=4, size=64)
            args.data, args.epochs, args.imgsz, args.batch, args.workers = str(data), 1, 64, 8, 0
        for n in (1, 2):
            out[str(n)] = run(n, args, Path(tmp))
            print(f"nproc={n}: {out[str(n)]}", file=sys.stderr)
    out["speedup_2_vs_1"] = round(out["2"]["images_per_s"] / out["1"]["images_per_s"], 3)
    out["settings"] = {**vars(args), "cpu_count": os.cpu_count()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
