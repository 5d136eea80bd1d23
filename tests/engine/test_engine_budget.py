"""budget.py: time= plans the epochs from measured epoch times and fits the schedule; exact on resume."""

import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from state_helpers import flat_tensors

from yolotrain.checkpoint_file import load_checkpoint
from yolotrain.cli import main
from yolotrain.config import parse_cli_args, resolve
from yolotrain.engine.budget import TimeBudget, epoch_estimate, fit_schedule, plan_epochs
from yolotrain.engine.horizon import Horizon
from yolotrain.engine.trainer import Trainer
from yolotrain.utils.logging import setup_logging

CLOCK = f"callbacks={Path(__file__).with_name('budget_clock.py')}:fake_clock"
# 24 images / batch 8: 3 batches (3 fake seconds) and a 2 s validation per epoch
ARGS = [
    "model=n", "epochs=12", "imgsz=64", "batch=8", "nbs=8", "workers=0", "verbose=false", "plots=false",
    "seed=1", "optimizer=SGD", "lr0=0.01", "lrf=0.01", "close_mosaic=2", "time=0.01", "amp=off", CLOCK,
]  # fmt: skip


# ------------------------------------------------------------------------------------------ the planner
def test_plan_epochs_hand_computed():
    # left 3500 s, 120 s per epoch: 29 more epochs (3480 s); a 30th would need 3600 s
    assert plan_epochs(3600, 100, 1, 100, 20, margin=0.0) == 30
    # the 3% margin leaves 3392 s: 28 more (3360 s)
    assert plan_epochs(3600, 100, 1, 100, 20) == 29
    # validation every 5th epoch and the last: 10 epochs cost 900 + 2*50 = 1000 (the 10th validates once);
    # 11 would cost 990 + 3*50
    assert plan_epochs(1000, 0, 0, 90, 50, val_period=5, margin=0.0) == 10
    # without validation, 11 epochs of 90 s fit 1000 s
    assert plan_epochs(1000, 0, 0, 90, 50, validate=False, margin=0.0) == 11
    # the budget is spent: stop where the run is
    assert plan_epochs(1000, 1200, 7, 90, 50, margin=0.0) == 7
    assert plan_epochs(1000, 950, 7, 90, 50, margin=0.0) == 7


def test_epoch_estimate_leaves_out_the_first_epoch_and_averages_the_recent():
    assert epoch_estimate([30.0], []) == (30.0, 0.0)  # only the first is known: use it
    assert epoch_estimate([30.0, 10.0], [6.0]) == (10.0, 6.0)  # the slow first epoch no longer counts
    t, v = epoch_estimate([30.0, 10.0, 12.0, 14.0, 8.0], [9.0, 3.0, 4.0])
    assert t == pytest.approx((12 + 14 + 8) / 3) and v == pytest.approx(3.5)


def test_fit_schedule_keeps_the_recipe_shares_on_a_shorter_run():
    # 20 of a 100-epoch recipe: warmup 3 epochs * 100 iterations -> 60, close_mosaic 10 -> 2
    assert fit_schedule(20, 100, 300, 3.0, 10, 100) == Horizon(20, 60, 2)
    # a longer run keeps the configured lengths
    assert fit_schedule(150, 100, 300, 3.0, 10, 100) == Horizon(150, 300, 10)
    # a short run keeps at least one close-mosaic epoch (0.7 rounds up); no warmup stays none
    assert fit_schedule(7, 100, 0, 3.0, 10, 100) == Horizon(7, 0, 1)


def test_budget_counts_the_training_of_every_launch_not_the_time_between(caplog):
    now = [0.0]
    b = TimeBudget(2.0, 100, 300, 3.0, 10)
    b.start(lambda: now[0], 0.0)
    now[0] = 144.0  # the first epoch: 120 s training, 24 s validation
    with caplog.at_level(logging.INFO, logger="yolotrain"):
        plan = b.end_epoch(1, 24.0, 100)
    # 6984 s usable, 6840 left at 144 s per epoch: 47 more
    assert plan == Horizon(48, 144, 5)
    assert "time budget 2 h: 48 epochs at 2.4 min/epoch" in caplog.text
    now[0] = 200.0
    state = b.state_dict()
    assert state["budget"]["spent"] == 200.0
    later = [5000.0]  # the next launch, after a long wait in the queue
    resumed = TimeBudget(2.0, 100, 300, 3.0, 10)
    resumed.load_state_dict(state)
    resumed.start(lambda: later[0], 5000.0)
    later[0] = 5030.0
    assert resumed.spent() == 230.0 and resumed.current == plan


# ------------------------------------------------------------------------------------------ through the trainer
def run_budget(tiny_data, project, *extra):
    assert main(["train", f"data={tiny_data}", f"project={project}", *ARGS, *extra]) == 0
    return load_checkpoint(project / "exp" / "weights" / "last.pt")


