"""Read a ``torch.save`` file without running any code it carries, within stated memory bounds.

A ``torch.save`` file is a zip holding ``<name>/data.pkl`` (a pickle) and one raw record per tensor
storage. Pickle is a small stack machine whose ``GLOBAL``/``REDUCE`` instructions import and call any
Python function the file names; ``torch.load(weights_only=False)`` lets them run. Here the machine runs
an allow-list of instructions, and every instruction that would call a method of an object the file
built (``APPEND(S)``, ``SETITEM(S)``, ``ADDITEMS``, ``BUILD``, ``NEWOBJ(_EX)``, ``REDUCE``, ``DICT``,
``FROZENSET``) is re-implemented:

- Only the names of :mod:`yolotrain.models.pickle_names` are resolved to (our own) functions; every
  other class becomes an inert placeholder (:class:`Inert`); nothing of the real class runs.
- Items are added only to plain lists, dicts and sets the file built, or recorded on an inert object;
  a dict key or set item must be a plain value (``str``, number, ``bytes``, ``None``, or a tuple of
  those), so hashing it runs no method of a built object and recurses at most :data:`MAX_DEPTH` levels.
- The protocol-0/1 ``INST``/``OBJ`` calls, the extension registry and out-of-band buffers are refused.

Bounds (the zip's are in :mod:`yolotrain.models.torch_zip`): at most :data:`MAX_OPS` instructions
(so at most that many objects), containers nested at most :data:`MAX_DEPTH` deep, no container that
contains itself, and a tensor is a *view* of its storage, never a copy: the elements all tensors of one
storage show add up to at most the storage's own (a stride-0 view cannot grow 1 KB into 500 MB). So
the bytes a file materialises are its storages' bytes plus a bounded pickle. Every failure is one line
naming the file.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from yolotrain.errors import CheckpointError
from yolotrain.models.pickle_names import (
    DENIED_MODULES,
    DTYPES,
    SAFE,
    SCALARS,
    Inert,
    Refused,
    Safe,
    StorageType,
    UnsafeFileError,
    new_inert,
    placeholder,
)
from yolotrain.models.torch_zip import TorchZip

__all__ = ["Inert", "UnsafeFileError", "safe_load", "check_graph", "MAX_OPS", "MAX_DEPTH"]

MAX_OPS = 1_000_000  # pickle instructions: an Ultralytics n-depth checkpoint with optimizer runs ~60k, our x ~50k
MAX_DEPTH = 100  # container nesting; real checkpoints nest under 20 deep
_DICTS = (dict, collections.OrderedDict)


def _unknown(self) -> None:
    raise Refused("it uses a pickle instruction this reader does not run")


class _RestrictedUnpickler(pickle._Unpickler):  # the pure-Python machine: its opcodes can be replaced
    # The harmless instructions keep the standard implementation; all others are ours or refused.
    dispatch = {
        op[0]: pickle._Unpickler.dispatch[op[0]]
        for op in (
            pickle.BINBYTES, pickle.BINBYTES8, pickle.BINFLOAT, pickle.BINGET, pickle.BININT, pickle.BININT1,
            pickle.BININT2, pickle.BINPERSID, pickle.BINPUT, pickle.BINSTRING, pickle.BINUNICODE,
            pickle.BINUNICODE8, pickle.BYTEARRAY8, pickle.DUP, pickle.EMPTY_DICT, pickle.EMPTY_LIST,
            pickle.EMPTY_SET, pickle.EMPTY_TUPLE, pickle.NEWFALSE, pickle.FLOAT, pickle.FRAME, pickle.GET,
            pickle.GLOBAL, pickle.INT, pickle.LIST, pickle.LONG, pickle.LONG1, pickle.LONG4, pickle.LONG_BINGET,
            pickle.LONG_BINPUT, pickle.MARK, pickle.MEMOIZE, pickle.NONE, pickle.PERSID, pickle.POP,
            pickle.POP_MARK, pickle.PROTO, pickle.PUT, pickle.SHORT_BINBYTES, pickle.SHORT_BINSTRING,
            pickle.SHORT_BINUNICODE, pickle.STACK_GLOBAL, pickle.STOP, pickle.STRING, pickle.NEWTRUE,
            pickle.UNICODE,
        )
    }  # fmt: skip

    def __init__(self, data: bytes, zipped: TorchZip) -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self._zip = zipped
        self._storages: dict[str, torch.Tensor] = {}
        self._viewed: dict[int, list] = {}  # id(storage) -> [storage, elements shown by its tensors]
        self._views: dict[tuple, torch.Tensor] = {}  # (storage, offset, size, stride) -> the tensor
        self._tuples: dict[int, tuple[Any, int, bool]] = {}  # id -> (tuple, depth, plain); keeps it alive

    # ------------------------------------------------------------------------------------ the machine
    def load(self) -> Any:
        """``pickle._Unpickler.load`` with an instruction budget and unknown instructions refused."""
        self._unframer = pickle._Unframer(self._file_read, self._file_readline)
        self.read, self.readinto, self.readline = self._unframer.read, self._unframer.readinto, self._unframer.readline
        self.metastack, self.stack, self.proto = [], [], 0
        self.append = self.stack.append
        read, dispatch, budget = self.read, self.dispatch, MAX_OPS
        try:
            while True:
                key = read(1)
                if not key:
                    raise EOFError("the pickle ends without STOP")
                budget -= 1
                if budget < 0:
                    raise Refused(f"its pickle runs more than {MAX_OPS} instructions")
                dispatch.get(key[0], _unknown)(self)
        except pickle._Stop as stop:
            return stop.value

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return Safe("torch._utils._rebuild_tensor_v2", _RestrictedUnpickler._rebuild_tensor)
        if (module, name) in SAFE:
            return SAFE[(module, name)]
        if module == "torch" and name in DTYPES:
            return DTYPES[name]
        if DENIED_MODULES.match(module):
            raise Refused(f"it names {module}.{name}, which a weights file never needs")
        return placeholder(module, name)

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (type(pid) is tuple and len(pid) == 5 and pid[0] == "storage"):
            raise Refused(f"unknown persistent id {str(pid)[:60]}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, StorageType) or type(key) is not str or type(numel) is not int or numel < 0:
            raise Refused("a storage reference of unknown form")
        if key not in self._storages:
            self._storages[key] = self._zip.read_storage(key, stype.dtype, numel)
        return self._storages[key]

    def _rebuild_tensor(self, storage, offset, size, stride, *_rest) -> torch.Tensor:
        """A view of the storage (no copy); the elements all views of one storage show are counted."""
        if not isinstance(storage, torch.Tensor) or type(offset) is not int:
            raise UnsafeFileError("a tensor is rebuilt from other than (storage, offset, ...)")
        size, stride = _ints(size, "size"), _ints(stride, "stride")
        key = (id(storage), offset, size, stride)
        if key in self._views:  # the same tensor saved twice (model and EMA sharing weights): one object
            return self._views[key]
        numel = 1
        for d in size:
            numel *= d
        seen = self._viewed.setdefault(id(storage), [storage, 0])
        seen[1] += numel
        if seen[1] > storage.numel():
            raise UnsafeFileError(
                f"its tensors show {seen[1]} elements of a storage of {storage.numel()} "
                "(overlapping or repeating views are not read)"
            )
        try:
            view = storage.as_strided(size, stride, offset)
        except RuntimeError as e:  # sizes/strides reaching past the storage
            raise UnsafeFileError(f"a tensor does not fit its storage ({str(e).splitlines()[0][:100]})") from None
        self._views[key] = view
        return view

    # ------------------------------------------------------------------ plain values and nesting depth
    def plain_key(self, k: Any) -> bool:
        """Whether ``k`` may be a dict key or set item: a scalar, or a tuple of them built by this file."""
        if type(k) in SCALARS:
            return True
        rec = self._tuples.get(id(k)) if type(k) in (tuple, frozenset) else None
        return rec is not None and rec[0] is k and rec[2]

    def _track(self, t: Any) -> Any:
        """Record a new tuple/frozenset's depth and plainness (its items are fixed from now on)."""
        depth, plain = 1, True
        for x in t:
            if type(x) in SCALARS:
                continue
            rec = self._tuples.get(id(x)) if type(x) in (tuple, frozenset) else None
            if rec is not None and rec[0] is x:
                depth, plain = max(depth, rec[1] + 1), plain and rec[2]
            else:
                plain = False
        if depth > MAX_DEPTH:
            raise Refused(f"it nests tuples more than {MAX_DEPTH} deep")
        self._tuples[id(t)] = (t, depth, plain)
        return t

    def _key(self, k: Any) -> Any:
        if not self.plain_key(k):
            raise Refused(f"a dict key or set item is a {type(k).__name__}, not a plain value")
        return k

    # ------------------------------------------------------------------------- re-implemented opcodes
    def _tuple(self) -> None:
        items = tuple(self.pop_mark())  # first: pop_mark rebinds self.append to the outer stack
        self.append(self._track(items))

    def _tuple_n(self, n: int) -> None:
        if len(self.stack) < n:
            raise Refused("a tuple instruction finds too few values")
        items = tuple(self.stack[len(self.stack) - n :])
        del self.stack[len(self.stack) - n :]
        self.append(self._track(items))

    def _frozenset(self) -> None:
        items = self.pop_mark()
        self.append(self._track(frozenset(self._key(k) for k in items)))

    def _dict(self) -> None:
        items = self.pop_mark()
        if len(items) % 2:
            raise Refused("a DICT instruction with an odd number of values")
        self.append({self._key(items[i]): items[i + 1] for i in range(0, len(items), 2)})

    def _additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1] if self.stack else None
        if type(target) is not set:
            raise Refused(f"it adds set items to a {type(target).__name__}")
        target.update(self._key(k) for k in items)

    def _reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if isinstance(func, Safe):
            if type(args) is not tuple:
                raise Refused(f"a call to {func.name} with malformed arguments")
            out = func(self, *args)
            self.stack[-1] = self._track(out) if type(out) in (tuple, frozenset) else out
        elif isinstance(func, type) and issubclass(func, Inert) and args == ():
            # A class rebuilt from no arguments (e.g. SimpleNamespace's reduce): an empty inert object.
            self.stack[-1] = new_inert(func, ())
        else:
            what = func.cls_name if isinstance(func, type) and issubclass(func, Inert) else type(func).__name__
            raise Refused(f"it calls {what} (a pickled function call)")

    def _newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._inert_of(cls, args))

    def _newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._inert_of(cls, (args, kwargs)))

    @staticmethod
    def _inert_of(cls: Any, args: Any) -> Inert:
        if not (isinstance(cls, type) and issubclass(cls, Inert)):
            raise Refused(f"it creates an object of {type(cls).__name__} directly")
        return new_inert(cls, args)

    def _build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, Inert):
            raise Refused(f"it sets the state of a {type(inst).__name__}")
        inst.state = state

    def _setitems(self) -> None:
        items = self.pop_mark()
        if len(items) % 2:
            raise Refused("a SETITEMS instruction with an odd number of values")
        target = self._target(_DICTS, "dict items")
        for i in range(0, len(items), 2):
            self._put(target, items[i], items[i + 1])

    def _setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._put(self._target(_DICTS, "dict items"), key, value)

    def _appends(self) -> None:
        items = self.pop_mark()
        target = self._target((list,), "list items")
        (target.items if isinstance(target, Inert) else target).extend(items)

    def _append(self) -> None:
        value = self.stack.pop()
        target = self._target((list,), "list items")
        (target.items if isinstance(target, Inert) else target).append(value)

    def _target(self, kinds: tuple[type, ...], what: str) -> Any:
        target = self.stack[-1] if self.stack else None
        if type(target) not in kinds and not isinstance(target, Inert):
            raise Refused(f"it adds {what} to a {type(target).__name__}")
        return target

    def _put(self, target: Any, key: Any, value: Any) -> None:
        if isinstance(target, Inert):
            target.items.append((key, value))
        else:
            target[self._key(key)] = value

    def _refuse_opcode(self) -> None:
        raise Refused("it uses a pickle instruction that calls code (INST/OBJ/EXT/out-of-band buffers)")

    dispatch[pickle.TUPLE[0]] = _tuple
    dispatch[pickle.TUPLE1[0]] = lambda self: self._tuple_n(1)
    dispatch[pickle.TUPLE2[0]] = lambda self: self._tuple_n(2)
    dispatch[pickle.TUPLE3[0]] = lambda self: self._tuple_n(3)
    dispatch[pickle.FROZENSET[0]] = _frozenset
    dispatch[pickle.DICT[0]] = _dict
    dispatch[pickle.ADDITEMS[0]] = _additems
    dispatch[pickle.REDUCE[0]] = _reduce
    dispatch[pickle.NEWOBJ[0]] = _newobj
    dispatch[pickle.NEWOBJ_EX[0]] = _newobj_ex
    dispatch[pickle.BUILD[0]] = _build
    dispatch[pickle.SETITEMS[0]] = _setitems
    dispatch[pickle.SETITEM[0]] = _setitem
    dispatch[pickle.APPENDS[0]] = _appends
    dispatch[pickle.APPEND[0]] = _append
    for _op in (pickle.INST, pickle.OBJ, pickle.EXT1, pickle.EXT2, pickle.EXT4, pickle.NEXT_BUFFER,
                pickle.READONLY_BUFFER):  # fmt: skip
        dispatch[_op[0]] = _refuse_opcode


