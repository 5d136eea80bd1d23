"""Scanning a split: find images, check they open, read and validate their labels, cache the result.

Usage::

    cfg = load_data_yaml("data.yaml")
    records, report = scan_split(cfg["train"], cfg["nc"], "train", root=cfg["path"])
    LOGGER.info(f"train: {report.summary()}")

YOLO sources are scanned here; COCO and VOC sources are handed to :mod:`yolotrain.data.formats`,
which produce the same records and the same report.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from PIL import Image

from yolotrain.data import label_parse as lp
from yolotrain.data.label_cache import cached_scan, folders_hash
from yolotrain.data.records import ImageRecord
from yolotrain.data.yolo_paths import compact_cache_path_for, img_to_label_path, is_image_file, list_images_and_folders
from yolotrain.errors import DataError

LOGGER = logging.getLogger("yolotrain")

MAX_WARNINGS = 20
PROCESS_SCAN_MIN = 4096  # images from which a first scan uses processes (below: threads)
SCAN_CHUNK = 256  # smallest number of images a process scans per task
_EXIF_ORIENTATION = 0x0112


@dataclass
class ScanReport:
    """What a scan found; counts are exact even when the warning lines are capped.

    Attributes:
        images_found: Image files listed by the sources.
        images_ok: Images that open and whose label file is usable (they become records).
        corrupt_images: Images that are missing, unreadable or not an image.
        missing_labels: Usable images without a label file (kept, with no boxes).
        empty_labels: Usable images with an empty label file (kept as background).
        malformed_label_files: Label files that could not be parsed (their image is skipped).
        missing_images: Images named by an annotation file (COCO/VOC) but absent on disk, skipped.
        duplicate_images: Repeated entries for the same image file (COCO/VOC), skipped.
        size_mismatches: Images whose size on disk differs from the size in their annotation file.
        dropped_rows: Dropped label rows (or annotations) by reason.
        duplicate_rows: Exact duplicate label rows removed.
        clipped_rows: Boxes clipped by a negligible amount (<= 0.01 normalized), not warned about.
        out_of_range_rows: Boxes clipped by more than that.
        instances: Boxes kept in total, crowd boxes included.
        crowd_instances: Kept boxes flagged crowd (COCO ``iscrowd``, VOC ``difficult``).
        messages: One line per problem, naming the file and the reason.
        split: Split name used in messages.
        from_cache: True when every source was read from its label cache.
    """

    images_found: int = 0
    images_ok: int = 0
    corrupt_images: int = 0
    missing_labels: int = 0
    empty_labels: int = 0
    malformed_label_files: int = 0
    missing_images: int = 0
    duplicate_images: int = 0
    size_mismatches: int = 0
    dropped_rows: dict[str, int] = field(default_factory=dict)
    duplicate_rows: int = 0
    clipped_rows: int = 0
    out_of_range_rows: int = 0
    instances: int = 0
    crowd_instances: int = 0
    messages: list[str] = field(default_factory=list)
    split: str = ""
    from_cache: bool = False

    def merge(self, other: ScanReport) -> None:
        """Add another report's counts and messages into this one."""
        for f in fields(self):
            if f.type in ("int", int):  # every count; not the flags, lists and dicts
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        for k, v in other.dropped_rows.items():
            self.dropped_rows[k] = self.dropped_rows.get(k, 0) + v
        self.messages.extend(other.messages)

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict (for the label cache)."""
        d = asdict(self)
        d.pop("from_cache")
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ScanReport:
        """Inverse of :meth:`to_json`; unknown keys are ignored."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def summary(self) -> str:
        """One line for the log before training (without the split name; the caller adds it)."""
        head = f"{self.images_ok}/{self.images_found} images usable, {self.instances} boxes"
        if self.crowd_instances:
            head += f" ({self.crowd_instances} crowd/difficult, not trained on)"
        problems = []
        if self.missing_images:
            problems.append(f"{self.missing_images} missing images skipped")
        if self.duplicate_images:
            problems.append(f"{self.duplicate_images} duplicate image entries skipped")
        if self.size_mismatches:
            problems.append(f"{self.size_mismatches} images differ in size from their annotation")
        if self.corrupt_images:
            problems.append(f"{self.corrupt_images} corrupt images skipped")
        if self.malformed_label_files:
            problems.append(f"{self.malformed_label_files} malformed label files (images skipped)")
        if self.missing_labels:
            problems.append(f"{self.missing_labels} images without label file")
        if self.empty_labels:
            problems.append(f"{self.empty_labels} background images")
        n_dropped = sum(self.dropped_rows.values())
        if n_dropped:
            reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.dropped_rows.items()))
            problems.append(f"{n_dropped} label rows dropped ({reasons})")
        if self.duplicate_rows:
            problems.append(f"{self.duplicate_rows} duplicate rows removed")
        if self.out_of_range_rows or self.clipped_rows:
            problems.append(
                f"{self.out_of_range_rows + self.clipped_rows} boxes clipped ({self.out_of_range_rows} by more than 1%)"
            )
        tail = " (from cache)" if self.from_cache else ""
        return head + tail + ("; " + "; ".join(problems) if problems else "")

    def log_problems(self, max_lines: int = MAX_WARNINGS) -> None:
        """Log each problem as a warning, capped at ``max_lines`` plus one "... and N more" line."""
        for msg in self.messages[:max_lines]:
            LOGGER.warning(msg)
        if len(self.messages) > max_lines:
            LOGGER.warning(
                "... and %d more label/image problems in %s (counts in the summary are exact)",
                len(self.messages) - max_lines,
                self.split or "this split",
            )


