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
    img = cv2.imread(str(path), _IMREAD_FLAGS)
    if img is None:
        img = _read_with_pil(path)
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
