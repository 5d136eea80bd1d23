"""File helpers: run folders claimed atomically, atomic writes, results rows."""

from __future__ import annotations

import contextlib
import csv
import os
import tempfile
from collections.abc import Callable, Iterator
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


def claim_dir(path: str | Path, exist_ok: bool = False) -> Path:
    """Create a run folder that no other process holds and return it: ``path``, else ``path2``, ``path3``...

    The folder is created without ``exist_ok``, so creating it *is* the claim: of N processes that start
    at once, each gets its own folder (choosing a free name first and creating it later lets two pick the
    same one). With ``exist_ok`` the folder ``path`` is used whether or not it exists.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if exist_ok:
        path.mkdir(exist_ok=True)
        return path
    n = 1
    while True:
        candidate = path if n == 1 else path.parent / f"{path.name}{n}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1


def release_dir(path: str | Path) -> None:
    """Remove a claimed run folder again if nothing was written into it (a run whose set-up failed)."""
    try:
        Path(path).rmdir()  # only an empty folder goes
    except OSError:
        pass


@contextlib.contextmanager
def released_on_failure(path: str | Path, owner: bool = True) -> Iterator[None]:
    """Inside, a failure removes the claimed run folder ``path`` again while it is empty (:func:`release_dir`);
    ``owner``: whether this process claimed it (rank 0), the only one that may remove it."""
    try:
        yield
    except BaseException:
        if owner:
            release_dir(path)
        raise


def set_aside(path: str | Path) -> Path | None:
    """Rename an existing ``path`` (``results.csv``) to the first free ``results.old1.csv``, ``.old2``...;
    returns the new name, or None when there was nothing to move."""
    path = Path(path)
    n = 1
    while path.exists():
        target = path.with_name(f"{path.stem}.old{n}{path.suffix}")
        try:
            os.link(path, target)  # fails if target exists: two runs never pick the same name
        except FileExistsError:
            n += 1
            continue
        path.unlink()
        return target
    return None


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
