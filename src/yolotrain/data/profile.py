"""Where the data path spends its time: per-stage clocks, the trainer's wait for batches, and advice.

Every process that builds samples (the main process with ``workers=0``, else each loader worker)
adds the seconds of each stage to its own :data:`CLOCK`; :func:`~yolotrain.data.loader.collate` hands
the totals over with the batch (``batch["stage_ms"]``), so the main process sees the work done in
workers without any shared state. The loader itself measures how long the consumer waited for each
batch (:class:`LoaderStats`). :func:`advise` turns both into concrete advice.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

STAGES = ("read", "decode", "resize", "mosaic", "affine", "hsv", "flip", "letterbox", "format", "collate")


class StageTimer:
    """Adds the thread CPU time spent inside ``with`` to one stage of a :class:`StageClock`.

    One per stage, made once and reused: entering costs two clock reads and no allocation, which
    matters at several stages per image in every loader worker. A stage must not be entered again
    inside itself (the inner exit would end the outer one's interval).
    """

    __slots__ = ("clock", "stage", "start")

    def __init__(self, clock: StageClock, stage: str) -> None:
        self.clock, self.stage, self.start = clock, stage, 0.0

    def __enter__(self) -> None:
        self.start = time.thread_time()

    def __exit__(self, *exc: object) -> None:
        self.clock.seconds[self.stage] += time.thread_time() - self.start


class StageClock:
    """CPU seconds per stage and images finished, in the process that does the work.

    Stages are timed in thread CPU time (``time.thread_time``): the work a stage costs one core,
    unaffected by other processes competing for the cores. Usage::

        with CLOCK.stage("decode"):
            ...decode...
    """

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.images = 0
        self._timers = {name: StageTimer(self, name) for name in STAGES}

    def stage(self, name: str) -> StageTimer:
        """A context manager charging the time spent inside it to stage ``name`` (one of :data:`STAGES`)."""
        return self._timers[name]

    def take(self) -> dict[str, float]:
        """Milliseconds per stage since the last take (plus ``images``), and reset."""
        out = {k: v * 1e3 for k, v in self.seconds.items()}
        out["images"] = float(self.images)
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.images = 0
        return out


CLOCK = StageClock()  # one per process: loader workers get their own copy when they start


@dataclass
class LoaderStats:
    """What one epoch of a loader cost its consumer.

    Attributes:
        wait_s: Seconds the consumer spent inside ``next(loader)`` (waiting for a batch).
        busy_s: Seconds between receiving a batch and asking for the next (the training step).
        batches: Batches delivered.
        images: Images delivered.
        stage_ms: Milliseconds per stage summed over the batches (work done in any process).
        stage_images: Images those stage times cover.
    """

    wait_s: float = 0.0
    busy_s: float = 0.0
    batches: int = 0
    images: int = 0
    stage_ms: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    stage_images: int = 0

    def add_batch(self, wait_s: float, n_images: int, stage_ms: dict[str, float] | None) -> None:
        """Record one delivered batch."""
        self.wait_s += wait_s
        self.batches += 1
        self.images += n_images
        if stage_ms:
            for k in STAGES:
                self.stage_ms[k] += float(stage_ms.get(k, 0.0))
            self.stage_images += int(stage_ms.get("images", 0))

    @property
    def wait_share(self) -> float:
        """Fraction of the consumer's time spent waiting for data (0 when nothing was measured)."""
        total = self.wait_s + self.busy_s
        return self.wait_s / total if total > 0 else 0.0

    def ms_per_image(self) -> dict[str, float]:
        """Per-stage milliseconds per image (empty when no stage times arrived)."""
        if not self.stage_images:
            return {}
        return {k: v / self.stage_images for k, v in self.stage_ms.items()}

    def table(self) -> str:
        """One line: ``read 1.20 | decode 3.40 | ... | total 6.1 ms/image``."""
        per = self.ms_per_image()
        if not per:
            return "no per-stage times measured"
        parts = [f"{k} {v:.2f}" for k, v in per.items() if v > 0.005]
        return " | ".join(parts) + f" | total {sum(per.values()):.2f} ms/image"


def advise(
    stats: LoaderStats,
    *,
    workers: int,
    cpu_count: int,
    imgsz: int,
    cache: str,
    cache_bytes: float,
    available_bytes: float,
    stride: int = 32,
    threshold: float = 0.1,
) -> list[str]:
    """Concrete advice from one epoch's measurements.

    The model consumes ``images / busy_s`` images/s; one loader process makes ``1000 / ms_per_image``.
    When the consumer waits more than ``threshold`` of its time, the advice says how many workers would
    keep up, whether ``cache=ram`` would help (read + decode share) and what it would take in memory,
    and, when even every core would not keep up, the largest ``imgsz`` that would.

    Args:
        stats: The epoch's :class:`LoaderStats`.
        workers: Loader workers used.
        cpu_count: CPU cores available.
        imgsz: Training image size.
        cache: The current ``cache`` setting.
        cache_bytes: Memory ``cache=ram`` would take for this dataset.
        available_bytes: Memory available now.
        stride: Model stride (``imgsz`` advice is a multiple of it).
        threshold: Wait share below which nothing is advised.

    Returns:
        Advice lines (the first always states the measured wait share).
    """
    share = stats.wait_share
    per = stats.ms_per_image()
    lines = [f"data wait {share:.0%} of step time; loader {stats.table()}"]
    if share < threshold or not per or stats.busy_s <= 0:
        if share < threshold:
            lines.append("the data path keeps up: no change needed")
        return lines
    ms = sum(per.values())
    need_rate = stats.images / stats.busy_s  # images/s the model could take
    per_worker = 1000.0 / ms  # images/s one loader process makes
    need_workers = math.ceil(need_rate / per_worker)
    io_ms = per.get("read", 0.0) + per.get("decode", 0.0) + per.get("resize", 0.0)
    want = need_workers  # >= 1: workers=0 loads in the main process, never alongside the step
    if workers < want <= cpu_count:
        lines.append(
            f"workers={want}: one worker makes {per_worker:.0f} images/s, the model takes {need_rate:.0f}"
            + (" (workers=0 loads between steps, never alongside them)" if workers == 0 else "")
        )
    elif want > cpu_count and workers < cpu_count:
        lines.append(f"workers={cpu_count} (every core): the model takes {need_rate:.0f} images/s")
    if cache != "ram" and io_ms / ms > 0.3:
        fits = cache_bytes < 0.7 * available_bytes
        lines.append(
            f"cache=ram skips read+decode ({io_ms / ms:.0%} of loader time); it needs "
            f"{cache_bytes / 1e9:.1f} GB, {available_bytes / 1e9:.1f} GB available"
            + ("" if fits else " (does not fit)")
        )
    reach = cpu_count * per_worker
    if cache == "ram" or io_ms / ms <= 0.3 or cache_bytes >= 0.7 * available_bytes:
        ms_left = ms  # caching is no way out: only fewer pixels help
    else:
        ms_left = ms - io_ms
        reach = cpu_count * 1000.0 / max(ms_left, 1e-6)
    if need_rate > reach:
        # Per-image cost scales with the pixel count: imgsz by the square root of the shortfall.
        new = int(imgsz * math.sqrt(reach / need_rate) // stride * stride)
        if stride <= new < imgsz:
            lines.append(
                f"imgsz={new}: even {cpu_count} workers make only {reach:.0f} images/s at imgsz={imgsz}; "
                f"the per-image cost falls with the pixel count"
            )
    if len(lines) == 1:
        lines.append(
            f"the loader's {ms:.2f} ms/image of CPU ({per_worker * max(workers, 1):.0f} images/s with "
            f"workers={workers}) covers the model's {need_rate:.0f} images/s: the wait comes from elsewhere "
            "(worker start-up, a busy machine, slow storage)"
        )
    return lines


def loader_advice(loader: Any, *, workers: int, imgsz: int, cache: str) -> list[str]:
    """:func:`advise` for a loader that has run an epoch (``loader.stats``), with this machine's facts.

    The trainer's one call for ``profile=true``: the memory ``cache=ram`` would take comes from the
    dataset's images (``images.ram_bytes()``), the memory available from psutil (when installed) and the cores from
    the CPU affinity of this process.

    Args:
        loader: A :class:`~yolotrain.data.loader.DetectionLoader` after at least one pass.
        workers: The ``workers`` setting.
        imgsz: Training image size.
        cache: The ``cache`` setting.
    """
    try:
        available = float(psutil.virtual_memory().available)
    except Exception:
        available = float("inf")
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    ds = loader.dataset
    need = float(ds.images.ram_bytes()) if hasattr(ds, "images") else 0.0
    stride = int(getattr(ds, "stride", 32))
    return advise(
        loader.stats, workers=workers, cpu_count=cpus, imgsz=imgsz, cache=cache, cache_bytes=need,
        available_bytes=available, stride=stride,
    )  # fmt: skip
