"""Reading a YOLO-style data YAML into absolute paths and class names.

Example ``data.yaml``::

    path: ../datasets/shapes   # relative to this YAML file's folder; default: that folder
    train: images/train        # folder of images, a .txt list of images, or a list of those
    val: [images/val, extra_val.txt]
    test: images/test          # optional
    names: [circle, square]    # or {0: circle, 1: square}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from yolotrain.errors import DataError

_SPLITS_REQUIRED = ("train", "val")


def load_data_yaml(path: str | os.PathLike[str], check_exists: bool = True) -> dict[str, Any]:
    """Load and validate a data YAML.

    Args:
        path: The YAML file.
        check_exists: Whether every split entry must exist on disk (False is useful when only the
            class names are needed, e.g. for prediction).

    Returns:
        ``{"yaml_file", "path", "train", "val", "test", "names", "nc"}`` where every path is
        absolute, the split values are lists of str (``test`` may be empty) and ``names`` is a
        list of str.

    Raises:
        DataError: The file is missing or unreadable, or a key is missing or of the wrong type.
    """
    yaml_file = Path(path).expanduser().resolve()
    if not yaml_file.is_file():
        raise DataError(f"{yaml_file}: data YAML file not found")
    try:
        raw = yaml.safe_load(yaml_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{yaml_file}: cannot parse data YAML ({first})") from e
    if not isinstance(raw, dict):
        raise DataError(f"{yaml_file}: data YAML must be a mapping with keys train, val, names")

    root = _resolve_root(raw.get("path"), yaml_file)
    out: dict[str, Any] = {"yaml_file": str(yaml_file), "path": str(root)}
    for split in ("train", "val", "test"):
        value = raw.get(split)
        if value is None:
            if split in _SPLITS_REQUIRED:
                raise DataError(f"{yaml_file}: missing required key '{split}'")
            out[split] = []
            continue
        out[split] = _resolve_entries(value, split, root, yaml_file, check_exists)

    names = _parse_names(raw.get("names"), yaml_file)
    nc = raw.get("nc")
    if nc is not None:
        if isinstance(nc, bool) or not isinstance(nc, int):
            raise DataError(f"{yaml_file}: key 'nc' must be an integer, got {nc!r}")
        if nc != len(names):
            raise DataError(f"{yaml_file}: key 'nc' is {nc} but 'names' lists {len(names)} classes")
    out["names"] = names
    out["nc"] = len(names)
    return out


def _resolve_root(value: Any, yaml_file: Path) -> Path:
    """Return the absolute dataset root: ``path`` resolved against the YAML's own folder."""
    if value is None or value == "":
        return yaml_file.parent
    if not isinstance(value, (str, os.PathLike)):
        raise DataError(f"{yaml_file}: key 'path' must be a string, got {type(value).__name__}")
    p = Path(os.path.expandvars(str(value))).expanduser()
    # Relative to the YAML file rather than the working directory, so a dataset folder can be
    # moved or shared and still work from anywhere.
    return (p if p.is_absolute() else yaml_file.parent / p).resolve()


def _resolve_entries(
    value: Any, split: str, root: Path, yaml_file: Path, check_exists: bool
) -> list[str]:
    """Turn a split value (str or list of str) into absolute paths."""
    entries = [value] if isinstance(value, (str, os.PathLike)) else value
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{yaml_file}: key '{split}' must be a path or a non-empty list of paths")
    resolved: list[str] = []
    for entry in entries:
        if not isinstance(entry, (str, os.PathLike)) or str(entry).strip() == "":
            raise DataError(f"{yaml_file}: key '{split}' has a non-path entry {entry!r}")
        p = Path(os.path.expandvars(str(entry).strip())).expanduser()
        p = (p if p.is_absolute() else root / p).resolve()
        if check_exists and not p.exists():
            raise DataError(
                f"{yaml_file}: key '{split}' entry '{entry}' not found (looked for {p})"
            )
        if check_exists and p.is_file() and p.suffix.lower() != ".txt":
            raise DataError(
                f"{yaml_file}: key '{split}' entry '{entry}' must be a folder or a .txt image list"
            )
        resolved.append(str(p))
    return resolved


def _parse_names(value: Any, yaml_file: Path) -> list[str]:
    """Accept ``[a, b]`` or ``{0: a, 1: b}`` and return the names in id order."""
    if value is None:
        raise DataError(f"{yaml_file}: missing required key 'names'")
    if isinstance(value, list):
        names = value
    elif isinstance(value, dict):
        ids: list[int] = []
        for k in value:
            # YAML may give ints or digit strings ("0": person) depending on quoting.
            is_id = isinstance(k, int) or (isinstance(k, str) and k.isdigit())
            if isinstance(k, bool) or not is_id:
                raise DataError(f"{yaml_file}: key 'names' has a non-integer class id {k!r}")
            ids.append(int(k))
        if sorted(ids) != list(range(len(ids))):
            raise DataError(
                f"{yaml_file}: key 'names' class ids must be exactly 0..{len(ids) - 1}, "
                f"got {sorted(ids)}"
            )
        by_id = {int(k): v for k, v in value.items()}
        names = [by_id[i] for i in range(len(ids))]
    else:
        raise DataError(f"{yaml_file}: key 'names' must be a list or a {{id: name}} mapping")
    if not names:
        raise DataError(f"{yaml_file}: key 'names' is empty")
    for i, n in enumerate(names):
        if not isinstance(n, (str, int, float)) or isinstance(n, bool) or str(n).strip() == "":
            raise DataError(f"{yaml_file}: key 'names' entry {i} is not a valid name: {n!r}")
    return [str(n) for n in names]
