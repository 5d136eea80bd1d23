"""Reading a data YAML into absolute paths and class names, for YOLO, COCO and VOC datasets.

Example ``data.yaml`` (YOLO)::

    path: ../datasets/shapes   # relative to this YAML file's folder; default: that folder
    train: images/train        # folder of images, a .txt list of images, or a list of those
    val: [images/val, extra_val.txt]
    test: images/test          # optional
    names: [circle, square]    # or {0: circle, 1: square}

COCO (``names`` optional: the categories in id order; ``images`` optional, see
:mod:`yolotrain.data.formats.coco` for where images are looked for otherwise)::

    path: ../datasets/coco
    train: annotations/instances_train2017.json
    val: annotations/instances_val2017.json
    images: {train: images/train2017, val: images/val2017}   # or one folder for all splits

VOC (``names`` optional: the sorted object names found in all splits' XML files)::

    path: ../datasets/VOCdevkit
    train: [VOC2007/ImageSets/Main/trainval.txt, VOC2012/ImageSets/Main/trainval.txt]
    val: VOC2007/ImageSets/Main/test.txt

One data YAML holds one format; the split entries carry it (:class:`~yolotrain.data.formats.SplitSource`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import yaml

from yolotrain.data.formats import (
    FORMAT_COCO,
    FORMAT_VOC,
    FORMAT_YOLO,
    SplitSource,
    coco_names,
    detect_format,
    voc_names,
)
from yolotrain.errors import DataError

LOGGER = logging.getLogger("yolotrain")

_SPLITS_REQUIRED = ("train", "val")
_SPLITS = ("train", "val", "test")


def load_data_yaml(path: str | os.PathLike[str], check_exists: bool = True) -> dict[str, Any]:
    """Load and validate a data YAML.

    Args:
        path: The YAML file.
        check_exists: Whether every split entry must exist on disk (False is useful when only the
            class names are needed, e.g. for prediction).

    Returns:
        ``{"yaml_file", "path", "format", "train", "val", "test", "names", "nc"}`` where every
        path is absolute, ``format`` is ``"yolo"``, ``"coco"`` or ``"voc"``, the split values are
        lists of :class:`~yolotrain.data.formats.SplitSource` (str subclasses; ``test`` may be
        empty) and ``names`` is a list of str. For COCO and VOC without ``names``, the names are
        read from the annotation files.

    Raises:
        DataError: The file is missing or unreadable, a key is missing or of the wrong type, the
            splits mix formats, or the class names cannot be determined.
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
    for split in _SPLITS:
        value = raw.get(split)
        if value is None:
            if split in _SPLITS_REQUIRED:
                raise DataError(f"{yaml_file}: missing required key '{split}'")
            out[split] = []
            continue
        out[split] = _resolve_entries(value, split, root, yaml_file, check_exists)

    fmt = _detect_dataset_format(out, yaml_file)
    images = _resolve_images(raw.get("images"), root, yaml_file, fmt, check_exists)
    if raw.get("names") is None and fmt != FORMAT_YOLO:
        names = _names_from_annotations(out, fmt, yaml_file)
    else:
        names = _parse_names(raw.get("names"), yaml_file)
    out["format"] = fmt
    for split in _SPLITS:
        out[split] = [
            SplitSource(e, fmt, images=images.get(split), names=names if fmt == FORMAT_VOC else None)
            for e in out[split]
        ]
    nc = raw.get("nc")
    if nc is not None:
        if isinstance(nc, bool) or not isinstance(nc, int):
            raise DataError(f"{yaml_file}: key 'nc' must be an integer, got {nc!r}")
        if nc != len(names):
            raise DataError(f"{yaml_file}: key 'nc' is {nc} but 'names' lists {len(names)} classes")
    out["names"] = names
    out["nc"] = len(names)
    return out


def _detect_dataset_format(out: dict[str, Any], yaml_file: Path) -> str:
    """The one format of all split entries; mixing formats is refused."""
    found: dict[str, str] = {}
    for split in _SPLITS:
        for entry in out[split]:
            found.setdefault(detect_format(entry), split)
    if len(found) > 1:
        kinds = ", ".join(f"{fmt} ({split})" for fmt, split in found.items())
        raise DataError(f"{yaml_file}: split entries mix dataset formats: {kinds}; use one format per data YAML")
    return next(iter(found), FORMAT_YOLO)


def _resolve_images(value: Any, root: Path, yaml_file: Path, fmt: str, check_exists: bool) -> dict[str, str]:
    """The COCO ``images`` key as {split: absolute folder}; a single folder applies to every split."""
    if value is None:
        return {}
    if fmt != FORMAT_COCO:
        LOGGER.warning(
            "%s: key 'images' is only used with COCO .json splits; ignored for this %s dataset", yaml_file, fmt
        )
        return {}
    if isinstance(value, (str, os.PathLike)):
        value = {split: value for split in _SPLITS}
        explicit = False
    elif isinstance(value, dict):
        unknown = [k for k in value if k not in _SPLITS]
        if unknown:
            raise DataError(f"{yaml_file}: key 'images' has unknown split {unknown[0]!r} (use train, val, test)")
        explicit = True
    else:
        raise DataError(f"{yaml_file}: key 'images' must be a folder or a {{split: folder}} mapping")
    out: dict[str, str] = {}
    for split, folder in value.items():
        if not isinstance(folder, (str, os.PathLike)) or not str(folder).strip():
            raise DataError(f"{yaml_file}: key 'images' has a non-path entry {folder!r}")
        p = Path(os.path.expandvars(str(folder).strip())).expanduser()
        p = (p if p.is_absolute() else root / p).resolve()
        if check_exists and not p.is_dir() and (explicit or split in ("train", "val")):
            raise DataError(f"{yaml_file}: key 'images' folder '{folder}' not found (looked for {p})")
        out[split] = str(p)
    return out


def _names_from_annotations(out: dict[str, Any], fmt: str, yaml_file: Path) -> list[str]:
    """Class names of a COCO/VOC dataset whose YAML has no ``names``."""
    entries = [e for split in _SPLITS for e in out[split]]
    missing = [e for e in entries if not os.path.exists(e)]
    if missing:
        raise DataError(f"{yaml_file}: no 'names' given and {missing[0]} is not there to read them from")
    if fmt == FORMAT_VOC:
        names = voc_names([str(e) for e in entries])
        if not names:
            raise DataError(f"{yaml_file}: no 'names' given and the VOC XML files name no objects")
        return names
    names = coco_names(entries[0])
    for e in entries[1:]:
        other = coco_names(e)
        if other != names:
            raise DataError(
                f"{yaml_file}: no 'names' given and the COCO files disagree on categories "
                f"({entries[0]} has {len(names)}, {e} has {len(other)}"
                f"{' with other names' if len(other) == len(names) else ''})"
            )
    return names


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


def _resolve_entries(value: Any, split: str, root: Path, yaml_file: Path, check_exists: bool) -> list[str]:
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
            raise DataError(f"{yaml_file}: key '{split}' entry '{entry}' not found (looked for {p})")
        if check_exists and p.is_file() and p.suffix.lower() not in (".txt", ".json"):
            raise DataError(
                f"{yaml_file}: key '{split}' entry '{entry}' must be a folder, a .txt image list, "
                "a COCO .json or a VOC ImageSets/Main/*.txt list"
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
            raise DataError(f"{yaml_file}: key 'names' class ids must be exactly 0..{len(ids) - 1}, got {sorted(ids)}")
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
