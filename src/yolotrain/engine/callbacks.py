"""Named training events and the callbacks registered on them."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from yolotrain.errors import ConfigError

EVENTS = (
    "on_pretrain_routine_start",
    "on_pretrain_routine_end",
    "on_train_start",
    "on_train_epoch_start",
    "on_train_batch_start",
    "on_before_optimizer_step",
    "on_train_batch_end",
    "on_train_epoch_end",
    "on_val_start",
    "on_val_end",
    "on_fit_epoch_end",
    "on_model_save",
    "on_train_end",
    "on_exception",
)


class Callbacks:
    """A list of functions per event; each is called with the trainer."""

    def __init__(self) -> None:
        self._fns: dict[str, list[Callable[[Any], None]]] = defaultdict(list)

    def add(self, event: str, fn: Callable[[Any], None]) -> None:
        """Register ``fn`` for ``event``.

        Raises:
            ValueError: For an unknown event name.
        """
        if event not in EVENTS:
            raise ValueError(f"unknown callback event '{event}'; events are: {', '.join(EVENTS)}")
        self._fns[event].append(fn)

    def run(self, event: str, trainer: Any) -> None:
        for fn in self._fns.get(event, ()):
            fn(trainer)

    def has(self, event: str) -> bool:
        """Whether any function is registered for ``event``."""
        return bool(self._fns.get(event))

    def items(self) -> list[tuple[str, Callable[[Any], None]]]:
        """Every (event, function) pair registered, in registration order per event."""
        return [(event, fn) for event in EVENTS for fn in self._fns.get(event, ())]


def _import_ref(ref: str, entry: str) -> Any:
    """The object ``module:attr`` or ``path/file.py:attr`` names."""

    target, _, attr = ref.rpartition(":")
    try:
        if target.endswith(".py"):
            path = Path(target).expanduser().resolve()
            if not path.is_file():
                raise ConfigError(f"setting 'callbacks': file '{target}' of '{entry}' does not exist")
            name = f"yolotrain_user_callbacks_{abs(hash(str(path)))}"
            module = sys.modules.get(name)
            if module is None:
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module  # before exec: dataclasses and pickling look the module up
                spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ConfigError:
        raise
    except Exception as e:  # the user's module failed to import: say which entry and why, in one line
        raise ConfigError(
            f"setting 'callbacks': cannot import '{target}' of '{entry}': {type(e).__name__}: {e}"
        ) from None
    obj = _attribute(module, attr)
    if obj is None:
        raise ConfigError(f"setting 'callbacks': '{target}' has no attribute '{attr}' (entry '{entry}')")
    return obj


def _attribute(obj: Any, dotted: str) -> Any:
    """``obj.a.b`` for ``dotted="a.b"``, None when a part is missing."""
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def load_callbacks(entries: list[str]) -> list[tuple[str, Callable[[Any], None]]]:
    """Resolve ``callbacks=`` entries to (event, function) pairs.

    An entry is ``[event=]module:function`` or ``[event=]file.py:function``. Without ``event=``, a function
    named after an event is registered on it; any other callable is called once and must return a
    mapping ``{event: function}`` (a way to register several functions from one entry).

    Raises:
        ConfigError: For an unknown event, a missing module/attribute or a result that is not callable.
    """
    pairs = []
    for entry in entries:
        event, sep, ref = str(entry).partition("=")
        if not sep:
            event, ref = "", event
        event = event.strip()
        if event and event not in EVENTS:
            raise ConfigError(
                f"setting 'callbacks': unknown event '{event}' in '{entry}'; events are: {', '.join(EVENTS)}"
            )
        obj = _import_ref(ref.strip(), entry)
        if event or getattr(obj, "__name__", "") in EVENTS:
            if not callable(obj):
                raise ConfigError(f"setting 'callbacks': '{ref}' is not callable (entry '{entry}')")
            pairs.append((event or obj.__name__, obj))
            continue
        mapping = obj() if callable(obj) and _takes_no_arguments(obj) else obj
        if not isinstance(mapping, dict):
            raise ConfigError(
                f"setting 'callbacks': '{ref}' is not named after an event and did not return "
                f"{{event: function}}; write it as event=module:function"
            )
        for ev, fn in mapping.items():
            if ev not in EVENTS or not callable(fn):
                raise ConfigError(f"setting 'callbacks': '{ref}' returned '{ev}': {fn!r}, not an event and a function")
            pairs.append((ev, fn))
    return pairs


def _takes_no_arguments(fn: Callable) -> bool:

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values())


def callback_reference(event: str, fn: Callable[[Any], None]) -> str:
    """The ``event=module:function`` entry that re-imports ``fn`` in another process.

    Functions defined in the user's script (``__main__``) are referenced by the script's path.

    Raises:
        ConfigError: When ``fn`` cannot be found by name in another process (a lambda, a closure, a
            bound method, an object) — it would otherwise be lost silently.
    """
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    what = getattr(fn, "__name__", repr(fn))
    if not module or not qualname or "<" in qualname:
        raise ConfigError(
            f"callback {what} for {event} cannot be sent to the training processes: use a "
            f"function defined at module level (it is re-imported there by name)"
        )
    if module == "__main__" or module.startswith("yolotrain_user_callbacks_"):
        # the workers load the script by path (like multiprocessing's spawn: keep the script's own work
        # under ``if __name__ == "__main__":``); check the name leads back to fn without re-running it
        source = sys.modules.get(module)
        path = getattr(source, "__file__", None)
        if not path:
            raise ConfigError(
                f"callback {what} for {event} is defined in an interactive session and cannot be "
                f"sent to the training processes; put it in a .py file"
            )
        if _attribute(source, qualname) is not fn:
            raise ConfigError(
                f"callback {what} for {event} cannot be sent to the training processes: "
                f"'{qualname}' is not a module-level name of {path}"
            )
        return f"{event}={Path(path).resolve()}:{qualname}"
    ref = f"{event}={module}:{qualname}"
    try:
        back = load_callbacks([ref])[0][1]
    except ConfigError as e:
        raise ConfigError(f"callback {what} for {event} cannot be sent to the training processes ({e})") from None
    if back is not fn:
        raise ConfigError(
            f"callback {what} for {event} cannot be sent to the training processes: "
            f"'{module}:{qualname}' names another object"
        )
    return ref
