"""Everything about process groups lives here; one process is the world-size-1 case of the same code.

Training on several processes is started the ordinary way, by torchrun, which sets ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` for every worker::

    torchrun --nproc_per_node=2 -m yolotrain train data=data.yaml batch=32

:func:`setup` turns that environment into a process group (nccl on CUDA, gloo on CPU), the helpers below
are no-ops in a single process, and :func:`cleanup` destroys the group at the end.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import inspect
import logging
import os
import threading
import time
from typing import Any

import torch
import torch.nn as nn

from yolotrain.errors import ConfigError

LOGGER = logging.getLogger("yolotrain")


def rank() -> int:
    """Global rank from torchrun's environment (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def is_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def restart_count() -> int:
    """How many times torchrun's elastic agent restarted the workers (0 on the first start)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def backend_for(device: torch.device) -> str:
    """nccl for CUDA devices, gloo for everything else (CPU)."""
    return "nccl" if device.type == "cuda" else "gloo"


def setup(device: torch.device, timeout_minutes: float = 30.0) -> bool:
    """Join the process group described by torchrun's environment.

    Returns:
        True when this call created the group (the caller then owns :func:`cleanup`); False in one
        process or when a group already exists (for example one made by the user's own script).

    Raises:
        ConfigError: For a device torch.distributed cannot drive (MPS).
    """
    if world_size() <= 1 or is_initialized():
        return False
    if not torch.distributed.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if device.type == "mps":
        raise ConfigError(
            "setting 'device'=mps cannot train on several processes (torch.distributed has no "
            "MPS backend); use one process or device=cpu"
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)  # nccl binds each rank to its current device
    backend = backend_for(device)
    timeout = datetime.timedelta(minutes=timeout_minutes)
    kwargs: dict[str, Any] = {
        "backend": backend,
        "timeout": timeout,
        "store": _attempt_store(timeout),
        "rank": rank(),
        "world_size": world_size(),
    }
    if device.type == "cuda":
        kwargs["device_id"] = device  # eager nccl init: a bad GPU fails here, not in the first all-reduce
    torch.distributed.init_process_group(**kwargs)
    LOGGER.info(
        f"distributed: rank {rank()}/{world_size()} (local rank {local_rank()}), backend {backend}, "
        f"device {device}, timeout {timeout_minutes:g} min"
    )
    return True


def _attempt_store(timeout: datetime.timedelta):
    """The key-value store the ranks meet in, with keys private to this torchrun attempt.

    After a worker restart, torchrun hands the new workers the same store address, and the keys the
    previous attempt's process group wrote (its ranks' listening addresses) are still there: new ranks
    would connect to dead processes (seen here as gloo "connection refused" on restart). A prefix per
    restart keeps each attempt's keys apart.
    """
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    # under torchrun the agent serves the store (TORCHELASTIC_USE_AGENT_STORE); otherwise rank 0 does
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = torch.distributed.TCPStore(
        host, port, world_size(), is_master=not agent and rank() == 0, timeout=timeout, multi_tenant=not agent
    )
    return torch.distributed.PrefixStore(f"yolotrain/attempt{restart_count()}", store)


def cleanup(together: bool = False) -> None:
    """Destroy the process group (safe to call when there is none).

    Args:
        together: True when every rank ends at the same point (the normal end of training, or a stop
            after a signal that the ranks agreed on): first :func:`settle`. False on an error, when the
            other ranks may never join another collective.
    """
    if is_initialized():
        if together:
            settle()
        torch.distributed.destroy_process_group()


def settle(timeout_s: float = 10.0) -> None:
    """Wait until gloo's worker threads have let go of this rank's finished collectives (every rank calls it).

    A gloo worker thread releases each collective it ran a moment after the caller has been told it is done.
    When the caller's Python tensor is gone by then, that release frees the tensor's Python object, which
    needs the GIL; once the interpreter is shutting down, a thread that asks for the GIL is ended inside the
    C++ destructor and the whole process aborts ("terminate called without an active exception", exit -6;
    seen here about 1 run in 40 on the rank that finishes first, core dump: ProcessGroupGloo::runLoop ->
    ~AsyncWork -> decref_pyobject -> take_gil -> pthread_exit).

    A worker releases the collective it ran before it takes the next one from the queue. So once every
    worker thread (gloo runs two per group) has taken one of the collectives issued here, and those have been
    released, nothing issued before is held. Which thread ran a collective is seen from its completion
    callback, which runs on that thread. Waiting on the release of our own collectives alone is not enough:
    one thread can run them all while the other is still descheduled before its release (seen in CI).
    The ranks agree each round on whether to stop (a MIN all-reduce), so all of them issue as many
    collectives; past ``timeout_s`` a rank votes to stop without full coverage.
    """
    if torch.distributed.get_backend() != "gloo":
        return  # nccl's collectives are released by its watchdog thread, which runs no Python
    workers = _gloo_worker_threads()
    seen: set[int] = set()
    caller = threading.get_ident()
    deadline = time.monotonic() + timeout_s
    while True:
        covered = len(seen) >= workers or time.monotonic() >= deadline
        vote, spare = torch.tensor([float(covered)]), torch.zeros(1)
        # two at once, so that an idle second thread takes one while the first runs the other
        works = [
            torch.distributed.all_reduce(vote, op=torch.distributed.ReduceOp.MIN, async_op=True),
            torch.distributed.all_reduce(spare, async_op=True),
        ]
        ran = [w.get_future().then(functools.partial(_note_thread, seen, caller)) for w in works]
        for r in ran:
            r.wait()
        agreed = vote.item() == 1.0
        del works, ran  # the works and their futures hold the tensors too
        while (vote._use_count() > 1 or spare._use_count() > 1) and time.monotonic() < deadline + 1.0:
            time.sleep(0.001)
        if agreed:
            return


def _gloo_worker_threads() -> int:
    try:
        return int(torch.distributed.group.WORLD._get_backend(torch.device("cpu")).options._threads)
    except (AttributeError, RuntimeError, TypeError, ValueError):
        return 2  # gloo's default


def _note_thread(seen: set[int], caller: int, _done: Any) -> None:
    # a callback attached after the collective finished runs on the caller's thread: it names no worker
    if threading.get_ident() != caller:
        seen.add(threading.get_ident())


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP-wrap ``model`` when a process group is up; otherwise return it unchanged."""
    if not is_initialized() or torch.distributed.get_world_size() == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    # broadcast_buffers=False: BatchNorm running statistics stay per rank (or synced by SyncBatchNorm);
    # rank 0's copy is the one saved. Re-broadcasting them every forward costs a collective per step.
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, **_no_buffer_sync())


