"""Training for a wall-clock budget: ``yolotrain train time=2.0`` (hours).

After every epoch, :func:`plan_epochs` sets the number of epochs from the measured epoch times so the run
ends within the budget, and :func:`fit_schedule` fits the lr decay, warmup and ``close_mosaic`` to that
number (a :class:`~yolotrain.engine.horizon.Horizon`), so the run ends on a fully decayed schedule instead
of being cut off mid-schedule.

What counts: the training time of every launch of the run (set-up, epochs, validation, saves), measured
from the start of ``fit``. On resume the time the earlier launches trained counts (it is in the
checkpoint); the time between launches (a preempted job waiting in the queue) does not. So ``time=2``
on a preemptible cluster still means two hours of training in total, however often the job restarts.

:class:`TimeBudget` is the run's horizon keeper under ``time=`` (the trainer asks it what it asks
:class:`~yolotrain.engine.horizon.FixedHorizon` otherwise) and the checkpoint part that holds the plan
(``budget`` key): the fitted epoch count, warmup and close-mosaic length, and the measurements they came
from, so a resumed run continues the same plan. Its clock is the trainer's ``clock`` attribute
(``time.monotonic``), the seam tests replace.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from yolotrain.engine import distributed as dist
from yolotrain.engine.horizon import Horizon

LOGGER = logging.getLogger("yolotrain")

# Share of the budget kept free: epoch times vary (other processes, the data path, validation of a model
# that still finds many boxes), and the plan is only corrected after the next epoch.
MARGIN = 0.03
# Epoch times averaged for the estimate: the most recent ones follow drifts (mosaic closing, a busy machine).
RECENT = 3


def epoch_estimate(train_seconds: list[float], val_seconds: list[float]) -> tuple[float, float]:
    """(training seconds per epoch, seconds per validation) expected from now on.

    The first epoch is left out once a later one is measured: it pays for warm-up (allocator, caches,
    compilation) that later epochs do not. Each is the mean of the :data:`RECENT` latest measurements.

    Args:
        train_seconds: Each finished epoch's seconds without its validation (saves and logging included).
        val_seconds: Each validation's seconds (only epochs that validated).
    """
    return _recent_mean(train_seconds), _recent_mean(val_seconds)


def _recent_mean(seconds: list[float]) -> float:
    """Mean of the :data:`RECENT` latest values, the first left out once there is another (0 when none)."""
    recent = (seconds[1:] if len(seconds) > 1 else seconds)[-RECENT:]
    return sum(recent) / len(recent) if recent else 0.0


def plan_epochs(
    budget_s: float,
    spent_s: float,
    done: int,
    train_s: float,
    val_s: float,
    val_period: int = 1,
    validate: bool = True,
    margin: float = MARGIN,
) -> int:
    """The number of epochs (in all) that fit the budget, ``done`` of them already trained.

    The remaining epochs cost ``train_s`` each, plus ``val_s`` for each one that validates (every
    ``val_period``-th and the last). The result is the largest total whose cost fits within
    ``budget_s * (1 - margin) - spent_s``, and at least ``done`` (no time left: stop now).

    Args:
        budget_s: The budget in seconds.
        spent_s: Seconds spent so far (all launches).
        done: Epochs finished.
        train_s: Expected training seconds per epoch.
        val_s: Expected seconds per validation.
        val_period: Validation every this many epochs (and after the last).
        validate: Whether the run validates at all.
        margin: Share of the budget kept free.
    """
    left = budget_s * (1.0 - margin) - spent_s
    if train_s <= 0:
        raise ValueError("an epoch must take some time to plan a budget")
    n = max(int(left // train_s), 0)  # an upper bound: validation only adds cost
    while n > 0:
        last = done + n  # 1-based number of the last epoch
        vals = (last // val_period - done // val_period + (last % val_period != 0)) if validate else 0
        if n * train_s + vals * val_s <= left:
            break
        n -= 1
    return done + n


def fit_schedule(
    epochs: int, recipe_epochs: int, warmup_iters: int, warmup_epochs: float, close_mosaic: int, iters_per_epoch: int
) -> Horizon:
    """Fit warmup and close-mosaic to a run of ``epochs`` epochs.

    ``recipe_epochs`` (the ``epochs=`` setting) is the length the recipe was written for: a run the
    budget makes shorter keeps warmup and the mosaic-free tail at the same share of the run (rounded up,
    so a configured phase never vanishes), and a longer run keeps their configured lengths.

    Args:
        epochs: The fitted number of epochs.
        recipe_epochs: ``epochs=``.
        warmup_iters: The configured warmup in iterations (``warmup_epochs`` times the batches per epoch,
            at least ``warmup_min_iters``; 0: no warmup).
        warmup_epochs: ``warmup_epochs=``.
        close_mosaic: ``close_mosaic=``.
        iters_per_epoch: Batches per epoch.
    """
    run = min(epochs, recipe_epochs)  # multiply before dividing: 20/100 * 300 must give 60, not 60.000...1
    warm = min(warmup_iters, math.ceil(warmup_epochs * iters_per_epoch * run / recipe_epochs - 1e-9))
    close = min(close_mosaic, -(-close_mosaic * run // recipe_epochs))
    return Horizon(epochs, warm, close)


class TimeBudget:
    """The run's horizon under ``time=``: measurements and the horizon fitted to them (checkpoint key ``budget``).

    It answers the trainer's questions as :class:`~yolotrain.engine.horizon.FixedHorizon` does, from the
    measured times; a refitted horizon is rank 0's on every rank (its clock decides for all).

    Args:
        hours: The budget.
        recipe_epochs: ``epochs=``, the horizon until the first epoch is measured.
        warmup_iters: The configured warmup in iterations.
        warmup_epochs: ``warmup_epochs=``.
        close_mosaic: ``close_mosaic=``.
        val_period: ``val_period=``.
        validate: Whether the run validates.
    """

    KEYS = ("budget",)
    # raising epochs= only changes the recipe the fitted horizon is scaled from
    finished_hint = ""

    def __init__(
        self,
        hours: float,
        recipe_epochs: int,
        warmup_iters: int,
        warmup_epochs: float,
        close_mosaic: int,
        val_period: int = 1,
        validate: bool = True,
    ):
        self.hours, self.recipe_epochs = hours, recipe_epochs
        self.warmup_iters, self.warmup_epochs, self.close_mosaic = warmup_iters, warmup_epochs, close_mosaic
        self.val_period, self.validate = val_period, validate
        self.current = Horizon(recipe_epochs, warmup_iters, close_mosaic)  # provisional
        self.fitted = False  # planned from a whole epoch
        self.estimated = False  # planned from the first tenth of the first epoch
        self.ran_out = False  # spent mid-epoch: training stops and validates
        self.first_begin = 0.0  # spent seconds when the first epoch's first batch started
        self.train_seconds: list[float] = []
        self.val_seconds: list[float] = []
        self.spent_before = 0.0  # seconds trained by earlier launches
        self.epoch_start = 0.0  # spent seconds when the current epoch started
        self.clock: Callable[[], float] | None = None
        self.launch_t0 = 0.0

    @property
    def seconds(self) -> float:
        return self.hours * 3600.0

    def start(self, clock: Callable[[], float], t0: float) -> None:
        """Count this launch's time with ``clock`` (seconds) from ``t0``."""
        self.clock, self.launch_t0 = clock, t0

    def spent(self) -> float:
        """Seconds trained so far, over all launches."""
        return self.spent_before + (self.clock() - self.launch_t0 if self.clock else 0.0)

    def exhausted(self) -> bool:
        """Whether the budget is spent (training stops at the next optimizer step, then validates)."""
        return self.spent() >= self.seconds

    def begin_epoch(self, epoch: int, start: int) -> None:
        """At an epoch's first batch: mark the run's first (the early refit measures its pace from there)."""
        if epoch == 0 and start == 0:
            self.first_begin = self.spent()

    def _fitted(self, epochs: int, iters_per_epoch: int) -> Horizon:
        """The configured horizon fitted to ``epochs`` (:func:`fit_schedule`)."""
        return fit_schedule(
            epochs, self.recipe_epochs, self.warmup_iters, self.warmup_epochs, self.close_mosaic, iters_per_epoch
        )

    def refit_early(self, epoch: int, done_iters: int, iters_per_epoch: int) -> Horizon | None:
        """A provisional horizon from the pace of the first tenth of the first epoch; None at other iterations.

        A long first epoch would otherwise run on the recipe's schedule for all of it (or, on a budget
        shorter than an epoch, past the budget). The horizon is refitted after the epoch, when its
        validation time is known too. Every rank calls it at the same step (a collective when it refits).
        """
        if self.fitted or self.estimated or epoch != 0 or done_iters != max(iters_per_epoch // 10, 1):
            return None
        self.estimated = True
        now = self.spent()
        pace = (now - self.first_begin) / done_iters
        end = now + pace * (iters_per_epoch - done_iters)  # when the first epoch is expected to end
        epochs = plan_epochs(self.seconds, end, 1, max(pace * iters_per_epoch, 1e-6), 0.0, validate=False)
        LOGGER.info(
            f"time budget {self.hours:g} h: {epochs} epochs at {pace * iters_per_epoch / 60:.1f} min/epoch "
            f"(estimated from the first {done_iters} iterations; refitted after each epoch)"
        )
        self.current = dist.broadcast_object(self._fitted(epochs, iters_per_epoch))
        return self.current

    def runs_out(self, epoch: int, done: int, iters_per_epoch: int) -> bool:
        """At an optimizer step: whether the budget is spent; rank 0's clock decides (others answer False).

        Rank 0's stop reaches every rank through the flag agreement at this step (no collective of its own),
        and :meth:`share_ran_out` tells them why at the epoch's end.
        """
        if not dist.is_main() or not self.exhausted():
            return False
        LOGGER.warning(
            f"time budget {self.hours:g} h spent at epoch {epoch + 1}, iteration {done}/{iters_per_epoch}: "
            "stopping (the plan expected more time per epoch)"
        )
        self.ran_out = True
        return True

    def share_ran_out(self) -> None:
        """At an epoch's end, on every rank: rank 0's ``ran_out`` (whether the last epoch validates must agree)."""
        self.ran_out = dist.broadcast_object(self.ran_out)

    def end_epoch(self, done: int, val_seconds: float | None, iters_per_epoch: int) -> Horizon:
        """Record the epoch that just ended (``done`` epochs finished) and refit the horizon to the rest of the run.

        Every rank calls it (rank 0's horizon is broadcast).

        Args:
            done: Epochs finished, this one included.
            val_seconds: This epoch's validation seconds (None: it did not validate).
            iters_per_epoch: Batches per epoch (for the warmup).
        """
        now = self.spent()
        val = val_seconds or 0.0
        self.train_seconds.append(max(now - self.epoch_start - val, 0.0))
        if val_seconds is not None:
            self.val_seconds.append(val_seconds)
        self.epoch_start = now  # the save after this counts into the next epoch
        t, v = epoch_estimate(self.train_seconds, self.val_seconds)
        epochs = plan_epochs(self.seconds, now, done, max(t, 1e-6), v, self.val_period, self.validate)
        plan = self._fitted(epochs, iters_per_epoch)
        if plan != self.current or not self.fitted:
            LOGGER.info(
                f"time budget {self.hours:g} h: {epochs} epochs at {(t + v) / 60:.1f} min/epoch "
                f"({now / 60:.1f} min spent; warmup {plan.warmup_iters} iterations, "
                f"close_mosaic {plan.close_mosaic})"
            )
        self.current, self.fitted = dist.broadcast_object(plan), True
        return self.current

    def state_dict(self) -> dict[str, Any]:
        h = self.current
        return {
            "budget": {
                "hours": self.hours,
                "epochs": h.epochs,
                "warmup_iters": h.warmup_iters,
                "close_mosaic": h.close_mosaic,
                "fitted": self.fitted,
                "estimated": self.estimated,
                "first_begin": self.first_begin,
                "train_seconds": list(self.train_seconds),
                "val_seconds": list(self.val_seconds),
                "spent": self.spent(),
                "epoch_start": self.epoch_start,
            }
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        b = state["budget"]
        self.current = Horizon(int(b["epochs"]), int(b["warmup_iters"]), int(b["close_mosaic"]))
        self.fitted, self.estimated = bool(b["fitted"]), bool(b["estimated"])
        self.first_begin = float(b["first_begin"])
        self.train_seconds = [float(x) for x in b["train_seconds"]]
        self.val_seconds = [float(x) for x in b["val_seconds"]]
        self.spent_before = float(b["spent"])  # this launch's time counts on top of the earlier launches'
        self.epoch_start = float(b["epoch_start"])