@pytest.mark.slow
def test_time_budget_fits_epochs_warmup_close_mosaic_and_decay(tiny_data, tmp_path, capsys):
    cfg = resolve(parse_cli_args([f"data={tiny_data}", f"project={tmp_path}", *ARGS]))
    trainer, seen = Trainer(cfg), []
    # mosaic is set when the epoch starts; the first batch sees it
    trainer.callbacks.add(
        "on_train_batch_start",
        lambda t: seen.append((t.epoch, t.train_loader.sampler.mosaic, t.epochs)),
    )
    setup_logging(True)  # the plan is logged at INFO
    try:
        trainer.fit()
    finally:
        setup_logging(False)
    state = load_checkpoint(tmp_path / "exp" / "weights" / "last.pt")
    # 36 s, 34.92 usable; the first epoch took 5 s (3 batches, a validation): 29.92 s left is 5 more epochs
    assert "time budget 0.01 h: 6 epochs at 0.1 min/epoch" in capsys.readouterr().err
    history = state["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5, 6]
    assert state["budget"]["epochs"] == 6 and state["budget"]["spent"] == 30.0
    # warmup fitted to 6 of a 12-epoch recipe: ceil(0.5 * 3 epochs * 3 batches) = 5 iterations, so epoch 2's
    # last batch (iteration 5) is past it: lr0 * (1 - 0.99 * (1 + 2/3) / 6)
    assert history[1]["lr/pg0"] == pytest.approx(0.01 * (1 - 0.99 * (5 / 3) / 6))
    # the last batch is at 17/18 of the decay from 1 to lrf
    assert history[-1]["lr/pg0"] == pytest.approx(0.01 * (1 - 0.99 * 17 / 18))
    firsts = list({epoch: (epoch, mosaic, epochs) for epoch, mosaic, epochs in reversed(seen)}.values())[::-1]
    # close_mosaic 2 of 12 -> 1 of 6: mosaic off in the last epoch only
    assert [s[1] for s in firsts] == [True, True, True, True, True, False]
    assert [s[2] for s in firsts] == [12, 6, 6, 6, 6, 6]  # the recipe's 12 until the first epoch is measured


def budget_log(tiny_data, tmp_path, capsys, clock, *extra):
    setup_logging(True)
    try:
        callbacks = f"callbacks={Path(__file__).with_name('budget_clock.py')}:{clock}"
        assert (
            main(["train", f"data={tiny_data}", f"project={tmp_path}", *ARGS, callbacks, "verbose=true", *extra]) == 0
        )
    finally:
        setup_logging(False)
    return capsys.readouterr().err, load_checkpoint(tmp_path / "exp" / "weights" / "last.pt")


def test_a_long_first_epoch_is_planned_from_its_first_tenth(tiny_data, tmp_path, capsys):
    err, state = budget_log(tiny_data, tmp_path, capsys, "slow_clock")
    # after the first batch (a tenth of 3, at least 1: 8 s) the epoch is expected to end at 24 s; 34.92 - 24 s
    # leave no room for a second 24 s epoch
    assert "time budget 0.01 h: 1 epochs at 0.4 min/epoch (estimated from the first 1 iterations" in err
    assert len(state["history"]) == 1
    # the schedule was fitted to one epoch (warmup ceil(3 * 3 / 12) = 1 iteration): the last batch at 2/3
    assert state["history"][0]["lr/pg0"] == pytest.approx(0.01 * (1 - 0.99 * 2 / 3))


def test_budget_spent_mid_epoch_stops_and_validates(tiny_data, tmp_path, capsys):
    err, state = budget_log(tiny_data, tmp_path, capsys, "slowing_clock", "val_period=5")
    assert "time budget 0.01 h: 11 epochs at" in err  # planned from a 3 s first epoch (not validated)
    # then 20 s per batch: 23 s, 43 s after the second batch of epoch 2: the 36 s are spent
    assert "time budget 0.01 h spent at epoch 2, iteration 2/3: stopping" in err
    assert len(state["history"]) == 2 and state["history"][1]["metrics/mAP50-95"] != ""  # validated


KILLER = textwrap.dedent("""
    import os, signal, sys
    from yolotrain.config import parse_cli_args, resolve
    from yolotrain.utils.logging import setup_logging
    from yolotrain.utils.startup import start_program
    setup_logging(False)
    event, at = sys.argv[1], int(sys.argv[2])
    cfg = resolve(parse_cli_args(sys.argv[3:]))
    start_program("train", cfg)  # imports as `yolotrain train` does
    from yolotrain.engine.trainer import Trainer
    t = Trainer(cfg)
    count = [0]
    def hook(tr):
        count[0] += 1
        if count[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
    t.callbacks.add(event, hook)
    t.fit()
""")


def flat(state):
    return flat_tensors(state, ("model", "ema", "optimizer"))


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory):
    return run_budget(tiny_data, tmp_path_factory.mktemp("budget_ref"), "save_period=1")


@pytest.mark.slow
@pytest.mark.parametrize("event,at", [("on_train_batch_end", 8), ("on_fit_epoch_end", 2)])
def test_killed_budget_run_resumes_the_same_plan_bit_exactly(tiny_data, tmp_path, reference, event, at):
    cmd = [sys.executable, "-c", KILLER, event, str(at), f"data={tiny_data}", f"project={tmp_path}", *ARGS]
    proc = subprocess.run(cmd + ["save_period=1"], capture_output=True, text=True, timeout=300, env=os.environ)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    last = tmp_path / "exp" / "weights" / "last.pt"
    killed = load_checkpoint(last)
    assert killed["budget"]["fitted"] and len(killed["history"]) < 6  # killed after the plan, before the end
    assert main(["train", f"resume={last}", CLOCK]) == 0
    resumed = load_checkpoint(last)
    assert resumed["budget"] == reference["budget"]
    assert [r["lr/pg0"] for r in resumed["history"]] == [r["lr/pg0"] for r in reference["history"]]
    fa, fb = flat(resumed), flat(reference)
    assert fa.keys() == fb.keys()
    diff = [k for k in fa if not torch.equal(fa[k], fb[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"
