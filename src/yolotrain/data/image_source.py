"""Where a dataset's images come from: the RAM cache, a batch's memo, the recent-images buffer, the
``cache=disk`` arrays, or a decode (reduced-scale for large JPEGs) and a resize to ``imgsz``."""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from yolotrain.data.image_io import decode_image, jpeg_reduction, read_bytes
from yolotrain.data.profile import CLOCK
from yolotrain.data.records import ImageRecord
from yolotrain.data.shm_cache import SharedImages, shared_images, slot_bytes

LOGGER = logging.getLogger("yolotrain")


def disk_cache_dir() -> Path:
    """Folder of ``cache=disk`` arrays: ``$YOLOTRAIN_CACHE/decoded`` or ``~/.cache/yolotrain/decoded``."""
    base = os.environ.get("YOLOTRAIN_CACHE") or os.path.join(Path.home(), ".cache", "yolotrain")
    return Path(base).expanduser() / "decoded"


class ImageSource:
    """Decoded, resized images of a list of records, as :class:`~yolotrain.data.dataset.DetectionDataset` holds them.

    Where an image comes from never changes its pixels (decoding is deterministic); only the cost differs.

    Args:
        records: The images (their paths and sizes).
        imgsz: Long side of the resized images.
        resize_mode: ``train`` (bilinear), or evaluation's ``area`` or ``bilinear`` (the ``val_resize``
            setting); part of both caches' keys, since the cached pixels depend on it.
        cache: ``"ram"`` or True maps the machine's one shared copy of the decoded images
            (:mod:`yolotrain.data.shm_cache`); ``"disk"`` keeps ``.npy`` files in :func:`disk_cache_dir`.
        buffer: Recently decoded images kept per process (least recently used dropped first); 0 when the
            RAM cache holds every image already.

    Attributes:
        ram: The machine's shared copy (a :class:`SharedImages`) under ``cache=ram``, else None (also when
            the cache was refused, e.g. for want of memory).
        disk_dir: The ``cache=disk`` folder, else None.
    """

    def __init__(
        self, records: list[ImageRecord], imgsz: int, resize_mode: str, cache: str | bool, buffer: int
    ) -> None:
        self.records = records
        self.imgsz = int(imgsz)
        self.resize_mode = resize_mode
        self.buffer = max(0, int(buffer))
        self._recent: OrderedDict[int, tuple[np.ndarray, tuple[int, int]]] = OrderedDict()
        # cache=disk: decoded, resized arrays in $YOLOTRAIN_CACHE/decoded (or ~/.cache/yolotrain/decoded),
        # reused across runs; an image that changes gets a new file (its size and mtime are in the key).
        self.disk_dir = disk_cache_dir() if cache == "disk" else None
        self.ram: SharedImages | None = None
        if cache in (True, "ram"):
            self.ram = shared_images(self.records, self.imgsz, self.resize_mode, self.load)
            if self.ram is not None:
                self.buffer = 0  # everything is in memory already

    def ram_bytes(self) -> float:
        """Bytes ``cache=ram`` takes for these images: the shared file's slots (the profile's advice quotes it)."""
        return float(slot_bytes(self.records, self.imgsz).sum())

    def disk_cache_file(self, i: int) -> Path | None:
        """``cache=disk``: where image ``i``'s decoded, resized array lives (None when the image is gone).

        The name holds the image's path, size and modification time and the resize settings, so a
        changed image is decoded again (and a new file written) instead of served stale.
        """
        rec = self.records[i]
        try:
            st = os.stat(rec.im_file)
        except OSError:
            return None
        settings = f"{self.imgsz}|{self.resize_mode}"
        key = f"{os.path.abspath(rec.im_file)}|{st.st_size}|{st.st_mtime_ns}|{settings}|v1"
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        return self.disk_dir / digest[:2] / f"{digest}.npy"

    def load(self, i: int) -> tuple[np.ndarray, tuple[int, int]]:
        """Image ``i`` from its ``cache=disk`` file, else decoded (and written there under ``cache=disk``)."""
        if self.disk_dir is None:
            return self.decode(i)
        rec = self.records[i]
        f = self.disk_cache_file(i)
        if f is not None and f.is_file():
            with CLOCK.stage("read"):
                try:
                    img = np.load(f, allow_pickle=False)  # .npy without pickle: a cache file never runs code
                except (OSError, ValueError):
                    img = None  # damaged or half-written by a crash elsewhere: decode again
            if img is not None and img.ndim == 3 and img.dtype == np.uint8 and img.shape[2] == 3:
                return img, (rec.height, rec.width)
        img, shape = self.decode(i)
        if f is not None and shape == (rec.height, rec.width):  # the record's size is what a hit returns
            tmp = f.with_name(f"{f.stem}.{os.getpid()}.tmp.npy")
            try:
                f.parent.mkdir(parents=True, exist_ok=True)
                np.save(tmp, img, allow_pickle=False)
                os.replace(tmp, f)  # atomic: readers see the whole file or none
            except OSError as e:
                LOGGER.debug("cache=disk: %s not written (%s)", f, e)
                tmp.unlink(missing_ok=True)
        return img, shape

    def decode(self, i: int) -> tuple[np.ndarray, tuple[int, int]]:
        """Image ``i`` read, decoded and resized to ``imgsz`` (no cache consulted), and its original ``(h, w)``."""
        rec = self.records[i]
        mode = self.resize_mode
        bilinear = mode == "bilinear"
        with CLOCK.stage("read"):
            buf = read_bytes(rec.im_file)
        with CLOCK.stage("decode"):
            # A JPEG at least twice the needed size is decoded at 1/2, 1/4 or 1/8 scale by libjpeg (not with
            # val_resize=bilinear, which reproduces a full decode and a bilinear shrink like Ultralytics' val).
            f = 1 if bilinear else jpeg_reduction(buf, max(rec.height, rec.width), self.imgsz)
            img = decode_image(buf, rec.im_file, f)
            h0, w0 = img.shape[:2]
            if f > 1:
                if (h0, w0) == (-(-rec.height // f), -(-rec.width // f)):
                    h0, w0 = rec.height, rec.width
                else:  # the record's size is not the file's (edited file): decode in full for the true size
                    img = decode_image(buf, rec.im_file)
                    h0, w0 = img.shape[:2]
        with CLOCK.stage("resize"):
            h, w = img.shape[:2]
            r = self.imgsz / max(h, w)
            if r != 1 and bilinear:
                # Ultralytics' val: bilinear, each side rounded up (capped at imgsz).
                size = (max(1, min(self.imgsz, math.ceil(w * r))), max(1, min(self.imgsz, math.ceil(h * r))))
                img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
            elif r != 1:
                # Shrinking with INTER_AREA avoids aliasing; enlarging is bilinear either way.
                interp = cv2.INTER_AREA if r < 1 and mode == "area" else cv2.INTER_LINEAR
                size = (max(1, min(self.imgsz, round(w * r))), max(1, min(self.imgsz, round(h * r))))
                img = cv2.resize(img, size, interpolation=interp)
        return img, (h0, w0)

    def image(self, i: int, memo: dict[int, tuple[np.ndarray, tuple[int, int]]] | None = None):
        """Image ``i`` resized (read-only: shared by the samples that use it), and its original shape.

        Looked up in the RAM cache, then the batch's memo, then the recent-images buffer; decoded
        from disk otherwise. Decoding is deterministic, so where an image comes from never changes
        a sample.
        """
        if self.ram is not None:
            hit = self.ram[i]
            if hit is not None:
                return hit
        if memo is not None and i in memo:
            return memo[i]
        hit = self._recent.get(i)
        if hit is not None:
            self._recent.move_to_end(i)
        else:
            img, shape = self.load(i)
            img.flags.writeable = False
            hit = (img, shape)
            if self.buffer > 0:
                self._recent[i] = hit
                if len(self._recent) > self.buffer:
                    self._recent.popitem(last=False)  # least recently used
        if memo is not None:
            memo[i] = hit
        return hit

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int]]:
        """Image ``i`` resized so its long side is ``imgsz``, and its original ``(h, w)``.

        Args:
            i: Record index.

        Returns:
            ``(img, (h0, w0))``; the image is a fresh array the caller may modify.
        """
        img, shape = self.image(i)
        return img.copy(), shape
