"""The search space of ``yolotrain tune``: the default one, a user's ``space=space.yaml``, and sampling.

A space maps a setting to what the sampler may choose for it::

    lr0: {low: 1.0e-4, high: 0.1, log: true}   # a range, log-uniform
    momentum: [0.8, 0.98]                      # a range, uniform (int for integer settings)
    close_mosaic: {low: 0, high: 10, step: 2}  # a range on a grid
    optimizer: {choices: [SGD, AdamW]}         # one of these values

Every key must be a training setting that a trial may change; every bound and choice is checked with the
setting's own validation, so a space cannot propose a value that ``train`` would refuse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from yolotrain.config import SETTINGS, coerce
from yolotrain.errors import ConfigError, YoloTrainError

# Settings a trial may not vary: they decide where and how trials run, or what a study is about.
NOT_TUNABLE = frozenset(
    {
        "data",
        "epochs",
        "device",
        "nproc",
        "workers",
        "project",
        "name",
        "exist_ok",
        "resume",
        "callbacks",
        "verbose",
        "plots",
        "val",
        "val_period",
        "split",
        "json",
        "source",
        "save_txt",
        "format",
        "opset",
        "dynamic",
        "out",
        "dist_timeout",
        "max_restarts",
        "save_period",
        "save_minutes",
        "save_epochs",
        "patience",
        "seed",
    }
)


@dataclass(frozen=True)
class Dimension:
    """What the sampler may choose for one setting: a range (``low``..``high``) or ``choices``."""

    key: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] | None = None

    def suggest(self, trial) -> Any:
        """Ask an Optuna trial for a value of this dimension."""
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if SETTINGS[self.key].kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a point of this dimension (e.g. the default, to enqueue it as the baseline)."""
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not self.low <= value <= self.high:
            return False
        if self.step:
            k = (value - self.low) / self.step
            return math.isclose(k, round(k), abs_tol=1e-9)
        return True

    def to_dict(self) -> dict[str, Any]:
        """The YAML form of this dimension (written to the tune folder's ``space.yaml``)."""
        if self.choices is not None:
            return {"choices": list(self.choices)}
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step:
            out["step"] = self.step
        return out


# The default space: the optimiser, the loss gains and every augmentation setting of the project. Ranges
# hold the defaults, so the default settings can be trial 0 (the baseline every other trial is compared to).
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "lr0": {"low": 1e-4, "high": 0.1, "log": True},
    "lrf": {"low": 0.01, "high": 1.0, "log": True},
    "momentum": {"low": 0.6, "high": 0.98},
    "weight_decay": {"low": 0.0, "high": 0.001},
    "warmup_epochs": {"low": 0.0, "high": 5.0},
    "box": {"low": 1.0, "high": 20.0},
    "cls": {"low": 0.2, "high": 4.0},
    "dfl": {"low": 0.4, "high": 6.0},
    "hsv_h": {"low": 0.0, "high": 0.1},
    "hsv_s": {"low": 0.0, "high": 0.9},
    "hsv_v": {"low": 0.0, "high": 0.9},
    "degrees": {"low": 0.0, "high": 45.0},
    "translate": {"low": 0.0, "high": 0.9},
    "scale": {"low": 0.0, "high": 0.95},
    "shear": {"low": 0.0, "high": 10.0},
    "fliplr": {"low": 0.0, "high": 1.0},
    "mosaic": {"low": 0.0, "high": 1.0},
    "multi_scale": {"low": 0.0, "high": 0.5},
}

_RANGE_KEYS = {"low", "high", "log", "step"}


def parse_space(spec: Any, source: str = "default space") -> dict[str, Dimension]:
    """Validate a space mapping (as read from YAML) into :class:`Dimension` objects.

    Args:
        spec: ``{setting: [low, high] | {low, high, log?, step?} | {choices: [...]}}``.
        source: What to name in error messages (the space file).

    Raises:
        ConfigError: With one line naming the file and the key at fault.
    """
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(f"space file '{source}' must hold a non-empty mapping of setting: range or choices")
    space = {}
    for key, value in spec.items():
        key = str(key)
        where = f"space file '{source}': setting '{key}'"
        if key not in SETTINGS:
            try:
                coerce(key, None)  # the same "unknown setting ... did you mean" line as train
            except ConfigError as e:
                raise ConfigError(f"space file '{source}': {e}") from None
        if key in NOT_TUNABLE:
            raise ConfigError(f"{where} cannot be tuned (it decides how trials run); set it on the command line")
        space[key] = _dimension(key, value, where)
    return space