def _ints(dims: Any, what: str) -> tuple[int, ...]:
    if type(dims) not in (tuple, list, torch.Size) or not all(type(d) is int and d >= 0 for d in dims):
        raise UnsafeFileError(f"a tensor's {what} is not a list of non-negative integers")
    return tuple(dims)


def _children(obj: Any) -> Any:
    """The values a container holds (None for a leaf)."""
    t = type(obj)
    if t in (list, tuple, set, frozenset):
        return obj
    if t in _DICTS:
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, Inert):
        return (obj.args, obj.state, obj.items)
    return None


def check_graph(root: Any, max_depth: int = MAX_DEPTH) -> None:
    """Refuse a loaded object graph that holds a cycle or nests deeper than ``max_depth`` containers.

    Walked without recursion (a file cannot exhaust the C stack here), each container once; shared
    (not cyclic) values are fine.

    Raises:
        Refused: naming the cycle or the depth.
    """
    height: dict[int, int] = {}  # id -> containers on the longest path below (done)
    on_path: set[int] = set()
    todo: list[tuple[Any, int, bool]] = [(root, 1, False)]
    while todo:
        obj, depth, leaving = todo.pop()
        kids = _children(obj)
        if kids is None:
            continue
        i = id(obj)
        if leaving:
            on_path.discard(i)
            height[i] = 1 + max((height.get(id(k), 0) for k in kids), default=0)
            if height[i] > max_depth:
                raise Refused(f"it nests containers more than {max_depth} deep")
            continue
        if i in on_path:
            raise Refused(f"it holds a {type(obj).__name__} that contains itself (a cycle)")
        if i in height:
            continue
        if depth > max_depth:
            raise Refused(f"it nests containers more than {max_depth} deep")
        on_path.add(i)
        todo.append((obj, depth, True))
        todo.extend((k, depth + 1, False) for k in kids)


def safe_load(path: str | Path) -> Any:
    """Load a torch.save file into tensors, plain containers and :class:`Inert` objects; nothing runs.

    Raises:
        UnsafeFileError: One line naming the file and what it asked for, when it needs a function call,
            a name outside the allowed set, or breaks a bound (see the module docstring).
        CheckpointError: When the file is not a readable torch.save zip.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"'{p}' does not exist")
    with TorchZip(p) as zipped:
        try:
            if zipped.big_endian():
                raise CheckpointError(f"'{p}' was written on a big-endian machine; not supported")
            obj = _RestrictedUnpickler(zipped.read_pickle(), zipped).load()
            check_graph(obj)
            return obj
        except (Refused, UnsafeFileError) as e:
            if str(e).startswith(f"'{p}'"):  # the zip reader's line names the file already
                raise
            raise UnsafeFileError(f"'{p}' was refused: {e}; nothing from it was run") from None
        except (
            pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            OverflowError, UnicodeDecodeError, zipfile.BadZipFile, OSError, MemoryError, RecursionError, struct.error,
        ) as e:  # fmt: skip
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
            raise CheckpointError(f"'{p}' is truncated or corrupt: {detail}") from None
