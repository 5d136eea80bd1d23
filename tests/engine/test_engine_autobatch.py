"""autobatch.py: the batch chosen by measured throughput within the memory budget (simulated curves)."""

from __future__ import annotations

import logging

import pytest
import torch

from yolotrain.engine import autobatch as autobatch_module
from yolotrain.engine.autobatch import autobatch, autobatch_fraction
from yolotrain.errors import ConfigError, TrainingError


class Curve:
    """A simulated device: memory = intercept + slope * batch, OOM from ``oom_at`` images on, and a clock
    that each step advances by ``seconds(batch)``."""

    def __init__(self, intercept=500.0, slope=100.0, oom_at=None, memory=None, seconds=lambda b: 1 + 0.001 * b):
        self.intercept, self.slope, self.oom_at, self.memory, self.seconds = intercept, slope, oom_at, memory, seconds
        self.probed: list[int] = []
        self.resets = 0
        self.last = 0
        self.now = 0.0

    def step(self, b):
        self.probed.append(b)
        if self.oom_at is not None and b >= self.oom_at:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {b} GiB")
        self.last = b
        self.now += self.seconds(b)

    def clock(self):
        return self.now

    def sizes(self):
        """The distinct batch sizes probed, in order (each runs twice: memory, then timed)."""
        return list(dict.fromkeys(self.probed))

    def reset(self):
        self.resets += 1

    def __call__(self):
        return self.memory(self.last) if self.memory else self.intercept + self.slope * self.last


@pytest.fixture(autouse=True)
def freed(monkeypatch):
    """The devices here are simulated, so a real ``free_memory`` frees nothing of theirs, yet costs a full
    ``gc.collect()`` per probe (0.6 s in this test session's heap: 27 s over this file); the calls are recorded."""
    calls = []
    monkeypatch.setattr(autobatch_module, "free_memory", lambda device=None: calls.append(str(device)))
    return calls


def run(curve, **kw):
    kw.setdefault("total", 10_000)
    return autobatch(curve.step, "cpu", measure=curve, timer=curve.clock, **kw)


def test_throughput_knee_is_chosen_and_the_curve_logged(caplog):
    # by hand, seconds = 0.2 + 0.05 b + 0.002 b^2: batch 1 0.252 s (4.0 img/s), 2 0.308 s (6.5), 4 0.432 s (9.3),
    # 8 0.728 s (11.0), 16 1.512 s (10.6): batch 16 is slower per image than 8, so 8 it is, although memory
    # (500 + 100 b MiB of a 6000 MiB budget) would allow 55
    curve = Curve(seconds=lambda b: 0.2 + 0.05 * b + 0.002 * b * b)
    with caplog.at_level(logging.INFO, logger="yolotrain"):
        assert run(curve) == 8
    assert curve.sizes() == [1, 2, 4, 8, 16] and curve.probed.count(8) == 2 and curve.resets == 5
    assert "images/s by batch 1:4.0 2:6.5 4:9.3 8:11.0 16:10.6" in caplog.text
    assert "batch   16     2100.0 MiB    1.512 s      10.6 img/s" in caplog.text and "-> batch 8" in caplog.text


def test_plenty_of_memory_stops_where_the_gain_falls_below_5_percent():
    # a CPU with lots of RAM: memory never binds. seconds = 0.1 + 0.01 b: 64 -> 86.5 img/s, 128 -> 92.8 (+7.2%),
    # 256 -> 96.2 (+3.8% < 5%): batch 128, not the 1024 ceiling
    curve = Curve(seconds=lambda b: 0.1 + 0.01 * b)
    assert run(curve, total=1e9) == 128
    assert curve.sizes() == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    # with min_gain 2%: 256 brings +3.8%, 512 (98.1 img/s) only +1.9%: batch 256
    assert run(Curve(seconds=lambda b: 0.1 + 0.01 * b), total=1e9, min_gain=0.02) == 256


