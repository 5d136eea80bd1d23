"""The detection dataset: records in, augmented fixed-size samples out."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from yolotrain.config import SETTINGS
from yolotrain.config_sections import AugmentSettings
from yolotrain.data import augment as A
from yolotrain.data import mix as X
from yolotrain.data import mosaic as M
from yolotrain.data.image_source import ImageSource
from yolotrain.data.profile import CLOCK
from yolotrain.data.records import ImageRecord, xywhn_to_xyxy, xyxy_to_xywhn
from yolotrain.errors import ConfigError

LOGGER = logging.getLogger("yolotrain")

# Mosaic partners come from a group of this many consecutive samples of the epoch's order, so a
# batch (default 16) decodes each of its images once; see DetectionDataset.mosaic_partners.
MOSAIC_GROUP = 8
# (image, boxes xyxy pixels, cls, original (h, w), ratio_pad)
_Sample = tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int], Any]


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of ``n`` samples in ``epoch``: a function of (seed, epoch) only.

    The same rule as ``torch.utils.data.DistributedSampler`` (``randperm`` seeded with
    ``seed + epoch``), so one process and many agree.
    """
    g = torch.Generator()
    g.manual_seed(int(seed) + int(epoch))
    return torch.randperm(n, generator=g).numpy()


class SampleKey(NamedTuple):
    """What the loader's sampler hands to ``__getitem__``.

    Worker processes hold their own copy of the dataset, so state that changes between epochs
    (the epoch itself, whether mosaic is on) travels with every index instead of living on the
    dataset object; so does the shape of a rectangular evaluation batch, which depends on the
    batch the sample lands in.
    """

    index: int
    epoch: int
    mosaic: bool
    shape: tuple[int, int] | None = None  # evaluation letterbox (h, w) of a rectangular batch


