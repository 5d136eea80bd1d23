"""What the training step counts, kept on the device and read by the host only at log points.

Reading a device value stalls the host until the device has finished every queued kernel; a step that read
its loss, its finite flag or its skip decision every iteration would run at the pace of that round trip. So
the step adds into these tensors and the trainer calls :meth:`StepCounters.read` every ``log_every``
optimizer steps and at the epoch's end: one host read for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CounterValues:
    """One read of :class:`StepCounters` (host numbers).

    Attributes:
        loss_sum: Sum of the loss items (box, cls, dfl) of the batches since the epoch started.
        batches: Batches those sums cover.
        skipped: Optimizer steps skipped (nothing finite to apply) since the last read.
        nonfinite: Batches whose loss was not finite since the last read.
        last_nonfinite: Global iteration of the latest of them (-1: none ever).
        stop_at: Global iteration at which the run of consecutive non-finite losses reached the limit (-1: never).
    """

    loss_sum: tuple[float, float, float]
    batches: int
    skipped: int
    nonfinite: int
    last_nonfinite: int
    stop_at: int

    @property
    def mean_losses(self) -> tuple[float, float, float]:
        n = max(self.batches, 1)
        return tuple(v / n for v in self.loss_sum)  # type: ignore[return-value]


class StepCounters:
    """Device-side counters of the training step (see the module docstring).

    Args:
        device: Where the step runs.
        max_nonfinite: Consecutive non-finite losses that stop training (the limit ``stop_at`` records).
    """

    def __init__(self, device: torch.device, max_nonfinite: int = 10):
        self.device, self.max_nonfinite = device, max_nonfinite
        z = torch.zeros((), dtype=torch.float64, device=device)
        # float64 holds every count and iteration exactly; one dtype lets a read be one stack and one copy
        self.loss_sum = torch.zeros(3, dtype=torch.float64, device=device)
        self.skipped, self.nonfinite, self.streak = z.clone(), z.clone(), z.clone()
        self.last_nonfinite, self.stop_at = z - 1, z - 1
        self.batches = 0  # a host count: how many batches added into loss_sum

    def new_epoch(self) -> None:
        """Restart the loss sums (the epoch's running mean); the other counters carry on."""
        self.loss_sum.zero_()
        self.batches = 0

    def add_batch(self, items: torch.Tensor, nonfinite: torch.Tensor, iteration: int) -> None:
        """Count one batch: its loss items and whether any of its losses was non-finite (a device bool)."""
        with torch.no_grad():
            finite_items = torch.where(torch.isfinite(items), items, 0.0)
            self.loss_sum.add_(finite_items.to(torch.float64))
            bad = nonfinite.to(torch.float64)
            self.nonfinite.add_(bad)
            self.streak.mul_(bad).add_(bad)  # +1 on a bad batch, back to 0 on a good one
            self.last_nonfinite.copy_(torch.where(nonfinite, float(iteration), self.last_nonfinite))
            reached = (self.streak >= self.max_nonfinite) & (self.stop_at < 0)
            self.stop_at.copy_(torch.where(reached, float(iteration), self.stop_at))
        self.batches += 1

    def add_skipped(self, skipped: torch.Tensor) -> None:
        """Count an optimizer step that was skipped when ``skipped`` (a device bool) is True."""
        self.skipped.add_(skipped.to(torch.float64))

    def read(self) -> CounterValues:
        """Copy every counter to the host at once (the one host read of a log point); restart the per-read ones."""
        values = torch.cat(
            (self.loss_sum, torch.stack((self.skipped, self.nonfinite, self.last_nonfinite, self.stop_at)))
        ).tolist()
        self.skipped.zero_()
        self.nonfinite.zero_()
        return CounterValues(
            tuple(values[:3]), self.batches, int(values[3]), int(values[4]), int(values[5]), int(values[6])
        )
