"""Registry of model scales: each scale is a small factory taking the number of classes."""

from __future__ import annotations

from collections.abc import Callable

import torch

from yolotrain.errors import ConfigError
from yolotrain.models.detector import FAMILIES, Detector

__all__ = ["register_scale", "build_model", "available_scales", "validate_model_cfg", "scale_for_arch"]

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


# Bounds that catch typos and hostile files before anything is allocated: a config past them would
# exhaust memory (or is no YOLO detector), so it is refused with one line instead of an OOM later.
MAX_NC = 100_000
MAX_PARAMS = 2_000_000_000  # 8 GB of fp32 weights; the largest published scale has 57M
ARCH_KEYS = ("family", "depth", "width", "max_channels", "c3k")
MODEL_KEYS = ("scale", "nc", *ARCH_KEYS)
# The architecture of each built-in scale, so an imported file's architecture resolves to its name.
_ARCH: dict[str, dict] = {}


def _number(where: str, key: str, v, lo: float, hi: float, integer: bool = False) -> float | int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise ConfigError(f"{where}: '{key}' must be {'an integer' if integer else 'a number'}, got {v!r}")
    if not lo <= v <= hi or v != v:
        raise ConfigError(f"{where}: '{key}'={v!r} is outside {lo:g}..{hi:g}")
    return v


def validate_model_cfg(cfg: dict, where: str = "model config") -> dict:
    """Check a model description (``Detector.config()``, a checkpoint's ``model_cfg``, an imported file's
    architecture) against the registry and return it normalised.

    Args:
        cfg: ``scale`` (a registered name or ``"custom"``), ``nc``, and for ``custom`` the architecture:
            ``family``, ``depth``, ``width``, ``max_channels`` (and ``c3k`` for family 11).
        where: What to name in the error (a file, a setting).

    Returns:
        ``{"scale", "nc"}`` for a registered scale, else the full custom description.

    Raises:
        ConfigError: One line naming ``where`` and the key: unknown keys, an unknown scale or family,
            values out of range, or an architecture whose weights alone would exhaust memory.
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where}: expected a mapping of model settings, got {type(cfg).__name__}")
    unknown = [str(k) for k in cfg if k not in MODEL_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(MODEL_KEYS)}")
    scale = cfg.get("scale", "custom" if "family" in cfg else "n")
    nc = _number(where, "nc", cfg.get("nc", 80), 1, MAX_NC, integer=True)
    arch = {k: cfg[k] for k in ARCH_KEYS if k in cfg and cfg[k] is not None}
    if scale != "custom":
        if scale not in _SCALES:
            raise ConfigError(f"{where}: unknown scale {scale!r}; allowed: {', '.join(_SCALES)} or custom")
        known = _ARCH.get(scale)
        if arch and known is not None and any(known.get(k) != v for k, v in arch.items()):
            diff = ", ".join(f"{k}={v!r}" for k, v in arch.items() if known.get(k) != v)
            raise ConfigError(f"{where}: scale {scale!r} is {known}, not {diff}")
        return {"scale": scale, "nc": nc}
    if arch.get("family") not in FAMILIES:
        raise ConfigError(f"{where}: 'family' must be one of {', '.join(FAMILIES)}, got {arch.get('family')!r}")
    out = {
        "scale": "custom",
        "family": arch["family"],
        "depth": float(_number(where, "depth", arch.get("depth"), 0.01, 4.0)),
        "width": float(_number(where, "width", arch.get("width"), 0.01, 4.0)),
        "max_channels": _number(where, "max_channels", arch.get("max_channels"), 8, 8192, integer=True),
        "nc": nc,
    }
    if out["family"] == "11":
        c3k = arch.get("c3k", out["width"] >= 1.0)
        if not isinstance(c3k, bool):
            raise ConfigError(f"{where}: 'c3k' must be true or false, got {c3k!r}")
        out["c3k"] = c3k
    elif "c3k" in arch:
        raise ConfigError(f"{where}: 'c3k' applies to family 11 only, not {out['family']!r}")
    matching = scale_for_arch(out)
    if matching:
        return {"scale": matching, "nc": nc}
    params = _count_params_on_meta(out)
    if params > MAX_PARAMS:
        raise ConfigError(
            f"{where}: this architecture would hold {params / 1e9:.1f}G parameters "
            f"({params * 4 / 2**30:.0f} GiB in fp32), over the {MAX_PARAMS / 1e9:.0f}G limit"
        )
    return out


def _count_params_on_meta(cfg: dict) -> int:
    """Parameters of a custom architecture, counted on the meta device (no memory is allocated)."""
    with torch.device("meta"):
        model = Detector(**{k: v for k, v in cfg.items() if k != "scale"})
    return sum(p.numel() for p in model.parameters())


def registered_archs() -> dict[str, dict]:
    """The architecture (family, depth, width, max_channels, c3k) of each built-in scale."""
    return {k: dict(v) for k, v in _ARCH.items()}


def scale_for_arch(arch: dict) -> str | None:
    """The registered scale whose architecture is ``arch`` (family, depth, width, max_channels, c3k), if any."""
    want = {k: arch[k] for k in ARCH_KEYS if k in arch}
    for name, known in _ARCH.items():
        if known == want:
            return name
    return None


def build_model(scale: str = "n", nc: int = 80, **arch) -> Detector:
    """Build a freshly initialised detector.

    Args:
        scale: A registered scale name (see ``available_scales()``) or ``"custom"``.
        nc: Number of classes.
        **arch: For ``scale="custom"``: ``family``, ``depth``, ``width``, ``max_channels`` (``c3k``).

    Returns:
        The detector.

    Raises:
        ConfigError: If the description fails :func:`validate_model_cfg`.
    """
    cfg = validate_model_cfg({"scale": scale, "nc": nc, **arch}, where="model")
    if cfg["scale"] != "custom":
        return _SCALES[cfg["scale"]](cfg["nc"])
    return Detector(**{k: v for k, v in cfg.items() if k != "scale"})


def _register_builtin(name: str, family: str, depth: float, width: float, max_channels: int) -> None:
    arch = {"family": family, "depth": depth, "width": width, "max_channels": max_channels}
    if family == "11":
        arch["c3k"] = width >= 1.0  # published: C3k everywhere for m, l, x
    _ARCH[name] = arch

    def factory(nc: int) -> Detector:
        return Detector(nc, depth, width, max_channels, scale=name, family=family, c3k=arch.get("c3k"))

    register_scale(name)(factory)


# (depth multiplier, width multiplier, channel cap) per scale, as published for YOLOv8 (names n..x,
# kept short since they were the first family here) and YOLO11 (names 11n..11x).
for _name, _d, _w, _mc in (
    ("n", 0.33, 0.25, 1024),
    ("s", 0.33, 0.50, 1024),
    ("m", 0.67, 0.75, 768),
    ("l", 1.00, 1.00, 512),
    ("x", 1.00, 1.25, 512),
):
    _register_builtin(_name, "v8", _d, _w, _mc)
for _name, _d, _w, _mc in (
    ("11n", 0.50, 0.25, 1024),
    ("11s", 0.50, 0.50, 1024),
    ("11m", 0.50, 1.00, 512),
    ("11l", 1.00, 1.00, 512),
    ("11x", 1.00, 1.50, 512),
):
    _register_builtin(_name, "11", _d, _w, _mc)
