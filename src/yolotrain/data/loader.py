"""Batching: collate, an epoch-aware sampler and the DataLoader factory.

Reproducibility design: the sampler runs in the main process and yields
``SampleKey(index, epoch, mosaic)``; the trainer hands it the epoch and the mosaic switch of the epoch's
phase plan (``set_epoch(epoch, skip, mosaic=...)``). They therefore reach the dataset
copies inside worker processes (including persistent ones) with every index, and each sample's
augmentation depends only on (seed, epoch, index). The shuffle order of epoch ``e`` depends only on
(seed, e). Hence batches are identical for any number of workers and after a resume. Training step k of
an epoch trains the same global batch on any number of processes (:mod:`yolotrain.data.sample_stream`), so
a run can resume on another number of processes.

Usage::

    loader = build_dataloader(dataset, batch_size=16, workers=2, shuffle=True, seed=0)
    for epoch in range(start_epoch, epochs):
        set_loader_epoch(loader, epoch, mosaic=epoch < epochs - close_mosaic)
        for batch in loader: ...
"""

from __future__ import annotations

import gc
import os
import random
import signal
import time
from collections.abc import Iterator, Sized
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from yolotrain.data.class_balance import repeat_epoch_order
from yolotrain.data.dataset import SampleKey, epoch_order
from yolotrain.data.profile import CLOCK, LoaderStats
from yolotrain.data.sample_stream import rank_share