def _no_buffer_sync() -> dict[str, Any]:
    # broadcast_buffers was renamed forward_sync_buffers in recent torch (with a FutureWarning on the old name)
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under a DDP (or compiled) wrapper: what we save, evaluate and average."""
    while hasattr(model, "module") and isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return getattr(model, "_orig_mod", model)


@contextlib.contextmanager
def main_rank_warnings(logger: logging.Logger):
    """Inside, only rank 0 logs warnings: for problems every rank finds alike (the data scan)."""
    if is_main():
        yield
        return
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def broadcast_object(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank (returned unchanged in one process)."""
    if not is_initialized():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in one process)."""
    if not is_initialized():
        return [obj]
    out: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def all_reduce_list(values: list[float], op: str = "sum") -> list[float]:
    """Element-wise ``sum``, ``max`` or ``min`` of ``values`` over all ranks, in one collective."""
    if not is_initialized():
        return [float(v) for v in values]
    ops = {
        "sum": torch.distributed.ReduceOp.SUM,
        "max": torch.distributed.ReduceOp.MAX,
        "min": torch.distributed.ReduceOp.MIN,
    }
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device())
    torch.distributed.all_reduce(t, op=ops[op])
    return t.tolist()


def all_reduce_max(value: float) -> float:
    """The largest ``value`` over all ranks."""
    return all_reduce_list([value], "max")[0]


def all_reduce_min(value: float) -> float:
    """The smallest ``value`` over all ranks."""
    return all_reduce_list([value], "min")[0]


def all_reduce_grads_(params: list[torch.nn.Parameter], bucket_mb: float = 25.0) -> None:
    """Average the gradients of ``params`` over all ranks, in flat buckets (a missing gradient counts as 0).

    The trainer back-propagates locally (DDP ``no_sync``) and reduces once per optimizer step, after the
    ranks agreed that no one ran out of memory; DDP's own reduction inside ``backward`` would leave the
    other ranks waiting in a collective when one rank's backward fails.
    """
    if not is_initialized():
        return
    w = torch.distributed.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket: list[torch.Tensor] = []
    size = 0
    limit = bucket_mb * 2**20
    for p in params:
        bucket.append(p.grad)
        size += p.grad.numel() * p.grad.element_size()
        if size >= limit:
            _reduce_bucket(bucket, w)
            bucket, size = [], 0
    if bucket:
        _reduce_bucket(bucket, w)


def _reduce_bucket(grads: list[torch.Tensor], w: int) -> None:
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= w
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def _collective_device() -> torch.device:
    # nccl only moves CUDA tensors; gloo only CPU ones
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
