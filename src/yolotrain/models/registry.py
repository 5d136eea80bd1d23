"""Registry of model scales: each scale is a small factory taking the number of classes."""

from __future__ import annotations

from collections.abc import Callable

from yolotrain.errors import ConfigError
from yolotrain.models.detector import Detector

__all__ = ["register_scale", "build_model", "available_scales"]

ScaleFactory = Callable[[int], Detector]
_SCALES: dict[str, ScaleFactory] = {}


def register_scale(name: str) -> Callable[[ScaleFactory], ScaleFactory]:
    """Register a factory ``f(nc) -> Detector`` under ``name``.

    Args:
        name: Scale name used by ``build_model(scale=name)``.

    Returns:
        A decorator that registers and returns the factory unchanged.
    """

    def decorator(factory: ScaleFactory) -> ScaleFactory:
        if name in _SCALES:
            raise ValueError(f"model scale {name!r} is already registered")
        _SCALES[name] = factory
        return factory

    return decorator


def available_scales() -> list[str]:
    """Return the registered scale names in registration order."""
    return list(_SCALES)


def build_model(scale: str = "n", nc: int = 80) -> Detector:
    """Build a freshly initialised detector.

    Args:
        scale: A registered scale name (see ``available_scales()``).
        nc: Number of classes.

    Returns:
        The detector.

    Raises:
        ConfigError: If the scale is unknown or nc is not a positive integer.
    """
    if scale not in _SCALES:
        raise ConfigError(f"model: unknown scale {scale!r}; allowed: {', '.join(_SCALES)}")
    if isinstance(nc, bool) or not isinstance(nc, int) or nc < 1:
        raise ConfigError(f"nc: must be a positive integer, got {nc!r}")
    return _SCALES[scale](nc)


# (depth multiplier, width multiplier, channel cap) per scale.
@register_scale("n")
def _scale_n(nc: int) -> Detector:
    return Detector(nc, depth=0.33, width=0.25, max_channels=1024, scale="n")


@register_scale("s")
def _scale_s(nc: int) -> Detector:
    return Detector(nc, depth=0.33, width=0.50, max_channels=1024, scale="s")


@register_scale("m")
def _scale_m(nc: int) -> Detector:
    return Detector(nc, depth=0.67, width=0.75, max_channels=768, scale="m")


@register_scale("l")
def _scale_l(nc: int) -> Detector:
    return Detector(nc, depth=1.00, width=1.00, max_channels=512, scale="l")


@register_scale("x")
def _scale_x(nc: int) -> Detector:
    return Detector(nc, depth=1.00, width=1.25, max_channels=512, scale="x")