# the signals a scheduler or a terminal sends to stop a job
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images and concatenate labels, remembering which image each box belongs to.

    Args:
        batch: Items of :class:`~yolotrain.data.dataset.DetectionDataset`.

    Returns:
        ``img`` uint8 (B, 3, H, W); ``cls`` (N, 1); ``bboxes`` (N, 4) normalized xywh; ``batch_idx``
        float32 (N,) image index within the batch; ``im_file``, ``ori_shape``, ``ratio_pad`` lists;
        ``index`` int64 (B,); ``stage_ms``: milliseconds per data stage spent by the process that
        built the batch since its previous batch (see :mod:`yolotrain.data.profile`).
    """
    with CLOCK.stage("collate"):
        counts = [int(b["cls"].shape[0]) for b in batch]
        out = {
            "img": _stack_images([b["img"] for b in batch]),
            "cls": torch.cat([b["cls"].reshape(-1, 1) for b in batch]).float(),
            "bboxes": torch.cat([b["bboxes"].reshape(-1, 4) for b in batch]).float(),
            "batch_idx": torch.repeat_interleave(
                torch.arange(len(batch), dtype=torch.float32), torch.tensor(counts, dtype=torch.long)
            ),
            "im_file": [b["im_file"] for b in batch],
            "ori_shape": [b["ori_shape"] for b in batch],
            "ratio_pad": [b["ratio_pad"] for b in batch],
            "index": torch.tensor([b["index"] for b in batch], dtype=torch.long),
        }
    # The stage times of this process (a worker, or the main process) since the last batch.
    out["stage_ms"] = CLOCK.take()
    return out


def _stack_images(imgs: list[torch.Tensor]) -> torch.Tensor:
    """(B, 3, H, W) contiguous uint8 from CHW tensors.

    The dataset hands CHW views of HWC arrays; ``cv2.split`` writes each one's channels straight
    into the batch (one pass, about 7x faster than ``torch.stack`` of the strided views).
    """
    hwc = [t.permute(1, 2, 0) for t in imgs]
    if not all(t.dtype == torch.uint8 and t.is_contiguous() and t.shape[-1] == 3 for t in hwc):
        return torch.stack(imgs)
    if len({t.shape for t in hwc}) != 1:
        raise ValueError(f"images of one batch differ in size: {sorted({tuple(t.shape) for t in hwc})}")
    h, w, _ = hwc[0].shape
    out = np.empty((len(imgs), 3, h, w), dtype=np.uint8)
    for k, t in enumerate(hwc):
        cv2.split(t.numpy(), [out[k, 0], out[k, 1], out[k, 2]])
    return torch.from_numpy(out)


class EpochSampler(Sampler[SampleKey]):
    """Yields ``SampleKey(index, epoch, mosaic)``; the order depends only on (seed, epoch).

    Args:
        dataset: The dataset.
        shuffle: Random order per epoch.
        seed: Base seed of the order.
        rank: This process's rank when distributed.
        world_size: Number of processes. With shuffle (training) each rank takes its stride of every
            global batch (:func:`~yolotrain.data.sample_stream.rank_share`); without it (evaluation),
            its DistributedSampler share.
        rect_group: Without shuffle, a positive value plans rectangular batches of that many
            images over all ranks (``dataset.rect_plan``); each key then carries its shape.
        global_batch: With shuffle, the images of one training step over all processes (0: one per
            process); it must divide over ``world_size``.
        repeat_factors: With shuffle, each image's repeat factor (``sampler=repeat_factor``): the epoch's
            order is :func:`~yolotrain.data.class_balance.repeat_epoch_order` (a function of (seed, epoch)
            only), dealt over the ranks like any other order.
    """

    def __init__(
        self,
        dataset: Dataset,
        shuffle: bool,
        seed: int = 0,
        rank: int = -1,
        world_size: int = 1,
        rect_group: int = 0,
        global_batch: int = 0,
        repeat_factors: np.ndarray | None = None,
    ) -> None:
        self.dataset = dataset
        self.repeat = repeat_factors if shuffle else None  # sampler=repeat_factor
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0
        self.skip = 0
        self.mosaic = True
        self.rank, self.world = max(rank, 0), max(int(world_size), 1)
        self.global_batch = int(global_batch) or self.world
        if self.global_batch % self.world:
            raise ValueError(f"a global batch of {self.global_batch} does not divide over {self.world} processes")
        self.dist: DistributedSampler | None = None
        self.rect: tuple[list[int], list[tuple[int, int]]] | None = None
        if rect_group and not shuffle:
            # Rectangular evaluation batches: the whole (padded) order and one shape per position.
            order, shapes = dataset.rect_plan(rect_group)  # type: ignore[attr-defined]
            order, shapes = order.tolist(), [tuple(int(v) for v in s) for s in shapes]
            if world_size > 1:
                # DistributedSampler's rule without shuffle: pad with the first positions, deal round-robin.
                total = -(-len(order) // world_size) * world_size
                pad = total - len(order)
                order = order + (order * (pad // max(len(order), 1) + 1))[:pad]
                shapes = shapes + [shapes[-1]] * pad  # padded positions sit in the last batch
                r = max(rank, 0)
                order, shapes = order[r:total:world_size], shapes[r:total:world_size]
            self.rect = (order, shapes)
            world_size = 1  # the split is done
        if world_size > 1 and not shuffle:  # evaluation shards; training takes rank_share of the global stream
            self.dist = DistributedSampler(
                dataset, num_replicas=world_size, rank=max(rank, 0), shuffle=shuffle, seed=self.seed
            )

    def set_epoch(self, epoch: int, skip: int = 0, mosaic: bool = True) -> None:
        """Select the epoch; ``skip`` drops that many leading samples (mid-epoch resume); ``mosaic`` is the
        epoch's mosaic switch (off in the ``close_mosaic`` tail), carried by every key."""
        self.epoch = int(epoch)
        self.skip = max(0, int(skip))
        self.mosaic = bool(mosaic)
        if self.dist is not None:
            self.dist.set_epoch(self.epoch)

    def _indices(self) -> list[int]:
        """This rank's indices of the epoch, the first ``skip`` of them dropped."""
        if self.dist is not None:
            return list(self.dist)[self.skip :]
        n = len(self.dataset)  # type: ignore[arg-type]
        if not self.shuffle:
            return list(range(n))[self.skip :]
        # skip counts this rank's samples; the global position is whole steps of batch/world of them
        steps, extra = divmod(self.skip, self.global_batch // self.world)
        if self.repeat is None:
            order = epoch_order(n, self.seed, self.epoch)
        else:  # sampler=repeat_factor: an epoch of repeated indices, still one global stream
            order = repeat_epoch_order(self.repeat, self.seed, self.epoch)
        return rank_share(order, self.global_batch, self.world, self.rank, steps)[extra:].tolist()

    def __iter__(self) -> Iterator[SampleKey]:
        epoch, mosaic = self.epoch, self.mosaic
        if self.rect is not None:
            order, shapes = self.rect
            return iter([SampleKey(i, epoch, mosaic, s) for i, s in zip(order[self.skip :], shapes[self.skip :])])
        return iter([SampleKey(i, epoch, mosaic) for i in self._indices()])

    def __len__(self) -> int:
        if self.rect is not None:
            return max(0, len(self.rect[0]) - self.skip)
        if self.dist is not None or not self.shuffle:
            n = len(self.dist) if self.dist is not None else len(self.dataset)  # type: ignore[arg-type]
            return max(0, n - self.skip)
        return len(self._indices())


class DetectionLoader(DataLoader):
    """A DataLoader with :meth:`set_epoch` (see :func:`set_loader_epoch`) that measures itself.

    Each pass records in :attr:`stats` (a fresh :class:`~yolotrain.data.profile.LoaderStats` per
    pass) how long the consumer waited inside ``next()`` for every batch, how long it worked between
    batches, and the per-stage times the batches carry (``batch["stage_ms"]``). ``stats.wait_share``
    is the data-wait share of the epoch; :func:`~yolotrain.data.profile.advise` reads the rest.
    """

    stats: LoaderStats

    def __iter__(self) -> Iterator[Any]:
        self.stats = stats = LoaderStats()
        it = super().__iter__()
        t_got = None
        while True:
            t_ask = time.perf_counter()
            if t_got is not None:
                stats.busy_s += t_ask - t_got
            try:
                batch = next(it)
            except StopIteration:
                return
            t_got = time.perf_counter()
            stats.add_batch(t_got - t_ask, int(batch["img"].shape[0]), batch.get("stage_ms"))
            yield batch

    def set_epoch(self, epoch: int, skip_batches: int = 0, mosaic: bool = True) -> None:
        """Shortcut for ``set_loader_epoch(self, epoch, skip_batches, mosaic)``."""
        set_loader_epoch(self, epoch, skip_batches, mosaic)


def set_loader_epoch(loader: DataLoader, epoch: int, skip_batches: int = 0, mosaic: bool = True) -> None:
    """Prepare ``loader`` for epoch ``epoch``; call before iterating it.

    Args:
        loader: A loader from :func:`build_dataloader`.
        epoch: Epoch number (selects the shuffle order and the augmentation randomness).
        skip_batches: Leading batches to skip, to resume exactly in the middle of an epoch. The
            next call resets it.
        mosaic: Whether the epoch's training samples may be mosaics (the phase plan turns it off for
            ``close_mosaic``); it reaches the samples through an :class:`EpochSampler`'s keys.
    """
    sampler = loader.sampler
    if isinstance(sampler, EpochSampler):
        sampler.set_epoch(epoch, skip_batches * (loader.batch_size or 1), mosaic)
    elif hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)  # for direct dataset use in the main process


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker with base_seed + worker_id, base_seed coming from the loader's
    # seeded generator; derive the other libraries' global RNGs from it for any code that uses them.
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)
    ignore_stop_signals()
    # a forked worker shares the main process's pages until it writes them, and a full garbage collection
    # writes to every object it visits: freezing what the worker inherited keeps those pages shared (seen: a
    # worker's private memory 10 -> 58 MB after one collection of an inherited pytest heap)
    gc.freeze()


