"""Mixed-precision benchmark: training speed, peak memory and accuracy for fp32, bf16 and fp16.

Run (from the repo root, after `make test` or `make demo` created .venv):

    .venv/bin/python benchmarks/amp.py                         # scale n, imgsz 320, batch 16, demo set
    .venv/bin/python benchmarks/amp.py --skip-accuracy         # speed and memory only
    .venv/bin/python benchmarks/amp.py --smoke                 # seconds: fp32 and bf16, 64 px, 16 tiny images

A precision under a third of fp32's speed (fp16 on a CPU without fp16 arithmetic) is not trained for
accuracy; its entry says so.

For each precision a child process (so peak memory is its own) trains on the built-in demo set:
- speed: --iters training iterations at --imgsz after --warmup untimed ones;
- accuracy: the demo recipe (--acc-epochs epochs at --acc-imgsz, same seed, same data order) and the
  best mAP50 / mAP50-95 on the demo val split.
Peak memory is the process's peak RSS on CPU and the CUDA allocator's peak on a GPU.
The last stdout line is one JSON object:
{"fp32": {"images_per_s", "peak_mem_mb", "mAP50", "mAP50-95"}, "bf16": {...}, "fp16": {...},
 "settings": {...}}
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = {"fp32": "off", "bf16": "bf16", "fp16": "fp16"}
# the keys a --smoke run must print (the test suite runs every benchmark's smoke mode and checks them)
SMOKE_KEYS = ("fp32", "bf16", "settings")


class BatchTimer:
    """Times training iterations and stops the trainer after ``warmup + iters`` of them.

    Iterations are timed from the end of one to the end of the next, the first ``warmup`` left out. A
    precision that is very slow on this device (fp16 on a CPU without fp16 arithmetic runs its backward
    pass in a slow fallback) is cut short after ``max_seconds``, with at least two timed iterations.
    """

    def __init__(self, warmup: int, iters: int, max_seconds: float) -> None:
        self.warmup, self.iters, self.max_seconds = warmup, iters, max_seconds
        self.times: list[float] = []
        self.last = 0.0
        self.start = time.perf_counter()

    def begin(self, trainer) -> None:
        if not self.times and not self.last:
            self.last = time.perf_counter()

    def end(self, trainer) -> None:
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now
        slow = now - self.start > self.max_seconds and len(self.times) >= 3
        trainer.stop = len(self.times) >= self.warmup + self.iters or slow
        self.batch = trainer.train_loader.batch_size  # images per iteration of this process

    def images_per_s(self) -> float:
        skip = min(self.warmup, max(len(self.times) - 2, 1))
        timed = self.times[skip:]
        return self.batch * len(timed) / sum(timed)


def peak_mem_mb(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(a: argparse.Namespace) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    from yolotrain.config import resolve
    from yolotrain.data import ensure_demo_dataset
    from yolotrain.engine.trainer import Trainer
    from yolotrain.utils.logging import setup_logging

    setup_logging(verbose=False)
    amp = PRECISIONS[a.only]
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        if a.smoke:
            data = str(ensure_demo_dataset(Path(tmp) / "shapes", n_train=16, n_val=4, size=64))
        else:
            data = str(ensure_demo_dataset())
        common = dict(
            data=data,
            model=a.scale,
            batch=a.batch,
            workers=a.workers,
            device=a.device,
            amp=amp,
            amp_check=False,
            project=tmp,
            verbose=False,
            plots=False,  # not what is measured, and the slowest part of a tiny run
            seed=0,
        )
        timer = BatchTimer(a.warmup, a.iters, a.max_seconds)
        t = Trainer(resolve(dict(common, imgsz=a.imgsz, epochs=1, val=False)))
        t.callbacks.add("on_train_batch_start", timer.begin)
        t.callbacks.add("on_train_batch_end", timer.end)
        t.fit()
        out["images_per_s"] = round(timer.images_per_s(), 2)
        out["iterations_timed"] = len(timer.times) - min(a.warmup, max(len(timer.times) - 2, 1))
        out["peak_mem_mb"] = round(peak_mem_mb(t.device), 1)
        out["runtime"] = runtime()
        too_slow = a.fp32_speed and out["images_per_s"] < a.fp32_speed / 3
        if too_slow:
            # e.g. fp16 on a CPU without native fp16 arithmetic: a full training would take hours
            out["accuracy_skipped"] = f"{out['images_per_s']} images/s is under a third of fp32's"
        elif not a.skip_accuracy:
            # the demo recipe, so the accuracy is comparable with `make demo`
            t = Trainer(
                resolve(dict(common, imgsz=a.acc_imgsz, epochs=a.acc_epochs, nbs=a.batch, close_mosaic=4, name="acc"))
            )
            best = t.fit()
            out["mAP50"] = round(best.map50, 4)
            out["mAP50-95"] = round(best.map50_95, 4)
            out["train_s"] = round(t.train_seconds, 1)
    return out


def runtime() -> dict:
    """The torch version and thread count of this (child) process: the parent reports them without importing
    torch itself (seconds of start-up for two numbers)."""
    import torch

    return {"torch": torch.__version__, "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", default="n")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--warmup", type=int, default=3, help="iterations not timed")
    p.add_argument("--iters", type=int, default=20, help="iterations timed")
    p.add_argument("--max-seconds", type=float, default=90, help="cut a very slow precision's timing short")
    p.add_argument("--fp32-speed", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--acc-epochs", type=int, default=12)
    p.add_argument("--acc-imgsz", type=int, default=160)
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--precisions", default="fp32,bf16,fp16")
    p.add_argument("--only", choices=tuple(PRECISIONS))
    p.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: keeps the script from rotting")
    a = p.parse_args()
    if a.smoke:  # the children get the same argv, so each takes these sizes too
        a.imgsz, a.batch, a.workers, a.warmup, a.iters, a.acc_epochs, a.acc_imgsz = 64, 4, 0, 1, 2, 1, 64
        a.precisions = "fp32,bf16"
    if a.only:
        print(json.dumps(run_one(a)))
        return
    results: dict = {}
    for name in a.precisions.split(","):
        cmd = [sys.executable, __file__, "--only", name] + [
            arg for arg in sys.argv[1:] if not arg.startswith("--precisions")
        ]
        if results.get("fp32"):
            cmd += ["--fp32-speed", str(results["fp32"]["images_per_s"])]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            sys.stderr.write(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}\n")
            if a.smoke:  # a smoke run exists to notice a broken path
                raise SystemExit(f"{name} failed")
            results[name] = None
            continue
        results[name] = json.loads(lines[-1])
        sys.stderr.write(f"{name}: {results[name]}\n")
    import os

    fp32 = results.get("fp32")
    runtimes = [r.pop("runtime") for r in results.values() if r and "runtime" in r]  # the same in every child
    child_runtime = runtimes[0] if runtimes else {}
    for name, r in results.items():
        if r and fp32 and name != "fp32":
            r["speedup_vs_fp32"] = round(r["images_per_s"] / fp32["images_per_s"], 3)
            if "mAP50" in r and "mAP50" in fp32:
                r["mAP50_minus_fp32"] = round(r["mAP50"] - fp32["mAP50"], 4)
    results["settings"] = {
        "scale": a.scale,
        "imgsz": a.imgsz,
        "batch": a.batch,
        "workers": a.workers,
        "device": a.device,
        "accuracy": None
        if a.skip_accuracy
        else {"epochs": a.acc_epochs, "imgsz": a.acc_imgsz, "data": "demo", "seed": 0},
        "torch": child_runtime.get("torch"),
        "threads": child_runtime.get("threads"),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
