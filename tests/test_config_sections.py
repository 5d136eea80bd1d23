"""Settings in sections: what the dataset and the loss receive instead of the whole config."""

from __future__ import annotations

import dataclasses

import pytest

from yolotrain.config import resolve
from yolotrain.config_sections import AugmentSettings, LossGains
from yolotrain.engine.build import build_loader

# the declared defaults, written out by hand (config.py SETTINGS) so a changed default shows here
AUGMENT_DEFAULTS = AugmentSettings(
    hsv_h=0.015, hsv_s=0.7, hsv_v=0.4, degrees=0.0, translate=0.1, scale=0.5, shear=0.0, perspective=0.0,
    fliplr=0.5, flipud=0.0, mosaic=1.0, mixup=0.0, cutmix=0.0,
)  # fmt: skip


def test_defaults_are_the_declared_settings_defaults():
    assert AugmentSettings.defaults() == AUGMENT_DEFAULTS
    assert LossGains.defaults() == LossGains(box=7.5, cls=0.5, dfl=1.5)


def test_a_section_takes_its_values_from_the_config_and_nothing_else():
    cfg = resolve({"mosaic": 0.25, "flipud": 0.5, "box": 4.0, "lr0": 0.02})
    assert AugmentSettings.from_config(cfg) == dataclasses.replace(AUGMENT_DEFAULTS, mosaic=0.25, flipud=0.5)
    assert LossGains.from_config(cfg) == LossGains(box=4.0, cls=0.5, dfl=1.5)
    assert not hasattr(AugmentSettings.from_config(cfg), "lr0")


def test_sections_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        LossGains.defaults().box = 1.0


def test_the_training_dataset_gets_the_runs_augmentation_and_evaluation_its_rect_and_resize():
    cfg = resolve({"mosaic": 0.0, "hsv_h": 0.05, "rect": False, "val_resize": "bilinear", "workers": 0})
    train = build_loader([], cfg, 64, 4, train=True).dataset
    assert train.augmentation == dataclasses.replace(AUGMENT_DEFAULTS, mosaic=0.0, hsv_h=0.05)
    val = build_loader([], cfg, 64, 4, train=False).dataset
    assert val.augmentation is None and val.rect is False and val.images.resize_mode == "bilinear"
