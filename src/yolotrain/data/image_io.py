"""Reading any supported image file as RGB uint8, the same way in training and prediction."""

from __future__ import annotations

import os

import cv2
import numpy as np
from PIL import Image, ImageOps

from yolotrain.errors import DataError

# One imread call that applies the EXIF orientation (like PIL's exif_transpose, matching the
# height/width stored at scan time), turns grey into 3 channels, drops alpha and keeps 16-bit depth
# so we can reduce it ourselves. IMREAD_COLOR_RGB (OpenCV >= 4.10) also skips a BGR->RGB pass.
_HAS_RGB_FLAG = hasattr(cv2, "IMREAD_COLOR_RGB")
_IMREAD_FLAGS = (cv2.IMREAD_COLOR_RGB if _HAS_RGB_FLAG else cv2.IMREAD_COLOR) | cv2.IMREAD_ANYDEPTH
# Reduced-size JPEG decodes: IMREAD_REDUCED_GRAYSCALE_f | the colour flag (REDUCED_COLOR_f is
# REDUCED_GRAYSCALE_f | IMREAD_COLOR, which OpenCV refuses together with IMREAD_COLOR_RGB).
_COLOR = cv2.IMREAD_COLOR_RGB if _HAS_RGB_FLAG else cv2.IMREAD_COLOR
_REDUCED_FLAGS = {
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2 | _COLOR,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4 | _COLOR,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8 | _COLOR,
}


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Reduce 16-bit or float images to uint8.

    16-bit data keeps its top byte (``>> 8``) rather than being stretched per image, so the
    brightness of a pixel value means the same thing in every image of a dataset.

    Args:
        img: Image of any numeric dtype.

    Returns:
        uint8 image.
    """
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (img >> 8).astype(np.uint8)
    if np.issubdtype(img.dtype, np.floating):
        scale = 255.0 if float(np.nanmax(img)) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(img) * scale, 0, 255).astype(np.uint8)
    return np.clip(img, 0, 255).astype(np.uint8)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Load an image as HWC uint8 RGB, EXIF orientation applied.

    Args:
        path: Image file.

    Returns:
        Contiguous (h, w, 3) uint8 array.

    Raises:
        DataError: The file cannot be decoded by OpenCV or PIL.
    """
    return decode_image(read_bytes(path), path)


def read_bytes(path: str | os.PathLike[str]) -> np.ndarray:
    """The file's bytes as a uint8 array (the "read" stage, kept apart from decoding to time it).

    Raises:
        DataError: The file cannot be read.
    """
    try:
        return np.fromfile(str(path), dtype=np.uint8)
    except OSError as e:
        raise DataError(f"{path}: cannot read image ({type(e).__name__})") from e


def jpeg_reduction(buf: np.ndarray, long_side: int, needed: int) -> int:
    """The largest JPEG DCT scale-down (1, 2, 4 or 8) that still leaves at least ``needed`` pixels.

    libjpeg decodes at 1/2, 1/4 or 1/8 scale for a fraction of the work of a full decode plus a
    resize; only worth it when the image is at least twice the size needed.

    Args:
        buf: File bytes (only JPEGs, by their magic number, are reduced).
        long_side: The image's long side in pixels.
        needed: Long side the caller will resize to.
    """
    if len(buf) < 3 or buf[0] != 0xFF or buf[1] != 0xD8 or needed <= 0:
        return 1
    for f in (8, 4, 2):
        if long_side // f >= needed:
            return f
    return 1


def decode_image(buf: np.ndarray, path: str | os.PathLike[str], reduce: int = 1) -> np.ndarray:
    """Decode file bytes as HWC uint8 RGB, EXIF orientation applied.

    Args:
        buf: The file's bytes (:func:`read_bytes`).
        path: The file, for messages and the PIL fallback.
        reduce: 2, 4 or 8 decodes a JPEG at that fraction of its size (each side rounded up);
            see :func:`jpeg_reduction`.

    Returns:
        Contiguous (h, w, 3) uint8 array.

    Raises:
        DataError: The bytes cannot be decoded by OpenCV or PIL.
    """
    flags = _IMREAD_FLAGS if reduce == 1 else _REDUCED_FLAGS[reduce]
    img = cv2.imdecode(buf, flags) if len(buf) else None
    if img is None:
        img = _read_with_pil(path)
        if reduce != 1:  # the fallback decodes at full size: shrink like the reduced decode would
            h, w = img.shape[:2]
            img = cv2.resize(img, (-(-w // reduce), -(-h // reduce)), interpolation=cv2.INTER_AREA)
    elif not _HAS_RGB_FLAG:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    img = to_uint8(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img)


def _read_with_pil(path: str | os.PathLike[str]) -> np.ndarray:
    """Fallback for files OpenCV cannot decode (some TIFF / WebP variants)."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im).astype(np.uint16 if im.mode.startswith("I;16") else np.int64)
                if arr.dtype != np.uint16:
                    arr = np.clip(arr, 0, 65535).astype(np.uint16)
                return arr
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL signals bad files with many exception types
        raise DataError(f"{path}: cannot read image ({type(e).__name__})") from e
