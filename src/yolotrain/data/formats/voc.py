"""Pascal VOC -> :class:`ImageRecord` list, validated like YOLO labels.

A split entry is an image-set list ``<VOC>/ImageSets/Main/<split>.txt`` with one image id per line
(the first token; per-class lists such as ``car_train.txt`` are therefore *not* filters). For id
``<id>`` the annotation is ``<VOC>/Annotations/<id>.xml`` and the image
``<VOC>/JPEGImages/<id>.jpg`` (other image extensions are tried when that file does not exist).

Coordinates: VOC ``xmin..xmax`` are 1-based, inclusive pixel indices, so the box covers the
continuous 0-based range ``[xmin - 1, xmax]``; records store exactly that (normalized by the XML
``size``, or by the image's own size when the XML has none).

``difficult`` objects are kept in the records with ``crowd=True``: like VOC's own evaluation,
they are ignored when scoring (they neither count as misses nor make a detection on them a false
positive; matching uses COCO's crowd rule), and the dataset leaves them out of the training
targets. An image without an XML file is kept as a background image (and reported); a malformed or
hostile XML file skips its image.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from yolotrain.data.formats.boxes import check_pixel_boxes, first_occurrences
from yolotrain.data.formats.voc_xml import VocAnnotation, parse_voc_xml
from yolotrain.data.label_parse import DROP_NON_FINITE, DROP_ZERO_SIZE, SMALL_OVERSHOOT
from yolotrain.data.labels import ScanReport, check_images
from yolotrain.data.records import ImageRecord
from yolotrain.data.yolo_paths import IMG_EXTS
from yolotrain.errors import DataError

DROP_UNKNOWN_CLASS = "unknown_class"
DROP_MALFORMED_OBJECT = "malformed_object"
_EXTS = (".jpg", *sorted(e for e in IMG_EXTS if e != ".jpg"))


def voc_root(list_file: str | os.PathLike[str]) -> Path:
    """The VOC folder (holding ``Annotations``, ``JPEGImages``, ``ImageSets``) of an image-set list."""
    return Path(os.path.abspath(list_file)).parents[2]


def read_image_ids(list_file: str | os.PathLike[str]) -> list[str]:
    """Image ids of a VOC image-set list, in file order, repeats included.

    Raises:
        DataError: The list cannot be read.
    """
    try:
        lines = Path(list_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{list_file}: cannot read VOC image-set list ({type(e).__name__})") from None
    return [ln.split()[0] for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def _image_path(jpeg_dir: Path, image_id: str) -> str:
    for ext in _EXTS:
        for e in (ext, ext.upper()):
            p = jpeg_dir / f"{image_id}{e}"
            if p.is_file():
                return str(p)
    return str(jpeg_dir / f"{image_id}.jpg")  # missing: reported under the conventional name


def voc_files(list_file: str | os.PathLike[str]) -> tuple[list[str], list[str], list[str]]:
    """Ids, image paths and XML paths of a VOC image-set list.

    Returns:
        ``(ids, image files, xml files)``, parallel lists in list order (repeats included).
    """
    root = voc_root(list_file)
    ids = read_image_ids(list_file)
    jpeg, ann = root / "JPEGImages", root / "Annotations"
    return ids, [_image_path(jpeg, i) for i in ids], [str(ann / f"{i}.xml") for i in ids]


def voc_names(list_files: list[str]) -> list[str]:
    """The sorted set of object names in the XML files of all the given image-set lists.

    Used when the data YAML has no ``names``; reading every split's files makes train and val
    agree on the class ids. Malformed XML is skipped here (the scan reports it).
    """
    found: set[str] = set()
    for lf in list_files:
        for xml in voc_files(lf)[2]:
            ann = parse_voc_xml(xml)
            if isinstance(ann, VocAnnotation):
                found.update(ann.names)
    return sorted(found)


def _boxes_for_image(
    xml_file: str, ann: VocAnnotation, lookup: dict[str, int], hw: tuple[int, int], rep: ScanReport
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated (cls, xywhn, crowd) of one XML file; problems are counted into ``rep``."""

    def drop(mask: np.ndarray, reason: str, what: str) -> None:
        n = int(mask.sum())
        if n:
            rep.dropped_rows[reason] = rep.dropped_rows.get(reason, 0) + n
            rep.messages.append(f"{xml_file}: {n} objects dropped, {what}")

    if ann.malformed:
        n_bad = rep.dropped_rows.get(DROP_MALFORMED_OBJECT, 0) + len(ann.malformed)
        rep.dropped_rows[DROP_MALFORMED_OBJECT] = n_bad
        rep.messages.extend(ann.malformed)
    cls = np.asarray([lookup.get(n, -1) for n in ann.names], dtype=np.int64)
    unknown = cls < 0
    if unknown.any():
        bad = sorted({n for n, u in zip(ann.names, unknown) if u})
        drop(unknown, DROP_UNKNOWN_CLASS, f"class name not in the data YAML's names: {', '.join(bad)}")
    if ann.width and ann.height:
        norm_w, norm_h = ann.width, ann.height
        if (ann.height, ann.width) != hw:
            rep.size_mismatches += 1
            rep.messages.append(
                f"{xml_file}: image is {hw[1]}x{hw[0]} on disk but {ann.width}x{ann.height} in <size>; "
                "boxes are scaled to the file"
            )
    else:
        norm_w, norm_h = hw[1], hw[0]
    # 1-based inclusive pixel indices -> 0-based continuous corners.
    xyxy = ann.boxes - np.array([1.0, 1.0, 0.0, 0.0])
    chk = check_pixel_boxes(xyxy, norm_w, norm_h)
    known = ~unknown
    drop(known & chk.non_finite, DROP_NON_FINITE, "non-finite coordinate")
    drop(known & chk.zero_size, DROP_ZERO_SIZE, "zero width or height inside the image")
    keep = known & chk.keep
    rep.clipped_rows += int((keep & chk.small).sum())
    big = keep & chk.big
    if big.any():
        rep.out_of_range_rows += int(big.sum())
        rep.messages.append(
            f"{xml_file}: {int(big.sum())} boxes extend outside the image "
            f"(by up to {float(chk.overshoot[big].max()):.3f} normalized, > {SMALL_OVERSHOOT}), clipped"
        )
    cls, boxes, crowd = cls[keep], chk.xywhn[keep], ann.difficult[keep]
    first = first_occurrences(np.concatenate([cls[:, None], ann.boxes[keep], crowd[:, None]], 1))
    if not first.all():
        rep.duplicate_rows += int((~first).sum())
        rep.messages.append(f"{xml_file}: {int((~first).sum())} duplicate objects removed")
        cls, boxes, crowd = cls[first], boxes[first], crowd[first]
    return cls, boxes, crowd