def ignore_stop_signals() -> None:
    """In a loader worker: ignore SIGTERM/SIGINT; the main process saves first, then shuts the workers down.

    PyTorch's workers die on a SIGTERM that does not come from their parent, which is what a scheduler
    signalling the whole process group sends (SLURM); the main process would then fail with "DataLoader
    worker ... killed by signal" before it could save. The trainer blocks these signals while it starts the
    workers (:func:`yolotrain.engine.preempt.fork_safe_iter`); a signal held back then is discarded here.
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def build_dataloader(
    dataset: Dataset,
    batch_size: int,
    workers: int,
    shuffle: bool,
    seed: int = 0,
    epoch_aware: bool = True,
    rank: int = -1,
    world_size: int = 1,
    pin_memory: bool = False,
    drop_last: bool = False,
    persistent_workers: bool = True,
    repeat_factors: np.ndarray | None = None,
) -> DetectionLoader:
    """Build the loader for training or evaluation.

    Args:
        dataset: Usually a :class:`~yolotrain.data.dataset.DetectionDataset`.
        batch_size: Images per batch (per process when distributed).
        workers: Worker processes; clamped to ``min(workers, cpu count, batch_size)``.
        shuffle: Shuffle every epoch.
        seed: Seed of the shuffle order and of the worker RNGs.
        epoch_aware: Use :class:`EpochSampler` (SampleKey indices). False hands plain int indices to
            the dataset, for datasets that do not understand SampleKey. An evaluation dataset
            (``shuffle=False``) with ``rect`` true gets rectangular batches (see
            :meth:`~yolotrain.data.dataset.DetectionDataset.rect_plan`), in aspect-ratio order.
        rank: This process's rank (-1 when not distributed).
        world_size: Number of processes.
        pin_memory: Pin batches in page-locked memory (useful with CUDA).
        drop_last: Drop the last incomplete batch.
        persistent_workers: Keep workers alive between epochs (only when workers > 0).
        repeat_factors: Per-image repeat factors for a shuffled epoch-aware loader (``sampler=repeat_factor``).

    Returns:
        The loader; call :func:`set_loader_epoch` before each epoch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    workers = max(0, min(int(workers), os.cpu_count() or 1, batch_size))
    sampler: Sampler[Any]
    if epoch_aware:
        # Rectangular batches for evaluation datasets that ask for them (DetectionDataset.rect):
        # shapes are planned over the global batch so every rank's share of a batch agrees.
        rect = not shuffle and bool(getattr(dataset, "rect", False)) and hasattr(dataset, "rect_plan")
        global_batch = batch_size * world_size
        sampler = EpochSampler(
            dataset, shuffle, seed, rank, world_size, global_batch if rect else 0, global_batch, repeat_factors
        )
    elif world_size > 1:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=max(rank, 0), shuffle=shuffle, seed=seed)
    else:
        sampler = _PlainSampler(dataset, shuffle, seed)
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    extra: dict[str, Any] = {}
    if workers > 0:
        extra = {"persistent_workers": persistent_workers, "worker_init_fn": _seed_worker}
    return DetectionLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        drop_last=drop_last,
        generator=generator,
        **extra,
    )


class _PlainSampler(Sampler[int]):
    """Int indices with the same (seed, epoch) -> order rule as :class:`EpochSampler`."""

    def __init__(self, data: Sized, shuffle: bool, seed: int) -> None:
        self.data, self.shuffle, self.seed, self.epoch = data, shuffle, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        n = len(self.data)
        if not self.shuffle:
            return iter(range(n))
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(n, generator=g).tolist())

    def __len__(self) -> int:
        return len(self.data)
