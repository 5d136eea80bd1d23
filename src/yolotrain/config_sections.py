"""Sections of the configuration: the few settings one part reads, as a frozen dataclass built once.

The dataset takes an :class:`AugmentSettings` and the loss a :class:`LossGains` instead of the whole
:class:`~yolotrain.config.Config`, so what each part reads is written in its signature and a part never
holds a setting it has no use for. A section's fields are settings of :data:`~yolotrain.config.SETTINGS`
under the same names; their defaults live there only (:meth:`Section.defaults` reads them), so a value can
never differ between the command line and a part built without one.

Usage::

    augmentation = AugmentSettings.from_config(cfg)      # a training run's values
    gains = replace(LossGains.defaults(), box=4.0)        # the declared defaults, one changed
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, TypeVar

from yolotrain.config import SETTINGS

S = TypeVar("S", bound="Section")


class Section:
    """Build a frozen dataclass of settings from a config, or from the settings' declared defaults."""

    @classmethod
    def from_config(cls: type[S], cfg: Any) -> S:
        """The section's values in ``cfg`` (a :class:`~yolotrain.config.Config`)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})

    @classmethod
    def defaults(cls: type[S]) -> S:
        """The section with every field at its setting's default in :data:`~yolotrain.config.SETTINGS`."""
        return cls(**{f.name: SETTINGS[f.name].default for f in fields(cls)})


@dataclass(frozen=True)
class AugmentSettings(Section):
    """The training augmentation (:class:`~yolotrain.data.dataset.DetectionDataset` with ``augment``).

    Each field is the setting of the same name (``yolotrain help hsv_h`` ...): probabilities, jitter
    fractions and ranges in degrees.
    """

    hsv_h: float
    hsv_s: float
    hsv_v: float
    degrees: float
    translate: float
    scale: float
    shear: float
    perspective: float
    fliplr: float
    flipud: float
    mosaic: float
    mixup: float
    cutmix: float


@dataclass(frozen=True)
class LossGains(Section):
    """The weights of the three loss terms (:class:`~yolotrain.loss.criterion.DetectionLoss`).

    Attributes:
        box: Gain of the CIoU box loss.
        cls: Gain of the classification loss.
        dfl: Gain of the distribution focal loss.
    """

    box: float
    cls: float
    dfl: float