def test_memory_budget_binds_when_throughput_keeps_improving():
    # seconds 1 + 0.001 b: images/s almost proportional to b. Budget 0.6 * 10000 = 6000 MiB; the memory line
    # 500 + 100 b reaches it at (6000 - 500) / 100 = 55, so 55 is probed instead of 64 and chosen
    curve = Curve()
    assert run(curve) == 55
    assert curve.sizes() == [1, 2, 4, 8, 16, 32, 55]
    assert run(Curve(), multiple_of=8) == 48
    assert run(Curve(), fraction=0.3) == 25  # (3000 - 500) / 100


def test_never_above_the_dataset():
    curve = Curve()
    assert run(curve, max_images=20) == 20
    assert curve.sizes() == [1, 2, 4, 8, 16, 20] and max(curve.probed) == 20
    curve = Curve()
    assert run(curve, max_images=3) == 3 and curve.sizes() == [1, 2, 3]
    with pytest.raises(ConfigError, match="max_images=0"):
        run(Curve(), max_images=0)


def test_probe_over_budget_is_never_chosen():
    # 1500, 2500, 4500 MiB; the line predicts (6000 - 500) / 1000 = 5 fits, so 5 is probed (5500) instead of 8
    curve = Curve(slope=1000.0)
    assert run(curve) == 5 and curve.sizes() == [1, 2, 4, 5]
    # a meter that jumps: batch 8 measures over the budget although the line said it fits
    curve = Curve(memory=lambda b: 100.0 * b if b < 8 else 7000.0)
    assert run(curve) == 4 and curve.sizes() == [1, 2, 4, 8]


def test_out_of_memory_probe_caps_the_choice(freed):
    curve = Curve(oom_at=16)
    assert run(curve) == 8
    assert curve.sizes() == [1, 2, 4, 8, 16]
    assert freed == ["cpu"] * 6  # before each of the 5 probes, and once more after the failed one
    curve = Curve(oom_at=8)
    assert run(curve, batch_sizes=(1, 2, 4, 8, 16, 32)) == 4
    assert curve.sizes() == [1, 2, 4, 8]  # no larger probe after an out-of-memory error


def test_first_probe_over_budget_trains_at_it_with_a_warning(caplog):
    curve = Curve(intercept=7000.0)
    with caplog.at_level(logging.WARNING, logger="yolotrain"):
        assert run(curve) == 1
    assert "over the 6000 MiB budget; using batch 1" in caplog.text and curve.sizes() == [1]


def test_every_probe_failing_is_a_clear_error():
    curve = Curve(oom_at=1)
    with pytest.raises(TrainingError, match="even batch 1 ran out of memory"):
        autobatch(curve.step, "cpu", measure=curve, total=10_000)


def test_other_errors_propagate():
    def broken(b):
        raise ValueError("shape mismatch")

    with pytest.raises(ValueError, match="shape mismatch"):
        autobatch(broken, "cpu", measure=lambda: 1.0, total=10_000)


def test_autobatch_fraction_setting():
    assert autobatch_fraction(-1) == 0.6
    assert autobatch_fraction(0.7) == 0.7
    assert autobatch_fraction(16) is None and autobatch_fraction(1.0) is None
    for bad in (0, -2, 1.5):
        with pytest.raises(ConfigError, match="'batch'"):
            autobatch_fraction(bad)


@pytest.mark.slow
def test_real_cpu_probe_with_tiny_model():
    from yolotrain.loss import DetectionLoss
    from yolotrain.models import build_model

    model = build_model("n", nc=3)
    criterion = DetectionLoss.from_model(model)

    def step(b):
        imgs = torch.rand(b, 3, 64, 64)
        batch = {
            "cls": torch.zeros(b, 1),
            "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.3]]).repeat(b, 1),
            "batch_idx": torch.arange(b, dtype=torch.float32),
        }
        loss, _ = criterion(model(imgs), batch)
        loss.backward()
        model.zero_grad(set_to_none=True)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two intra-op threads on a busy 2-core machine spin-wait for seconds
    try:
        chosen = autobatch(step, torch.device("cpu"), fraction=0.5, batch_sizes=(1, 2, 4), max_batch=64, max_images=24)
    finally:
        torch.set_num_threads(threads)
    assert isinstance(chosen, int) and 1 <= chosen <= 24
