"""Vectorized image + box augmentations (numpy / OpenCV).

Conventions: images are HWC uint8 RGB arrays; ``boxes`` are (n, 4) float32 ``x1 y1 x2 y2`` in
pixels; ``cls`` is (n,). All randomness comes from a ``numpy.random.Generator`` passed in, so a
sample's augmentation is a pure function of its generator's seed.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

PAD_VALUE = 114  # neutral grey: the network sees the same padding in training and evaluation
PAD_COLOR = (PAD_VALUE, PAD_VALUE, PAD_VALUE)

ImageLabels = tuple[np.ndarray, np.ndarray, np.ndarray]


def letterbox(
    img: np.ndarray,
    new_shape: int | tuple[int, int] = 640,
    color: tuple[int, int, int] = PAD_COLOR,
    scaleup: bool = True,
    stride: int = 32,
    auto: bool = False,
) -> tuple[np.ndarray, tuple[float, float], tuple[int, int]]:
    """Resize keeping the aspect ratio, then pad.

    Args:
        img: HWC image.
        new_shape: Target ``(h, w)`` or a side length for a square.
        color: Padding colour.
        scaleup: Allow enlarging (False only shrinks, which keeps small images sharp in eval).
        stride: With ``auto``, pad only up to the next multiple of this.
        auto: Minimal padding (to a multiple of ``stride``) instead of exactly ``new_shape``.

    Returns:
        ``(img, (ratio_w, ratio_h), (pad_left, pad_top))``: a point ``(x, y)`` of the input maps to
        ``(x * ratio_w + pad_left, y * ratio_h + pad_top)``. The two ratios differ from each other
        only by the rounding of the resized size.
    """
    h0, w0 = img.shape[:2]
    if isinstance(new_shape, int):
        nh, nw = new_shape, new_shape
    else:
        nh, nw = int(new_shape[0]), int(new_shape[1])
    r = min(nh / h0, nw / w0)
    if not scaleup:
        r = min(r, 1.0)
    uw = min(nw, max(1, round(w0 * r)))
    uh = min(nh, max(1, round(h0 * r)))
    dw, dh = nw - uw, nh - uh
    if auto:
        dw, dh = dw % stride, dh % stride
    if (uw, uh) != (w0, h0):
        interp = cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR
        img = cv2.resize(img, (uw, uh), interpolation=interp)
    left, top = dw // 2, dh // 2
    if dw or dh:
        img = cv2.copyMakeBorder(img, top, dh - top, left, dw - left, cv2.BORDER_CONSTANT, value=color)
    return img, (uw / w0, uh / h0), (left, top)


_LEVELS = np.arange(256, dtype=np.float32)  # the 8-bit values a lookup table maps
_LEVELS.flags.writeable = False


def random_hsv(img: np.ndarray, hgain: float, sgain: float, vgain: float, rng: np.random.Generator) -> np.ndarray:
    """Random hue shift and saturation / value gains, in place.

    Hue is shifted additively (by up to ``hgain`` of the full colour circle) so every hue moves
    equally; saturation and value are multiplied by ``1 +- gain`` (rounded, saturated at 255).

    Args:
        img: HWC uint8 RGB image, modified in place.
        hgain: Hue shift range as a fraction of the colour circle.
        sgain: Saturation gain range.
        vgain: Value gain range.
        rng: Random generator.

    Returns:
        The same array.
    """
    dh, gs, gv = rng.uniform(-1.0, 1.0, 3) * (hgain, sgain, vgain) + (0.0, 1.0, 1.0)
    if not (hgain or sgain or vgain):
        return img
    hue = np.mod(np.round(_LEVELS + dh * 180.0), 180).astype(np.uint8)  # OpenCV 8-bit hue is 0..179
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    h, s, v = cv2.split(hsv)
    cv2.LUT(h, hue, dst=h)
    # Saturation and value: round(x * gain) in float32, saturated to 0..255. convertScaleAbs computes exactly
    # that (checked against a float32 lookup table for every 8-bit value at 330,000 gains in [0, 3], SIMD
    # and scalar paths) in a fifth of a lookup's time; the float64 table used before rounded differently
    # in about 1 image in 300, by one level.
    cv2.convertScaleAbs(s, dst=s, alpha=float(gs))
    cv2.convertScaleAbs(v, dst=v, alpha=float(gv))
    cv2.merge((h, s, v), dst=hsv)
    cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB, dst=img)
    return img


def random_flip_lr(
    img: np.ndarray, boxes: np.ndarray, p: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right with probability ``p``.

    Args:
        img: HWC image.
        boxes: (n, 4) xyxy pixels.
        p: Probability.
        rng: Random generator (one draw, always, so later draws do not depend on ``p``).

    Returns:
        ``(img, boxes)``, new arrays when flipped.
    """
    if rng.random() >= p:
        return img, boxes
    w = img.shape[1]
    img = np.ascontiguousarray(img[:, ::-1])
    boxes = boxes.copy()
    boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    return img, boxes


