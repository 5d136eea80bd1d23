"""Host overhead of the training step: our full step vs a bare loop on the same model (a CPU proxy for a GPU).

Run (from the repo root, after `make venv-dev`):

    .venv/bin/python benchmarks/host_overhead.py            # tiny-width model, 64 px, batch 8, 60 steps x 5 rounds
    .venv/bin/python benchmarks/host_overhead.py --smoke    # a few steps: checks the code path and the JSON keys

On a GPU the host launches kernels while the device runs earlier ones; whatever the step does on the host
beyond launching (Python bookkeeping, reading values back) shows up as lost device time. A model of tiny
width at 64 px makes every kernel cheap, so on a CPU the step's time is mostly that host work. Both sides
use the same model, criterion, fused AdamW and EMA:

- ``ours``: :class:`~yolotrain.engine.step.TrainStep` plus the lr schedule, as the trainer calls them (labels
  packed to a bucket, the skip decided on the device, counters kept there, a log point every 10 steps);
- ``bare``: forward, loss, backward, ``optimizer.step()``, ``zero_grad``, EMA update; no skip rule, no counters.

The two alternate in rounds (so load changes on a shared machine hit both) and the ratio is the median of
the rounds' CPU-time ratios. ``syncs_per_step`` counts host reads (:mod:`yolotrain.utils.host_sync`) over our
steady-state optimizer steps between log points. Target: ``ratio`` <= 1.15. The last stdout line is one JSON
object: {"ratio", "ours_ms", "bare_ms", "syncs_per_step", "settings"}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from yolotrain.engine.ema import ModelEMA
from yolotrain.engine.optim import Schedule, build_optimizer
from yolotrain.engine.precision import Precision
from yolotrain.engine.state import TrainState
from yolotrain.engine.step import TrainStep
from yolotrain.loss import DetectionLoss
from yolotrain.models import build_model
from yolotrain.utils.host_sync import HostSyncCounter

SMOKE_KEYS = ("ratio", "ours_ms", "bare_ms", "syncs_per_step")
CPU = torch.device("cpu")


def batches(n: int, batch: int, imgsz: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``n`` uint8 batches with 0-6 boxes per image (as a loader hands them over)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        counts = torch.randint(0, 7, (batch,), generator=g)
        k = int(counts.sum())
        out.append(
            {
                "img": (torch.rand(batch, 3, imgsz, imgsz, generator=g) * 255).to(torch.uint8),
                "cls": torch.randint(0, 4, (k, 1), generator=g).float(),
                "bboxes": torch.cat(
                    [torch.rand(k, 2, generator=g) * 0.6 + 0.2, torch.rand(k, 2, generator=g) * 0.2 + 0.05], 1
                ),
                "batch_idx": torch.repeat_interleave(torch.arange(batch), counts).float(),
            }
        )
    return out


def parts(width: float, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("custom", nc=4, family="v8", depth=0.33, width=width, max_channels=1024).train()
    crit = DetectionLoss.from_model(model)
    opt, _, _ = build_optimizer(model, "AdamW", 0.001, 0.9, 5e-4, 100, 4)
    return model, crit, opt, ModelEMA(model)


class Ours:
    """The trainer's per-iteration calls: the schedule, the step, a log point every ``log_every`` steps."""

    def __init__(self, width: float, log_every: int = 10):
        model, crit, opt, ema = parts(width)
        self.step = TrainStep(model, crit, opt, Precision(CPU, "off"), ema, TrainState(), device=CPU)
        self.step.configure(1, 10**6)
        self.schedule = Schedule(100, 10**6, 0.01, False, 0, 0.1, 0.8, 0.9)
        self.opt, self.log_every, self.i = opt, log_every, 0

    def __call__(self, batch: dict[str, torch.Tensor]) -> None:
        self.schedule.apply(self.opt, 0, self.i)
        self.step(batch, 0, self.i)
        self.i += 1
        if self.i % self.log_every == 0:
            self.step.sync()


class Bare:
    """The loop a tutorial writes: forward, loss, backward, step, zero_grad, EMA."""

    def __init__(self, width: float):
        self.model, self.crit, self.opt, self.ema = parts(width)

    def __call__(self, batch: dict[str, torch.Tensor]) -> None:
        preds = self.model(batch["img"].float().div_(255))
        loss, _ = self.crit(preds, batch)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.update(self.model)


def cpu_ms(fn, data) -> float:
    """CPU milliseconds per call over ``data`` (process time: other processes' load does not count)."""
    t0 = time.process_time()
    for b in data:
        fn(b)
    return (time.process_time() - t0) * 1000 / len(data)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=float, default=0.0625, help="channel width multiplier (tiny: host-bound)")
    ap.add_argument("--imgsz", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=60, help="timed steps per round and side")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    ap.add_argument("--smoke", action="store_true", help="a few steps, same code path")
    args = ap.parse_args(argv)
    if args.smoke:
        args.steps, args.rounds = 4, 1
    torch.set_num_threads(args.threads)
    data = batches(args.steps, args.batch, args.imgsz)
    ours, bare = Ours(args.width), Bare(args.width)
    warm = batches(3, args.batch, args.imgsz, seed=1)
    cpu_ms(ours, warm)
    cpu_ms(bare, warm)
    ratios, ours_t, bare_t = [], [], []
    for _ in range(args.rounds):
        o, b = cpu_ms(ours, data), cpu_ms(bare, data)
        ours_t.append(o)
        bare_t.append(b)
        ratios.append(o / b)
    # host reads over steady-state steps between two log points
    counter = HostSyncCounter(sites=True)
    ours.i = 1  # the next log point is 9 steps away
    with counter:
        for b in data[:8]:
            ours(b)
    result = {
        "ratio": round(statistics.median(ratios), 3),
        "ours_ms": round(statistics.median(ours_t), 3),
        "bare_ms": round(statistics.median(bare_t), 3),
        "syncs_per_step": counter.count / 8,
        "sync_sites": dict(counter.where.most_common(5)),
        "settings": {
            "width": args.width, "imgsz": args.imgsz, "batch": args.batch, "steps": args.steps,
            "rounds": args.rounds, "threads": args.threads, "torch": torch.__version__,
        },
    }  # fmt: skip
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
