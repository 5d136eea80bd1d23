"""Caches of scanned labels, so a second run skips re-reading every image header and label file.

Never pickle (a cache file may come from anywhere, and unpickling runs code), always written
atomically (a crash or a concurrent writer never leaves a half-written file behind), and re-validated
when read. Two formats:

- YOLO sources: a compact ``.npz`` of flat arrays (:func:`folders_hash` key: the image list and the
  mtimes of the image and label folders, no stat per file; what that misses is documented there).
- COCO/VOC sources: JSON keyed by :func:`files_hash` (every image and annotation file's name, size
  and mtime, the class count, a format version and whatever else changes the result).

Under DDP one process per machine scans while the others wait on :func:`scan_lock`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from yolotrain.data.records import ImageRecord
from yolotrain.data.shm_cache import shm_dir

LOGGER = logging.getLogger("yolotrain")

CACHE_VERSION = 3  # 2: optional per-box crowd flags; 3: truncated JPEGs are no longer usable images


def files_hash(im_files: list[str], label_files: list[str], nc: int, extra: str = "") -> str:
    """Hash that changes when any image or label file is added, removed or modified.

    Args:
        im_files: Image paths.
        label_files: Label paths, one per image (missing files are part of the key too); for
            COCO/VOC the annotation files.
        nc: Number of classes (changes which rows are valid).
        extra: Anything else the scan result depends on.

    Returns:
        A hex digest.
    """
    h = hashlib.sha256(f"v{CACHE_VERSION}|nc={nc}|n={len(im_files)}|{extra}".encode())
    lines = []
    for f in (*im_files, *label_files):
        try:
            st = os.stat(f)
            lines.append(f"{f}|{st.st_size}|{st.st_mtime_ns}\n")
        except OSError:
            lines.append(f"{f}|missing\n")
    h.update("".join(lines).encode())  # one update: the same digest as one per line, less overhead
    return h.hexdigest()


def folders_hash(im_files: list[str], folders: list[str], nc: int, extra: str = "") -> str:
    """Cheap key of a YOLO split: the image list itself, and each image and label folder's mtime.

    No file is stat-ed (a stat per file costs about as much as reading the whole compact cache):
    adding, removing or renaming an image or label file changes its folder's modification time, and
    any change to the image list changes the names hashed. What this key does NOT see: a file
    rewritten in place under the same name (``echo ... >> a.txt``, a tool that overwrites a label
    file instead of replacing it), which leaves its folder's mtime alone. After such an edit, delete
    the split's ``*.cache.npz`` (or ``touch`` the labels folder) and the next run rescans.

    Args:
        im_files: Image paths as listed.
        folders: Folders holding the images and the label files (missing folders are part of the key too).
        nc: Number of classes.
        extra: Anything else the scan result depends on.
    """
    h = hashlib.sha256(f"v{CACHE_VERSION}|compact|nc={nc}|n={len(im_files)}|{extra}\n".encode())
    for d in sorted(set(folders)):
        try:
            h.update(f"{d}|{os.stat(d).st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{d}|missing\n".encode())
    h.update("\n".join(im_files).encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def save_cache(path: Path, key: str, records: list[ImageRecord], report: dict[str, Any]) -> bool:
    """Write the cache atomically; skip quietly (debug log) when the folder is not writable.

    Args:
        path: Cache file.
        key: Value of :func:`files_hash`.
        records: Scanned records.
        report: JSON-able scan report of the same scan.

    Returns:
        True when the cache was written.
    """
    if path.suffix == ".npz":
        return _write_atomic(path, lambda f: _save_compact(f, key, records, report))
    counts = [r.num_instances for r in records]
    boxes = np.concatenate([r.bboxes for r in records]) if records else np.zeros((0, 4), np.float32)
    cls = np.concatenate([r.cls for r in records]) if records else np.zeros(0, np.int64)
    # Crowd flags only exist for COCO/VOC records; a YOLO cache stores null.
    has_crowd = any(r.crowd is not None for r in records)
    crowd = (
        np.concatenate([r.crowd if r.crowd is not None else np.zeros(r.num_instances, bool) for r in records])
        if has_crowd
        else None
    )
    # Column-wise layout: much smaller and faster to load than one object per image.
    payload = {
        "version": CACHE_VERSION,
        "key": key,
        "im_files": [r.im_file for r in records],
        "shapes": [[r.height, r.width] for r in records],
        "counts": counts,
        "cls": cls.tolist(),
        "bboxes": boxes.astype(np.float32).tolist(),
        "crowd": None if crowd is None else crowd.astype(int).tolist(),
        "report": report,
    }
    data = json.dumps(payload, separators=(",", ":")).encode()  # the C encoder, then one write
    return _write_atomic(path, lambda f: f.write(data))


def _write_atomic(path: Path, write: Callable[[Any], Any]) -> bool:
    """Write ``path`` through a temporary file and a rename; False (debug log) when it cannot be written."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
        return True
    except (OSError, ValueError) as e:
        LOGGER.debug("label cache not written to %s (%s)", path, e)
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return False


