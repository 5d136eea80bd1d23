"""COCO detection JSON -> :class:`ImageRecord` list, validated like YOLO labels.

Where the images are, for an annotation file ``<dir>/<stem>.json`` of split ``<split>`` (the first
folder in this order holding the most of the JSON's first 64 ``file_name`` values wins; absolute
``file_name`` values are used as they are):

* with ``images: <folder>`` in the data YAML: ``<folder>``, then ``<folder>/<tag>``;
* with ``images: {train: <folder>, val: <folder>}``: that split's folder only;
* otherwise ``<dir>``, ``<dir>/<tag>``, ``<dir>/../images/<tag>``, ``<dir>/../images``,
  ``<dir>/../<tag>``,

where ``<tag>`` is, in order, the part of the stem after its last ``_`` (``instances_val2017`` ->
``val2017``), the whole stem, and the split name. So the official layout
``annotations/instances_val2017.json`` + ``images/val2017/`` (or ``val2017/``) needs no ``images``
key.

Boxes are ``[x, y, w, h]`` in pixels of the image as annotated: they are normalized by the entry's
``width``/``height`` (by the image's own size when those are absent), so a JSON that describes a
resized copy of the images still lines up. ``iscrowd`` boxes stay in the records with
``crowd=True``: the dataset leaves them out of the training targets and the evaluator treats them
as COCO does (they neither count as misses nor make detections on them false positives).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from yolotrain.data.formats.boxes import check_pixel_boxes, first_occurrences
from yolotrain.data.formats.coco_index import DROP_MALFORMED, CocoIndex, load_coco_index
from yolotrain.data.label_parse import DROP_NON_FINITE, DROP_ZERO_SIZE, SMALL_OVERSHOOT
from yolotrain.data.labels import ScanReport, check_images
from yolotrain.data.records import ImageRecord
from yolotrain.errors import DataError

LOGGER = logging.getLogger("yolotrain")

DROP_UNKNOWN_IMAGE = "unknown_image"
DROP_UNKNOWN_CATEGORY = "unknown_category"
DROP_MALFORMED_IMAGE = "malformed_image_entry"
_SAMPLE = 64


def _tags(json_file: Path, split: str) -> list[str]:
    stem = json_file.stem
    tags = [stem.rsplit("_", 1)[-1], stem, split]
    return [t for i, t in enumerate(tags) if t and t not in tags[:i]]


def image_dir_candidates(json_file: str | os.PathLike[str], split: str, images: str | None = None) -> list[Path]:
    """Folders that may hold a COCO file's images, in the order they are tried (module docstring).

    Args:
        json_file: The annotation file.
        split: Split name (one of the tags tried).
        images: The data YAML's ``images`` folder for this split, if any.

    Returns:
        Candidate folders (they may not exist).
    """
    jf = Path(json_file)
    tags = _tags(jf, split)
    if images:
        base = Path(images)
        return [base, *(base / t for t in tags)]
    d = jf.parent
    return [d, *(d / t for t in tags), *(d.parent / "images" / t for t in tags), d.parent / "images",
            *(d.parent / t for t in tags)]  # fmt: skip


def find_image_dir(index: CocoIndex, split: str, images: str | None = None) -> Path:
    """The folder holding a COCO file's images (see the module docstring for the search order).

    Args:
        index: The parsed annotation file.
        split: Split name.
        images: The data YAML's ``images`` folder for this split, if any.

    Returns:
        The chosen folder.

    Raises:
        DataError: No candidate folder holds any of the images.
    """
    cands = [c for c in image_dir_candidates(index.json_file, split, images) if c.is_dir()]
    relative = [f for f in index.file_names if not os.path.isabs(f)]
    if not relative:
        return Path(index.json_file).parent
    for names in (relative[:_SAMPLE], relative):  # the full list only when the sample finds nothing
        hits = [sum(os.path.isfile(c / f) for f in names) for c in cands]
        if hits and max(hits) > 0:
            return cands[hits.index(max(hits))]  # ties: the earlier candidate
        if len(relative) <= _SAMPLE:
            break
    looked = ", ".join(str(c) for c in image_dir_candidates(index.json_file, split, images))
    raise DataError(
        f"{index.json_file}: none of its images found (looked in {looked}); "
        "set 'images:' in the data YAML to the image folder"
    )


def _lookup(sorted_keys: np.ndarray, order: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``values`` among keys (given sorted with ``order``) and a found-mask."""
    if len(sorted_keys) == 0:
        return np.zeros(len(values), np.int64), np.zeros(len(values), bool)
    j = np.clip(np.searchsorted(sorted_keys, values), 0, len(sorted_keys) - 1)
    return order[j], sorted_keys[j] == values


