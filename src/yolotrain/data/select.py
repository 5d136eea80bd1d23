"""Data selection: ``fraction`` (a seeded subset of the train split), ``classes`` (a subset of the classes)
and ``single_cls`` (every class as one).

They act on the scanned records, before any dataset is built, so every format (YOLO, COCO, VOC) and every
later stage (sampler, mosaic, evaluation) sees the selected data only. Records are never modified in place:
a record whose labels change is replaced by a new one.
"""

from __future__ import annotations

import logging

import numpy as np

from yolotrain.data.records import ImageRecord
from yolotrain.errors import ConfigError

LOGGER = logging.getLogger("yolotrain")

SINGLE_CLASS_NAME = "object"  # the one class's name under single_cls (kept when the data has one class already)
_FRACTION_STREAM = 0xF4AC  # the subset's generator is seeded with (seed, this): independent of other draws


def take_fraction(records: list[ImageRecord], fraction: float, seed: int) -> list[ImageRecord]:
    """A random ``fraction`` of ``records`` (at least one), the same for the same ``seed``, in their original order.

    ``round(fraction * n)`` images are drawn without replacement by a generator seeded with ``seed`` alone, so
    every rank of a distributed run, a resumed run and a rerun draw the same subset.
    """
    n = len(records)
    if fraction >= 1.0 or n == 0:
        return list(records)
    k = min(max(1, round(fraction * n)), n)
    pick = np.sort(np.random.default_rng([int(seed), _FRACTION_STREAM]).choice(n, size=k, replace=False))
    LOGGER.info(f"fraction={fraction:g}: training on {k} of {n} images (a subset drawn with seed {seed})")
    return [records[i] for i in pick.tolist()]


def keep_classes(records: list[ImageRecord], classes: list[int], nc: int, split: str = "train") -> list[ImageRecord]:
    """Drop the labels whose class is not in ``classes`` (ids are kept as they are); images stay, as backgrounds.

    Logs ``classes=[0, 2]: dropped N labels of other classes in M images``.

    Raises:
        ConfigError: When a class id is not one of the data's ``nc`` classes.
    """
    wanted = sorted({int(c) for c in classes})
    bad = [c for c in wanted if c >= nc]
    if bad:
        raise ConfigError(
            f"setting 'classes'={wanted}: class {bad[0]} is not one of the data's {nc} classes (0..{nc - 1})"
        )
    counts = np.fromiter((r.num_instances for r in records), dtype=np.int64, count=len(records))
    if counts.sum() == 0:
        keep_all = np.zeros(0, dtype=bool)
    else:
        keep_all = np.isin(np.concatenate([r.cls for r in records]), wanted)  # one call for every label
    out, dropped, images = [], 0, 0
    for rec, keep in zip(records, np.split(keep_all, np.cumsum(counts)[:-1]) if len(records) else []):
        if keep.all():
            out.append(rec)
            continue
        dropped += int((~keep).sum())
        images += 1
        crowd = rec.crowd[keep] if rec.crowd is not None else None
        out.append(ImageRecord.trusted(rec.im_file, rec.height, rec.width, rec.cls[keep], rec.bboxes[keep], crowd))
    LOGGER.info(f"{split}: classes={wanted}: dropped {dropped} labels of other classes in {images} images")
    return out


def to_single_class(records: list[ImageRecord]) -> list[ImageRecord]:
    """Every label's class set to 0 (new records; boxes and crowd flags unchanged)."""
    return [
        rec
        if not rec.cls.any()
        else ImageRecord.trusted(rec.im_file, rec.height, rec.width, np.zeros_like(rec.cls), rec.bboxes, rec.crowd)
        for rec in records
    ]


def single_class_names(names: list[str]) -> list[str]:
    """The class names under ``single_cls``: the one name when there is one class, else ``[SINGLE_CLASS_NAME]``."""
    return list(names) if len(names) == 1 else [SINGLE_CLASS_NAME]


def select_records(
    records: list[ImageRecord],
    nc: int,
    split: str,
    single_cls: bool = False,
    classes: list[int] | None = None,
    fraction: float = 1.0,
    seed: int = 0,
) -> list[ImageRecord]:
    """Apply ``fraction`` (train split only), then ``classes``, then ``single_cls`` to one split's records.

    Args:
        records: The split's scanned records.
        nc: The data YAML's class count (``classes`` are checked against it).
        split: ``train``, ``val`` or ``test``; ``fraction`` applies to ``train`` only.
        single_cls: Set every class to 0.
        classes: Keep only labels of these class ids (None or empty: all).
        fraction: Share of the train split's images to keep.
        seed: Seed of the ``fraction`` subset.
    """
    if split == "train":
        records = take_fraction(records, fraction, seed)
    if classes:
        records = keep_classes(records, classes, nc, split)
    if single_cls:
        records = to_single_class(records)
    return records