def _save_compact(f: Any, key: str, records: list[ImageRecord], report: dict[str, Any]) -> None:
    """The compact cache: one ``.npz`` of flat arrays (no pickle), names as one newline-joined buffer."""
    names = [r.im_file for r in records]
    if any("\n" in n for n in names):
        raise ValueError("an image name holds a newline")
    counts = np.array([r.num_instances for r in records], dtype=np.int64)
    has_crowd = any(r.crowd is not None for r in records)
    arrays = {
        "version": np.array(CACHE_VERSION, dtype=np.int64),
        "key": np.frombuffer(key.encode(), dtype=np.uint8),
        "names": np.frombuffer("\n".join(names).encode("utf-8", "surrogateescape"), dtype=np.uint8),
        "shapes": np.array([(r.height, r.width) for r in records], dtype=np.int64).reshape(-1, 2),
        "counts": counts,
        "cls": np.concatenate([r.cls for r in records]) if records else np.zeros(0, np.int64),
        "bboxes": np.concatenate([r.bboxes for r in records]) if records else np.zeros((0, 4), np.float32),
        "report": np.frombuffer(json.dumps(report, separators=(",", ":")).encode(), dtype=np.uint8),
    }
    if has_crowd:
        arrays["crowd"] = np.concatenate(
            [r.crowd if r.crowd is not None else np.zeros(r.num_instances, bool) for r in records]
        )
    np.savez(f, **arrays)


def _load_compact(path: Path, key: str, nc: int | None) -> tuple[list[ImageRecord], dict[str, Any]] | None:
    with np.load(path, allow_pickle=False) as z:  # never pickle: a cache file may come from anywhere
        if int(z["version"]) != CACHE_VERSION or z["key"].tobytes() != key.encode():
            LOGGER.debug("label cache %s is stale, rescanning", path)
            return None
        names = z["names"].tobytes().decode("utf-8", "surrogateescape")
        shapes = z["shapes"].astype(np.int64, copy=False).reshape(-1, 2)
        counts = z["counts"].astype(np.int64, copy=False).reshape(-1)
        cls = z["cls"].astype(np.int64, copy=False).reshape(-1)
        boxes = z["bboxes"].astype(np.float32, copy=False).reshape(-1, 4)
        crowd = z["crowd"].astype(bool, copy=False).reshape(-1) if "crowd" in z.files else None
        report = json.loads(z["report"].tobytes())
    im_files = names.split("\n") if len(shapes) else []
    n = len(im_files)
    if not (len(counts) == len(shapes) == n and counts.sum() == len(cls) == len(boxes)) or (counts < 0).any():
        raise ValueError("inconsistent lengths")
    if crowd is not None and len(crowd) != len(cls):
        raise ValueError("inconsistent crowd flags")
    if not isinstance(report, dict):
        raise ValueError("report is not a mapping")
    bad = _first_invalid(shapes, counts, cls, boxes, nc)
    if bad is not None:
        i, what = bad
        LOGGER.warning("label cache %s holds an invalid row (%s: %s); rebuilding it", path, im_files[i], what)
        return None
    ends = np.cumsum(counts)
    starts = ends - counts
    hs, ws = shapes[:, 0].tolist(), shapes[:, 1].tolist()
    records = ImageRecord.spans(im_files, hs, ws, starts.tolist(), ends.tolist(), (cls, boxes, crowd))
    return records, report


