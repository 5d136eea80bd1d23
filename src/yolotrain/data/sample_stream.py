"""The global sample stream: which samples training step k of an epoch trains, and which rank takes which.

An epoch's order (:func:`~yolotrain.data.dataset.epoch_order`, a function of (seed, epoch)) is cut into
global batches of ``batch`` images; step k trains ``order[k*batch:(k+1)*batch]`` whatever the number of
processes. Rank r of W takes the positions ``r, r+W, r+2W, ...`` of each global batch, so its share of
step k is one per-rank batch of ``batch/W`` images. The position a checkpoint records is the step k, so a
run saved on W processes continues on any W' that divides the batch with the same global stream::

    order = epoch_order(len(dataset), seed, epoch)
    mine = rank_share(order, batch=16, world=2, rank=1, start_step=resumed_step)

The last global batch of an epoch may be short (``n % batch`` images). Its positions are dealt the same
way; a rank that gets none of them (fewer leftover images than processes) repeats one, so every rank has
the same number of batches. Only then does the stream depend on the number of processes.
"""

from __future__ import annotations

import numpy as np


def global_steps(n: int, batch: int) -> int:
    """Training steps per epoch of ``n`` samples in global batches of ``batch`` (the last may be short)."""
    return -(-int(n) // int(batch))


def rank_share(order: np.ndarray, batch: int, world: int = 1, rank: int = 0, start_step: int = 0) -> np.ndarray:
    """The samples rank ``rank`` of ``world`` trains, from global step ``start_step`` to the epoch's end.

    Args:
        order: The epoch's sample order (indices), the same on every rank.
        batch: The global batch (images per training step over all processes).
        world: Number of processes; must divide ``batch``.
        rank: This process's rank in ``[0, world)``.
        start_step: Global steps already trained this epoch (a mid-epoch resume).

    Returns:
        The indices, ``batch // world`` per step; consecutive runs of that length are this rank's batches.

    Raises:
        ValueError: For a batch that does not divide over ``world`` or a rank outside it.
    """
    order = np.asarray(order)
    batch, world, rank, start_step = int(batch), int(world), int(rank), max(0, int(start_step))
    if batch < 1 or world < 1 or batch % world:
        raise ValueError(f"a global batch of {batch} does not divide over {world} processes")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside a world of {world} processes")
    n = len(order)
    full = n // batch  # complete global batches
    head = order[start_step * batch + rank : full * batch : world] if start_step < full else order[:0]
    rem = n - full * batch
    if rem == 0 or start_step > full:
        return head
    tail = order[full * batch + rank :: world]
    if len(tail) == 0:  # fewer leftover images than processes: repeat one so every rank takes a step
        tail = order[full * batch + rank % rem : full * batch + rank % rem + 1]
    return np.concatenate([head, tail])
