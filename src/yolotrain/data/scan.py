"""Scanning a split: every source (YOLO folder or list, COCO JSON, VOC list) into records and one report.

Kept apart from :mod:`yolotrain.data.labels` (the YOLO scanner) because it dispatches to every format,
and the formats use the YOLO scanner's report and image checks.
"""

from __future__ import annotations

import logging
import os

from yolotrain.data.formats import FORMAT_YOLO, detect_format, scan_annotated_source
from yolotrain.data.label_cache import first_invalid_row
from yolotrain.data.labels import ScanReport, scan_yolo_source
from yolotrain.data.records import ImageRecord
from yolotrain.data.yolo_paths import cache_path_for, compact_cache_path_for
from yolotrain.errors import DataError

LOGGER = logging.getLogger("yolotrain")


def _scan_source(
    source: str, nc: int, split: str, root: str | None, use_cache: bool, workers: int
) -> tuple[list[ImageRecord], ScanReport, bool]:
    if detect_format(source) == FORMAT_YOLO:
        return scan_yolo_source(str(source), nc, split, root, use_cache, workers)
    return scan_annotated_source(source, nc, split, use_cache, workers)


def scan_split(
    sources: list[str],
    nc: int,
    split: str = "train",
    *,
    root: str | None = None,
    use_cache: bool = True,
    workers: int | None = None,
    log_problems: bool = True,
) -> tuple[list[ImageRecord], ScanReport]:
    """Scan every source of a split into records, using and refreshing the label caches.

    Args:
        sources: Split entries as from :func:`~yolotrain.data.data_yaml.load_data_yaml`: folders of
            images and/or ``.txt`` image lists (YOLO), COCO ``.json`` files, or VOC
            ``ImageSets/Main/*.txt`` lists. Plain path strings work too; the format then follows
            from the path (:func:`~yolotrain.data.formats.detect_format`).
        nc: Number of classes.
        split: Split name, used in messages.
        root: Dataset root, a fallback for relative lines in YOLO ``.txt`` lists.
        use_cache: Read and write the label caches (``*.cache.npz`` for YOLO sources, ``*.cache.json`` for
            COCO/VOC).
        workers: Threads for the image checks (default: a few per CPU).
        log_problems: Log the problems as warnings (capped); ``data check`` prints them itself.

    Returns:
        ``(records, report)``; the summary is left to the caller
        (``logger.info(f"{split}: {report.summary()}")``).

    Raises:
        DataError: A source is missing or unreadable as a whole, the split has no usable image, or a
            label row has a class id outside ``[0, nc)`` (the message names the file and row).
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]  # type: ignore[list-item]
    if not sources:
        raise DataError(f"{split}: no image sources given")
    workers = workers or min(32, 4 * (os.cpu_count() or 1))
    records: list[ImageRecord] = []
    report = ScanReport(split=split, from_cache=use_cache)
    for source in sources:
        recs, rep, hit = _scan_source(source, nc, split, root, use_cache, workers)
        # A YOLO cache's rows were validated against nc as they were read (label_cache._load_compact)
        bad = None if hit and detect_format(source) == FORMAT_YOLO else first_invalid_row(recs, nc)
        if bad and hit:
            # Any format's cache: a row no scan could produce means the cache is not to be trusted.
            LOGGER.warning("%s: label cache %s holds an invalid row (%s); rebuilding it", split, source, bad)
            cache_path_for(source).unlink(missing_ok=True)
            compact_cache_path_for(source).unlink(missing_ok=True)
            recs, rep, hit = _scan_source(source, nc, split, root, use_cache, workers)
            bad = first_invalid_row(recs, nc)
        if bad:
            raise DataError(bad)
        report.from_cache &= hit
        records.extend(recs)
        report.merge(rep)

    if log_problems:
        report.log_problems()
    if not records:
        raise DataError(
            f"{split}: no usable images in {', '.join(map(str, sources))} "
            f"({report.images_found} found, {report.corrupt_images} corrupt, "
            f"{report.missing_images} missing, "
            f"{report.malformed_label_files} with malformed labels)"
        )
    LOGGER.debug("%s: %s", split, report.summary())
    return records, report