def _first_invalid(
    shapes: np.ndarray, counts: np.ndarray, cls: np.ndarray, boxes: np.ndarray, nc: int | None
) -> tuple[int, str] | None:
    """``(image index, what)`` of the first invalid image size or label row, or None (see first_invalid_row).

    Args:
        shapes: (n, 2) image ``(h, w)``.
        counts: Label rows of each image (n,).
        cls: Class ids of all rows, image after image.
        boxes: Normalized ``(cx, cy, w, h)`` of all rows (rows, 4).
        nc: Number of classes (None skips the class check).
    """
    small = np.flatnonzero((shapes < 1).any(1))
    if len(small):
        h, w = shapes[small[0]].tolist()
        return int(small[0]), f"image size {h}x{w} is not positive"
    if not len(cls):
        return None
    b = boxes.astype(np.float64)
    bad_cls = (cls < 0) | (cls >= nc) if nc is not None else np.zeros(len(cls), bool)
    with np.errstate(invalid="ignore"):
        lo, hi = b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2
        bad_box = ~np.isfinite(b).all(1) | (b[:, 2:] <= 0).any(1) | (lo < -1e-4).any(1) | (hi > 1 + 1e-4).any(1)
    bad = np.flatnonzero(bad_cls | bad_box)
    if not len(bad):
        return None
    k = int(bad[0])
    ends = np.cumsum(counts)
    i = int(np.searchsorted(ends, k, side="right"))
    row = k - int(ends[i] - counts[i]) + 1
    more = f" ({len(bad) - 1} more invalid rows)" if len(bad) > 1 else ""
    if bad_cls[k]:
        what = f"class id {int(cls[k])} is outside [0, {nc})"
    else:
        what = f"box {np.round(b[k], 4).tolist()} is not a finite box inside the image"
    return i, f"label row {row}: {what}{more}"


def first_invalid_row(records: list[ImageRecord], nc: int | None) -> str | None:
    """A message naming the first label row no scan could have produced, or None when all are valid.

    Valid rows have an integer class id in ``[0, nc)`` (when ``nc`` is given) and a finite box of
    positive size inside the image (normalized, up to float rounding); images are at least 1 px.
    Used on every record read back from a cache (a cache file may be stale, edited or damaged)
    and on every split before training.

    Args:
        records: Records to check.
        nc: Number of classes (None skips the class check).
    """
    if not records:
        return None
    shapes = np.array([(r.height, r.width) for r in records], dtype=np.int64)
    counts = np.array([r.num_instances for r in records], dtype=np.int64)
    cls = np.concatenate([r.cls for r in records])
    boxes = np.concatenate([r.bboxes for r in records])
    bad = _first_invalid(shapes, counts, cls, boxes, nc)
    return None if bad is None else f"{records[bad[0]].im_file}: {bad[1]}"