def check_image(im_file: str) -> tuple[int, int] | str:
    """Verify an image opens and return its displayed size.

    Args:
        im_file: Image path.

    Returns:
        ``(height, width)`` after EXIF orientation (90/270 degree rotations swap them), or an error
        message naming the file. A truncated JPEG is an error: ``verify()`` reads only its headers,
        and OpenCV would decode it partially (the rest grey) with a warning that names no file.
    """
    if not is_image_file(im_file):
        return f"{im_file}: unsupported image extension, skipped"
    try:
        with Image.open(im_file) as im:
            if im.format == "JPEG":
                # A JPEG's size and EXIF are parsed by open() and survive verify(): one open, not two
                # (PNG refuses verify() after its chunks were read, so other formats open twice).
                w, h = im.size
                orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
            im.verify()  # cheap integrity check; the object is unusable afterwards
        if im.format != "JPEG":
            with Image.open(im_file) as im:
                w, h = im.size
                orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
        elif _jpeg_truncated(im_file):
            return (
                f"{im_file}: truncated JPEG (the data ends before the end-of-image marker; it would "
                f"decode only partially), skipped"
            )
    except FileNotFoundError:
        return f"{im_file}: image file not found, skipped"
    except Exception as e:  # PIL raises many types (SyntaxError, struct.error, ...) for bad files
        return f"{im_file}: corrupt or unreadable image ({type(e).__name__}), skipped"
    if w < 2 or h < 2:
        return f"{im_file}: image is only {w}x{h} pixels, skipped"
    if orientation in (5, 6, 7, 8):  # transposed / rotated 90 or 270 degrees
        w, h = h, w
    return h, w


def _jpeg_truncated(im_file: str) -> bool:
    """Whether a JPEG's compressed data stops early (its pixels would be partly missing).

    Fast path: a file that ends with the end-of-image marker (0xFFD9, padding allowed) is whole. Otherwise
    the image is decoded once: bytes after a complete image (camera extras, an appended motion clip) are
    harmless, a decoder error ("image file is truncated") is not.
    """
    with open(im_file, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 16))
        if f.read().rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9"):
            return False
    try:
        with Image.open(im_file) as im:
            im.load()
    except OSError:
        return True
    return False


def _scan_one(im_file: str, nc: int) -> tuple[tuple[int, int] | str, lp.LabelResult | None]:
    shape = check_image(im_file)
    if isinstance(shape, str):
        return shape, None
    return shape, lp.parse_label_file(img_to_label_path(im_file), nc)


def class_id_error(label_file: str, nc: int) -> str:
    """One line naming the first row of ``label_file`` whose class id is outside ``[0, nc)``."""
    bad = []
    try:
        with open(label_file, encoding="utf-8") as f:
            for row, line in enumerate(f, 1):
                tokens = line.split()
                try:
                    c = float(tokens[0])
                except (IndexError, ValueError):
                    continue
                if c == round(c) and not 0 <= c < nc:
                    bad.append((row, int(c)))
    except (OSError, UnicodeDecodeError):
        pass
    if not bad:
        return f"{label_file}: a class id is outside [0, {nc})"
    row, c = bad[0]
    more = f" ({len(bad) - 1} more rows like it)" if len(bad) > 1 else ""
    return (
        f"{label_file}: row {row}: class id {c} is outside [0, {nc}){more}; the data YAML names {nc} "
        "classes: fix the label or the class names"
    )