def records_from_voc(
    list_file: str, names: list[str] | tuple[str, ...], workers: int = 8
) -> tuple[list[ImageRecord], ScanReport]:
    """Validate the images and XML files of a VOC image-set list into records.

    Args:
        list_file: ``<VOC>/ImageSets/Main/<split>.txt``.
        names: Class names; an object's ``<name>`` must be one of them.
        workers: Threads for the image checks.

    Returns:
        ``(records sorted by image path, report)``.
    """
    ids, im_files, xml_files = voc_files(list_file)
    rep = ScanReport(images_found=len(ids))
    lookup = {n: i for i, n in enumerate(names)}
    seen: set[str] = set()
    todo: list[int] = []
    for i, image_id in enumerate(ids):
        if image_id in seen:
            rep.duplicate_images += 1
            rep.messages.append(f"{list_file}: image id {image_id} is listed again, skipped")
        elif not os.path.isfile(im_files[i]):
            seen.add(image_id)
            rep.missing_images += 1
            rep.messages.append(f"{list_file}: image id {image_id}: {im_files[i]} not found, skipped")
        else:
            seen.add(image_id)
            todo.append(i)
    records: list[ImageRecord] = []
    for i, shape in zip(todo, check_images([im_files[i] for i in todo], workers)):
        if isinstance(shape, str):
            rep.corrupt_images += 1
            rep.messages.append(shape)
            continue
        ann = parse_voc_xml(xml_files[i])
        if isinstance(ann, str):
            rep.malformed_label_files += 1
            rep.messages.append(ann + ", image skipped")
            continue
        if ann is None:
            rep.missing_labels += 1
            rep.messages.append(f"{xml_files[i]}: annotation file missing, image kept as background")
            cls, boxes, crowd = np.zeros(0, np.int64), np.zeros((0, 4), np.float32), np.zeros(0, bool)
        else:
            cls, boxes, crowd = _boxes_for_image(xml_files[i], ann, lookup, shape, rep)
            rep.empty_labels += int(len(cls) == 0)
        records.append(ImageRecord(im_files[i], shape[0], shape[1], cls, boxes, crowd=crowd))
        rep.instances += len(cls)
        rep.crowd_instances += int(crowd.sum())
    rep.images_ok = len(records)
    records.sort(key=lambda r: r.im_file)
    return records, rep