def load_cache(path: Path, key: str, nc: int | None = None) -> tuple[list[ImageRecord], dict[str, Any]] | None:
    """Load the cache if it exists, is well-formed, matches ``key`` and every row is valid.

    Args:
        path: Cache file.
        key: Expected :func:`files_hash` value.
        nc: Number of classes: rows are re-validated against it (:func:`first_invalid_row`), so a
            stale, edited or damaged cache never hands out a class id the model does not have.

    Returns:
        ``(records, report_dict)`` or None when the cache is absent, stale or corrupt.
    """
    if not path.is_file():
        return None
    if path.suffix == ".npz":
        try:
            return _load_compact(path, key, nc)
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:  # damage: rebuild
            LOGGER.warning("label cache %s is corrupt (%s), rebuilding it", path, type(e).__name__)
            return None
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        if d.get("version") != CACHE_VERSION or d.get("key") != key:
            LOGGER.debug("label cache %s is stale, rescanning", path)
            return None
        counts = np.asarray(d["counts"], dtype=np.int64)
        cls = np.asarray(d["cls"], dtype=np.int64).reshape(-1)
        boxes = np.asarray(d["bboxes"], dtype=np.float32).reshape(-1, 4)
        shapes = np.asarray(d["shapes"], dtype=np.int64).reshape(-1, 2)
        crowd = None if d.get("crowd") is None else np.asarray(d["crowd"], dtype=bool).reshape(-1)
        im_files = d["im_files"]
        report = d["report"]
        n = len(im_files)
        if not (len(counts) == len(shapes) == n and counts.sum() == len(cls) == len(boxes)):
            raise ValueError("inconsistent lengths")
        if crowd is not None and len(crowd) != len(cls):
            raise ValueError("inconsistent crowd flags")
        if not isinstance(report, dict):
            raise ValueError("report is not a mapping")
        ends = np.cumsum(counts)
        starts = ends - counts
        if not all(isinstance(f, str) for f in im_files):
            raise ValueError("image names are not strings")
        # Arrays are already typed and shaped: skip ImageRecord's per-field conversions.
        hw, s_, e_ = shapes.tolist(), starts.tolist(), ends.tolist()
        records = [
            ImageRecord.trusted(
                im_files[i], hw[i][0], hw[i][1], cls[s_[i] : e_[i]], boxes[s_[i] : e_[i]],
                None if crowd is None else crowd[s_[i] : e_[i]],
            )
            for i in range(n)
        ]  # fmt: skip
        bad = first_invalid_row(records, nc)
        if bad:
            LOGGER.warning("label cache %s holds an invalid row (%s); rebuilding it", path, bad)
            return None
        return records, report
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        # json.JSONDecodeError is a ValueError; any damage simply means "rebuild".
        LOGGER.warning("label cache %s is corrupt (%s), rebuilding it", path, type(e).__name__)
        return None


def cached_scan(
    cache_file: Path,
    key: str,
    use_cache: bool,
    scan: Callable[[], tuple[list[ImageRecord], Any]],
    report_from_json: Callable[[dict[str, Any]], Any],
    message: str | None,
    nc: int | None = None,
) -> tuple[list[ImageRecord], Any, bool]:
    """Records from the cache when its key matches, else from ``scan()`` (then cached).

    Shared by every label format, so they all get the same invalidation and the same safe format.
    ``message`` is logged before a scan; None means there are no files (nothing is scanned or cached).
    ``nc``, when given, re-validates the cached rows (see :func:`load_cache`).

    Returns:
        ``(records, report, read_from_cache)``.
    """
    if not (use_cache and message):
        return _scan_or_load(cache_file, key, use_cache, scan, report_from_json, message, nc)
    # One process per machine scans; the others wait on a file lock (no collective, so no DDP timeout
    # runs while they wait) and then read the cache it wrote.
    with scan_lock(cache_file):
        return _scan_or_load(cache_file, key, use_cache, scan, report_from_json, message, nc)


def _scan_or_load(cache_file, key, use_cache, scan, report_from_json, message, nc):
    cached = load_cache(cache_file, key, nc) if use_cache else None
    if cached is not None:
        LOGGER.debug("labels read from cache %s", cache_file)
        return cached[0], report_from_json(cached[1]), True
    if message:
        LOGGER.info(message)
    records, report = scan()
    if use_cache and message:
        save_cache(cache_file, key, records, report.to_json())
    return records, report, False


@contextlib.contextmanager
def scan_lock(cache_file: Path) -> Iterator[None]:
    """Hold this machine's lock on scanning ``cache_file``'s source (an exclusive ``flock``).

    The lock file lives in the shared-memory folder (``/dev/shm``), named by a hash of the cache path,
    so a read-only dataset folder needs no lock file and none is left in it (the holder removes it).
    A process that holds the lock and dies releases it (the kernel drops a dead process's locks); the
    next waiter then finds no cache and scans itself. Without a lock folder (or on a filesystem
    without flock) every process scans, as before.
    """
    name = hashlib.sha256(str(Path(cache_file).absolute()).encode()).hexdigest()[:24]
    lock = shm_dir() / f"yolotrain-scan-{name}.lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        LOGGER.debug("no scan lock for %s (%s)", cache_file, e)
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            LOGGER.info("waiting for another process scanning the labels of %s", cache_file)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            LOGGER.debug("no scan lock for %s (%s)", cache_file, e)
        yield
    finally:
        # Removed while held: a process still waiting on it then finds the cache written; one arriving
        # later makes a new lock file and finds the cache too (at worst two processes scan, never a wrong read).
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)