class _Messages:
    """Per-annotation problem lines: '<json>: annotation id N (image 'f'): what'.

    Args:
        index: The parsed file.
        rep: Report receiving the lines and drop counts.
        pos: Image entry of each annotation (meaningless where ``known`` is False).
        known: Whether each annotation's image id exists.
    """

    def __init__(self, index: CocoIndex, rep: ScanReport, pos: np.ndarray, known: np.ndarray) -> None:
        self.index, self.rep, self.pos, self.known = index, rep, pos, known

    def drop(self, ann: np.ndarray, reason: str, what: str) -> None:
        """Count annotations ``ann`` (indices) as dropped for ``reason`` and name each one."""
        if len(ann):
            self.rep.dropped_rows[reason] = self.rep.dropped_rows.get(reason, 0) + len(ann)
            self.note(ann, what)

    def note(self, ann: np.ndarray, what: str | list[str]) -> None:
        """One line per annotation index in ``ann``; ``what`` may give one text per annotation."""
        idx = self.index
        for k, i in enumerate(ann.tolist()):
            image = f" (image '{idx.file_names[self.pos[i]]}')" if self.known[i] else ""
            text = what[k] if isinstance(what, list) else what
            self.rep.messages.append(f"{idx.json_file}: annotation id {idx.ann_ids[i]}{image}: {text}")


