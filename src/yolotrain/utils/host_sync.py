"""Count the places where code reads a tensor's value back to the host (a GPU would stall there).

On a GPU each such read waits for every kernel queued before it, so a training step that reads a loss, a
finite flag or a data-dependent size runs at the speed of the host, not of the device, and cannot be
captured as a CUDA graph. The same calls happen on a CPU, so they can be counted there, in tests::

    with HostSyncCounter() as reads:
        step(batch, epoch, i)
    assert reads.count == 0, reads.report()

What counts as a read (on any device, since on a CPU the same call would stall a GPU): ``item``,
``tolist``, ``numpy``, ``__bool__`` / ``__int__`` / ``__float__`` / ``__index__`` of a tensor, ``cpu()``
(counted as a call, whatever the tensor's device), ``to("cpu")`` of a tensor on another device,
``torch.equal`` / ``allclose`` / ``is_nonzero`` (they return a Python bool), and the operations whose
output *shape* depends on values: ``nonzero``/``argwhere``/one-argument ``where``, ``masked_select``,
boolean-mask indexing (read or write), ``unique``, ``bincount``, ``repeat_interleave`` without
``output_size``. Also counted, as ``h2d``: host data made into a tensor on a device (``torch.tensor`` or
``as_tensor`` with a ``device``, ``new_tensor``): on a GPU that is a copy from pageable memory, which waits for
the stream like a read, and which a CUDA graph cannot capture.

Code that works on the loader's host tensors before they are copied to the device (packing labels,
for instance) marks itself with :func:`host_data`; reads inside it are not counted, since on a GPU they
touch no device memory. Such a block must take only host tensors (``gpu_check.py`` runs the step under
``torch.cuda.set_sync_debug_mode`` to confirm on a GPU).
"""

from __future__ import annotations

import contextlib
import traceback
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

# Methods and functions that always hand a value to Python.
_VALUE_READS = {
    torch.Tensor.item: "item",
    torch.Tensor.tolist: "tolist",
    torch.Tensor.numpy: "numpy",
    torch.Tensor.__bool__: "bool",
    torch.Tensor.__int__: "int",
    torch.Tensor.__float__: "float",
    torch.Tensor.__index__: "index",
    torch.Tensor.cpu: "cpu",
    torch.equal: "equal",
    torch.allclose: "allclose",
    torch.Tensor.allclose: "allclose",
    torch.Tensor.equal: "equal",
    torch.is_nonzero: "is_nonzero",
    torch.Tensor.is_nonzero: "is_nonzero",
}
# Operations whose output size is a function of the values (the host must learn it before allocating).
_SHAPE_READS = {
    torch.nonzero: "nonzero",
    torch.Tensor.nonzero: "nonzero",
    torch.argwhere: "nonzero",
    torch.Tensor.argwhere: "nonzero",
    torch.masked_select: "masked_select",
    torch.Tensor.masked_select: "masked_select",
    torch.unique: "unique",
    torch.Tensor.unique: "unique",
    torch.unique_consecutive: "unique",
    torch.bincount: "bincount",
    torch.Tensor.bincount: "bincount",
}
_INDEXING = {torch.Tensor.__getitem__: "bool_index", torch.Tensor.__setitem__: "bool_index_put"}
_REPEAT = (torch.repeat_interleave, torch.Tensor.repeat_interleave)
_TO = (torch.Tensor.to,)
_FROM_HOST = (torch.tensor, torch.as_tensor)
_WHERE = (torch.where,)


_host_data_depth = 0


@contextlib.contextmanager
def host_data() -> Iterator[None]:
    """Mark a block that reads only host (loader) tensors: its reads are no device stalls and are not counted."""
    global _host_data_depth
    _host_data_depth += 1
    try:
        yield
    finally:
        _host_data_depth -= 1


def _has_bool_tensor(index: Any) -> bool:
    """Whether an index expression holds a boolean tensor (a mask: its count decides the output shape)."""
    items: Iterable[Any] = index if isinstance(index, (tuple, list)) else (index,)
    return any(isinstance(x, torch.Tensor) and x.dtype == torch.bool and x.ndim > 0 for x in items)


