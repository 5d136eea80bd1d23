"""The detection dataset: records in, augmented fixed-size samples out."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from yolotrain.data import augment as A
from yolotrain.data.image_io import read_image
from yolotrain.data.records import ImageRecord, xywhn_to_xyxy, xyxy_to_xywhn
from yolotrain.errors import ConfigError

LOGGER = logging.getLogger("yolotrain")

_HYP_KEYS = (
    "mosaic", "degrees", "translate", "scale", "shear", "fliplr", "hsv_h", "hsv_s", "hsv_v"
)  # fmt: skip
# (image, boxes xyxy pixels, cls, original (h, w), ratio_pad)
_Sample = tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int], Any]


class SampleKey(NamedTuple):
    """What the loader's sampler hands to ``__getitem__``.

    Worker processes hold their own copy of the dataset, so state that changes between epochs
    (the epoch itself, whether mosaic is on) travels with every index instead of living on the
    dataset object.
    """

    index: int
    epoch: int
    mosaic: bool


class DetectionDataset(Dataset):
    """YOLO detection samples from :class:`ImageRecord` lists.

    Each item is a dict: ``img`` uint8 (3, H, W) RGB; ``cls`` float32 (n, 1); ``bboxes`` float32
    (n, 4) normalized xywh of the output image (crowd boxes excluded); ``im_file``; ``ori_shape`` (h, w); ``ratio_pad``
    ``((rw, rh), (pad_left, pad_top))`` mapping original pixels to output pixels (exact in eval,
    informative only when augmenting); ``index``.

    Training randomness comes from ``np.random.default_rng([seed, epoch, index])``, so a sample is
    the same whatever the number of workers or the order of requests.

    Args:
        records: Images and labels.
        imgsz: Output side length (a multiple of ``stride``).
        augment: Training augmentation (mosaic, affine, HSV, flip) when True; plain letterbox
            otherwise.
        hyp: Object with attributes mosaic, degrees, translate, scale, shear, fliplr, hsv_h, hsv_s,
            hsv_v (only needed when ``augment``).
        stride: Model stride.
        cache: ``"ram"`` or True keeps the resized images in memory.
        seed: Base seed of the augmentation randomness.
    """

    def __init__(
        self,
        records: list[ImageRecord],
        imgsz: int,
        augment: bool,
        hyp: Any = None,
        stride: int = 32,
        cache: str | bool = False,
        seed: int = 0,
    ) -> None:
        if imgsz <= 0 or imgsz % stride:
            raise ConfigError(f"imgsz: {imgsz} must be a positive multiple of the model stride {stride}")
        if augment:
            missing = [k for k in _HYP_KEYS if not hasattr(hyp, k)]
            if missing:
                raise ConfigError(f"hyp: augmentation settings missing: {', '.join(missing)}")
        if cache not in (False, True, None, "ram", "off", ""):
            raise ConfigError(f"cache: expected 'ram' or 'off', got {cache!r}")
        self.records = list(records)
        self.imgsz = int(imgsz)
        self.augment = bool(augment)
        self.hyp = hyp
        self.stride = int(stride)
        self.seed = int(seed)
        self.epoch = 0
        self.mosaic_enabled = True
        self._ram: list[tuple[np.ndarray, tuple[int, int]] | None] | None = None
        if cache in (True, "ram"):
            self._cache_in_ram()

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used when an item is requested by a plain int index (workers=0 / direct use)."""
        self.epoch = int(epoch)

    # ------------------------------------------------------------------ loading
    def _cache_in_ram(self) -> None:
        # Resized images keep their aspect ratio with the long side at imgsz.
        need = sum(3 * self.imgsz**2 * min(r.height, r.width) / max(r.height, r.width, 1) for r in self.records)
        try:
            import psutil

            available = psutil.virtual_memory().available
        except Exception:  # psutil missing or unsupported platform: trust the user
            available = float("inf")
        if need > 0.7 * available:
            LOGGER.warning(
                "cache=ram needs %.1f GB but only %.1f GB is available; not caching images",
                need / 1e9,
                available / 1e9,
            )
            return
        with ThreadPoolExecutor(max_workers=4) as pool:  # decoding releases the GIL
            self._ram = list(pool.map(self._load_from_disk, range(len(self.records))))
        LOGGER.info("cached %d images in RAM (%.2f GB)", len(self.records), need / 1e9)

    def _load_from_disk(self, i: int) -> tuple[np.ndarray, tuple[int, int]]:
        img = read_image(self.records[i].im_file)
        h0, w0 = img.shape[:2]
        r = self.imgsz / max(h0, w0)
        if r != 1:
            # Shrinking with INTER_AREA avoids aliasing; enlarging is bilinear either way.
            interp = cv2.INTER_AREA if r < 1 and not self.augment else cv2.INTER_LINEAR
            size = (max(1, min(self.imgsz, round(w0 * r))), max(1, min(self.imgsz, round(h0 * r))))
            img = cv2.resize(img, size, interpolation=interp)
        return img, (h0, w0)

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int]]:
        """Image ``i`` resized so its long side is ``imgsz``, and its original ``(h, w)``.

        Args:
            i: Record index.

        Returns:
            ``(img, (h0, w0))``; the image is a fresh array the caller may modify.
        """
        if self._ram is not None and self._ram[i] is not None:
            img, shape = self._ram[i]
            return img.copy(), shape
        return self._load_from_disk(i)

    def _pixel_labels(self, i: int, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Record ``i``'s training targets in the pixels of the (resized) image.

        Crowd boxes (COCO ``iscrowd``, VOC ``difficult``) are left out: one box around a crowd or
        an unrecognisable object is not an example of the class to learn. They stay in
        ``records``, where the evaluator uses them as ignore regions.
        """
        rec = self.records[i]
        h, w = img.shape[:2]
        if rec.crowd is not None and rec.crowd.any():
            keep = ~rec.crowd
            return xywhn_to_xyxy(rec.bboxes[keep], w, h), rec.cls[keep]
        return xywhn_to_xyxy(rec.bboxes, w, h), rec.cls.copy()

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
        if isinstance(item, tuple):
            index, epoch, mosaic = int(item[0]), int(item[1]), bool(item[2])
        else:
            index, epoch, mosaic = int(item), self.epoch, self.mosaic_enabled
        if self.augment:
            img, boxes, cls, shape0, ratio_pad = self._train_sample(index, epoch, mosaic)
        else:
            img, boxes, cls, shape0, ratio_pad = self._letterboxed(index)
        h, w = img.shape[:2]
        return {
            "img": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
            "cls": torch.from_numpy(np.asarray(cls, dtype=np.float32).reshape(-1, 1)),
            "bboxes": torch.from_numpy(xyxy_to_xywhn(boxes, w, h)),
            "im_file": self.records[index].im_file,
            "ori_shape": shape0,
            "ratio_pad": ratio_pad,
            "index": index,
        }

    def _letterboxed(self, i: int) -> _Sample:
        """Image ``i`` letterboxed to ``imgsz`` square: the whole eval pipeline."""
        img, (h0, w0) = self.load_image(i)
        boxes, cls = self._pixel_labels(i, img)
        h, w = img.shape[:2]
        img, (rw, rh), (pw, ph) = A.letterbox(img, self.imgsz, stride=self.stride)
        boxes = boxes * np.float32([rw, rh, rw, rh]) + np.float32([pw, ph, pw, ph])
        ratio_pad = ((w / w0 * rw, h / h0 * rh), (pw, ph))
        return img, boxes, cls, (h0, w0), ratio_pad

    def _train_sample(self, i: int, epoch: int, mosaic: bool) -> _Sample:
        """Mosaic (or letterbox) -> random affine to ``imgsz`` square -> HSV -> flip."""
        hyp = self.hyp
        # SeedSequence needs non-negative ints; the triple makes each (seed, epoch, index) stream
        # independent of every other and of worker scheduling.
        rng = np.random.default_rng([self.seed % 2**63, max(epoch, 0), i])
        use_mosaic = rng.random() < float(hyp.mosaic) and mosaic  # always draw: keeps streams aligned
        if use_mosaic:
            partners = rng.integers(0, len(self), size=3)
            items, shapes = [], []
            for j in (i, *partners.tolist()):
                img_j, shape_j = self.load_image(j)
                b, c = self._pixel_labels(j, img_j)
                items.append((img_j, b, c))
                shapes.append(shape_j)
            img, boxes, cls = A.mosaic4(items, self.imgsz, rng)
            shape0 = shapes[0]
            ratio_pad = ((1.0, 1.0), (0, 0))
        else:
            img, boxes, cls, shape0, ratio_pad = self._letterboxed(i)
        img, boxes, cls = A.random_affine(
            img,
            boxes,
            cls,
            degrees=float(hyp.degrees),
            translate=float(hyp.translate),
            scale=float(hyp.scale),
            shear=float(hyp.shear),
            out_size=(self.imgsz, self.imgsz),
            rng=rng,
        )
        A.random_hsv(img, float(hyp.hsv_h), float(hyp.hsv_s), float(hyp.hsv_v), rng)
        img, boxes = A.random_flip_lr(img, boxes, float(hyp.fliplr), rng)
        return img, boxes, cls, shape0, ratio_pad
