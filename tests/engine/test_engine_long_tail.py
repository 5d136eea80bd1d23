"""Long-tailed settings in a training run: sampler=repeat_factor (order, epoch length, exact mid-epoch resume),
cls_weights (logged per class, handed to the loss), and their validation."""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from yolotrain.config import resolve
from yolotrain.data import load_data_yaml, scan_split
from yolotrain.engine.trainer import Trainer
from yolotrain.errors import ConfigError

TRAIN = {"model": "n", "imgsz": 64, "batch": 4, "nbs": 4, "workers": 0, "verbose": False, "amp": "off",
         "plots": False, "val": False, "close_mosaic": 0}  # fmt: skip


def _train_labels(data: Path) -> list[list[int]]:
    d = load_data_yaml(data)
    records = scan_split(d["train"], d["nc"], "train", use_cache=False)[0]
    return [[int(c) for c in r.cls] for r in records]


def _lvis_factors(labels: list[list[int]], t: float) -> list[float]:
    """The LVIS rule written out plainly (an independent re-statement of class_balance.repeat_factors)."""
    n = len(labels)
    images_with = Counter(c for classes in labels for c in set(classes))
    return [max([1.0] + [max(1.0, math.sqrt(t / (images_with[c] / n))) for c in set(classes)]) for classes in labels]


class Stop(BaseException):
    pass


def _recorder(batches: list, stop_at: int = 0):
    def hook(trainer) -> None:
        batches.append((trainer.epoch, trainer.last_iteration, trainer.current_batch["index"].tolist()))
        if stop_at and len(batches) == stop_at:
            raise Stop

    return hook


@pytest.mark.slow
def test_repeat_factor_order_epoch_length_and_exact_resume(tiny_data, tmp_path, caplog):
    settings = {**TRAIN, "data": str(tiny_data), "epochs": 1, "batch": 8, "nbs": 8, "sampler": "repeat_factor",
                "rfs_threshold": 0.9, "save_period": 1, "seed": 7}  # fmt: skip
    factors = _lvis_factors(_train_labels(tiny_data), 0.9)
    length = math.ceil(sum(factors))
    assert length > len(factors)  # the tiny set has classes rarer than 0.9: some images repeat
    ref: list = []
    trainer = Trainer(resolve({**settings, "project": str(tmp_path / "ref")}))
    trainer.callbacks.add("on_train_batch_end", _recorder(ref))
    with caplog.at_level(logging.INFO, logger="yolotrain"):
        trainer.fit()
    assert f"sampler: repeat_factor (rfs_threshold=0.9): {length} images per epoch from 24" in caplog.text
    assert trainer.nb == len(ref) == math.ceil(length / 8)
    scaled = np.array(factors) * length / sum(factors)
    seen = Counter(i for _, _, idx in ref for i in idx)
    assert sum(seen.values()) == length
    counts = np.array([seen[i] for i in range(len(factors))])
    assert np.all((counts == np.floor(scaled)) | (counts == np.ceil(scaled)))  # floor or ceil of each factor

    # stopped at the 3rd batch (last.pt holds 2 batches), resumed: the same batches follow
    first: list = []
    stopped = Trainer(resolve({**settings, "project": str(tmp_path / "cut")}))
    stopped.callbacks.add("on_train_batch_end", _recorder(first, stop_at=3))
    with pytest.raises(Stop):
        stopped.fit()
    assert first == ref[:3]
    resumed: list = []
    again = Trainer(resolve({"resume": str(tmp_path / "cut" / "exp" / "weights" / "last.pt")}))
    again.callbacks.add("on_train_batch_end", _recorder(resumed))
    again.fit()
    assert resumed == ref[2:]


def test_cls_weights_auto_are_logged_per_class_and_reach_the_loss(tiny_data, tmp_path, caplog):
    boxes = Counter(c for classes in _train_labels(tiny_data) for c in classes)
    counts = [boxes[c] for c in range(4)]
    inverse = [1 / n for n in counts]
    expected = [min(10.0, max(0.1, v / (sum(inverse) / 4))) for v in inverse]
    trainer = Trainer(resolve({**TRAIN, "data": str(tiny_data), "epochs": 1, "cls_weights": "auto",
                               "project": str(tmp_path)}))  # fmt: skip
    with caplog.at_level(logging.INFO, logger="yolotrain"):
        trainer.setup()
    assert trainer.run.criterion.cls_weights.tolist() == pytest.approx(expected, rel=1e-6)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("cls_weights: "))
    names = trainer.names
    assert line == "cls_weights: " + ", ".join(f"{n} {w:.3g} ({b} boxes)" for n, w, b in zip(names, expected, counts))

    listed = Trainer(resolve({**TRAIN, "data": str(tiny_data), "cls_weights": [1, 2, 3, 4], "project": str(tmp_path)}))
    listed.setup()
    assert listed.run.criterion.cls_weights.tolist() == [1.0, 2.0, 3.0, 4.0]
    plain = Trainer(resolve({**TRAIN, "data": str(tiny_data), "project": str(tmp_path)}))
    plain.setup()
    assert plain.run.criterion.cls_weights is None


def test_cls_weights_list_of_the_wrong_length_is_refused(tiny_data, tmp_path):
    trainer = Trainer(resolve({**TRAIN, "data": str(tiny_data), "cls_weights": [1, 2], "project": str(tmp_path)}))
    with pytest.raises(ConfigError, match="setting 'cls_weights' has 2 weights; the data has 4 classes"):
        trainer.setup()


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("cls_weights", "[1,0]", "one positive weight per class"),
        ("cls_weights", "often", "one positive weight per class"),
        ("sampler", "balanced", "one of shuffle, repeat_factor"),
        ("rfs_threshold", "0", "out of range"),
        ("mlflow", "''", "expected true, false, or a tracking URI"),
    ],
)
def test_bad_long_tail_and_tracking_settings_are_refused(key, value, message):
    with pytest.raises(ConfigError, match=message):
        resolve({key: value})


def test_good_values_parse_as_given_on_the_command_line():
    assert resolve({"cls_weights": "auto"}).cls_weights == "auto"
    assert resolve({"cls_weights": "off"}).cls_weights is False  # YAML's off
    assert resolve({"cls_weights": "[1,2.5]"}).cls_weights == [1, 2.5]
    assert resolve({"mlflow": "true"}).mlflow is True
    assert resolve({"mlflow": "http://127.0.0.1:5000"}).mlflow == "http://127.0.0.1:5000"
