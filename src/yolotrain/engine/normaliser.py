"""The loss normaliser when a batch is split into micro-batches: pure arithmetic, with the proof inline.

The loss of a batch of ``n`` images is ``L = n * R / S``: ``R`` is the sum of the raw loss terms over the batch
and ``S = max(s, 1)`` its target-score sum ``s`` (under DDP, ``S = max(sum over ranks of s, 1) / ranks``, and
DDP's gradient average times ``ranks`` restores the sum). After an out-of-memory error the batch runs as parts
of ``m_p`` images, but ``S`` is known only when the last part is done. So each part is back-propagated with
a *provisional* normaliser and the gradient is corrected once at the end:

1. After the first part, fix a constant ``C = max(s_1 * n / m_1, 1)`` (the first part's score density
   extrapolated to the batch: the right order of magnitude, so fp16 scaling stays in range).
2. Part ``p`` calls the criterion with normaliser ``C * m_p / n`` (:func:`part_normaliser`). The criterion
   multiplies by its own image count ``m_p``, so part ``p`` back-propagates ``R_p * m_p / (C * m_p / n) =
   n * R_p / C``, and the parts sum to ``n * R / C``.
3. At the end, with ``S`` known, multiply the batch's gradient by ``C / S`` (:func:`gradient_correction`):
   ``n * R / C * C / S = n * R / S``, the un-split batch's gradient. Gradients of earlier batches of the
   accumulation window were set aside before the first part and are added back unchanged.
4. The logged loss items: part ``p`` reports ``R_p / (C * m_p / n)``; ``sum_p items_p * m_p * C / (n * S)``
   (:func:`split_items`) is ``R / S``, what the un-split batch reports.

All functions take tensors or floats, so the arithmetic stays on the device (no host read).
"""

from __future__ import annotations

import torch

Number = float | torch.Tensor


def batch_normaliser(score_total: Number, world: int) -> Number:
    """``S``: the whole batch's normaliser from its target-score sum over every rank, ``max(total, 1) / world``."""
    if isinstance(score_total, torch.Tensor):
        return score_total.clamp(min=1.0) / world
    return max(score_total, 1.0) / world


def provisional_constant(first_part_scores: Number, n: int, m: int) -> Number:
    """``C``: the first part's target-score sum scaled from its ``m`` images to the batch's ``n``, at least 1."""
    if isinstance(first_part_scores, torch.Tensor):
        return (first_part_scores * (n / m)).clamp(min=1.0)
    return max(first_part_scores * n / m, 1.0)


def part_normaliser(constant: Number, n: int, m: int) -> Number:
    """What the criterion divides by for a part of ``m`` of the batch's ``n`` images: ``C * m / n``."""
    return constant * (m / n)


def gradient_correction(constant: Number, normaliser: Number) -> Number:
    """The factor ``C / S`` that turns the parts' summed gradient ``n * R / C`` into the batch's ``n * R / S``."""
    return constant / normaliser


def split_items(weighted_items_sum: torch.Tensor, constant: Number, n: int, normaliser: Number) -> torch.Tensor:
    """The batch's loss items from ``sum_p items_p * m_p``: times ``C / (n * S)``."""
    return weighted_items_sum * (constant / (n * normaliser))
