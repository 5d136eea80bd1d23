"""Checkpoint files: atomic writes and safe loading.

A checkpoint holds only tensors, plain containers and primitives. It is read by the same bounded,
restricted unpickler as every weights file (:func:`yolotrain.models.safe_pickle.safe_load`: nothing in
the file runs, memory stays within the file's tensor bytes plus a bounded pickle), then refused if it holds
anything but plain data. Loading still refuses torch releases whose ``weights_only`` unpickler has known
bypasses (:data:`MIN_SAFE_TORCH`): other tools read the same files with ``torch.load``.

Every file carries ``integrity = {"sha256": ...}``, a digest of everything else in it, and loading refuses
a file without it. The digest is stored in the file itself, so it detects damage (truncation, bit rot, a
partial copy), not a deliberate edit: whoever edits the file can recompute it.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from yolotrain.engine import distributed as dist
from yolotrain.errors import CheckpointError
from yolotrain.models import transfer as models_transfer
from yolotrain.models.safe_pickle import safe_load
from yolotrain.utils.files import atomic_write

FORMAT = "yolotrain-ckpt-1"
# torch.load(weights_only=True) can be made to run code on older torch: CVE-2025-32434 (fixed in 2.6) and
# GHSA-63cw-57p8-fm3p / CVE-2026-24747 (weights_only unpickler memory corruption, affected <= 2.9.1,
# fixed in 2.10.0). pyproject.toml requires the same floor; this check covers environments that ignore it.
MIN_SAFE_TORCH = (2, 10)
RESAVE_HINT = "if you trust where it came from, re-save it once with: yolotrain ckpt resave {path} NEW.pt trust=true"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def torch_release(version: str) -> tuple[int, int]:
    """(major, minor) of a torch version string such as ``2.14.1+cu130`` or ``2.10.0a0+git1234``.

    Raises:
        ValueError: When the string does not start with two dotted integers.
    """
    m = re.match(r"(\d+)\.(\d+)", str(version))
    if m is None:
        raise ValueError(f"unrecognised torch version '{version}'")
    return int(m.group(1)), int(m.group(2))


def check_torch_safe(path: str | Path) -> None:
    """Refuse to unpickle ``path`` on a torch whose ``weights_only`` loading has known bypasses.

    Raises:
        CheckpointError: On torch older than :data:`MIN_SAFE_TORCH` (or an unreadable version string).
    """
    floor = ".".join(map(str, MIN_SAFE_TORCH))
    try:
        release = torch_release(torch.__version__)
    except ValueError:
        release = (0, 0)
    if release < MIN_SAFE_TORCH:
        raise CheckpointError(
            f"refusing to load checkpoint '{path}' with torch {torch.__version__}: torch.load(weights_only=True) "
            f"has known code-execution bypasses before torch {floor}; upgrade with pip install 'torch>={floor}'"
        )


def to_plain(obj: Any) -> Any:
    """Recursively turn ``obj`` into tensors, plain containers and primitives.

    numpy scalars/arrays and subclasses of str/int/float (such as ``torch.__version__``) would otherwise
    be pickled as objects that ``weights_only`` loading refuses.
    """

    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        return {to_plain(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj) if type(obj) in (list, tuple) else [to_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bool) or obj is None:
        return obj
    for t in (int, float, str):
        if isinstance(obj, t):
            return t(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint (tensors and plain data only)")


def digest(obj: Any) -> str:
    """SHA-256 over every tensor's bytes, dtype and shape and every plain value, in key order."""

    h = hashlib.sha256()

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(o, dict):
            h.update(b"{")
            for k in sorted(o, key=str):
                h.update(repr(k).encode())
                walk(o[k])
            h.update(b"}")
        elif isinstance(o, (list, tuple)):
            h.update(b"[")
            for v in o:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(o).encode())

    walk(obj)
    return h.hexdigest()


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Serialise ``state`` (as plain data) with its digest and write it atomically to ``path``."""
    state = to_plain({"format": FORMAT, **state})
    state["integrity"] = {"sha256": digest(state)}
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, lambda f: f.write(buf.getbuffer()))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", trust: bool = False) -> dict[str, Any]:
    """Load a checkpoint safely.

    Args:
        path: The ``.pt`` file.
        map_location: Where tensors are loaded.
        trust: Accept a yolotrain checkpoint that has no integrity record (written before the record was
            mandatory). Only ``yolotrain ckpt resave ... trust=true`` sets it: the user vouches for the file.

    Raises:
        CheckpointError: When torch is too old to load safely, or the file is missing, truncated, corrupt,
            carries pickled objects, is not a yolotrain checkpoint, or has no well-formed integrity record.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint '{p}' does not exist")
    check_torch_safe(p)
    return checkpoint_from(safe_load(p), p, map_location, trust)


