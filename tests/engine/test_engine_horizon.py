"""horizon.py: the run's horizon, the mosaic-free tail it sets, and the fixed keeper a run without time= has."""

import pytest

from yolotrain.config import resolve
from yolotrain.engine.horizon import FixedHorizon, Horizon, warmup_iters
from yolotrain.engine.optim import Schedule


def test_mosaic_is_off_in_the_last_close_mosaic_epochs_only():
    # 6 epochs, the last 2 without mosaic (0-based epochs 4 and 5)
    assert [Horizon(6, 0, 2).mosaic(e) for e in range(6)] == [True, True, True, True, False, False]
    # close_mosaic longer than the run: no epoch has mosaic
    assert not any(Horizon(3, 0, 10).mosaic(e) for e in range(3))
    # close_mosaic=0: every epoch has mosaic
    assert all(Horizon(6, 0, 0).mosaic(e) for e in range(6))


def test_fixed_horizon_is_never_refitted():
    h = Horizon(12, 30, 2)
    fixed = FixedHorizon(h)
    fixed.start(lambda: 1e9, 0.0)  # however much time passes: nothing is measured
    fixed.begin_epoch(0, 0)
    assert fixed.refit_early(0, 1, 10) is None and not fixed.runs_out(0, 1, 10)
    assert fixed.end_epoch(1, 5.0, 10) is None
    fixed.share_ran_out()
    assert fixed.current is h and not fixed.ran_out


def test_configured_warmup():
    cfg = resolve(dict(data="x", warmup_epochs=3.0, warmup_min_iters=100))
    assert warmup_iters(cfg, 50) == 150  # 3 epochs of 50 iterations
    assert warmup_iters(cfg, 10) == 100  # at least warmup_min_iters
    assert warmup_iters(cfg.replace(warmup_epochs=0.0), 50) == 0  # no warmup


def test_schedule_fit_follows_the_horizon_and_the_phase():
    s = Schedule(10, 10, lrf=0.01, cos_lr=False, warmup_iters=20, warmup_bias_lr=0.1, warmup_momentum=0.8, momentum=0.9)
    s.fit(Horizon(5, 7, 1), 4)
    assert (s.epochs, s.warmup_iters, s.iters_per_epoch) == (5, 7, 4)
    # linear decay from 1 to lrf over the horizon's 5 epochs: half-way at epoch 2.5
    assert s.factor(2.5) == pytest.approx(0.505)
