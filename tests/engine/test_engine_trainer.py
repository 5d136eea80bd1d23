"""Trainer behaviour: non-finite losses, callbacks, and that a short training measurably learns."""

import copy
import csv
import functools
import re
import time

import pytest
import torch

from yolotrain.engine.callbacks import EVENTS, Callbacks
from yolotrain.engine.trainer import Trainer
from yolotrain.errors import TrainingError


@pytest.fixture
def cfg_for(cfg_for):
    """The shared factory (conftest.py) with this module's defaults."""
    return functools.partial(cfg_for, val=False, plots=True)


class NaNAt:
    """Wraps a criterion and returns a NaN loss at the chosen call numbers."""

    def __init__(self, criterion, bad_calls):
        self.criterion, self.bad_calls, self.calls = criterion, set(bad_calls), 0

    def assign(self, preds, batch):
        return self.criterion.assign(preds, batch)

    def finish(self, targets, norm):
        loss, items = self.criterion.finish(targets, norm)
        self.calls += 1
        if self.calls in self.bad_calls or "all" in self.bad_calls:
            loss = loss * float("nan")
        return loss, items


@pytest.mark.slow
def test_nonfinite_loss_never_reaches_weights(tiny_data, tmp_path, cfg_for):
    trainer = Trainer(cfg_for(nbs=8, warmup_epochs=0))
    snapshots = []

    def setup_hook(t):
        t.run.step.criterion = NaNAt(t.run.step.criterion, {1})
        snapshots.append({k: v.clone() for k, v in t.model.state_dict().items()})

    trainer.callbacks.add("on_train_start", setup_hook)
    steps = []
    trainer.callbacks.add(
        "on_before_optimizer_step", lambda t: steps.append(all(p.grad is None for p in t.model.parameters()))
    )
    trainer.fit()
    # the first batch's NaN loss was not back-propagated, so its step was skipped before the hook
    assert steps and not any(steps)
    assert len(steps) == trainer.nb - 1
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values() if v.is_floating_point())
    assert trainer.skipped_steps == 1  # the step with no finite gradient was skipped, not applied


def test_repeated_nonfinite_loss_stops_with_clear_error(tiny_data, tmp_path, cfg_for):
    trainer = Trainer(cfg_for(max_nonfinite=2))
    trainer.callbacks.add(
        "on_train_start", lambda t: setattr(t.run.step, "criterion", NaNAt(t.run.step.criterion, {"all"}))
    )
    seen = []
    trainer.callbacks.add("on_exception", lambda t: seen.append(True))
    with pytest.raises(TrainingError, match="2 consecutive non-finite losses"):
        trainer.fit()
    assert seen == [True]


@pytest.mark.slow
def test_callbacks_fire_in_order(tiny_data, tmp_path, cfg_for):
    cbs = Callbacks()
    fired = []
    for ev in EVENTS:
        cbs.add(ev, lambda t, ev=ev: fired.append(ev))
    Trainer(cfg_for(val=True), callbacks=cbs).fit()
    # 24 images, batch 8: three batches; nbs=64 accumulates, so the one optimizer step is at the last batch
    batch = ["on_train_batch_start", "on_train_batch_end"]
    assert fired == [
        "on_pretrain_routine_start",
        "on_pretrain_routine_end",
        "on_train_start",
        "on_train_epoch_start",
        *batch,
        *batch,
        "on_train_batch_start",
        "on_before_optimizer_step",
        "on_train_batch_end",
        "on_train_epoch_end",
        "on_val_start",
        "on_val_end",
        "on_model_save",
        "on_fit_epoch_end",
        "on_train_end",
    ]
    with pytest.raises(ValueError, match="unknown callback event"):
        cbs.add("on_nothing", print)