def transform_boxes(boxes: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Apply a 3x3 (or 2x3) affine or 3x3 projective matrix to boxes via their 4 corners.

    Args:
        boxes: (n, 4) xyxy.
        m: Affine or projective matrix.

    Returns:
        (n, 4) axis-aligned xyxy boxes enclosing the transformed corners (not clipped).
    """
    n = len(boxes)
    if n == 0:
        return np.zeros((0, 4), dtype=np.float32)
    corners = boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(n * 4, 2).astype(np.float64)
    pts = corners @ m[:2, :2].T + m[:2, 2]
    if is_projective(m):
        # Straight lines stay straight, so the 4 corners still bound the box's pixels; a corner the
        # projection sends behind the viewer (w <= 0) makes the whole box empty (dropped later).
        w = corners @ m[2, :2] + m[2, 2]
        behind = (w <= 1e-6).reshape(n, 4).any(1)
        pts /= np.maximum(w, 1e-6)[:, None]
        pts = pts.reshape(n, 4, 2)
        pts[behind] = 0.0
    else:
        pts = pts.reshape(n, 4, 2)
    return np.concatenate([pts.min(1), pts.max(1)], 1).astype(np.float32)


def is_projective(m: np.ndarray) -> bool:
    """True when the 3x3 matrix ``m`` has a perspective term (its last row is not ``0 0 1``)."""
    return m.shape[0] == 3 and bool(m[2, 0] != 0 or m[2, 1] != 0)


def warp(
    img: np.ndarray, m: np.ndarray, out_size: tuple[int, int], color: tuple[int, int, int] = PAD_COLOR
) -> np.ndarray:
    """``warpAffine``, or ``warpPerspective`` when ``m`` has a perspective term, to ``out_size`` ``(h, w)``."""
    oh, ow = out_size
    if is_projective(m):
        return cv2.warpPerspective(img, m, dsize=(ow, oh), flags=cv2.INTER_LINEAR, borderValue=color)
    return cv2.warpAffine(img, m[:2], dsize=(ow, oh), flags=cv2.INTER_LINEAR, borderValue=color)


def box_candidates(
    before: np.ndarray,
    after: np.ndarray,
    min_wh: float = 2.0,
    area_ratio: float = 0.1,
    max_aspect: float = 20.0,
) -> np.ndarray:
    """Which transformed boxes are still worth training on.

    Args:
        before: (n, 4) boxes before the transform, already multiplied by the transform's scale so
            that zooming alone never rejects a box.
        after: (n, 4) boxes after transform and clipping.
        min_wh: Minimum width and height in pixels.
        area_ratio: Minimum visible fraction of the (scaled) original area.
        max_aspect: Maximum aspect ratio (long / short side).

    Returns:
        (n,) bool mask.
    """
    w1, h1 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w2, h2 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    eps = 1e-9
    aspect = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    big_enough = (w2 > min_wh) & (h2 > min_wh)
    return big_enough & (w2 * h2 / (w1 * h1 + eps) > area_ratio) & (aspect < max_aspect)


def random_affine(
    img: np.ndarray,
    boxes: np.ndarray,
    cls: np.ndarray,
    degrees: float = 0.0,
    translate: float = 0.0,
    scale: float = 0.0,
    shear: float = 0.0,
    out_size: tuple[int, int] | None = None,
    border: int = 0,
    rng: np.random.Generator | None = None,
    color: tuple[int, int, int] = PAD_COLOR,
    perspective: float = 0.0,
) -> ImageLabels:
    """Random rotation, scale, shear, translation (and perspective) as one matrix and one warp.

    The image centre is moved to the origin, rotated/scaled and sheared there, then moved to a
    random point near the centre of the output, so with ``border=-s/2`` on a ``2s x 2s`` mosaic the
    output is a random ``s x s`` crop around the mosaic centre.

    Args:
        img: HWC image.
        boxes: (n, 4) xyxy pixels.
        cls: (n,) class ids, filtered together with the boxes.
        degrees: Rotation range (+-) in degrees.
        translate: Translation range (+-) as a fraction of the output size.
        scale: Scale range: the factor is drawn from ``[1 - scale, 1 + scale]``.
        shear: Shear range (+-) in degrees.
        out_size: Output ``(h, w)``; default is the input size grown by ``border`` on each side.
        border: Border added to (negative: removed from) each side when ``out_size`` is None.
        rng: Random generator (required; keyword-friendly position kept for readability).
        color: Fill colour of uncovered areas.
        perspective: Perspective range (+-) of the projective terms (see :func:`affine_matrix`).

    Returns:
        ``(img, boxes, cls)`` with boxes clipped to the output and filtered by
        :func:`box_candidates`.
    """
    if rng is None:
        raise ValueError("random_affine needs an explicit numpy Generator (rng=...)")
    h, w = img.shape[:2]
    oh, ow = out_size if out_size is not None else (h + 2 * border, w + 2 * border)
    m, s = affine_matrix((h, w), (oh, ow), degrees, translate, scale, shear, rng, perspective)
    if (oh, ow) != (h, w) or not np.allclose(m, np.eye(3)):
        img = warp(img, m, (oh, ow), color)
    boxes, cls = affine_boxes(boxes, cls, m, s, (oh, ow))
    return img, boxes, cls


def affine_matrix(
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    degrees: float,
    translate: float,
    scale: float,
    shear: float,
    rng: np.random.Generator,
    perspective: float = 0.0,
) -> tuple[np.ndarray, float]:
    """The random 3x3 matrix of :func:`random_affine` and its scale factor (same draws, same order).

    Args:
        in_size: Input ``(h, w)``.
        out_size: Output ``(h, w)``.
        degrees: Rotation range (+-) in degrees.
        translate: Translation range (+-) as a fraction of the output size.
        scale: Scale range: the factor is drawn from ``[1 - scale, 1 + scale]``.
        shear: Shear range (+-) in degrees.
        rng: Random generator.
        perspective: Range (+-) of the two projective terms, applied about the input centre before
            rotation (as the peers' ``perspective``, sensible values 0-0.001); drawn last and only
            when non-zero, so the other draws do not depend on it.

    Returns:
        ``(m, s)``: input pixel ``(x, y, 1)`` maps to output ``m @ (x, y, 1)`` (divided by its third
        coordinate when ``perspective`` is non-zero); ``s`` is the scale.
    """
    h, w = in_size
    oh, ow = out_size
    if not (degrees or shear or perspective):
        # The default recipe: the same draws, and the product below written out (rotation by 0 and
        # shear by 0 leave only the scale; 4 matrices and 3 products cost ~20 us a sample at 320 px).
        rng.uniform(-degrees, degrees)
        s = rng.uniform(1 - scale, 1 + scale)
        rng.uniform(-shear, shear), rng.uniform(-shear, shear)
        mx = rng.uniform(0.5 - translate, 0.5 + translate) * ow
        my = rng.uniform(0.5 - translate, 0.5 + translate) * oh
        return np.array([[s, 0.0, s * (-w / 2) + mx], [0.0, s, s * (-h / 2) + my], [0.0, 0.0, 1.0]]), float(s)
    center = np.eye(3)
    center[:2, 2] = (-w / 2, -h / 2)
    angle = rng.uniform(-degrees, degrees)
    s = rng.uniform(1 - scale, 1 + scale)
    rot = np.eye(3)
    rot[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=angle, scale=s)
    sh = np.eye(3)
    sh[0, 1] = math.tan(math.radians(rng.uniform(-shear, shear)))
    sh[1, 0] = math.tan(math.radians(rng.uniform(-shear, shear)))
    move = np.eye(3)
    move[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * ow
    move[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * oh
    if perspective:
        proj = np.eye(3)
        proj[2, :2] = rng.uniform(-perspective, perspective, 2)  # x and y perspective
        center = proj @ center
    return move @ sh @ rot @ center, float(s)  # right to left: centre (+ perspective), rotate+scale, shear, move


def affine_boxes(
    boxes: np.ndarray, cls: np.ndarray, m: np.ndarray, s: float, out_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (and their classes) through matrix ``m``: clipped to ``out_size``, filtered by :func:`box_candidates`.

    Args:
        boxes: (n, 4) xyxy pixels of the input.
        cls: (n,) class ids.
        m: 3x3 matrix from :func:`affine_matrix` (possibly composed with a flip).
        s: Its scale factor (the candidates compare areas at that scale).
        out_size: Output ``(h, w)``.
    """
    oh, ow = out_size
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    cls = np.asarray(cls)
    if len(boxes) == 0:
        return boxes, cls
    new = transform_boxes(boxes, m)
    new[:, [0, 2]] = new[:, [0, 2]].clip(0, ow)
    new[:, [1, 3]] = new[:, [1, 3]].clip(0, oh)
    keep = box_candidates(boxes * s, new)
    return new[keep], cls[keep]


def source_window(m: np.ndarray, out_size: tuple[int, int], in_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The part ``(x0, y0, x1, y1)`` of an ``in_size`` input that warping by ``m`` to ``out_size`` reads.

    The output rectangle's corners mapped back through ``m``, widened by two pixels for the bilinear
    neighbours and clipped to the input: pixels outside it never reach the output.
    """
    oh, ow = out_size
    corners = np.array([[0, 0, 1], [ow, 0, 1], [0, oh, 1], [ow, oh, 1]], dtype=np.float64)
    src = corners @ np.linalg.inv(m).T
    h, w = in_size
    if is_projective(m):
        # A projective map sends the output rectangle back to a quadrilateral with these corners,
        # unless part of it lies beyond the horizon (w <= 0): then the whole input is read.
        if (src[:, 2] <= 1e-6).any():
            return 0, 0, w, h
        src = src[:, :2] / src[:, 2:]
    x0 = int(np.clip(math.floor(src[:, 0].min()) - 2, 0, w))
    y0 = int(np.clip(math.floor(src[:, 1].min()) - 2, 0, h))
    x1 = int(np.clip(math.ceil(src[:, 0].max()) + 2, 0, w))
    y1 = int(np.clip(math.ceil(src[:, 1].max()) + 2, 0, h))
    return x0, y0, max(x1, x0), max(y1, y0)


def is_scale_translate(m: np.ndarray) -> bool:
    """True when ``m`` only scales (by positive factors) and translates: no rotation, shear, flip or perspective."""
    return m[0, 1] == 0 and m[1, 0] == 0 and m[0, 0] > 0 and m[1, 1] > 0 and not is_projective(m)


def resize_span(s: float, t: float, n_in: int, n_out: int) -> tuple[int, int, int, int]:
    """One axis of a scale ``s`` and shift ``t``: the source span ``[a, b)`` an ``n_out`` output needs
    and its output span ``[da, db)`` on whole pixels (used by :func:`scale_translate_warp` and the mosaic)."""
    a = min(max(math.floor(-t / s), 0), n_in)  # plain ints: np.clip on scalars costs ~100x more
    b = min(max(math.ceil((n_out - t) / s), 0), n_in)
    da, db = round(s * a + t), round(s * b + t)
    return a, b, da, db


def scale_translate_warp(
    img: np.ndarray, m: np.ndarray, out_size: tuple[int, int], color: tuple[int, int, int] = PAD_COLOR
) -> tuple[np.ndarray, np.ndarray]:
    """``warpAffine`` for a scale-and-translate matrix, done as a crop, a resize and a paste.

    A separable resize costs a fraction of a general warp. The crop's ends land on whole output
    pixels, so the mapping actually applied differs from ``m`` by under a pixel over the image;
    it is returned, and boxes must go through it (then they follow the pixels exactly).

    Args:
        img: HWC source.
        m: 3x3 matrix with :func:`is_scale_translate` true.
        out_size: Output ``(h, w)``.
        color: Fill of the uncovered output.

    Returns:
        ``(out, m_applied)``.
    """
    h, w = img.shape[:2]
    oh, ow = out_size
    xa, xb, dxa, dxb = resize_span(float(m[0, 0]), float(m[0, 2]), w, ow)
    ya, yb, dya, dyb = resize_span(float(m[1, 1]), float(m[1, 2]), h, oh)
    # np.full with one value is a memset; assigning a colour tuple is ~100x slower.
    out = np.full((oh, ow, 3), color[0], dtype=np.uint8) if len(set(color)) == 1 else np.empty((oh, ow, 3), np.uint8)
    if len(set(color)) != 1:
        out[:] = color
    applied = m.astype(np.float64).copy()
    if xb > xa and yb > ya and dxb > dxa and dyb > dya:
        sx, sy = (dxb - dxa) / (xb - xa), (dyb - dya) / (yb - ya)
        applied[0, 0], applied[0, 2] = sx, dxa - xa * sx
        applied[1, 1], applied[1, 2] = sy, dya - ya * sy
        part = cv2.resize(img[ya:yb, xa:xb], (dxb - dxa, dyb - dya), interpolation=cv2.INTER_LINEAR)
        x0, y0 = max(dxa, 0), max(dya, 0)
        x1, y1 = min(dxb, ow), min(dyb, oh)
        if x1 > x0 and y1 > y0:
            out[y0:y1, x0:x1] = part[y0 - dya : y1 - dya, x0 - dxa : x1 - dxa]
    return out, applied


def hflip_matrix(width: int) -> np.ndarray:
    """3x3 matrix mirroring x in an image ``width`` pixels wide (compose it into a warp: a free flip)."""
    f = np.eye(3)
    f[0, 0], f[0, 2] = -1.0, float(width)
    return f


def flip_ud(img: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror top-bottom: a new image, and boxes with ``y -> h - y`` (a new array).

    Args:
        img: HWC image.
        boxes: (n, 4) xyxy pixels.
    """
    h = img.shape[0]
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    boxes[:, [1, 3]] = h - boxes[:, [3, 1]]
    return cv2.flip(img, 0), boxes
