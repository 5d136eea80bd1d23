"""Dataset formats besides YOLO (COCO JSON, Pascal VOC), all read into :class:`ImageRecord` lists.

:func:`scan_annotated_source` is what :func:`~yolotrain.data.labels.scan_split` calls for a COCO or
VOC split entry; it adds the label cache on top of the format readers.
"""

from __future__ import annotations

import logging
import os

from yolotrain.data.formats.coco import check_category_count, coco_image_files, records_from_index
from yolotrain.data.formats.coco_index import coco_names, load_coco_index
from yolotrain.data.formats.split_source import (
    FORMAT_COCO,
    FORMAT_VOC,
    FORMAT_YOLO,
    FORMATS,
    SplitSource,
    detect_format,
    is_voc_list,
)
from yolotrain.data.formats.voc import records_from_voc, voc_files, voc_names
from yolotrain.data.label_cache import cached_scan, files_hash
from yolotrain.data.labels import ScanReport
from yolotrain.data.records import ImageRecord
from yolotrain.data.yolo_paths import cache_path_for
from yolotrain.errors import DataError

LOGGER = logging.getLogger("yolotrain")

__all__ = [
    "FORMATS",
    "FORMAT_COCO",
    "FORMAT_VOC",
    "FORMAT_YOLO",
    "SplitSource",
    "coco_names",
    "detect_format",
    "is_voc_list",
    "load_coco_index",
    "scan_annotated_source",
    "voc_names",
]


def scan_annotated_source(
    source: str, nc: int, split: str, use_cache: bool = True, workers: int = 8
) -> tuple[list[ImageRecord], ScanReport, bool]:
    """Scan one COCO ``.json`` or VOC image-set list, through the label cache.

    The cache sits beside the entry (``instances_val.cache.json``, ``ImageSets/Main/val.cache.json``)
    and is keyed on every image and annotation file plus what else changes the result (class count,
    VOC class names, COCO image folder).

    Args:
        source: The split entry; a :class:`SplitSource` from ``load_data_yaml`` carries the COCO
            image folder and the VOC class names.
        nc: Number of classes.
        split: Split name, for messages and the COCO image-folder search.
        use_cache: Read and write the label cache.
        workers: Threads for the image checks.

    Returns:
        ``(records, report, read_from_cache)``.

    Raises:
        DataError: The annotation file or list is missing or malformed as a whole, the class count
            disagrees, or (COCO) no image folder holds the images.
    """
    fmt = detect_format(source)
    if not os.path.exists(source):
        raise DataError(f"{source}: {fmt.upper()} split entry not found")
    if fmt == FORMAT_COCO:
        index, img_dir, im_files = coco_image_files(source, split)
        check_category_count(index, nc)
        key_files, extra = [index.json_file], f"coco|{img_dir}"
        LOGGER.debug("%s: images of %s are in %s", split, source, img_dir)

        def scan() -> tuple[list[ImageRecord], ScanReport]:
            return records_from_index(index, im_files, nc, workers)
    elif fmt == FORMAT_VOC:
        names = getattr(source, "names", None)
        if names is None:
            # A bare path (not from load_data_yaml): this list's own names. Other splits may differ.
            names = voc_names([str(source)])
            LOGGER.info(
                "%s: no class names given for %s, using the %d found in its XML files", split, source, len(names)
            )
        if len(names) != nc:
            raise DataError(f"{source}: {len(names)} VOC class names but {nc} classes are expected")
        _, im_files, key_files = voc_files(source)
        extra = "voc|" + "\x1f".join(names)

        def scan() -> tuple[list[ImageRecord], ScanReport]:
            return records_from_voc(str(source), names, workers)
    else:
        raise DataError(f"{source}: not a COCO or VOC split entry")

    key = files_hash(im_files, key_files, nc, extra) if use_cache else ""
    return cached_scan(
        cache_path_for(source),
        key,
        use_cache,
        scan,
        ScanReport.from_json,
        f"{split}: scanning {len(im_files)} images of {source}" if im_files else None,
    )