def _dimension(key: str, value: Any, where: str) -> Dimension:
    if isinstance(value, list):
        if len(value) != 2:
            raise ConfigError(f"{where}: a list must be [low, high]; use {{choices: [...]}} for a set of values")
        value = {"low": value[0], "high": value[1]}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected [low, high], {{low, high, log, step}} or {{choices: [...]}}")
    if "choices" in value:
        extra = set(value) - {"choices"}
        choices = value["choices"]
        if extra or not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list and stand alone")
        return Dimension(key, choices=tuple(_checked(key, c, where) for c in choices))
    unknown = set(value) - _RANGE_KEYS
    if unknown or "low" not in value or "high" not in value:
        raise ConfigError(f"{where}: a range needs low and high (optional log, step); got {', '.join(map(str, value))}")
    kind = SETTINGS[key].kind
    if kind not in ("int", "float"):
        raise ConfigError(f"{where} is not a number ({kind}); give {{choices: [...]}}")
    low, high = _checked(key, value["low"], where), _checked(key, value["high"], where)
    if not low < high:
        raise ConfigError(f"{where}: low {low} must be less than high {high}")
    log = value.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0 (got {low})")
    step = value.get("step")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0:
            raise ConfigError(f"{where}: step must be a positive number")
        if log:
            raise ConfigError(f"{where}: step and log cannot be combined")
        if kind == "int" and not float(step).is_integer():
            raise ConfigError(f"{where}: step must be a whole number for an integer setting")
    return Dimension(key, low, high, log, step)


def _checked(key: str, value: Any, where: str) -> Any:
    """``value`` converted and validated as ``train`` would, re-worded to name the space file."""
    try:
        return coerce(key, value)
    except ConfigError as e:
        raise ConfigError(f"{where}: {str(e).replace(f'setting {key!r}', 'value', 1)}") from None


def load_space(path: str | Path | None) -> dict[str, Dimension]:
    """The space in the YAML file ``path``, or the default space when ``path`` is empty.

    Raises:
        ConfigError: For a missing/invalid file or a bad entry (one line naming the file and key).
    """
    if not path:
        return parse_space(DEFAULT_SPACE)
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"space file '{p}' does not exist")
    try:
        spec = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"space file '{p}' is not valid YAML: {str(e).splitlines()[0]}") from None
    return parse_space(spec, str(p))


def space_to_dict(space: dict[str, Dimension]) -> dict[str, dict[str, Any]]:
    """The YAML form of a whole space."""
    return {k: d.to_dict() for k, d in space.items()}


class SettingsNotApplied(YoloTrainError):
    """A trial trained with other settings than the sampler proposed."""


def check_applied(proposed: dict[str, Any], args_yaml: Path) -> None:
    """Compare the settings a trial's run recorded in ``args.yaml`` with what tune gave it.

    Raises:
        SettingsNotApplied: Naming the first setting that differs (or a missing ``args.yaml``).
    """
    if not args_yaml.is_file():
        raise SettingsNotApplied(f"trial run has no {args_yaml}: cannot check its settings")
    recorded = yaml.safe_load(args_yaml.read_text()) or {}
    for key, want in proposed.items():
        got = recorded.get(key, "<missing>")
        if not _same(coerce(key, want), got):
            raise SettingsNotApplied(
                f"setting '{key}': tune asked for {want!r} but the run trained with {got!r} ({args_yaml})"
            )


def _same(want: Any, got: Any) -> bool:
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        return math.isclose(want, float(got), rel_tol=1e-9, abs_tol=1e-12)
    return want == got
