"""AutoBatch: probe the real training step at a few batch sizes and pick the largest safe batch.

``batch=-1`` targets 60% of the device memory, ``batch=0.7`` a fraction of it. The trainer supplies
``step_fn(b)``, one real forward + loss + backward at batch ``b`` under the training precision and at the
largest training size (``MultiScale.largest()``)::

    fraction = autobatch_fraction(cfg.batch)
    if fraction is not None:
        batch = autobatch(step_fn, device, fraction=fraction)

Memory in use is a linear function of the batch to a good approximation (weights, optimizer state and
the framework are the intercept; activations grow with each image), so a least-squares line through
the probes predicts the largest batch below the budget.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
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
        import psutil

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
    import psutil

    return (psutil.virtual_memory().available + psutil.Process().memory_info().rss) / _MB


# ----------------------------------------------------------------------------------------- choice
def _choose(probes: list[tuple[int, float]], budget: float, ceiling: int) -> tuple[int, str]:
    """Pick a batch from the (batch, MiB) probes; returns it with a one-line note on how it was chosen."""
    fitting = [b for b, mb in probes if mb <= budget]
    fallback = max(fitting) if fitting else 1
    if len(probes) < 2:
        return fallback, f"one probe only; using the largest probed batch that fit ({fallback})"
    xs = np.array([b for b, _ in probes], dtype=np.float64)
    ys = np.array([mb for _, mb in probes], dtype=np.float64)
    slope, intercept = np.polyfit(xs, ys, 1)
    if not (math.isfinite(slope) and slope > 0):
        return fallback, (
            f"memory did not grow with the batch (slope {slope:.3g} MiB/image); using the largest "
            f"probed batch that fit ({fallback})"
        )
    # The epsilon keeps a batch predicted exactly at the budget from losing to float rounding in the fit.
    batch = int(math.floor((budget - intercept) / slope + 1e-6))
    batch = min(max(batch, 1), ceiling)
    return batch, (
        f"fit {intercept:.0f} + {slope:.1f}*batch MiB predicts {intercept + slope * batch:.0f} MiB at batch {batch}"
    )


def autobatch(
    step_fn: Callable[[int], object],
    device: torch.device | str,
    fraction: float = DEFAULT_FRACTION,
    batch_sizes: Sequence[int] = (1, 2, 4, 8, 16),
    measure: Callable[[], float] | None = None,
    total: float | Callable[[], float] | None = None,
    multiple_of: int = 1,
    max_batch: int = MAX_BATCH,
) -> int:
    """Probe ``step_fn`` at increasing batch sizes and return the largest batch predicted to fit.

    Probing stops after the first size over the budget (``fraction * total``) or the first out-of-memory
    error. A line fitted through the probes (numpy.polyfit) gives the largest batch at or below the
    budget, clamped to ``[1, max_batch]`` and kept below any probe that ran out of memory or went over
    the budget. It is then rounded down to a multiple of ``multiple_of`` (to ``multiple_of`` itself, with a
    warning, when that rounds to 0). If memory does not grow with the batch (slope <= 0, or a single
    probe), the largest probed batch that fit is used, with a warning. Under DDP every rank probes its
    own model (pass the unwrapped model's step, so an OOM on one rank cannot desynchronise gradient
    collectives) and all ranks return the minimum; call it on every rank.

    Args:
        step_fn: Runs one real forward + loss + backward at the given batch size and frees its outputs.
        device: The training device.
        fraction: Share of ``total`` the batch may use, in (0, 1].
        batch_sizes: Batch sizes to probe, tried in ascending order.
        measure: Returns the memory in use in MiB after a probe; if it has a ``reset()`` method it is
            called before each probe. Defaults to :func:`default_measure`.
        total: The memory available in MiB (a number or a callable); defaults to :func:`default_total`.
        multiple_of: Round the result down to a multiple of this (e.g. the world size).
        max_batch: Upper clamp of the result.

    Returns:
        The batch size per process.

    Raises:
        TrainingError: When even the smallest probe runs out of memory (on any rank).
        ConfigError: For a fraction outside (0, 1] or an empty batch_sizes.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"setting 'batch' asks AutoBatch for a memory fraction of {fraction}; use (0, 1]")
    sizes = sorted({int(b) for b in batch_sizes if int(b) >= 1})
    if not sizes:
        raise ConfigError(f"AutoBatch needs positive batch sizes to probe, got {list(batch_sizes)}")
    device = torch.device(device)
    meter = measure if measure is not None else default_measure(device)
    total_mb = float(total() if callable(total) else total if total is not None else default_total(device))
    budget = fraction * total_mb

    probes: list[tuple[int, float]] = []
    ceiling = max_batch
    failure = ""
    for b in sizes:
        free_memory(device)
        reset = getattr(meter, "reset", None)
        if reset is not None:
            reset()
        t0 = time.perf_counter()
        try:
            step_fn(b)
        except Exception as e:  # noqa: BLE001 - only out-of-memory is expected; others re-raise
            if not is_oom(e):
                raise
            failure = f"batch {b} ran out of memory"
            ceiling = min(ceiling, b - 1)
        if failure:
            free_memory(device)  # outside the except block, so the failed step's tensors are gone
            break
        mb = float(meter())
        probes.append((b, mb))
        LOGGER.info(f"autobatch: batch {b:>4d}  {mb:9.1f} MiB  {time.perf_counter() - t0:6.2f} s")
        if mb > budget:
            ceiling = min(ceiling, b - 1)
            break

    if probes:
        batch, note = _choose(probes, budget, max(ceiling, 1))
        if note.startswith(("one probe", "memory did not")):
            LOGGER.warning(f"autobatch: {note}")
        if all(mb > budget for _, mb in probes):
            LOGGER.warning(
                f"autobatch: batch 1 already uses {probes[0][1]:.0f} MiB, over the {budget:.0f} MiB "
                f"budget; using batch 1"
            )
        if batch >= multiple_of:
            batch -= batch % multiple_of
        else:
            LOGGER.warning(f"autobatch: batch {batch} is below multiple_of={multiple_of}; using {multiple_of}")
            batch = multiple_of
    else:
        batch, note = 0, failure
    # Every rank joins the reduction before anyone raises, so a failing rank cannot leave others waiting.
    chosen = int(dist.all_reduce_min(batch))
    if chosen < 1:
        raise TrainingError(
            f"AutoBatch: even batch {sizes[0]} ran out of memory on {device} (on at least one "
            f"rank); use a smaller imgsz or model, or set batch= explicitly"
        )
    LOGGER.info(
        f"autobatch: {note}; budget {budget:.0f} MiB ({fraction:.0%} of {total_mb:.0f} MiB) "
        f"-> batch {chosen}" + (f" (minimum over ranks; this rank chose {batch})" if chosen != batch else "")
    )
    return chosen