def _to_cpu(args: tuple, kwargs: dict) -> bool:
    """Whether a ``Tensor.to(...)`` call copies a device tensor to the CPU.

    Unlike ``cpu()``, which always says "to the host", ``to(device)`` on a CPU run means "to the training
    device", so it counts only when the tensor is elsewhere.
    """
    if not isinstance(args[0], torch.Tensor) or args[0].device.type == "cpu":
        return False
    for x in (*args[1:], kwargs.get("device")):
        if isinstance(x, (str, torch.device)) and torch.device(x).type == "cpu":
            return True
    return False


def _host_data_to_device(func: Any, args: tuple, kwargs: dict) -> bool:
    """Whether a tensor factory puts host data (numbers, lists, arrays) on a device: a copy from host memory.

    ``torch.tensor`` / ``as_tensor`` count when given a ``device``; ``Tensor.new_tensor`` always (it takes its
    tensor's device). A tensor argument is not host data: it is on a device already.
    """
    method = func is torch.Tensor.new_tensor
    data = args[1 if method else 0] if len(args) > method else kwargs.get("data")
    return (method or kwargs.get("device") is not None) and not isinstance(data, torch.Tensor)


def read_kind(func: Any, args: tuple, kwargs: dict) -> str | None:
    """The kind of host read a torch call is (see the module docstring), or None when it is not one."""
    kind = _VALUE_READS.get(func) or _SHAPE_READS.get(func)
    if kind is not None:
        return kind
    if func in _INDEXING:
        return _INDEXING[func] if len(args) > 1 and _has_bool_tensor(args[1]) else None
    if func in _REPEAT:
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        return "repeat_interleave" if isinstance(repeats, torch.Tensor) and "output_size" not in kwargs else None
    if func in _TO:
        return "cpu" if _to_cpu(args, kwargs) else None
    if func in _WHERE:
        return "nonzero" if len(args) + len(kwargs) == 1 else None
    if func in _FROM_HOST or func is torch.Tensor.new_tensor:
        return "h2d" if _host_data_to_device(func, args, kwargs) else None
    return None


def _call_site() -> str:
    """``file:line`` of the innermost frame outside torch and this module (where the read was written)."""
    for frame in reversed(traceback.extract_stack()[:-2]):  # less this function and the mode
        name = frame.filename.replace("\\", "/")
        if "/torch/" not in name and frame.filename != __file__:
            return f"{name.rsplit('/src/', 1)[-1].rsplit('/site-packages/', 1)[-1]}:{frame.lineno}"
    return "?"


class HostSyncCounter(TorchFunctionMode):
    """A torch function mode that counts host reads (and where they were made) while it is active.

    Args:
        sites: Record the call site of every read (slower: a stack walk per read); the count is always kept.

    Attributes:
        count: Reads seen while active (re-entering keeps counting; :meth:`reset` clears).
        kinds: Reads per kind (``item``, ``bool``, ``bool_index`` ...).
        where: Reads per call site ``file:line`` (empty when ``sites`` is False).
    """

    def __init__(self, sites: bool = True) -> None:
        super().__init__()
        self.sites = sites
        self.count = 0
        self.kinds: Counter[str] = Counter()
        self.where: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = read_kind(func, args, kwargs) if not _host_data_depth else None
        if kind is not None:
            self.count += 1
            self.kinds[kind] += 1
            if self.sites:
                self.where[f"{kind} at {_call_site()}"] += 1
        return func(*args, **kwargs)

    def reset(self) -> None:
        """Forget what was counted."""
        self.count = 0
        self.kinds.clear()
        self.where.clear()

    def report(self) -> str:
        """One line per call site, most frequent first (for an assertion message)."""
        lines = [f"{n} x {site}" for site, n in self.where.most_common()] or [str(dict(self.kinds))]
        return f"{self.count} host reads:\n  " + "\n  ".join(lines)
