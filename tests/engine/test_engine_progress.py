"""progress.py: one epoch's image count, pace and log points (the step's one host read)."""

import torch

from yolotrain.engine.progress import EpochProgress
from yolotrain.engine.state import TrainState


class CountingStep:
    """Stands in for TrainStep: counts the host reads (sync) and returns fixed mean losses."""

    input_size = (64, 64)

    def __init__(self):
        self.reads = 0

    def sync(self):
        self.reads += 1
        return type("Values", (), {"mean_losses": (1.0, 2.0, 3.0)})()


def batches(n, size=4):
    return [{"img": torch.zeros(size, 3, 8, 8), "cls": torch.zeros(2, 1)} for _ in range(n)]


def test_log_points_come_every_log_every_optimizer_steps_and_at_the_end():
    step = CountingStep()
    progress = EpochProgress(batches(7), step, TrainState(), start=0, total=7, desc="e", show=False, log_every=2)
    reads_after = []
    for i, batch in progress:
        progress.after_batch(batch, boundary=i % 2 == 1)  # an optimizer step every second batch: i = 1, 3, 5
        reads_after.append(step.reads)
    # boundaries at i=1 (1 since the last read: none), i=3 (2: read), i=5 (1: none)
    assert reads_after == [0, 0, 0, 1, 1, 1, 1]
    mean, pace = progress.finish()
    assert step.reads == 2 and mean == (1.0, 2.0, 3.0)  # the epoch's end reads once more
    assert progress.images == 28 and pace > 0  # 7 batches of 4 images


def test_a_resumed_epoch_numbers_its_iterations_from_start():
    progress = EpochProgress(
        batches(3), CountingStep(), TrainState(), start=5, total=8, desc="e", show=True, log_every=1
    )
    seen = []
    for i, batch in progress:
        progress.after_batch(batch, boundary=True)
        seen.append(i)
    assert seen == [5, 6, 7] and progress.bar.n == 8  # the bar started at 5 of 8
