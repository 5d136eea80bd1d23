"""Early stopping: end training after ``patience`` epochs without a better validation fitness.

Patience is measured in epochs since the best one, not in calls, so validating only every few epochs
(``val_period``) still counts epochs. The state is plain data for the checkpoint; ``patience`` itself
comes from the config, so a resumed run may raise it. Under DDP, :meth:`EarlyStopping.decide` updates on
rank 0 and broadcasts its decision::

    stop = early_stop.decide(epoch, fitness)  # every rank
"""

from __future__ import annotations

import math
from typing import Any

from yolotrain.engine import distributed as dist


class EarlyStopping:
    """Tracks the best fitness and says when to stop.

    Args:
        patience: Epochs without improvement before stopping; <= 0 disables stopping (the best epoch
            is still tracked).

    Attributes:
        best_epoch: 0-based epoch of the best fitness (-1 before any finite fitness).
        best_fitness: The best fitness so far (None before any).
        last_epoch: The epoch of the latest :meth:`update` (-1 before any).
    """

    def __init__(self, patience: int) -> None:
        self.patience = int(patience)
        self.best_epoch = -1
        self.best_fitness: float | None = None
        self.last_epoch = -1

    @property
    def enabled(self) -> bool:
        return self.patience > 0

    def update(self, epoch: int, fitness: float | None) -> bool:
        """Record ``epoch``'s fitness (None or NaN for "not validated") and say whether to stop.

        Improvement is strict (``fitness > best``), matching how best.pt is chosen, so a plateau counts
        as no improvement.

        Args:
            epoch: 0-based epoch just finished.
            fitness: Its validation fitness (higher is better).

        Returns:
            True when ``patience`` epochs have passed since the best one.
        """
        self.last_epoch = int(epoch)
        if (
            fitness is not None
            and math.isfinite(fitness)
            and (self.best_fitness is None or fitness > self.best_fitness)
        ):
            self.best_fitness, self.best_epoch = float(fitness), int(epoch)
        if not self.enabled or self.best_epoch < 0:
            # Never validated yet: nothing to compare with, and stopping blind would be wrong.
            return False
        return epoch - self.best_epoch >= self.patience

    def decide(self, epoch: int, fitness: float | None) -> bool:
        """:meth:`update` on rank 0, whose decision every rank returns (call it on every rank)."""
        return dist.broadcast_object(self.update(epoch, fitness) if dist.is_main() else False)

    def message(self) -> str:
        """One line saying why training stopped, the best epoch (1-based, as logged) and how to go on."""
        best = f"{self.best_fitness:.4f}" if self.best_fitness is not None else "n/a"
        return (
            f"early stopping: no improvement in the {self.last_epoch - self.best_epoch} epochs since the best "
            f"epoch {self.best_epoch + 1} (fitness {best}; patience={self.patience}); to train longer raise "
            f"patience= or set patience=0 to disable early stopping"
        )

    def state_dict(self) -> dict[str, Any]:
        """Plain data for the checkpoint."""
        return {"best_epoch": self.best_epoch, "best_fitness": self.best_fitness, "last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (``patience`` stays the configured one)."""
        self.best_epoch = int(state["best_epoch"])
        fit = state["best_fitness"]
        self.best_fitness = None if fit is None else float(fit)
        self.last_epoch = int(state.get("last_epoch", -1))