def checkpoint_from(
    state: Any, path: str | Path, map_location: str | torch.device = "cpu", trust: bool = False
) -> dict[str, Any]:
    """:func:`load_checkpoint` of a file already read by :func:`~yolotrain.models.safe_pickle.safe_load`.

    Raises:
        CheckpointError: See :func:`load_checkpoint`.
    """
    p = Path(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint '{p}' is not a yolotrain checkpoint (no '{FORMAT}' format tag)")
    odd = _first_non_plain(state)
    if odd is not None:
        raise CheckpointError(
            f"checkpoint '{p}' was refused: it holds objects other than tensors and plain data ({odd})"
        )
    if "integrity" not in state:
        if trust:
            return _moved(state, map_location)
        raise CheckpointError(
            f"checkpoint '{p}' has no integrity record, so damage to it cannot be detected; "
            + RESAVE_HINT.format(path=p)
        )
    record = state.pop("integrity")
    recorded = record.get("sha256") if isinstance(record, dict) else None
    if not isinstance(recorded, str) or not _SHA256.fullmatch(recorded):
        raise CheckpointError(
            f"checkpoint '{p}' is corrupt: its integrity record is malformed "
            f"(expected {{'sha256': 64 hex digits}}, found {type(record).__name__} {str(record)[:60]!r})"
        )
    if digest(state) != recorded:
        raise CheckpointError(f"checkpoint '{p}' is corrupt: its content does not match the recorded SHA-256")
    return _moved(state, map_location)


_PLAIN = (dict, collections.OrderedDict, list, tuple, str, int, float, bool, type(None), torch.Tensor)


def _first_non_plain(state: Any) -> str | None:
    """The class name of the first value that is not a tensor, plain container or primitive (None if all are).

    The graph is known to be acyclic and shallow (:func:`safe_load` checked), so a plain walk ends."""
    todo = [state]
    while todo:
        o = todo.pop()
        if type(o) not in _PLAIN:
            return getattr(o, "cls_name", type(o).__name__)
        if isinstance(o, dict):
            todo.extend(o.keys())
            todo.extend(o.values())
        elif isinstance(o, (list, tuple)):
            todo.extend(o)
    return None


def _moved(state: dict[str, Any], map_location: str | torch.device) -> dict[str, Any]:
    if torch.device(map_location).type == "cpu":
        return state

    def move(o: Any) -> Any:
        if isinstance(o, torch.Tensor):
            return o.to(map_location)
        if isinstance(o, dict):
            return {k: move(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return type(o)(move(v) for v in o)
        return o

    return move(state)


def transfer_weights(model: nn.Module, weights: dict[str, torch.Tensor], load: str = "all") -> dict:
    """Load the tensors of ``weights`` whose names and shapes match ``model`` (fine-tuning).

    See :func:`yolotrain.models.transfer.transfer_weights` (counts, and why tensors were re-initialised).
    """
    return models_transfer.transfer_weights(model, weights, load)


def write_failure(path: Path, error: OSError, last: Path) -> str:
    """The one line a failed checkpoint write stops training with."""
    why = error.strerror or str(error) or type(error).__name__
    fix = "free some space" if error.errno == errno.ENOSPC else "fix that"
    then = f", then continue with resume={last}" if last.is_file() else ""
    return (
        f"cannot write checkpoint '{path}': {why} (errno {error.errno}); the checkpoints written before are "
        f"intact; {fix}{then}"
    )


# Keys the checkpointer itself writes: what the run is (read by resume, fine-tuning, val and predict).
RUN_KEYS = ("format", "model_cfg", "names", "config", "data_yaml", "versions", "optimizer_name", "base_lr")


class Checkpointer:
    """Writes the whole training state as the union of its parts' states, and restores it.

    Every part has ``KEYS`` (the checkpoint keys it owns), ``state_dict()`` returning exactly those keys and
    ``load_state_dict(state)``. A checkpoint key that neither a part nor the run description claims is an
    error on restore, not silently ignored.

    Args:
        wdir: The run's ``weights`` folder.
        parts: The stateful parts, each owning its keys.
        run_info: The run description (:data:`RUN_KEYS` less ``format``).
    """

    def __init__(self, wdir: Path, parts: list[Any], run_info: dict[str, Any]):
        self.wdir, self.parts, self.run_info = Path(wdir), parts, run_info
        owners: dict[str, Any] = {k: "run" for k in RUN_KEYS}
        for part in parts:
            for key in part.KEYS:
                if key in owners:
                    raise ValueError(f"checkpoint key '{key}' is claimed by two parts")
                owners[key] = part
        self.owners = owners

    def state_dict(self) -> dict[str, Any]:
        """The whole state: the run description and every part's keys."""
        state: dict[str, Any] = dict(self.run_info)
        for part in self.parts:
            got = part.state_dict()
            if set(got) != set(part.KEYS):
                raise ValueError(f"{type(part).__name__}.state_dict() gave {sorted(got)}, it owns {list(part.KEYS)}")
            state.update(got)
        return state

    def save(self, names: list[str]) -> None:
        """Write the state to each of ``names`` in the weights folder (atomically), on rank 0.

        Every rank must call it: parts may gather from all ranks first (the RNG streams do). ``last.pt`` is
        written after every other name, so a ``last.pt`` that records a best epoch exists only once that
        epoch's ``best.pt`` is durably on disk. A failed write (a full disk) leaves every earlier file as it
        was and stops every rank with the same one-line :class:`CheckpointError` (no rank is left waiting
        in a collective for one that raised).
        """
        for part in self.parts:
            if hasattr(part, "gather"):
                part.gather()
        failure = None
        if dist.is_main():
            state = self.state_dict()
            ordered = [n for n in names if n != "last.pt"] + [n for n in names if n == "last.pt"]
            for name in ordered:
                try:
                    save_checkpoint(state, self.wdir / name)
                except OSError as e:
                    failure = write_failure(self.wdir / name, e, self.wdir / "last.pt")
                    break
        if dist.world_size() > 1:  # no rank leaves before rank 0 has written (a preempted job exits next)
            failure = dist.broadcast_object(failure)
        if failure is not None:
            raise CheckpointError(failure)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Give each part its keys.

        Raises:
            CheckpointError: For keys no part claims, or keys a part needs that the file lacks.
        """
        unclaimed = sorted(k for k in state if k not in self.owners and k != "integrity")
        if unclaimed:
            raise CheckpointError(f"checkpoint has keys this trainer does not know: {', '.join(unclaimed)}")
        for part in self.parts:
            missing = [k for k in part.KEYS if k not in state]
            if missing:
                raise CheckpointError(f"checkpoint lacks {', '.join(missing)} (needed by {type(part).__name__})")
            part.load_state_dict({k: state[k] for k in part.KEYS})


class StatefulModule:
    """Adapts a module or optimizer to the checkpointer: its ``state_dict`` under one key."""

    def __init__(self, key: str, obj: Any, copy: bool = False):
        self.KEYS, self.obj, self.copy = (key,), obj, copy

    def state_dict(self) -> dict[str, Any]:
        sd = self.obj.state_dict()
        if self.copy:  # the weights keep changing after a save is taken, until it is written
            sd = {k: v.detach().clone() for k, v in sd.items()}
        return {self.KEYS[0]: sd}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.obj.load_state_dict(state[self.KEYS[0]])
