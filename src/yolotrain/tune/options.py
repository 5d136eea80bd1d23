"""The keys only ``yolotrain tune`` takes (trials, space, pruner, storage...), split from training settings.

They stay local to the command, like ``data check``'s keys: a training run never sees them, and every
other ``key=value`` is a training setting validated by :func:`yolotrain.config.resolve` as for ``train``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from yolotrain.config import BOOL_FALSE, BOOL_TRUE, SETTINGS, check_command, unknown_key_message
from yolotrain.errors import ConfigError

PRUNERS = ("median", "halving", "none")
TUNE_HELP = {
    "trials": "trials in the study (all processes together; a re-run continues up to this many)",
    "space": "YAML search space (default: lr, momentum, weight decay, warmup, loss gains, augmentation)",
    "pruner": "stop hopeless trials early: median, halving (successive halving) or none",
    "prune_warmup": "validated epochs a trial runs before it may be pruned",
    "storage": "Optuna storage: a journal file path or an RDB URL (default: study.journal in the tune folder)",
    "study": "study name inside the storage (default: the tune folder's name)",
    "budget": "hours after which no new trial starts (0: no limit)",
    "baseline": "make trial 0 the given settings, to compare every trial with them",
}


@dataclass(frozen=True)
class TuneOptions:
    """The tune command's own settings (see :data:`TUNE_HELP`)."""

    trials: int = 10
    space: str | None = None
    pruner: str = "median"
    prune_warmup: int = 1
    storage: str | None = None
    study: str | None = None
    budget: float = 0.0
    baseline: bool = True


def split_options(args: Mapping[str, Any]) -> tuple[TuneOptions, dict[str, Any]]:
    """Separate tune's keys from training settings.

    Returns:
        The validated tune options and the remaining ``key=value`` pairs (for ``resolve``).

    Raises:
        ConfigError: For a bad tune value, or a key that is neither a tune key nor a setting (naming the
            closest of either).
    """
    own: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in args.items():
        if key in TUNE_HELP:
            own[key] = value
        elif key in SETTINGS or key == "cfg":
            rest[key] = value
        else:
            raise ConfigError(unknown_key_message(key, TUNE_HELP))
    check_command("tune", (k for k in rest if k != "cfg"))
    opts = TuneOptions(
        trials=_int(own, "trials", 10, lo=1),
        space=_text(own, "space"),
        pruner=_choice(own, "pruner", "median", PRUNERS),
        prune_warmup=_int(own, "prune_warmup", 1, lo=0),
        storage=_text(own, "storage"),
        study=_text(own, "study"),
        budget=_float(own, "budget", 0.0, lo=0.0),
        baseline=_bool(own, "baseline", True),
    )
    return opts, rest


def _int(args: dict[str, Any], key: str, default: int, lo: int) -> int:
    v = args.get(key, default)
    try:
        out = int(str(v).strip()) if not isinstance(v, int) or isinstance(v, bool) else v
    except ValueError:
        raise ConfigError(f"setting '{key}'={v!r} has the wrong type (an integer >= {lo})") from None
    if out < lo:
        raise ConfigError(f"setting '{key}'={v!r} is out of range (an integer >= {lo})")
    return out


def _float(args: dict[str, Any], key: str, default: float, lo: float) -> float:
    v = args.get(key, default)
    try:
        out = float(v) if not isinstance(v, bool) else float("nan")
    except ValueError:
        out = float("nan")
    if out != out:
        raise ConfigError(f"setting '{key}'={v!r} has the wrong type (a number >= {lo:g})")
    if out < lo:
        raise ConfigError(f"setting '{key}'={v!r} is out of range (a number >= {lo:g})")
    return out


def _bool(args: dict[str, Any], key: str, default: bool) -> bool:
    v = args.get(key, default)
    if isinstance(v, bool):
        return v
    text = str(v).strip().lower()
    if text in BOOL_TRUE:
        return True
    if text in BOOL_FALSE:
        return False
    raise ConfigError(f"setting '{key}'={v!r} has the wrong type (true or false)")


def _choice(args: dict[str, Any], key: str, default: str, choices: tuple[str, ...]) -> str:
    v = str(args.get(key, default)).strip().lower()
    if v not in choices:
        raise ConfigError(f"setting '{key}'={args.get(key)!r} is not allowed (one of {', '.join(choices)})")
    return v


def _text(args: dict[str, Any], key: str) -> str | None:
    v = args.get(key)
    return None if v is None or str(v).strip().lower() in ("", "none", "null") else str(v).strip()
