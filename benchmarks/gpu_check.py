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
    """One short training run; what the trainer measured, read from its ``on_train_end`` callback.

    ``images_per_s`` and ``data_wait_share`` are the last epoch's (the first one also pays for worker
    start-up, cuDNN's algorithm search and the allocator's growth); ``epochs`` lists every epoch's pair.
    """
    seen: dict[str, Any] = {}
    cuda = torch.cuda.is_available() and str(settings.get("device", "")) != "cpu"

    def grab(trainer: Any) -> None:
        rows = trainer.history
        seen["images_per_s"] = round(float(rows[-1]["images_per_s"]), 1)
        seen["data_wait_share"] = round(float(rows[-1]["data_wait"]), 3)
        seen["epochs"] = [[round(float(r["images_per_s"]), 1), round(float(r["data_wait"]), 3)] for r in rows]
        seen["batch"] = int(trainer.cfg.batch)  # AutoBatch's choice is recorded in the run's config
        seen["oom_events"] = int(trainer.run.state.oom_events)
        seen["micro_batches"] = int(trainer.run.state.micro_batches)
        if cuda:
            total = torch.cuda.get_device_properties(0).total_memory
            seen["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(0) / 2**30, 2)
            seen["peak_reserved_fraction"] = round(torch.cuda.max_memory_reserved(0) / total, 3)

    def training_starts(trainer: Any) -> None:  # after AutoBatch's probes, whose peaks are not training's
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(0)

    det = Detector(settings.pop("model", "n"))
    det.add_callback("on_train_end", grab)
    if cuda:
        det.add_callback("on_pretrain_routine_end", training_starts)
    t0 = time.perf_counter()
    det.train(data=str(data), project=str(project), exist_ok=True, val=False, verbose=False, **settings)
    seen["seconds"] = round(time.perf_counter() - t0, 1)
    return seen


class Sections:
    """Runs the check's parts in order, each on its own: a part that fails records its error and the
    next one still runs; once ``budget_s`` has passed the remaining parts are recorded as skipped (a
    lent GPU's minutes are few). With ``log`` set, each part's result is appended there as a JSON line
    the moment it is known, so a run stopped from outside still leaves what it measured."""

    def __init__(self, out: dict[str, Any], budget_s: float, log: Path | None) -> None:
        self.out, self.budget_s, self.log, self.t0 = out, budget_s, log, time.perf_counter()

    def run(self, name: str, fn: Any) -> None:
        elapsed = time.perf_counter() - self.t0
        if elapsed > self.budget_s:
            self.out[name] = f"skipped: {elapsed:.0f} s of the {self.budget_s:.0f} s budget spent"
        else:
            try:
                self.out[name] = fn()
            except Exception as e:  # noqa: BLE001 - one part's failure is a result to report, not the end
                self.out[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
        if self.log is not None:
            with self.log.open("a") as f:
                f.write(json.dumps({name: self.out[name], "elapsed_s": round(time.perf_counter() - self.t0, 1)}) + "\n")


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


def oom_recovery(data: Path, project: Path, base: dict[str, Any], cuda: bool) -> dict[str, Any]:
    """A batch that cannot fit at once must still train: a real capped CUDA allocator, or an injected
    out-of-memory error on the CPU."""
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(0.08, 0)
        try:
            r = train_once(data, project, model="n", amp="fp16", name="oom", **{**base, "batch": 256})
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, 0)
    else:
        with env(YOLOTRAIN_INJECT_OOM="0:1"):  # step 0: micro-batches above 1 image fail
            r = train_once(data, project, model="n", amp="off", name="oom", **base)
    r["recovered"] = r["oom_events"] > 0 and r["micro_batches"] > 1
    return r


def autobatch_check(data: Path, project: Path, base: dict[str, Any]) -> dict[str, Any]:
    """AutoBatch's chosen batch (``batch=-1``: at most 60% of the card) against the peak training then
    reserved (measured from the end of the probes; the log lists each probe's memory and speed)."""
    r = train_once(data, project, model="n", amp="fp16", name="autobatch", **{**base, "batch": -1})
    r["budget_fraction"] = 0.6
    return r


def run(smoke: bool, budget_s: float = 420.0, log: Path | None = None) -> dict[str, Any]:
    cuda = torch.cuda.is_available() and not smoke
    if not smoke and not cuda:
        raise SystemExit("no CUDA device: run with --smoke for the CPU check")
    out: dict[str, Any] = {"mode": "smoke-cpu" if smoke else "cuda", "torch": torch.__version__}
    if cuda:
        out["device"] = torch.cuda.get_device_name(0)
        out["cpu_count"] = os.cpu_count()
    imgsz, n_img = (64, 8) if smoke else (640, 1024)
    base = {"imgsz": imgsz, "epochs": 1 if smoke else 3, "device": "cpu" if smoke else "0"}
    base |= {"workers": 0 if smoke else os.cpu_count(), "batch": 4 if smoke else 32}
    # bf16 first: where the minutes run out, the precision most users pick on this card is measured
    runs = [("n", "off"), ("n", "bf16")] if smoke else [("n", "bf16"), ("n", "fp16"), ("s", "bf16"), ("s", "fp16")]
    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp) / "data", n_img, imgsz)
        project = Path(tmp) / "runs"
        parts = Sections(out, budget_s, log)
        for scale, amp in runs[:1]:
            parts.run(
                f"{scale} amp={amp}",
                lambda s=scale, a=amp: train_once(data, project, model=s, amp=a, name=f"{s}_{a}", **base),
            )
        parts.run("oom_recovery", lambda: oom_recovery(data, project, base, cuda))
        if cuda:
            parts.run("autobatch", lambda: autobatch_check(data, project, base))
        for scale, amp in runs[1:]:
            parts.run(
                f"{scale} amp={amp}",
                lambda s=scale, a=amp: train_once(data, project, model=s, amp=a, name=f"{s}_{a}", **base),
            )
        if cuda:  # decoded images from RAM: what the step alone sustains, without the decode cost
            parts.run(
                "n amp=bf16 cache=ram",
                lambda: train_once(data, project, model="n", amp="bf16", name="n_ram", cache="ram", **base),
            )
        if "compile" in SETTINGS:
            amp = "off" if smoke else "bf16"
            parts.run(
                "compile", lambda: train_once(data, project, model="n", amp=amp, name="compile", compile=True, **base)
            )
        else:
            out["compile"] = "no compile setting yet"
    out["seconds"] = round(time.perf_counter() - parts.t0, 1)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU smoke mode: the same code paths in seconds")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip the parts not started by then (seconds)")
    ap.add_argument("--log", type=Path, help="also append each part's result here as a JSON line, as it finishes")
    args = ap.parse_args(argv)
    out = run(args.smoke, args.budget_s, args.log)
    print(json.dumps(out))
    sys.stdout.flush()
    return out


if __name__ == "__main__":
    main()
