"""One training epoch's progress: the images it trained on, its pace, its log points and the progress bar.

A log point is where the step's device counters are read (the one host read of a training step; see
:meth:`~yolotrain.engine.step.TrainStep.sync`): every ``log_every`` optimizer steps and at the epoch's end.
Between log points nothing here touches the device, so the bar's losses are as old as the last log point.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm

from yolotrain.engine import distributed as dist
from yolotrain.engine.report import progress_text
from yolotrain.engine.state import TrainState
from yolotrain.engine.step import TrainStep


class EpochProgress:
    """Iterates ``(iteration, batch)`` over one epoch's batches from iteration ``start`` and keeps its progress.

    Args:
        batches: The loader's batches (from ``start`` on, as the loader's ``set_epoch`` arranged).
        step: The training step: its counters give the mean losses, its input size goes on the bar.
        state: The run's record: the epoch's skipped optimizer steps go on the bar.
        start: The first iteration's number (a resumed epoch starts part-way).
        total: The epoch's iterations.
        desc: The bar's label.
        show: Whether the bar is drawn (rank 0, verbose); log points are read either way.
        log_every: Optimizer steps between log points.
    """

    def __init__(
        self, batches: Iterable[dict[str, Any]], step: TrainStep, state: TrainState, *, start: int, total: int,
        desc: str, show: bool, log_every: int,
    ):  # fmt: skip
        self.step, self.state, self.log_every = step, state, log_every
        self.world = dist.world_size()  # read once, not per batch
        self.bar = tqdm(
            enumerate(batches, start=start), total=total, initial=start, desc=desc, disable=not show,
            dynamic_ncols=True, mininterval=1.0,
        )  # fmt: skip
        self.images = 0  # of the global batch: every rank counts the images of all ranks
        self.steps_since_log = 0
        self.last_batch: dict[str, Any] | None = None
        self.t0 = time.perf_counter()

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any]]]:
        return iter(self.bar)

    def images_per_s(self) -> float:
        return self.images / max(time.perf_counter() - self.t0, 1e-9)

    def after_batch(self, batch: dict[str, Any], boundary: bool) -> None:
        """Count ``batch``; after an optimizer step (``boundary``) that is a log point, read the counters."""
        self.last_batch = batch
        self.images += batch["img"].shape[0] * self.world
        self.steps_since_log += boundary
        if boundary and self.steps_since_log >= self.log_every:
            self.steps_since_log = 0
            self.log_point(self.images_per_s())

    def finish(self) -> tuple[tuple[float, ...], float]:
        """The epoch's end, a log point: returns the epoch's mean losses and its images per second."""
        pace = self.images_per_s()
        return self.log_point(pace), pace

    def log_point(self, images_per_s: float) -> tuple[float, ...]:
        # too many non-finite losses in a row raise TrainingError in sync()
        mean = self.step.sync().mean_losses
        if not self.bar.disable and self.last_batch is not None:
            size, skipped = self.step.input_size, self.state.epoch_skipped
            self.bar.set_postfix_str(progress_text(mean, self.last_batch, size, skipped, images_per_s))
        return mean