def _check_entries(
    index: CocoIndex, im_files: list[str], rep: ScanReport, workers: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which image entries are usable, and their displayed (height, width) from the files."""
    k = len(im_files)
    ok = np.zeros(k, dtype=bool)
    hw = np.zeros((k, 2), dtype=np.int64)
    first_entry: dict[str, int] = {}
    to_check: list[int] = []
    for i, f in enumerate(im_files):
        if f in first_entry:
            rep.duplicate_images += 1
            rep.messages.append(
                f"{index.json_file}: image id {index.image_ids[i]} repeats file '{index.file_names[i]}' "
                f"of image id {index.image_ids[first_entry[f]]}, skipped with its annotations"
            )
        elif not os.path.isfile(f):
            first_entry[f] = i
            rep.missing_images += 1
            rep.messages.append(f"{index.json_file}: image id {index.image_ids[i]} file {f} not found, skipped")
        else:
            first_entry[f] = i
            to_check.append(i)
    for i, res in zip(to_check, check_images([im_files[i] for i in to_check], workers)):
        if isinstance(res, str):
            rep.corrupt_images += 1
            rep.messages.append(res)
        else:
            ok[i] = True
            hw[i] = res
    # Boxes live in the annotated image's pixels: normalize by the JSON's size when it gives one.
    json_hw = np.stack([index.heights, index.widths], 1) if k else np.zeros((0, 2), np.int64)
    has_json = (json_hw > 0).all(1)
    mismatch = ok & has_json & (json_hw != hw).any(1)
    for i in np.flatnonzero(mismatch):
        rep.messages.append(
            f"{index.json_file}: image id {index.image_ids[i]} is {hw[i, 1]}x{hw[i, 0]} on disk but "
            f"{json_hw[i, 1]}x{json_hw[i, 0]} in the JSON; boxes are scaled to the file"
        )
    rep.size_mismatches += int(mismatch.sum())
    norm_hw = np.where(has_json[:, None], json_hw, hw)
    return ok, hw, norm_hw


def records_from_index(
    index: CocoIndex, im_files: list[str], nc: int, workers: int = 8
) -> tuple[list[ImageRecord], ScanReport]:
    """Validate a COCO file's images and annotations into records.

    Args:
        index: The parsed annotation file.
        im_files: Absolute image path of each of ``index``'s image entries.
        nc: Number of classes (must equal the number of categories).
        workers: Threads for the image checks.

    Returns:
        ``(records sorted by image path, report)``.
    """
    rep = ScanReport(images_found=len(im_files))
    rep.messages.extend(index.malformed)
    if index.malformed_annotations:
        rep.dropped_rows[DROP_MALFORMED] = index.malformed_annotations
    n_bad_entries = len(index.malformed) - index.malformed_annotations
    if n_bad_entries:
        rep.dropped_rows[DROP_MALFORMED_IMAGE] = n_bad_entries
    ok, hw, norm_hw = _check_entries(index, im_files, rep, workers)

    order = np.argsort(index.image_ids, kind="stable")
    pos, known_img = _lookup(index.image_ids[order], order, index.ann_image_ids)
    cat_pos, known_cat = _lookup(index.category_ids, np.arange(len(index.category_ids)), index.ann_category_ids)
    msg = _Messages(index, rep, pos, known_img)
    msg.drop(np.flatnonzero(~known_img), DROP_UNKNOWN_IMAGE, "refers to an image id not in 'images', dropped")
    msg.drop(np.flatnonzero(known_img & ~known_cat), DROP_UNKNOWN_CATEGORY,
             "category id not in 'categories', dropped")  # fmt: skip
    # Annotations of skipped images (missing, corrupt, duplicate) go with their image, uncounted.
    a = np.flatnonzero(known_img & known_cat & ok[pos])  # annotation indices still in play
    p = pos[a]
    x, y, w, h = index.ann_bboxes[a].T
    with np.errstate(over="ignore"):  # absurd sizes become inf and are dropped as non-finite
        xyxy = np.stack([x, y, x + w, y + h], 1)
    chk = check_pixel_boxes(xyxy, norm_hw[p, 1], norm_hw[p, 0])
    msg.drop(a[chk.non_finite], DROP_NON_FINITE, "non-finite bbox, dropped")
    msg.drop(a[chk.zero_size], DROP_ZERO_SIZE, "bbox has zero width or height inside the image, dropped")
    texts = [f"bbox extends outside the image by {o:.3f} normalized (> {SMALL_OVERSHOOT}), clipped"
             for o in chk.overshoot[chk.big].tolist()]  # fmt: skip
    msg.note(a[chk.big], texts)
    rep.clipped_rows += int(chk.small.sum())
    rep.out_of_range_rows += int(chk.big.sum())
    a, p, boxes = a[chk.keep], p[chk.keep], chk.xywhn[chk.keep]
    cls = cat_pos[a]
    crowd = index.ann_crowd[a]

    # Exact repeats (same image, class, box, crowd flag) are annotation-tool accidents.
    first = first_occurrences(np.concatenate([p[:, None], cls[:, None], index.ann_bboxes[a], crowd[:, None]], 1))
    if not first.all():
        rep.duplicate_rows += int((~first).sum())
        msg.note(a[~first], "exact duplicate of an earlier annotation, removed")
        a, p, boxes, cls, crowd = a[first], p[first], boxes[first], cls[first], crowd[first]

    # Group by image, keeping the file order of annotations within an image.
    by_img = np.argsort(p, kind="stable")
    p, boxes, cls, crowd = p[by_img], boxes[by_img], cls[by_img], crowd[by_img]
    counts = np.bincount(p, minlength=len(im_files))
    ends = np.cumsum(counts)
    starts = ends - counts
    records = [
        ImageRecord(im_files[i], int(hw[i, 0]), int(hw[i, 1]), cls[starts[i]:ends[i]], boxes[starts[i]:ends[i]],
                    crowd=crowd[starts[i]:ends[i]])
        for i in np.flatnonzero(ok)
    ]  # fmt: skip
    rep.images_ok = len(records)
    rep.empty_labels = int((counts[ok] == 0).sum())
    rep.instances = len(cls)
    rep.crowd_instances = int(crowd.sum())
    records.sort(key=lambda r: r.im_file)
    return records, rep


def coco_image_files(source: str, split: str) -> tuple[CocoIndex, Path, list[str]]:
    """Parse a COCO split entry and locate its images.

    Args:
        source: The ``.json`` path (a :class:`~yolotrain.data.formats.SplitSource` may carry the
            data YAML's ``images`` folder).
        split: Split name.

    Returns:
        ``(index, image folder, absolute image path per image entry)``.
    """
    index = load_coco_index(source)
    img_dir = find_image_dir(index, split, getattr(source, "images", None))
    im_files = [os.path.normpath(os.path.join(img_dir, f)) for f in index.file_names]
    return index, img_dir, im_files


def check_category_count(index: CocoIndex, nc: int) -> None:
    """Raise a one-line DataError unless the file has exactly ``nc`` categories."""
    if len(index.category_ids) != nc:
        raise DataError(
            f"{index.json_file}: has {len(index.category_ids)} COCO categories but {nc} classes are expected "
            "(the data YAML's 'names' must list one name per category, or be left out)"
        )
