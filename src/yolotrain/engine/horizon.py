"""The run's horizon: how many epochs it trains and what is fitted to that length.

A :class:`Horizon` holds the epoch count (also the length the lr decays over), the warmup in iterations and
the mosaic-free tail (``close_mosaic``). Every run has one keeper of it that the trainer asks the same
questions of: :class:`FixedHorizon` (no ``time=``: the configured horizon, never refitted) or
:class:`~yolotrain.engine.budget.TimeBudget` (``time=``: refitted from measured epoch times). So the trainer
has no branch for ``time=``; the keeper answers "unchanged" where there is nothing to measure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from yolotrain.config import Config


@dataclass(frozen=True)
class Horizon:
    """The run's length and what depends on it; equal horizons fit the same schedule."""

    epochs: int  # epochs the run trains, and the length the lr decays over
    warmup_iters: int  # iterations of warmup (0: none)
    close_mosaic: int  # the last epochs that train without mosaic

    def mosaic(self, epoch: int) -> bool:
        """Whether 0-based ``epoch`` trains with mosaic (off in the last ``close_mosaic`` epochs)."""
        return not (self.close_mosaic and epoch >= self.epochs - self.close_mosaic)


def warmup_iters(cfg: Config, iters_per_epoch: int) -> int:
    """The configured warmup: ``warmup_epochs`` of ``iters_per_epoch``, at least ``warmup_min_iters`` (0: none)."""
    return max(round(cfg.warmup_epochs * iters_per_epoch), cfg.warmup_min_iters) if cfg.warmup_epochs > 0 else 0


class FixedHorizon:
    """The horizon of a run without a time budget: ``epochs=``, its warmup and ``close_mosaic``, for the whole run.

    It measures nothing, so every question the trainer asks at a step or an epoch's end has the answer
    "unchanged"; it is not a checkpoint part (the settings restore it).

    Args:
        horizon: The configured horizon.
    """

    # what a resumed run that already finished can change to train longer
    finished_hint = "; raise epochs= to train longer"

    def __init__(self, horizon: Horizon):
        self.current = horizon
        self.ran_out = False  # no clock: the run never runs out of time

    def start(self, clock: Callable[[], float], t0: float) -> None:
        """A launch begins; a fixed horizon does not count its time."""

    def begin_epoch(self, epoch: int, start: int) -> None:
        """An epoch's first batch; a fixed horizon measures no pace."""

    def refit_early(self, epoch: int, done: int, iters_per_epoch: int) -> Horizon | None:
        """At an optimizer step: a fixed horizon is never refitted (None)."""
        return None

    def runs_out(self, epoch: int, done: int, iters_per_epoch: int) -> bool:
        """At an optimizer step: whether time is up, never for a fixed horizon."""
        return False

    def share_ran_out(self) -> None:
        """At an epoch's end: ``ran_out`` is False on every rank already."""

    def end_epoch(self, done: int, val_seconds: float | None, iters_per_epoch: int) -> Horizon | None:
        """After an epoch: a fixed horizon is never refitted (None)."""
        return None
