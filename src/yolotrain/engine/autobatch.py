"""AutoBatch: probe the real training step at growing batch sizes and pick the batch where throughput
stops improving, within the memory budget and never above the dataset.

``batch=-1`` allows 60% of the device memory, ``batch=0.7`` a fraction of it. The trainer supplies
``step_fn(b)``, one real forward + loss + backward at batch ``b`` under the training precision and at the
largest training size (``MultiScale.largest()``)::

    fraction = autobatch_fraction(cfg.batch)
    if fraction is not None:
        batch = autobatch(step_fn, device, fraction=fraction, max_images=images_per_process)

Each size is run twice: once to measure its peak memory (and warm up), once timed. Probing goes up the
ladder ``batch_sizes`` and then keeps doubling; it stops at the first size that is over the memory budget
or out of memory, that would exceed the dataset, or whose images/s is less than ``1 + min_gain`` times
the previous size's. The answer is the last size that was still worth its memory: on a CPU that is
usually a moderate batch (a bigger one trains no faster per image), on a large GPU the memory limit.
Memory grows about linearly with the batch, so a least-squares line through the probes says where the
budget ends; the last probe is placed there instead of past it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import psutil
import torch

from yolotrain.engine import distributed as dist
from yolotrain.engine.oom import free_memory, is_oom
from yolotrain.errors import ConfigError, TrainingError

LOGGER = logging.getLogger("yolotrain")

DEFAULT_FRACTION = 0.6  # batch=-1: headroom for multi-scale outliers, fragmentation and validation
MAX_BATCH = 1024
_MB = 2.0**20


def autobatch_fraction(batch_setting: float) -> float | None:
    """The memory fraction AutoBatch should target for the ``batch`` setting.

    Args:
        batch_setting: The ``batch`` setting: -1 (AutoBatch at 60%), a fraction in (0, 1), or a whole
            number of images >= 1.

    Returns:
        The fraction, or None when the setting is an ordinary batch size.

    Raises:
        ConfigError: For 0, other negative values or a non-whole number >= 1.
    """
    b = float(batch_setting)
    if b == -1:
        return DEFAULT_FRACTION
    if 0 < b < 1:
        return b
    if b >= 1 and b == int(b):
        return None
    raise ConfigError(
        f"setting 'batch'={batch_setting} must be a whole number of images >= 1, -1 (AutoBatch at "
        f"{DEFAULT_FRACTION:.0%} of memory) or a memory fraction in (0, 1)"
    )


# ----------------------------------------------------------------------------------------- meters
class CudaPeak:
    """Peak memory the training step occupied on a CUDA device, in MiB.

    The caching allocator's peak *reserved* bytes (what the device actually lost, including cached
    blocks), plus the memory outside PyTorch's allocator (CUDA context, other processes) seen at
    construction.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        free, total = torch.cuda.mem_get_info(device)
        self.outside = (total - free - torch.cuda.memory_reserved(device)) / _MB

    def reset(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def __call__(self) -> float:
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_reserved(self.device) / _MB + self.outside


class CpuPeak:
    """Peak resident set size of this process during the step, in MiB.

    On Linux the kernel's high-water mark (VmHWM) is reset before the step and read after it: exact and
    free. Elsewhere a thread samples the RSS with psutil every millisecond while the step runs (it can
    miss a peak shorter than that, which is why the budget keeps headroom).
    """

    _STATUS, _CLEAR = "/proc/self/status", "/proc/self/clear_refs"

    def __init__(self) -> None:

        self.process = psutil.Process()
        self.kernel = self._try_kernel_reset()
        self._peak = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _try_kernel_reset(self) -> bool:
        try:
            with open(self._CLEAR, "w") as f:
                f.write("5")  # "5" resets the peak RSS (Linux >= 4.0)
            return self._hwm() is not None
        except OSError:
            return False

    def _hwm(self) -> float | None:
        with open(self._STATUS) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB -> MiB
        return None

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._peak = max(self._peak, self.process.memory_info().rss / _MB)

    def reset(self) -> None:
        if self.kernel:
            self._try_kernel_reset()
            return
        self._finish()
        self._peak = self.process.memory_info().rss / _MB
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _finish(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def __call__(self) -> float:
        if self.kernel:
            return float(self._hwm())
        self._finish()
        return max(self._peak, self.process.memory_info().rss / _MB)


def default_measure(device: torch.device) -> Callable[[], float]:
    """The memory meter of ``device``: a callable returning MiB with a ``reset()`` to call before a step."""
    return CudaPeak(device) if device.type == "cuda" else CpuPeak()


def default_total(device: torch.device) -> float:
    """Memory the process may use in MiB: the CUDA device's total, or available RAM plus the current RSS."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / _MB

    return (psutil.virtual_memory().available + psutil.Process().memory_info().rss) / _MB


# ----------------------------------------------------------------------------------------- choice
MIN_GAIN = 0.05  # a larger batch must raise images/s by 5% over the previous probe to be worth it


def memory_limit(probes: list[tuple[int, float]], budget: float) -> int | None:
    """The largest batch a line through the (batch, MiB) probes predicts at or below ``budget``.

    None with fewer than two probes or when memory does not grow with the batch (no meaningful line).
    """
    if len(probes) < 2:
        return None
    xs = np.array([b for b, _ in probes], dtype=np.float64)
    ys = np.array([mb for _, mb in probes], dtype=np.float64)
    slope, intercept = np.polyfit(xs, ys, 1)
    if not (math.isfinite(slope) and slope > 0):
        return None
    # The epsilon keeps a batch predicted exactly at the budget from losing to float rounding in the fit.
    return int(math.floor((budget - intercept) / slope + 1e-6))


def _timed(step_fn: Callable[[int], object], b: int, device: torch.device, timer: Callable[[], float]) -> float:
    """Seconds one ``step_fn(b)`` takes (CUDA work is waited for, so the time is the device's)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = timer()
    step_fn(b)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return max(timer() - t0, 1e-9)


def autobatch(
    step_fn: Callable[[int], object],
    device: torch.device | str,
    fraction: float = DEFAULT_FRACTION,
    batch_sizes: Sequence[int] = (1, 2, 4, 8, 16),
    measure: Callable[[], float] | None = None,
    total: float | Callable[[], float] | None = None,
    multiple_of: int = 1,
    max_batch: int = MAX_BATCH,
    max_images: int | None = None,
    min_gain: float = MIN_GAIN,
    timer: Callable[[], float] = time.perf_counter,
) -> int:
    """Probe ``step_fn`` at growing batch sizes; return the batch where images/s stops improving.

    Sizes are tried from ``batch_sizes`` (ascending), then doubling, never above ``max_batch`` or
    ``max_images``. Each size runs once for its peak memory and once timed. The search stops at the first
    size that runs out of memory, goes over the budget (``fraction * total``), or trains fewer than
    ``1 + min_gain`` times the previous size's images/s; the previous size is the answer. When a line
    through the memory probes predicts the budget ends before the next size, that predicted batch is
    probed instead. The answer is rounded down to a multiple of ``multiple_of`` (to ``multiple_of`` itself,
    with a warning, when that rounds to 0). Every probe and the images/s curve are logged. Under DDP every
    rank probes its own model (pass the unwrapped model's step, so an out-of-memory error on one rank
    cannot desynchronise gradient collectives) and all ranks return the minimum; call it on every rank.

    Args:
        step_fn: Runs one real forward + loss + backward at the given batch size and frees its outputs.
        device: The training device.
        fraction: Share of ``total`` the batch may use, in (0, 1].
        batch_sizes: First batch sizes to probe, tried in ascending order.
        measure: Returns the memory in use in MiB after a probe; if it has a ``reset()`` method it is
            called before each probe. Defaults to :func:`default_measure`.
        total: The memory available in MiB (a number or a callable); defaults to :func:`default_total`.
        multiple_of: Round the result down to a multiple of this (e.g. the world size).
        max_batch: Largest batch probed or returned.
        max_images: The images one process trains on per epoch (its share of the dataset); no larger
            batch is probed or returned. None: no such limit.
        min_gain: Relative images/s gain a larger probe must bring over the previous one.
        timer: Clock in seconds (tests pass a simulated one).

    Returns:
        The batch size per process.

    Raises:
        TrainingError: When even the smallest probe runs out of memory (on any rank).
        ConfigError: For a fraction outside (0, 1], an empty batch_sizes or max_images < 1.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"setting 'batch' asks AutoBatch for a memory fraction of {fraction}; use (0, 1]")
    if max_images is not None and max_images < 1:
        raise ConfigError(f"AutoBatch needs at least one training image per process, got max_images={max_images}")
    cap = min(max_batch, max_images) if max_images is not None else max_batch
    ladder = sorted({min(int(b), cap) for b in batch_sizes if int(b) >= 1})
    if not ladder:
        raise ConfigError(f"AutoBatch needs positive batch sizes to probe, got {list(batch_sizes)}")
    device = torch.device(device)
    meter = measure if measure is not None else default_measure(device)
    total_mb = float(total() if callable(total) else total if total is not None else default_total(device))
    budget = fraction * total_mb

    probes: list[tuple[int, float]] = []  # (batch, MiB) of every probe that ran
    curve: list[tuple[int, float]] = []  # (batch, images/s) of the probes within the budget
    chosen, why, failure = 0, "", ""
    b = ladder[0]
    while True:
        free_memory(device)
        reset = getattr(meter, "reset", None)
        if reset is not None:
            reset()
        try:
            step_fn(b)  # memory probe, and warm-up for the timed run
            mb = float(meter())
            # a GPU's single timings jump (clock ramp-up, cuDNN's algorithm search at a new shape: seen on an
            # H200 choosing 128 in one run and 32 in the next); the best of three is steady and costs little there
            repeats = 3 if device.type == "cuda" else 1
            seconds = min(_timed(step_fn, b, device, timer) for _ in range(repeats)) if mb <= budget else math.nan
        except Exception as e:  # noqa: BLE001 - only out-of-memory is expected; others re-raise
            if not is_oom(e):
                raise
            failure = f"batch {b} ran out of memory"
        if failure:
            free_memory(device)  # outside the except block, so the failed step's tensors are gone
            why = failure
            break
        probes.append((b, mb))
        if mb > budget:
            LOGGER.info(f"autobatch: batch {b:>4d}  {mb:9.1f} MiB  over the {budget:.0f} MiB budget")
            why = f"batch {b} is over the memory budget"
            break
        speed = b / seconds
        LOGGER.info(f"autobatch: batch {b:>4d}  {mb:9.1f} MiB  {seconds:7.3f} s  {speed:8.1f} img/s")
        if curve and speed < (1 + min_gain) * curve[-1][1]:
            why = f"batch {b} trains {speed / curve[-1][1] - 1:+.0%} images/s over batch {curve[-1][0]}"
            curve.append((b, speed))
            break
        curve.append((b, speed))
        chosen = b
        larger = [s for s in ladder if s > b]
        nxt = larger[0] if larger else min(2 * b, cap)
        limit = memory_limit(probes, budget)
        if limit is not None and limit < nxt:
            nxt = limit  # probe where the budget ends rather than past it
        if nxt <= b:
            why = "the memory budget" if limit is not None and limit <= b else f"the limit of {cap} images"
            break
        b = nxt

    if chosen:
        batch = chosen
        if batch >= multiple_of:
            batch -= batch % multiple_of
        else:
            LOGGER.warning(f"autobatch: batch {batch} is below multiple_of={multiple_of}; using {multiple_of}")
            batch = multiple_of
    elif probes:  # the smallest probe already went over the budget: train at that size anyway
        batch = probes[0][0]
        LOGGER.warning(
            f"autobatch: batch {batch} already uses {probes[0][1]:.0f} MiB, over the {budget:.0f} MiB "
            f"budget; using batch {batch}"
        )
    else:
        batch = 0
    # Every rank joins the reduction before anyone raises, so a failing rank cannot leave others waiting.
    agreed = int(dist.all_reduce_min(batch))
    if agreed < 1:
        raise TrainingError(
            f"AutoBatch: even batch {ladder[0]} ran out of memory on {device} (on at least one "
            f"rank); use a smaller imgsz or model, or set batch= explicitly"
        )
    shown = " ".join(f"{c}:{v:.1f}" for c, v in curve) or "none"
    LOGGER.info(
        f"autobatch: images/s by batch {shown}; stopped at {why}; budget {budget:.0f} MiB ({fraction:.0%} of "
        f"{total_mb:.0f} MiB) -> batch {agreed}"
        + (f" (minimum over ranks; this rank chose {batch})" if agreed != batch else "")
    )
    return agreed
