"""oom.py: recognising out-of-memory errors, splitting a batch, injecting failures."""

from __future__ import annotations

import pytest
import torch

from yolotrain.engine.oom import OOMInjector, free_memory, is_oom, split_batch
from yolotrain.errors import ConfigError


def _batch(counts, size=8):
    """A collated batch with counts[i] boxes on image i (box values encode the image for checking)."""
    n_img = len(counts)
    bidx = torch.repeat_interleave(torch.arange(n_img, dtype=torch.float32), torch.tensor(counts))
    n = int(bidx.numel())
    return {
        "img": torch.arange(n_img, dtype=torch.uint8).view(-1, 1, 1, 1).expand(n_img, 3, size, size).clone(),
        "cls": (bidx * 10).view(-1, 1),
        "bboxes": torch.rand(n, 4),
        "batch_idx": bidx,
        "im_file": [f"im{i}.jpg" for i in range(n_img)],
        "ori_shape": [(size, size)] * n_img,
        "ratio_pad": [None] * n_img,
        "index": torch.arange(100, 100 + n_img),
    }


# ----------------------------------------------------------------------------------------- out of memory
def test_is_oom_recognises_the_kinds_of_errors():
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(torch.cuda.OutOfMemoryError("x"))
    assert is_oom(RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"))
    assert is_oom(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert is_oom(
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 1000000000000 bytes."
        )
    )
    assert is_oom(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))
    assert is_oom(MemoryError())
    assert not is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_oom(ValueError("out of memory"))  # not an allocator error type
    free_memory("cpu")
    free_memory(None)


@pytest.mark.parametrize(
    "counts,parts,sizes",
    [
        ([2, 0, 3, 1, 4, 2, 0, 1], 2, [4, 4]),
        ([1, 2, 3, 0, 0, 5, 1], 3, [3, 2, 2]),
        ([0, 0, 0, 0, 0], 5, [1, 1, 1, 1, 1]),
    ],
)
def test_split_batch_reassembles_the_original(counts, parts, sizes):
    batch = _batch(counts)
    micro = split_batch(batch, parts)
    assert [m["img"].shape[0] for m in micro] == sizes
    offsets = torch.tensor([0] + sizes[:-1]).cumsum(0).tolist()
    assert torch.equal(torch.cat([m["batch_idx"] + o for m, o in zip(micro, offsets)]), batch["batch_idx"])
    assert torch.equal(torch.cat([m["bboxes"] for m in micro]), batch["bboxes"])
    assert torch.equal(torch.cat([m["cls"] for m in micro]), batch["cls"])
    assert torch.equal(torch.cat([m["img"] for m in micro]), batch["img"])
    assert torch.equal(torch.cat([m["index"] for m in micro]), batch["index"])
    assert sum((m["im_file"] for m in micro), []) == batch["im_file"]
    for m, o in zip(micro, offsets):
        n = m["img"].shape[0]
        assert len(m["ori_shape"]) == len(m["ratio_pad"]) == n
        if m["batch_idx"].numel():
            assert 0 <= m["batch_idx"].min() and m["batch_idx"].max() < n
            # each box still belongs to the image it came from (cls encodes the original image index)
            assert torch.equal(m["cls"].view(-1), (m["batch_idx"] + o) * 10)


def test_split_batch_handles_unsorted_box_order_and_bad_parts():
    batch = _batch([2, 1, 3, 2])
    perm = torch.randperm(batch["batch_idx"].numel(), generator=torch.Generator().manual_seed(0))
    for k in ("cls", "bboxes", "batch_idx"):
        batch[k] = batch[k][perm]
    for m, o in zip(split_batch(batch, 2), (0, 2)):
        assert torch.equal(m["cls"].view(-1), (m["batch_idx"] + o) * 10)
    assert len(split_batch(batch, 1)[0]["batch_idx"]) == 8
    for bad in (0, 5):
        with pytest.raises(ValueError, match="micro-batches"):
            split_batch(batch, bad)


def test_oom_injector_limits_and_env_parsing():
    inj = OOMInjector({3: 4, ("val", 0): 1})
    inj.check(2, "forward", 64)  # unconfigured step
    inj.check(3, "forward", 4)  # at the limit
    with pytest.raises(torch.OutOfMemoryError) as info:
        inj.check(3, "backward", 8)
    assert is_oom(info.value) and "step 3" in str(info.value)
    inj.check(0, "forward", 8)  # the val entry applies to val checks only
    with pytest.raises(RuntimeError):
        inj.check(0, "val", 2)
    assert inj.fired == [(3, "backward", 8), (0, "val", 2)]
    always = OOMInjector({5})
    with pytest.raises(RuntimeError):
        always.check(5, "forward", 1)  # limit 0: even one image fails

    env = OOMInjector.from_env({"YOLOTRAIN_INJECT_OOM": "3:4, 7:2,val@1:0"})
    assert env.limits == {(None, 3): 4, (None, 7): 2, ("val", 1): 0}
    assert OOMInjector.from_env({}) is None and OOMInjector.from_env({"YOLOTRAIN_INJECT_OOM": " "}) is None
    for bad in ("3", "a:4", "3:4;7:2", "3:-1", "3:4,"):
        with pytest.raises(ConfigError, match="YOLOTRAIN_INJECT_OOM"):
            OOMInjector.from_env({"YOLOTRAIN_INJECT_OOM": bad})