def _scan_chunk(im_files: list[str], nc: int) -> list[tuple[tuple[int, int] | str, lp.LabelResult | None]]:
    return [_scan_one(f, nc) for f in im_files]


def _scan_many(im_files: list[str], nc: int, workers: int) -> list[tuple[tuple[int, int] | str, lp.LabelResult | None]]:
    """:func:`_scan_one` over every file, in input order.

    Large scans go to processes in chunks: with the files in the page cache, PIL's header parsing
    holds the GIL and threads cannot use more than one core. Small scans (and single-core machines)
    use threads, which overlap the file reads that dominate on cold disks and network filesystems.
    """
    cpus = os.cpu_count() or 1
    if len(im_files) >= PROCESS_SCAN_MIN and cpus > 1 and "fork" in mp.get_all_start_methods():
        n = min(cpus, workers)
        size = max(SCAN_CHUNK, -(-len(im_files) // (n * 8)))
        chunks = [im_files[i : i + size] for i in range(0, len(im_files), size)]
        try:
            # fork: the children inherit the imported modules instead of importing them again
            with ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("fork")) as pool:
                return [r for part in pool.map(_scan_chunk, chunks, [nc] * len(chunks)) for r in part]
        except (OSError, BrokenProcessPool) as e:  # no processes allowed here: fall back to threads
            LOGGER.debug("process scan unavailable (%s), using threads", e)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda f: _scan_one(f, nc), im_files))


def _scan_files(im_files: list[str], nc: int, workers: int) -> tuple[list[ImageRecord], ScanReport]:
    rep = ScanReport(images_found=len(im_files))
    records: list[ImageRecord] = []
    bad_class_files: list[str] = []
    results = _scan_many(im_files, nc, workers)
    for im_file, (shape, lab) in zip(im_files, results):
        if isinstance(shape, str):
            rep.corrupt_images += 1
            rep.messages.append(shape)
            continue
        assert lab is not None
        rep.messages.extend(lab.messages)
        if lab.status == lp.STATUS_MALFORMED:
            rep.malformed_label_files += 1
            continue
        if lab.dropped.get(lp.DROP_CLASS_OUT_OF_RANGE):
            # Not dropped: a class id the model does not have usually means wrong class names, and
            # training on the rest would silently learn from a mislabelled set.
            bad_class_files.append(img_to_label_path(im_file))
        rep.missing_labels += int(lab.status == lp.STATUS_MISSING)
        rep.empty_labels += int(lab.status == lp.STATUS_EMPTY)
        for k, v in lab.dropped.items():
            rep.dropped_rows[k] = rep.dropped_rows.get(k, 0) + v
        rep.duplicate_rows += lab.duplicates
        rep.clipped_rows += lab.clipped
        rep.out_of_range_rows += lab.out_of_range
        rep.instances += len(lab.cls)
        rep.images_ok += 1
        records.append(ImageRecord(im_file, shape[0], shape[1], lab.cls, lab.bboxes))
    if bad_class_files:
        more = f" (and {len(bad_class_files) - 1} more label files)" if len(bad_class_files) > 1 else ""
        raise DataError(class_id_error(bad_class_files[0], nc) + more)
    return records, rep


def check_images(im_files: list[str], workers: int) -> list[tuple[int, int] | str]:
    """:func:`check_image` over many files on a thread pool, in input order.

    Args:
        im_files: Image paths.
        workers: Threads.

    Returns:
        Per file, ``(height, width)`` or the error message.
    """
    # Threads overlap the file reads, which dominate on cold disks and network filesystems
    # (with everything in the page cache, PIL's header parsing holds the GIL and one thread does
    # about 3k images/s). Processes would add pickling for no gain there.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(check_image, im_files))


def scan_yolo_source(
    source: str, nc: int, split: str, root: str | None, use_cache: bool, workers: int
) -> tuple[list[ImageRecord], ScanReport, bool]:
    """One YOLO folder or image list -> ``(records, report, read_from_cache)``."""
    im_files, image_dirs = list_images_and_folders(source, root)
    # The key looks at folders, not files (see folders_hash: what it cannot see is documented there).
    label_dirs = [os.path.dirname(img_to_label_path(os.path.join(d, "x.jpg"))) for d in image_dirs]
    key = folders_hash(im_files, [*image_dirs, *label_dirs], nc) if use_cache else ""
    return cached_scan(
        compact_cache_path_for(source),
        key,
        use_cache,
        lambda: _scan_files(im_files, nc, workers),
        ScanReport.from_json,
        f"{split}: scanning {len(im_files)} images in {source}" if im_files else None,
        nc=nc,
    )
