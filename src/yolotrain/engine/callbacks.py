"""Named training events and the callbacks registered on them."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

EVENTS = (
    "on_pretrain_routine_start",
    "on_pretrain_routine_end",
    "on_train_start",
    "on_train_epoch_start",
    "on_train_batch_start",
    "on_before_optimizer_step",
    "on_train_batch_end",
    "on_train_epoch_end",
    "on_val_start",
    "on_val_end",
    "on_fit_epoch_end",
    "on_model_save",
    "on_train_end",
    "on_exception",
)


class Callbacks:
    """A list of functions per event; each is called with the trainer."""

    def __init__(self) -> None:
        self._fns: dict[str, list[Callable[[Any], None]]] = defaultdict(list)

    def add(self, event: str, fn: Callable[[Any], None]) -> None:
        """Register ``fn`` for ``event``.

        Raises:
            ValueError: For an unknown event name.
        """
        if event not in EVENTS:
            raise ValueError(f"unknown callback event '{event}'; events are: {', '.join(EVENTS)}")
        self._fns[event].append(fn)

    def run(self, event: str, trainer: Any) -> None:
        for fn in self._fns.get(event, ()):
            fn(trainer)
