"""Long-tailed data: class frequencies, repeat-factor sampling (LVIS) and class weights for the loss.

``sampler=repeat_factor rfs_threshold=t`` repeats each training image ``r_i`` times per epoch, with
(Gupta et al., LVIS, 2019)::

    f_c = share of the training images that contain class c
    r_c = max(1, sqrt(t / f_c))
    r_i = max over the classes c in image i of r_c      (1 for an image without boxes)

so images holding a class rarer than ``t`` are seen more often and nothing is seen less often.

An epoch keeps a fixed length, ``L = ceil(sum_i r_i)`` images, so the iterations per epoch, the lr
schedule and mid-epoch resume work as without the sampler. The factors are scaled by ``L / sum_i r_i``
(at least 1, so every image still appears at least once per epoch) and the fractional parts are rounded by
systematic sampling with one uniform offset drawn from (seed, epoch): each image gets ``floor`` or ``ceil``
of its scaled factor, on average exactly that factor, and the epoch's whole order is a function of
(seed, epoch) only, the same on every rank.

``cls_weights=auto`` weights each class's term of the classification loss by the inverse of its box
count, normalised to mean 1 over the classes that have boxes, then clipped to
``[1/CLS_WEIGHT_CLIP, CLS_WEIGHT_CLIP]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from yolotrain.data.dataset import epoch_order
from yolotrain.errors import ConfigError

CLS_WEIGHT_CLIP = 10.0  # no class's loss term is weighted more than 10x (or less than 1/10) the mean
# a different stream from the shuffle order's (seed + epoch), for the rounding offset
_ROUNDING_STREAM = 0x5EED_0F_1E4F


def class_image_counts(image_classes: Sequence[np.ndarray], nc: int) -> np.ndarray:
    """How many images contain each class (an image counts once per class, however many boxes).

    Args:
        image_classes: Each image's class ids (an int array per image).
        nc: Number of classes.

    Returns:
        int64 (nc,).
    """
    counts = np.asarray([len(c) for c in image_classes], dtype=np.int64)
    if not counts.sum():
        return np.zeros(nc, dtype=np.int64)
    img = np.repeat(np.arange(len(image_classes)), counts)
    cls = np.concatenate([np.asarray(c, dtype=np.int64).reshape(-1) for c in image_classes])
    pairs = np.unique(np.stack([img, cls], 1), axis=0)
    return np.bincount(pairs[:, 1], minlength=nc)[:nc]


def repeat_factors(image_classes: Sequence[np.ndarray], nc: int, threshold: float) -> np.ndarray:
    """The LVIS repeat factor of every image (see the module docstring).

    Args:
        image_classes: Each image's class ids.
        nc: Number of classes.
        threshold: ``t``: classes in fewer than this share of the images are repeated.

    Returns:
        float64 (n,), every factor >= 1.
    """
    n = len(image_classes)
    factors = np.ones(n, dtype=np.float64)
    if n == 0:
        return factors
    freq = class_image_counts(image_classes, nc) / n
    with np.errstate(divide="ignore"):
        per_class = np.maximum(1.0, np.sqrt(threshold / np.where(freq > 0, freq, np.inf)))
    counts = np.asarray([len(c) for c in image_classes], dtype=np.int64)
    if counts.sum():
        img = np.repeat(np.arange(n), counts)
        cls = np.concatenate([np.asarray(c, dtype=np.int64).reshape(-1) for c in image_classes])
        np.maximum.at(factors, img, per_class[cls])
    return factors


def epoch_length(factors: np.ndarray) -> int:
    """Images per epoch under these factors: ``ceil(sum(factors))`` (at least 1)."""
    return max(1, math.ceil(float(np.sum(factors)) - 1e-9))  # an integer sum is not rounded up by float error


def repeat_counts(factors: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """How often each image appears in ``epoch``: ``floor`` or ``ceil`` of its factor rescaled to the epoch
    length, summing to exactly :func:`epoch_length`; a function of (seed, epoch) only.

    Systematic sampling: the images are visited in a random order, and an image gets one copy for every
    integer that ``offset + running sum of factors`` passes while it is added (offset uniform in [0, 1)).
    """
    n = len(factors)
    length = epoch_length(factors)
    scaled = np.asarray(factors, dtype=np.float64) * (length / float(np.sum(factors)))
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + int(epoch) * 7_919 + _ROUNDING_STREAM) % 2**63)
    visit = torch.randperm(n, generator=g).numpy()
    offset = float(torch.rand(1, generator=g, dtype=torch.float64))
    edges = np.concatenate([[0.0], np.cumsum(scaled[visit])])
    edges[-1] = length  # exact, so the counts add up to the length despite rounding error
    copies = np.diff(np.floor(edges + offset)).astype(np.int64)
    counts = np.zeros(n, dtype=np.int64)
    counts[visit] = copies
    return counts


def repeat_epoch_order(factors: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The whole epoch's image order under repeat-factor sampling (before it is dealt to ranks).

    Returns:
        int64 (``epoch_length(factors)``,): image indices, repeats spread by a shuffle of (seed, epoch).
    """
    counts = repeat_counts(factors, seed, epoch)
    expanded = np.repeat(np.arange(len(factors)), counts)
    return expanded[epoch_order(len(expanded), seed, epoch)]


def class_weights(spec: Any, instance_counts: Sequence[int]) -> np.ndarray | None:
    """The per-class weights of the classification loss that ``cls_weights=`` asks for.

    Args:
        spec: None/"off" (no weighting), "auto" (inverse box frequency, mean 1, clipped to
            [1/:data:`CLS_WEIGHT_CLIP`, :data:`CLS_WEIGHT_CLIP`]; classes without boxes get 1), or a list of
            one positive number per class.
        instance_counts: Boxes per class in the training split.

    Returns:
        float32 (nc,), or None when no weighting is asked for.

    Raises:
        ConfigError: When a list has the wrong length.
    """
    nc = len(instance_counts)
    if spec is None or spec is False or spec == "off":
        return None
    if spec == "auto":
        counts = np.asarray(instance_counts, dtype=np.float64)
        present = counts > 0
        weights = np.ones(nc, dtype=np.float64)
        if present.any():
            inverse = 1.0 / counts[present]
            weights[present] = np.clip(inverse / inverse.mean(), 1.0 / CLS_WEIGHT_CLIP, CLS_WEIGHT_CLIP)
        return weights.astype(np.float32)
    values = [float(v) for v in spec]
    if len(values) != nc:
        raise ConfigError(f"setting 'cls_weights' has {len(values)} weights; the data has {nc} classes")
    return np.asarray(values, dtype=np.float32)


__all__ = [
    "CLS_WEIGHT_CLIP",
    "class_image_counts",
    "class_weights",
    "epoch_length",
    "repeat_counts",
    "repeat_epoch_order",
    "repeat_factors",
]
