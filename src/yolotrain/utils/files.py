"""File helpers: run-folder numbering and atomic writes."""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def increment_path(path: str | Path, exist_ok: bool = False) -> Path:
    """Return ``path`` if free (or ``exist_ok``), else ``path2``, ``path3``, ... the first free one."""
    path = Path(path)
    if exist_ok or not path.exists():
        return path
    n = 2
    while (path.parent / f"{path.name}{n}").exists():
        n += 1
    return path.parent / f"{path.name}{n}"


def atomic_write(path: str | Path, write: Callable[[object], None], mode: str = "wb") -> None:
    """Write a file so that a crash at any moment leaves either the old or the new file whole.

    ``write(fileobj)`` fills a temporary file in the same folder, which is flushed, fsynced and then
    renamed over ``path`` (rename within one filesystem is atomic on POSIX).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def append_csv_row(path: str | Path, row: dict) -> None:
    """Append ``row`` to a CSV file, writing the header first when the file is new."""

    path = Path(path)
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)
