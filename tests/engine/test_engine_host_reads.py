"""The training step reads nothing back from the device between log points (counted on the CPU)."""

import logging

import pytest
import torch

from yolotrain.config import resolve
from yolotrain.engine.ema import ModelEMA
from yolotrain.engine.optim import build_optimizer
from yolotrain.engine.precision import Precision
from yolotrain.engine.state import TrainState
from yolotrain.engine.step import TrainStep
from yolotrain.engine.trainer import Trainer
from yolotrain.errors import TrainingError
from yolotrain.loss import DetectionLoss
from yolotrain.models import build_model
from yolotrain.utils.host_sync import HostSyncCounter

CPU = torch.device("cpu")


def reads_per_iteration(data, tmp_path, **kw):
    """Train one epoch through the public Trainer; the host reads of each iteration, loader excluded."""
    base = dict(
        data=str(data), model="n", epochs=1, imgsz=64, batch=4, nbs=4, workers=0, project=str(tmp_path),
        verbose=True, val=False, plots=False, mosaic=0.0, seed=0,
    )  # fmt: skip
    base.update(kw)
    trainer = Trainer(resolve(base))
    counter = HostSyncCounter()
    per_iteration = []

    def start(t):  # from the lr schedule to the progress bar, after the loader handed the batch over
        counter.reset()
        counter.__enter__()

    def end(t):
        counter.__exit__(None, None, None)
        per_iteration.append((t.last_iteration, counter.count, counter.report()))

    trainer.callbacks.add("on_train_batch_start", start)
    trainer.callbacks.add("on_train_batch_end", end)
    trainer.fit()
    return per_iteration


@pytest.mark.slow
def test_steady_state_iterations_read_nothing_back(tiny_data, tmp_path):
    per_iteration = reads_per_iteration(tiny_data, tmp_path)
    steady = per_iteration[2:]
    assert steady and all(n == 0 for _, n, _ in steady), "\n".join(r for _, _, r in steady)


def make_batch(seed=0):
    """4 images of 32 px (the smallest the model takes: a 1-pixel map at stride 32) with 1, 4, 0 and 3 boxes."""
    g = torch.Generator().manual_seed(seed)
    counts = [1, 4, 0, 3]
    n = sum(counts)
    return {
        "img": (torch.rand(4, 3, 32, 32, generator=g) * 255).to(torch.uint8),
        "cls": torch.randint(0, 2, (n, 1), generator=g).float(),
        "bboxes": torch.cat([torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.2 + 0.1], 1),
        "batch_idx": torch.repeat_interleave(torch.arange(4), torch.tensor(counts)).float(),
    }


def make_step(amp="off", name="AdamW", accumulate=2, **kw):
    torch.manual_seed(0)
    model = build_model("n", nc=2)
    opt, _, _ = build_optimizer(model, name, 0.001, 0.9, 5e-4, 100, 2)
    # fp16: a loss scale at which these 32 px batches do not overflow (from 2**16 one counted step was skipped)
    precision = Precision(CPU, amp, init_scale=1024.0)
    step = TrainStep(
        model, DetectionLoss.from_model(model), opt, precision, ModelEMA(model), TrainState(), device=CPU, **kw
    )  # fmt: skip
    step.configure(accumulate, 100)
    return step


@pytest.mark.slow
@pytest.mark.parametrize(("amp", "name"), [("off", "AdamW"), ("fp16", "SGD")])
def test_train_step_reads_nothing_back_until_sync(amp, name):
    step = make_step(amp, name)
    for i in range(2):  # the first steps create optimizer state and the scaler's
        step(make_batch(i), 0, i)
    batches = [make_batch(i) for i in range(2, 6)]  # made outside the count: the loader's work
    with HostSyncCounter() as reads:
        for i, batch in enumerate(batches, start=2):  # two windows of two batches: two optimizer steps
            step(batch, 0, i)
    assert reads.count == 0, reads.report()
    with HostSyncCounter() as reads:
        values = step.sync()
    assert reads.count == 1  # a log point: every counter in one read
    assert values.batches == 6 and values.skipped == 0 and all(v > 0 for v in values.loss_sum)


def test_consecutive_nonfinite_losses_stop_at_the_next_log_point():
    step = make_step(accumulate=1, max_nonfinite=2)
    real_finish, calls = step.criterion.finish, []

    def finish(t, norm):  # batches 0, 2 and 3 of epoch 1 give NaN; batch 1 is fine
        calls.append(1)
        loss, items = real_finish(t, norm)
        return (loss * float("nan"), items) if len(calls) != 2 else (loss, items)

    step.criterion.finish = finish
    before = [p.detach().clone() for p in step.model.parameters()]
    step(make_batch(0), 1, 0)  # nothing is read back: the step goes on, skipped on the device
    assert all(torch.equal(a, b) for a, b in zip(before, step.model.parameters()))
    for i in (1, 2):
        step(make_batch(i), 1, i)
    assert step.sync().nonfinite == 2  # bad, good, bad: the good batch broke the run of bad ones
    step(make_batch(3), 1, 3)
    with pytest.raises(TrainingError, match="2 consecutive non-finite losses at iteration 103"):
        step.sync()  # epoch 1 of 100 iterations: the second bad batch in a row was iteration 103
    assert step.state.skipped_steps == 3


def test_cuda_graphs_is_ignored_on_the_cpu_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="yolotrain"):
        step = make_step(cuda_graphs=True)
    lines = [r.getMessage() for r in caplog.records if "cuda_graphs" in r.getMessage()]
    assert lines == ["cuda_graphs=true is ignored: it needs a CUDA device and this run trains on cpu; training eagerly"]
    assert step.graphs is None
    step(make_batch(), 0, 0)  # trains eagerly
    assert resolve({"data": "x", "cuda_graphs": "true", "log_every": 5}).cuda_graphs is True
