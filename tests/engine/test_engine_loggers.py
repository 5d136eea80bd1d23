"""Loggers driven by a fake trainer: TensorBoard scalars/images, run plots, optional MLflow / W&B."""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from yolotrain.config import resolve
from yolotrain.data import ImageRecord
from yolotrain.engine.callbacks import Callbacks
from yolotrain.engine.loggers import (
    PlotsLogger,
    TensorBoardLogger,
    WandbLogger,
    default_loggers,
    register_default_loggers,
)
from yolotrain.engine.mlflow_logger import MLflowLogger
from yolotrain.eval import DetectionEvaluator
from yolotrain.utils.files import append_csv_row

NAMES = ["circle", "rectangle", "triangle"]


def _batch() -> dict:
    return {
        "img": torch.full((2, 3, 64, 64), 100, dtype=torch.uint8),
        "batch_idx": torch.tensor([0.0, 1.0]),
        "cls": torch.tensor([[0.0], [2.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.3, 0.3, 0.2, 0.2]]),
    }


def _result():
    ev = DetectionEvaluator(NAMES)
    gt = np.array([[10, 10, 40, 40], [50, 50, 90, 80]], dtype=float)
    ev.add(0, 100, 100, gt, [0, 1], np.array([[10, 10, 40, 41, 0.9, 0], [50, 50, 90, 80, 0.6, 2]]))
    return ev.compute()


def fake_trainer(tmp_path: Path, plots: bool = True, **settings) -> SimpleNamespace:
    save_dir = tmp_path / "runs" / "exp"
    save_dir.mkdir(parents=True)
    records = [ImageRecord(f"/x/{i}.jpg", 64, 64, [i % 3], [[0.5, 0.5, 0.2 + 0.1 * i, 0.3]]) for i in range(6)]
    return SimpleNamespace(
        cfg=resolve({"plots": plots, "project": str(save_dir.parent), "name": "exp", **settings}),
        run=SimpleNamespace(mlflow=None),
        save_dir=save_dir,
        epoch=0,
        nb=3,
        names=NAMES,
        history=[],
        metrics=None,
        best=None,
        skipped_steps=2,
        device=torch.device("cpu"),
        images_per_s=12.5,
        optimizer=SimpleNamespace(param_groups=[{"lr": 0.01}, {"lr": 0.02}]),
        train_loader=SimpleNamespace(dataset=SimpleNamespace(records=records)),
        current_batch=_batch(),
        loss_items=torch.tensor([1.5, 2.5, 3.5]),
    )


def run_training(trainer: SimpleNamespace, callbacks: Callbacks, epochs: int = 2) -> None:
    """Fire the events in the trainer's order, writing results.csv as the trainer does."""
    callbacks.run("on_train_start", trainer)
    for epoch in range(epochs):
        trainer.epoch = epoch
        for i in range(trainer.nb):
            trainer.loss_items = torch.tensor([1.0, 2.0, 3.0]) / (epoch * trainer.nb + i + 1)
            callbacks.run("on_train_batch_end", trainer)
        validated = epoch == epochs - 1
        trainer.metrics = _result() if validated else trainer.metrics
        row = {
            "epoch": epoch + 1,
            "seconds": 1.0,
            "train/box_loss": 1.0 / (epoch + 1),
            "train/cls_loss": 0.5,
            "train/dfl_loss": 0.7,
            "lr/pg0": 0.01,
            "lr/pg1": 0.02,
            "metrics/precision": 0.5 if validated else "",
            "metrics/mAP50": 0.4 if validated else "",
            "skipped_steps": 0,
            "images_per_s": 12.5,
        }
        trainer.history.append(row)
        append_csv_row(trainer.save_dir / "results.csv", row)
        callbacks.run("on_fit_epoch_end", trainer)
    trainer.best = trainer.metrics
    callbacks.run("on_train_end", trainer)


