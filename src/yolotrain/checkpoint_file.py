"""Checkpoint files: the format, atomic writes, safe loading, and one way to read both versions.

    save_checkpoint({"run": {...}, "parts": {"train": {...}}}, "last.pt")
    ckpt = load_checkpoint("last.pt")     # a Checkpoint, whichever version the file is
    ckpt.run["names"], ckpt.part("train")["position"], ckpt["position"]

Both ``models/`` (reading weights) and ``engine/`` (the checkpointer) read and write through this module,
so it sits below both: of them it imports only the restricted unpickler (``models/safe_pickle.py``, which
needs nothing of the models themselves), and nothing of the engine.

Two layouts carry the ``format`` tag that says which one a file is:

* ``yolotrain-ckpt-2`` (written now): ``run`` holds what the run is (model description, names, config,
  ...), ``parts`` holds each stateful part's state under the part's own name (``model``, ``optimizer``,
  ``train``, ``rng``, ...). Other top-level keys (``stripped_from``) are descriptive.
* ``yolotrain-ckpt-1`` (written before): every key of the run description and of every part flat at the
  top level. Such files still load, resume, predict and go through ``yolotrain ckpt``.

:class:`Checkpoint` reads either: :attr:`Checkpoint.run`, :meth:`Checkpoint.part`, and ``ckpt[key]`` for
any key of the run description or of a part, wherever the file's layout keeps it.

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
import hashlib
import io
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from yolotrain.errors import CheckpointError
from yolotrain.models.safe_pickle import safe_load
from yolotrain.utils.files import atomic_write

FORMAT = "yolotrain-ckpt-2"
FORMAT_V1 = "yolotrain-ckpt-1"
FORMATS = {FORMAT: 2, FORMAT_V1: 1}
# What the run is (read by resume, fine-tuning, val and predict); v2 keeps these under "run".
RUN_KEYS = ("model_cfg", "names", "config", "data_yaml", "versions", "optimizer_name", "base_lr")
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
                h.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself: no copy of the bytes
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
    """Serialise ``state`` (as plain data) with its digest and write it atomically to ``path``.

    The file is tagged :data:`FORMAT` unless ``state`` carries its own ``format`` (a re-save keeps a
    version-1 file's layout and tag).
    """
    write_checkpoint_bytes(checkpoint_bytes(state), path)


def checkpoint_bytes(state: dict[str, Any]) -> memoryview:
    """The bytes :func:`save_checkpoint` writes for ``state``: made once, they can go to several files."""
    state = to_plain({"format": FORMAT, **state})
    state["integrity"] = {"sha256": digest(state)}
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getbuffer()


def write_checkpoint_bytes(data: memoryview | bytes, path: str | Path) -> None:
    """Write :func:`checkpoint_bytes` to ``path`` atomically (a temporary file, fsync, rename)."""
    atomic_write(path, lambda f: f.write(data))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", trust: bool = False) -> Checkpoint:
    """Load a checkpoint safely, either version.

    Args:
        path: The ``.pt`` file.
        map_location: Where tensors are loaded.
        trust: Accept a yolotrain checkpoint that has no integrity record (written before the record was
            mandatory). Only ``yolotrain ckpt resave ... trust=true`` sets it: the user vouches for the file.

    Raises:
        CheckpointError: When torch is too old to load safely, or the file is missing, truncated, corrupt,
            carries pickled objects, is not a yolotrain checkpoint, has no well-formed integrity record, or
            is laid out unlike its version.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint '{p}' does not exist")
    check_torch_safe(p)
    return checkpoint_from(safe_load(p), p, map_location, trust)


def checkpoint_from(
    state: Any, path: str | Path, map_location: str | torch.device = "cpu", trust: bool = False
) -> Checkpoint:
    """:func:`load_checkpoint` of a file already read by :func:`~yolotrain.models.safe_pickle.safe_load`.

    Raises:
        CheckpointError: See :func:`load_checkpoint`.
    """
    p = Path(path)
    if not isinstance(state, dict) or state.get("format") not in FORMATS:
        raise CheckpointError(
            f"checkpoint '{p}' is not a yolotrain checkpoint (no '{FORMAT}' or '{FORMAT_V1}' format tag)"
        )
    odd = _first_non_plain(state)
    if odd is not None:
        raise CheckpointError(
            f"checkpoint '{p}' was refused: it holds objects other than tensors and plain data ({odd})"
        )
    if "integrity" not in state:
        if trust:
            return Checkpoint(_moved(state, map_location), p)
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
    return Checkpoint(_moved(state, map_location), p)


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


class Checkpoint(Mapping):
    """A loaded checkpoint of either version, read the same way.

    ``ckpt[key]`` finds a key of the run description or of any part (``position``, ``ema``, ``names``),
    wherever the file's layout keeps it: every reader asks for what it needs by the name it always had,
    and none depends on the layout. Keys are unique across the run description and the parts (the
    checkpointer refuses two owners of one key), so the lookup is unambiguous.

    Args:
        content: The file's dict (its ``format`` tag included, its integrity record removed).
        path: Where it came from, for messages.

    Raises:
        CheckpointError: When a version-2 file's ``run`` or ``parts`` is not a dict of dicts, or a key is held
            twice (by the run description, a part or the top level).
    """

    def __init__(self, content: dict[str, Any], path: str | Path = "<memory>"):
        self.content, self.path = content, str(path)
        self.version = FORMATS.get(content.get("format"), 1)
        if self.version == 1:
            self.run = {k: content[k] for k in RUN_KEYS if k in content}
            self.parts: dict[str, dict[str, Any]] = {}
            self.flat = {k: v for k, v in content.items() if k != "format"}
            return
        self.run, self.parts = content.get("run", {}), content.get("parts", {})
        if not isinstance(self.run, dict) or not isinstance(self.parts, dict):
            raise CheckpointError(f"checkpoint '{path}' is malformed: 'run' and 'parts' must be dicts")
        sources = [("the top level", {k: v for k, v in content.items() if k not in ("format", "run", "parts")})]
        sources.append(("the run description", self.run))
        for name, state in self.parts.items():
            if not isinstance(state, dict):
                raise CheckpointError(f"checkpoint '{path}' is malformed: part '{name}' is not a dict")
            sources.append((f"part '{name}'", state))
        self.flat, where = {}, {}
        for source, keys in sources:
            for key, value in keys.items():
                if key in where:
                    raise CheckpointError(
                        f"checkpoint '{path}' is malformed: key '{key}' is held by {where[key]} and {source}"
                    )
                self.flat[key], where[key] = value, source

    def part(self, name: str, keys: tuple[str, ...] = ()) -> dict[str, Any]:
        """The state of part ``name`` (empty when the file has none).

        A version-1 file has no part names: there the part is the top-level ``keys`` it owns.
        """
        if self.version == 1:
            return {k: self.content[k] for k in keys if k in self.content}
        return self.parts.get(name, {})

    def __getitem__(self, key: str) -> Any:
        return self.flat[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.flat)

    def __len__(self) -> int:
        return len(self.flat)
