"""The built-in demo dataset: synthetic coloured shapes, generated once and reused.

The class is the shape (circle, rectangle, triangle, cross); colour, size, aspect ratio, rotation,
position, background, clutter and noise are random, so a detector must learn shape to score well.
Image ``i`` of a split depends only on (seed, split, i), so growing ``n_train`` keeps old images.

Usage::

    data_yaml = ensure_demo_dataset()          # ~/.cache/yolotrain/demo-v1/data.yaml
    data_yaml = ensure_demo_dataset(tmp_path, n_train=16, n_val=4)
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import yaml

from yolotrain.data.records import xyxy_to_xywhn
from yolotrain.errors import DataError

LOGGER = logging.getLogger("yolotrain")

DEMO_VERSION = 1
CLASS_NAMES = ("circle", "rectangle", "triangle", "cross")
_MARKER = ".yolotrain-demo.json"
_SPLIT_IDS = {"train": 0, "val": 1}
_SUBPIXEL = 4  # cv2 fixed-point bits: shapes are drawn with 1/16 pixel precision


def default_demo_root() -> Path:
    """``$YOLOTRAIN_CACHE/demo-v1`` or ``~/.cache/yolotrain/demo-v1``."""
    base = os.environ.get("YOLOTRAIN_CACHE") or os.path.join(Path.home(), ".cache", "yolotrain")
    return Path(base).expanduser() / f"demo-v{DEMO_VERSION}"


# ---------------------------------------------------------------------------------------- shapes
def _unit_shape(cls: int, rng: np.random.Generator) -> np.ndarray:
    """Polygon of class ``cls`` around the origin, roughly within [-1, 1], before scaling."""
    if cls == 0:  # circle / mild ellipse
        t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1)
        aspect, angle = rng.uniform(0.8, 1.25), rng.uniform(0, 180)
    elif cls == 1:  # rectangle, from thin bar to square, mildly rotated
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
        aspect, angle = math.exp(rng.uniform(math.log(0.4), math.log(2.5))), rng.uniform(-25, 25)
    elif cls == 2:  # triangle with jittered corners, any orientation
        a = np.radians(np.array([-90.0, 30.0, 150.0]) + rng.uniform(-12, 12, 3))
        pts = np.stack([np.cos(a), np.sin(a)], 1)
        aspect, angle = rng.uniform(0.75, 1.33), rng.uniform(0, 360)
    else:  # plus-shaped cross with random arm thickness
        k = rng.uniform(0.22, 0.4)
        pts = np.array(
            [[-k, -1], [k, -1], [k, -k], [1, -k], [1, k], [k, k],
             [k, 1], [-k, 1], [-k, k], [-1, k], [-1, -k], [-k, -k]],
            dtype=np.float64,
        )  # fmt: skip
        aspect, angle = rng.uniform(0.8, 1.25), rng.uniform(0, 90)
    pts = pts * np.array([aspect, 1.0])
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return pts @ np.array([[c, s], [-s, c]])


def _random_color(rng: np.random.Generator, v_lo: float, v_hi: float, s_lo: float, s_hi: float) -> tuple[int, int, int]:
    """Random RGB colour with value and saturation (0..1) in the given ranges."""
    h, s, v = rng.uniform(0, 180), rng.uniform(s_lo, s_hi) * 255, rng.uniform(v_lo, v_hi) * 255
    hsv = np.array([[[h, s, v]]])
    rgb = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0]
    return int(rgb[0]), int(rgb[1]), int(rgb[2])


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Dim gradient with thin lines and small blobs: clutter that is never one of the classes."""
    c0 = np.array(_random_color(rng, 0.1, 0.5, 0.0, 0.6), dtype=np.float32)
    c1 = np.array(_random_color(rng, 0.1, 0.5, 0.0, 0.6), dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    t = (ramp[None, :] * math.cos(angle) + ramp[:, None] * math.sin(angle) + 1.5) / 3.0  # in [0, 1]
    img = (c0 + (c1 - c0) * t[..., None]).astype(np.uint8)
    for _ in range(int(rng.integers(2, 9))):
        p1 = tuple(int(v) for v in rng.integers(0, size, 2))
        p2 = tuple(int(v) for v in rng.integers(0, size, 2))
        color = _random_color(rng, 0.2, 0.9, 0.0, 1.0)
        cv2.line(img, p1, p2, color, int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(int(rng.integers(3, 16))):
        center = tuple(int(v) for v in rng.integers(0, size, 2))
        r = int(rng.integers(1, max(2, int(0.02 * size) + 1)))
        cv2.circle(img, center, r, _random_color(rng, 0.2, 0.9, 0.0, 1.0), -1, cv2.LINE_AA)
    return img


def _overlaps_too_much(box: np.ndarray, boxes: list[np.ndarray], max_cover: float = 0.35) -> bool:
    """True when ``box`` and an existing box cover more than ``max_cover`` of the smaller one."""
    if not boxes:
        return False
    b = np.asarray(boxes)
    iw = np.clip(np.minimum(box[2], b[:, 2]) - np.maximum(box[0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], b[:, 3]) - np.maximum(box[1], b[:, 1]), 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return bool(np.any(iw * ih > max_cover * np.minimum(area, areas)))


def make_demo_image(
    rng: np.random.Generator, size: int = 256, clean: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one demo image.

    Args:
        rng: Random generator (the image is a pure function of its state).
        size: Side length in pixels.
        clean: Black background, no clutter, no noise (to check the boxes against the pixels).

    Returns:
        ``(img RGB uint8 (size, size, 3), cls int64 (n,), boxes float32 (n, 4) xyxy pixels)``; each
        box is the exact extent of the pixels drawn for its shape.
    """
    img = np.zeros((size, size, 3), np.uint8) if clean else _background(size, rng)
    n_obj = int(rng.integers(1, 7))
    boxes: list[np.ndarray] = []
    classes: list[int] = []
    for _ in range(n_obj):
        cls = int(rng.integers(0, len(CLASS_NAMES)))
        pts = _unit_shape(cls, rng)
        extent = pts.max(0) - pts.min(0)
        # Log-uniform long side between 8% and 50% of the image: as many small as large objects.
        long_side = size * math.exp(rng.uniform(math.log(0.08), math.log(0.5)))
        pts = pts * (long_side / extent.max())
        lo, hi = pts.min(0), pts.max(0)
        for _attempt in range(20):
            offset = rng.uniform(-lo, size - hi)
            placed = pts + offset
            box = np.concatenate([placed.min(0), placed.max(0)])
            if not _overlaps_too_much(box, boxes):
                break
        else:
            continue  # crowded image: skip this object rather than hide another one
        # Rasterize into a mask of the shape's region only, then take the box from the pixels
        # actually set, so the label is tight to what was drawn.
        x0, y0 = (max(0, int(v) - 1) for v in box[:2])
        x1, y1 = (min(size, int(math.ceil(v)) + 1) for v in box[2:])
        mask = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
        poly = np.round((placed - (x0, y0)) * (1 << _SUBPIXEL)).astype(np.int32)[None]
        cv2.fillPoly(mask, poly, 255, cv2.LINE_8, _SUBPIXEL)
        x, y, w, h = cv2.boundingRect(mask)
        if w < 2 or h < 2:
            continue
        color = _random_color(rng, 0.6, 1.0, 0.45, 1.0)
        img[y0:y1, x0:x1][mask > 0] = color
        boxes.append(np.array([x0 + x, y0 + y, x0 + x + w, y0 + y + h], dtype=np.float32))
        classes.append(cls)
    cls_arr = np.asarray(classes, dtype=np.int64)
    box_arr = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if clean:
        return img, cls_arr, box_arr
    # Uniform integer pixel noise (std 2..8): as useful as Gaussian here and several times cheaper.
    amp = int(rng.integers(3, 15))
    noisy = rng.integers(-amp, amp + 1, img.shape, dtype=np.int16)
    noisy += img
    img = np.clip(noisy, 0, 255, out=noisy).astype(np.uint8)
    return img, cls_arr, box_arr


# ---------------------------------------------------------------------------------------- files
def _params(n_train: int, n_val: int, size: int, seed: int) -> dict[str, int]:
    return {"version": DEMO_VERSION, "n_train": n_train, "n_val": n_val, "size": size, "seed": seed}


def _is_complete(root: Path, params: dict[str, int]) -> bool:
    try:
        return json.loads((root / _MARKER).read_text()) == params and (root / "data.yaml").is_file()
    except (OSError, ValueError):
        return False


def _generate(root: Path, params: dict[str, int]) -> None:
    size = params["size"]
    for split, n in (("train", params["n_train"]), ("val", params["n_val"])):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            rng = np.random.default_rng([params["seed"], _SPLIT_IDS[split], i])
            img, cls, boxes = make_demo_image(rng, size)
            name = f"{i:06d}"
            ok = cv2.imwrite(
                str(root / "images" / split / f"{name}.jpg"),
                cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 95],
            )
            if not ok:
                raise OSError(f"cannot write demo image into {root}")
            xywh = xyxy_to_xywhn(boxes, size, size)
            lines = [f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, (x, y, w, h) in zip(cls, xywh)]
            (root / "labels" / split / f"{name}.txt").write_text("".join(lines))
    data = {"path": ".", "train": "images/train", "val": "images/val", "names": list(CLASS_NAMES)}
    (root / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    # The marker is written last: its presence means the folder is complete.
    (root / _MARKER).write_text(json.dumps(params))


def _remove_stale_tmp(target: Path, max_age_s: float = 3600.0) -> None:
    """Delete temp folders left by interrupted generations (older than an hour, so not in use)."""
    now = time.time()
    for p in target.parent.glob(target.name + ".tmp-*"):
        try:
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def ensure_demo_dataset(
    root: str | os.PathLike[str] | None = None,
    n_train: int = 800,
    n_val: int = 200,
    size: int = 256,
    seed: int = 0,
) -> Path:
    """Return the demo ``data.yaml``, generating the dataset on first use.

    Generation happens in a temporary sibling folder that is renamed into place atomically, so
    concurrent processes and interrupted runs never leave (or see) a half-built dataset. An
    existing demo folder built with other parameters is replaced; any other existing non-empty
    folder is left alone and reported.

    Args:
        root: Target folder; default :func:`default_demo_root`.
        n_train: Training images.
        n_val: Validation images.
        size: Image side length in pixels.
        seed: Generation seed.

    Returns:
        Path of ``data.yaml`` inside the dataset folder.

    Raises:
        DataError: ``root`` exists, is not a demo dataset and is not empty, or cannot be written.
    """
    if min(n_train, n_val) < 1 or size < 32:
        raise DataError(f"demo dataset: need n_train, n_val >= 1 and size >= 32, got {n_train}, {n_val}, {size}")
    target = Path(root).expanduser().resolve() if root is not None else default_demo_root()
    params = _params(int(n_train), int(n_val), int(size), int(seed))
    if _is_complete(target, params):
        return target / "data.yaml"
    if target.exists() and not (target / _MARKER).exists() and any(target.iterdir()):
        raise DataError(f"{target}: exists and is not a yolotrain demo dataset; choose another folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp(target)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the final dataset should be readable
    except OSError as e:
        raise DataError(f"{target}: cannot create the demo dataset ({e.strerror or e})") from e
    t0 = time.perf_counter()
    try:
        _generate(tmp, params)
        try:
            os.replace(tmp, target)  # atomic; works when target is absent or an empty folder
        except OSError:
            if _is_complete(target, params):  # another process finished first: use its copy
                return target / "data.yaml"
            # An older demo build (different parameters): move it aside, then swap in ours.
            old = target.with_name(f"{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise DataError(f"{target}: cannot create the demo dataset ({e.strerror or e})") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    LOGGER.info(
        "demo dataset generated in %s (%d train / %d val images, %.1f s)",
        target,
        n_train,
        n_val,
        time.perf_counter() - t0,
    )
    return target / "data.yaml"