def test_a_callback_may_replace_the_latest_metrics(cfg_for):
    trainer, replaced, seen = Trainer(cfg_for(val=True)), [], []

    def replace(t):
        replaced.append(copy.copy(t.metrics))
        t.metrics = replaced[0]

    trainer.callbacks.add("on_val_end", replace)
    trainer.callbacks.add("on_fit_epoch_end", lambda t: seen.append((t.metrics, t.run.state.metrics)))
    trainer.fit()
    assert seen == [(replaced[0], replaced[0])]  # written into the part that owns it, read back through the view
    assert seen[0][0] is replaced[0]
    with pytest.raises(AttributeError):
        trainer.history = []  # the other views are read-only


def write_boxes_set(root, n=32, size=64, seed=0):
    """One bright rectangle per noisy dark image, one class: learnable in a few hundred steps."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir(parents=True)
    for i in range(n):
        img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        w, h = rng.integers(size // 4, size * 5 // 8, 2)
        x0, y0 = rng.integers(0, size - w), rng.integers(0, size - h)
        img[y0 : y0 + h, x0 : x0 + w] = 255
        cv2.imwrite(str(root / "images" / f"{i}.png"), img)
        (root / "labels" / f"{i}.txt").write_text(
            f"0 {(x0 + w / 2) / size} {(y0 + h / 2) / size} {w / size} {h / size}\n"
        )
    # validate on the training images: this checks that the whole loop learns, not generalisation
    (root / "data.yaml").write_text("path: .\ntrain: images\nval: images\nnames: [box]\n")
    return root / "data.yaml"


@pytest.mark.slow
def test_short_training_learns(tmp_path, cfg_for):
    """From random weights to a clearly useful detector in ~80 optimizer steps on CPU."""
    data = write_boxes_set(tmp_path / "boxes")
    cfg = cfg_for(
        data=str(data),
        epochs=20,
        imgsz=64,
        batch=8,
        nbs=8,
        mosaic=0.0,
        val=True,
        val_period=20,
        optimizer="AdamW",
        lr0=0.004,
        warmup_epochs=1,
        warmup_min_iters=10,
        amp="off",
        seed=1,
        plots=False,  # not about plots: drawing them was a fifth of this test's time
    )
    trainer = Trainer(cfg)
    best = trainer.fit()
    assert best is not None and best.map50 > 0.6, best.map50
    rows = trainer.history
    assert rows[-1]["train/box_loss"] < 0.7 * rows[0]["train/box_loss"]
    assert rows[0]["metrics/mAP50"] == ""  # not validated at epoch 1 (val_period=20)


@pytest.mark.slow
def test_data_wait_is_logged_and_profile_gives_advice(tiny_data, tmp_path, caplog, cfg_for):
    """A loader made slow on purpose (2 s per batch, in the main process) shows as data wait."""

    def slow_collate(loader):
        real = loader.collate_fn

        def collate(items):
            time.sleep(2.0)
            return real(items)

        loader.collate_fn = collate

    t = Trainer(cfg_for(profile=True, plots=False))
    t.callbacks.add("on_train_start", lambda tr: slow_collate(tr.train_loader))
    with caplog.at_level("INFO", logger="yolotrain"):
        t.fit()
    with open(t.save_dir / "results.csv") as f:
        row = next(csv.DictReader(f))
    wait, seconds = float(row["data_wait"]), float(row["seconds"])
    # 3 batches each waited at least 2 s, within an epoch of `seconds`: the share is at least 6 / seconds
    # (whatever the machine's load makes of the training steps)
    assert 0.95 * 6.0 / seconds <= wait <= 1.0
    # the log line shows the same share as results.csv; the csv keeps 3 decimals and the log rounds the
    # unrounded share to a whole percent, so e.g. 0.9549 is 0.955 in the csv and "95%" in the log
    logged = re.search(r"data wait (\d+)%, mem", caplog.text)
    assert logged and abs(int(logged.group(1)) - 100 * wait) <= 0.55
    profile = [ln for ln in caplog.text.splitlines() if "profile: " in ln]
    assert len(profile) >= 2 and "profile: data wait" in profile[0]