class DetectionDataset(Dataset):
    """YOLO detection samples from :class:`ImageRecord` lists.

    Each item is a dict: ``img`` uint8 (3, H, W) RGB (a channels-last view; ``collate`` stacks
    it); ``cls`` float32 (n, 1); ``bboxes`` float32 (n, 4) normalized xywh of the output image
    (crowd boxes excluded); ``im_file``; ``ori_shape`` (h, w); ``ratio_pad``
    ``((rw, rh), (pad_left, pad_top))`` mapping original pixels to output pixels (exact in eval,
    informative only when augmenting); ``index``.

    Training randomness comes from ``np.random.default_rng([seed, epoch, index])`` and the mosaic
    partners from the epoch's order (a function of (seed, epoch)), so a sample is the same whatever
    the number of workers, the batch size or the order of requests. The decoded images come from
    :attr:`images`, an :class:`~yolotrain.data.image_source.ImageSource` (caches, buffer, decode).

    Args:
        records: Images and labels.
        imgsz: Output side length (a multiple of ``stride``).
        augment: Training augmentation (mosaic, affine, mixup, cutmix, HSV, flips) when True; plain
            letterbox otherwise.
        augmentation: The augmentation settings (``AugmentSettings.from_config(cfg)``); needed when
            ``augment``, unused otherwise.
        stride: Model stride.
        cache: ``"ram"`` or True keeps the resized images in shared memory, one copy per machine
            mapped by every process (:mod:`yolotrain.data.shm_cache`); ``"disk"`` stores them as
            ``.npy`` files in :func:`disk_cache_dir`, reused across runs.
        seed: Base seed of the augmentation randomness.
        buffer: Recently decoded images kept per process (least recently used dropped first); a
            dataset no larger than this is decoded once per process, not once per epoch. The
            peers keep the same kind of buffer (Ultralytics: ``min(n, 8 * batch, 1000)`` images).
        rect: Evaluation only: rectangular batches (images sorted by aspect ratio, each batch
            letterboxed to its smallest stride-multiple shape; the loader's sampler plans them).
            Ignored when ``augment``. Default: the ``rect`` setting's.
        val_resize: Evaluation only: how images are shrunk to ``imgsz``, ``area`` or ``bilinear`` (see the
            ``val_resize`` setting, whose default is this one's).

    Attributes:
        images: Where the decoded, resized images come from (:class:`~yolotrain.data.image_source.ImageSource`).
    """

    def __init__(
        self,
        records: list[ImageRecord],
        imgsz: int,
        augment: bool,
        augmentation: AugmentSettings | None = None,
        stride: int = 32,
        cache: str | bool = False,
        seed: int = 0,
        buffer: int = 128,
        rect: bool = SETTINGS["rect"].default,
        val_resize: str = SETTINGS["val_resize"].default,
    ) -> None:
        if imgsz <= 0 or imgsz % stride:
            raise ConfigError(f"imgsz: {imgsz} must be a positive multiple of the model stride {stride}")
        if augment and not isinstance(augmentation, AugmentSettings):
            raise ConfigError(
                f"augment: training needs the augmentation hyperparameters as AugmentSettings, got {augmentation!r}"
            )
        if cache not in (False, True, None, "ram", "disk", "off", ""):
            raise ConfigError(f"cache: expected 'ram', 'disk' or 'off', got {cache!r}")
        if val_resize not in ("area", "bilinear"):
            raise ConfigError(f"val_resize: expected 'area' or 'bilinear', got {val_resize!r}")
        self.rect = bool(rect) and not augment
        self.records = list(records)
        self.imgsz = int(imgsz)
        self.augment = bool(augment)
        self.augmentation = augmentation
        self.stride = int(stride)
        self.seed = int(seed)
        self.epoch = 0
        self.mosaic_enabled = True
        # The last `buffer` decoded images are kept per process (like the peers' mosaic buffer, but only a
        # cache: partners are chosen by mosaic_partners, never by what happens to be buffered).
        self.images = ImageSource(self.records, self.imgsz, "train" if self.augment else val_resize, cache, buffer)
        # Pixel boxes of recently used images, keyed by (index, width, height): a mosaic uses each image
        # about four times an epoch, and converting its boxes each time cost ~5% of a 320 px sample.
        self._labels_px: OrderedDict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._order_epoch = -1  # epoch whose order (and its inverse) is held for mosaic groups
        self._order = self._pos = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used when an item is requested by a plain int index (workers=0 / direct use)."""
        self.epoch = int(epoch)

    # ------------------------------------------------------------------ loading
    def rect_plan(self, group: int) -> tuple[np.ndarray, np.ndarray]:
        """Rectangular evaluation batches: the order (by aspect ratio) and each position's shape.

        Positions ``[k * group, (k + 1) * group)`` of the order form batch ``k`` (``group`` is the
        global batch, so every rank's share of a batch has the same shape). Each batch is letterboxed
        to the smallest stride multiple that holds all its images at a long side of ``imgsz``.

        Args:
            group: Images per batch over all processes.

        Returns:
            ``(order (n,), shapes (n, 2) as (h, w) per position)``.
        """
        ar = np.array([r.height / max(r.width, 1) for r in self.records], dtype=np.float64)
        order = np.argsort(ar, kind="stable")
        ar = ar[order]
        shapes = np.empty((len(ar), 2), dtype=np.int64)
        for k in range(0, len(ar), group):
            lo, hi = ar[k : k + group].min(), ar[k : k + group].max()
            # (h, w) as fractions of imgsz: wide batches are short, tall batches are narrow
            rel = (hi, 1.0) if hi < 1 else (1.0, 1.0 / lo) if lo > 1 else (1.0, 1.0)
            shapes[k : k + group] = [int(np.ceil(v * self.imgsz / self.stride)) * self.stride for v in rel]
        return order, shapes

    def _pixel_labels(self, i: int, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Record ``i``'s training targets in the pixels of the (resized) image.

        Crowd boxes (COCO ``iscrowd``, VOC ``difficult``) are left out: one box around a crowd or
        an unrecognisable object is not an example of the class to learn. They stay in
        ``records``, where the evaluator uses them as ignore regions.
        """
        h, w = img.shape[:2]
        key = (i, w, h)
        hit = self._labels_px.get(key)
        if hit is not None:
            self._labels_px.move_to_end(key)
            return hit
        rec = self.records[i]
        if rec.crowd is not None and rec.crowd.any():
            keep = ~rec.crowd
            boxes, cls = xywhn_to_xyxy(rec.bboxes[keep], w, h), rec.cls[keep]
        else:
            boxes, cls = xywhn_to_xyxy(rec.bboxes, w, h), rec.cls.copy()
        boxes.flags.writeable = cls.flags.writeable = False  # shared by every sample that uses the image
        self._labels_px[key] = (boxes, cls)
        if len(self._labels_px) > max(self.images.buffer, 64):
            self._labels_px.popitem(last=False)  # least recently used
        return boxes, cls

    def labels_for_eval(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Ground truth of image ``i`` in original pixel coordinates, crowd boxes included.

        ``records[i].crowd`` (when not None) tells which boxes are crowd.

        Args:
            i: Record index.

        Returns:
            ``(boxes_xyxy float32 (n, 4), cls int64 (n,))``.
        """
        rec = self.records[i]
        return rec.boxes_xyxy(), rec.cls.copy()

    # ------------------------------------------------------------------ items
    def __getitem__(self, item: int | SampleKey | tuple[int, int, bool]) -> dict[str, Any]:
        return self._item(item, {})

    def __getitems__(self, items: list[Any]) -> list[dict[str, Any]]:
        """A whole batch at once (the DataLoader calls this): each image is decoded once for the batch.

        The samples are exactly those of ``[self[k] for k in items]``.
        """
        memo: dict[int, tuple[np.ndarray, tuple[int, int]]] = {}
        return [self._item(item, memo) for item in items]

    def _item(self, item: int | SampleKey | tuple[int, int, bool], memo: dict) -> dict[str, Any]:
        shape = None
        if isinstance(item, tuple):
            index, epoch, mosaic = int(item[0]), int(item[1]), bool(item[2])
            shape = item[3] if len(item) > 3 else None
        else:
            index, epoch, mosaic = int(item), self.epoch, self.mosaic_enabled
        if self.augment:
            img, boxes, cls, shape0, ratio_pad = self._train_sample(index, epoch, mosaic, memo)
        else:
            img, boxes, cls, shape0, ratio_pad = self._letterboxed(index, memo, shape)
        with CLOCK.stage("format"):
            if not img.flags.writeable:  # a shared decoded image that needed no letterbox: the batch owns a copy
                img = img.copy()
            h, w = img.shape[:2]
            out = {
                # A CHW view of the HWC array: collate's stack makes the one contiguous copy.
                "img": torch.from_numpy(img).permute(2, 0, 1),
                "cls": torch.from_numpy(np.asarray(cls, dtype=np.float32).reshape(-1, 1)),
                "bboxes": torch.from_numpy(xyxy_to_xywhn(boxes, w, h)),
                "im_file": self.records[index].im_file,
                "ori_shape": shape0,
                "ratio_pad": ratio_pad,
                "index": index,
            }
        CLOCK.images += 1
        return out

    def _letterboxed(self, i: int, memo: dict | None = None, shape: tuple[int, int] | None = None) -> _Sample:
        """Image ``i`` letterboxed to ``shape`` ``(h, w)`` (default ``imgsz`` square): the eval pipeline."""
        img, (h0, w0) = self.images.image(i, memo)
        boxes, cls = self._pixel_labels(i, img)
        h, w = img.shape[:2]
        with CLOCK.stage("letterbox"):
            img, (rw, rh), (pw, ph) = A.letterbox(img, shape or self.imgsz, stride=self.stride)
            boxes = boxes * np.float32([rw, rh, rw, rh]) + np.float32([pw, ph, pw, ph])
            ratio_pad = ((w / w0 * rw, h / h0 * rh), (pw, ph))
        return img, boxes, cls, (h0, w0), ratio_pad

    def _group(self, i: int, epoch: int) -> np.ndarray:
        """The other members of sample ``i``'s group in ``epoch``'s order (``[i]`` when it is alone).

        The epoch's order (:func:`epoch_order`, the training sampler's order) is cut into groups of
        :data:`MOSAIC_GROUP` consecutive positions (the last group takes the remainder).
        """
        n = len(self)
        if self._order_epoch != epoch:
            self._order = epoch_order(n, self.seed, epoch)
            self._pos = np.empty(n, dtype=np.int64)
            self._pos[self._order] = np.arange(n)
            self._order_epoch = epoch
        groups = max(n // MOSAIC_GROUP, 1)
        g = min(int(self._pos[i]) // MOSAIC_GROUP, groups - 1)
        members = self._order[g * MOSAIC_GROUP : n if g == groups - 1 else (g + 1) * MOSAIC_GROUP]
        others = members[members != i]
        return others if len(others) else np.array([i])

    def mosaic_partners(self, i: int, epoch: int, rng: np.random.Generator) -> list[int]:
        """Three mosaic partners of sample ``i``, drawn from its group in the epoch's order.

        A batch holds whole groups, so every image is decoded once per batch instead of four times,
        while the partners still depend only on (seed, epoch, index), never on which worker or batch
        builds the sample.
        """
        others = self._group(i, epoch)
        return rng.choice(others, size=3, replace=len(others) < 3).tolist()

    def _train_sample(self, i: int, epoch: int, mosaic: bool, memo: dict | None = None) -> _Sample:
        """The training sample: base sample -> mixup -> cutmix -> HSV -> vertical flip.

        The base sample (:meth:`_base_sample`) is the mosaic (or letterbox) warped to ``imgsz``. Mixup
        and cutmix take a second base sample of a member of ``i``'s mosaic group (whose images the
        batch decodes anyway), built with a generator of their own seeded by (seed, epoch, i), so
        the result still depends only on (seed, epoch, index); like the peers, they are off while
        mosaic is closed (``close_mosaic``). Each extra step draws its randomness only when its
        setting is non-zero: with the new settings at 0 nothing extra runs and the sample is the
        one it was before they existed.
        """
        aug = self.augmentation
        epoch = max(epoch, 0)
        # SeedSequence needs non-negative ints; the triple makes each (seed, epoch, index) stream
        # independent of every other and of worker scheduling.
        seed = self.seed % 2**63
        rng = np.random.default_rng([seed, epoch, i])
        img, boxes, cls, shape0, ratio_pad = self._base_sample(i, epoch, mosaic, memo, rng)
        for k, (name, p) in enumerate((("mixup", aug.mixup), ("cutmix", aug.cutmix)), 1):
            if not (p and mosaic):
                continue
            sub = np.random.default_rng([seed, epoch, i, k])  # its own stream: the base's draws stay as they were
            if sub.random() >= p:
                continue
            j = int(sub.choice(self._group(i, epoch)))
            img2, boxes2, cls2, _, _ = self._base_sample(j, epoch, mosaic, memo, sub)
            with CLOCK.stage("mosaic"):  # mixing is charged to the mosaic stage (the partner to its own stages)
                if name == "mixup":
                    img, boxes, cls = X.mixup(img, boxes, cls, img2, boxes2, cls2, X.mixup_ratio(sub))
                else:
                    region = X.cutmix_region(*img.shape[:2], sub)
                    img, boxes, cls = X.cutmix(img, boxes, cls, img2, boxes2, cls2, region)
        with CLOCK.stage("hsv"):
            A.random_hsv(img, aug.hsv_h, aug.hsv_s, aug.hsv_v, rng)
        if aug.flipud and rng.random() < aug.flipud:
            with CLOCK.stage("flip"):
                img, boxes = A.flip_ud(img, boxes)
        return img, boxes, cls, shape0, ratio_pad

    def _base_sample(self, i: int, epoch: int, mosaic: bool, memo: dict | None, rng: np.random.Generator) -> _Sample:
        """Mosaic (or letterbox) -> random affine (with perspective and the horizontal flip) to ``imgsz`` square.

        One warp does the affine and the flip; with mosaic only the part of the 2s x 2s canvas the
        warp reads is built (:func:`~yolotrain.data.augment.source_window`); the output is that of
        building the whole canvas and warping it (up to OpenCV's fixed-point rounding, +-1 on rare
        pixels). Without rotation, shear and perspective (the default) the warp is a crop + resize
        (:func:`~yolotrain.data.augment.scale_translate_warp`) and the flip a mirror of its output.
        The returned image is always a new array (later steps modify it in place).
        """
        aug = self.augmentation
        size = self.imgsz
        use_mosaic = rng.random() < aug.mosaic and mosaic  # always draw: keeps streams aligned
        if use_mosaic:
            items, shapes = [], []
            for j in (i, *self.mosaic_partners(i, epoch, rng)):
                img_j, shape_j = self.images.image(j, memo)
                b, c = self._pixel_labels(j, img_j)
                items.append((img_j, b, c))
                shapes.append(shape_j)
            center = M.mosaic_center(size, rng)
            src_size = (2 * size, 2 * size)
            shape0 = shapes[0]
            ratio_pad = ((1.0, 1.0), (0, 0))
        else:
            src, boxes, cls, shape0, ratio_pad = self._letterboxed(i, memo)
            src_size = src.shape[:2]
        with CLOCK.stage("affine"):
            m, s = A.affine_matrix(
                src_size, (size, size), aug.degrees, aug.translate, aug.scale, aug.shear, rng, aug.perspective
            )
            flip = rng.random() < aug.fliplr
            fast = A.is_scale_translate(m)  # no rotation, shear or perspective (the default): crop + resize, mirror
            m_img = m
            if flip and not fast:
                # Boxes are continuous (x -> size - x); pixel indices mirror as x -> size - 1 - x.
                m, m_img = A.hflip_matrix(size) @ m, A.hflip_matrix(size - 1) @ m
        if use_mosaic and fast:
            with CLOCK.stage("mosaic"):  # no canvas: each tile's visible part is resized straight into the output
                img, new, cls, before = M.mosaic4_scaled(items, size, center, m, (size, size))
            with CLOCK.stage("affine"):
                if flip:
                    img = cv2.flip(img, 1)
                    new[:, [0, 2]] = size - new[:, [2, 0]]
                np.minimum(np.maximum(new, 0, out=new), size, out=new)  # square output: x and y share the bounds
                keep = A.box_candidates(before * s, new)
            return img, new[keep], cls[keep], shape0, ratio_pad
        if use_mosaic:
            with CLOCK.stage("mosaic"):
                x0, y0, x1, y1 = A.source_window(m_img, (size, size), src_size)
                src, boxes, cls = M.mosaic4(items, size, center=center, window=(x0, y0, x1, y1))
                shift = np.eye(3)
                shift[:2, 2] = (x0, y0)  # window pixel (u, v) is canvas pixel (u + x0, v + y0)
                m_img = m_img @ shift
        with CLOCK.stage("affine"):
            if fast:
                img, applied = A.scale_translate_warp(src, m_img, (size, size))
                m = applied @ np.linalg.inv(m_img) @ m  # the mapping applied, in source (canvas) pixels
                if flip:
                    img = cv2.flip(img, 1)
                    m = A.hflip_matrix(size) @ m
            else:
                img = A.warp(src, m_img, (size, size))
            boxes, cls = A.affine_boxes(boxes, cls, m, s, (size, size))
        return img, boxes, cls, shape0, ratio_pad