def test_tensorboard_logs_scalars_and_one_image(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = fake_trainer(tmp_path)
    callbacks = Callbacks()
    logger = TensorBoardLogger(batch_every=2).register(callbacks)
    run_training(trainer, callbacks)
    assert logger.writer is None  # closed at train end
    acc = EventAccumulator(str(trainer.save_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in (
        "train/box_loss",
        "lr/pg1",
        "metrics/mAP50",
        "system/images_per_s",
        "system/memory_mb",
        "system/skipped_steps_total",
        "batch/box_loss",
        "batch/lr_pg0",
    ):
        assert tag in tags["scalars"], tag
    assert [e.step for e in acc.Scalars("train/box_loss")] == [1, 2]
    assert [e.value for e in acc.Scalars("train/box_loss")] == pytest.approx([1.0, 0.5])
    assert [e.step for e in acc.Scalars("metrics/mAP50")] == [2]  # the unvalidated epoch is skipped
    assert [e.step for e in acc.Scalars("batch/box_loss")] == [0, 2, 4]  # every 2nd of 6 iterations
    assert acc.Scalars("batch/box_loss")[1].value == pytest.approx(1 / 3)
    assert acc.Scalars("system/skipped_steps_total")[0].value == 2
    assert acc.Tags()["images"] == ["train/batch"] and len(acc.Images("train/batch")) == 1


def test_plots_logger_writes_run_images(tmp_path: Path) -> None:
    trainer = fake_trainer(tmp_path)
    callbacks = Callbacks()
    PlotsLogger(n_batches=2).register(callbacks)
    run_training(trainer, callbacks)
    files = {p.name for p in trainer.save_dir.iterdir()}
    assert {
        "labels.jpg",
        "train_batch0.jpg",
        "train_batch1.jpg",
        "results.png",
        "PR_curve.png",
        "confusion_matrix.png",
        "confusion_matrix_normalized.png",
    } <= files
    assert "train_batch2.jpg" not in files
    assert all((trainer.save_dir / f).stat().st_size > 1000 for f in files if f != "results.csv")


def test_plots_off_and_failures_never_stop_training(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    trainer = fake_trainer(tmp_path, plots=False)
    callbacks = Callbacks()
    PlotsLogger().register(callbacks)
    run_training(trainer, callbacks)
    assert {p.name for p in trainer.save_dir.iterdir()} == {"results.csv"}

    broken = fake_trainer(tmp_path / "b")
    broken.current_batch = {"img": "not a tensor"}  # plotting it raises
    callbacks = Callbacks()
    PlotsLogger().register(callbacks)
    with caplog.at_level(logging.WARNING, logger="yolotrain"):
        run_training(broken, callbacks)
    warnings = [r for r in caplog.records if "on_train_batch_end failed" in r.getMessage()]
    assert len(warnings) == 1  # warned once, not on every batch
    assert (broken.save_dir / "results.png").is_file()  # the other plots still happen


def _fake_module(name: str, calls: list) -> types.ModuleType:
    mod = types.ModuleType(name)

    def rec(fn: str):
        return lambda *a, **k: calls.append((fn, a, k))

    for fn in (
        "set_experiment",
        "start_run",
        "log_params",
        "log_metrics",
        "log_artifact",
        "end_run",
        "init",
        "log",
        "finish",
    ):
        setattr(mod, fn, rec(fn))
    mod.Image = lambda path: ("image", path)
    return mod


@pytest.mark.slow
def test_wandb_activates_only_when_installed_and_mlflow_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "mlflow", raising=False)
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    kinds = {type(x) for x in default_loggers()}
    assert {PlotsLogger, MLflowLogger} <= kinds  # MLflow's logger is always there, inert unless mlflow= is on
    if importlib.util.find_spec("wandb") is None:
        assert WandbLogger not in kinds

    wb_calls: list = []
    monkeypatch.setitem(sys.modules, "wandb", _fake_module("wandb", wb_calls))
    callbacks = Callbacks()
    loggers = register_default_loggers(callbacks)
    assert WandbLogger in {type(x) for x in loggers}
    trainer = fake_trainer(tmp_path)  # mlflow=false (the default)
    run_training(trainer, callbacks, epochs=2)
    assert "mlflow" not in sys.modules  # never imported for a run that does not ask for it

    assert wb_calls[0][0] == "init" and wb_calls[0][2]["name"] == "exp" and wb_calls[-1][0] == "finish"
    logged = [c for c in wb_calls if c[0] == "log"]
    assert logged[0][2]["step"] == 1 and "train/box_loss" in logged[0][1][0]
    assert any("plots/PR_curve" in c[1][0] for c in logged)


def test_mlflow_asked_for_but_not_installed_warns_once_with_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    callbacks = Callbacks()
    MLflowLogger().register(callbacks)
    trainer = fake_trainer(tmp_path, mlflow=True)
    with caplog.at_level(logging.WARNING, logger="yolotrain"):
        run_training(trainer, callbacks)  # does not raise
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "pip install 'yolotrain[mlflow]'" in warnings[0], warnings
    assert len((trainer.save_dir / "results.csv").read_text().splitlines()) == 3
