"""Read a ``torch.save`` file without running any code it carries.

A ``torch.save`` file is a zip holding ``<name>/data.pkl`` (a pickle) and one raw record per tensor
storage. Pickle is a small stack machine whose ``GLOBAL``/``REDUCE`` instructions import and call any
Python function the file names; ``torch.load(weights_only=False)`` lets them run. Here the machine runs
with its dangerous instructions replaced:

- Only a fixed list of names is resolved to real functions: the tensor/parameter rebuild functions and
  plain containers (re-implemented here, so not even torch's own versions run), a few numpy scalar
  helpers.
- Every other class the file names becomes an inert placeholder (:class:`Inert`): creating one records
  its arguments, ``BUILD`` records its state, nothing of the real class is imported or called (so a
  hostile ``__setstate__`` never runs).
- Calling anything else (``REDUCE`` on a function such as ``os.system``, ``eval``, ``getattr``), the
  protocol-0/1 ``INST``/``OBJ`` calls, and the extension registry are refused, as are names from
  modules a weights file never needs; the error is one line naming the file.

Storages are read straight from the zip records (uncompressed entries only, sizes checked).
"""

from __future__ import annotations

import collections
import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from yolotrain.errors import CheckpointError

__all__ = ["Inert", "UnsafeFileError", "safe_load", "pickle_mentions"]


class UnsafeFileError(CheckpointError):
    """The file needs something other than tensors, plain containers and inert objects."""


class Inert:
    """Placeholder for an object of a class the file names. Holds what the file says, runs nothing.

    Attributes:
        cls_name: ``module.qualname`` of the class in the file.
        args: Constructor arguments recorded from ``NEWOBJ`` (usually empty).
        state: The ``BUILD`` state (for a ``torch.nn.Module``: its ``__dict__``), or None.
        items: Key/value pairs and list items the file appended (rare).
    """

    cls_name = "?"

    def __init__(self) -> None:  # never called by the loader (object.__new__ is used); for tests
        self.args, self.state, self.items = (), None, []

    def __repr__(self) -> str:
        return f"<inert {self.cls_name}>"

    def get(self, key: str, default: Any = None) -> Any:
        """A field of the recorded state (the object's ``__dict__``), or ``default``."""
        state = self.state[0] if isinstance(self.state, tuple) and self.state else self.state
        return state.get(key, default) if isinstance(state, dict) else default


_PLACEHOLDERS: dict[tuple[str, str], type[Inert]] = {}


def _placeholder(module: str, name: str) -> type[Inert]:
    key = (module, name)
    if key not in _PLACEHOLDERS:
        _PLACEHOLDERS[key] = type(f"Inert_{name}", (Inert,), {"cls_name": f"{module}.{name}"})
    return _PLACEHOLDERS[key]


class _StorageType:
    """Stands for ``torch.FloatStorage`` etc. inside a persistent id: only its dtype matters."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}


class _Safe:
    """A function the file may call: our own implementation, looked up by the name the file uses."""

    def __init__(self, name: str, fn) -> None:
        self.name, self.fn = name, fn

    def __call__(self, *args):
        return self.fn(*args)


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise UnsafeFileError(f"a tensor is rebuilt from {type(storage).__name__}, not a storage")
    try:
        return storage.as_strided(tuple(size), tuple(stride), int(offset)).clone()
    except RuntimeError as e:  # sizes/strides reaching past the storage
        raise UnsafeFileError(f"a tensor does not fit its storage ({str(e).splitlines()[0][:100]})") from None


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise UnsafeFileError("a parameter is rebuilt from something other than a tensor")
    return data


def _rebuild_from_type(func, new_type, args, state) -> torch.Tensor:
    if not isinstance(func, _Safe) or new_type not in (_TENSOR_TYPE, _PARAMETER_TYPE):
        raise UnsafeFileError("a tensor subclass is rebuilt through an unknown function")
    return func(*args)


def _codecs_encode(text, encoding="utf-8") -> bytes:
    # Protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeFileError("_codecs.encode with other than (str, 'latin1')")
    return text.encode("latin1")


class _NumpyDtype(Inert):
    cls_name = "numpy.dtype"


def _numpy_dtype(spec, align=False, copy=True) -> _NumpyDtype:
    if not isinstance(spec, str) or not re.fullmatch(r"[biufc]\d{1,2}", spec):
        raise UnsafeFileError(f"numpy dtype {spec!r} is not a plain number type")
    d = object.__new__(_NumpyDtype)
    d.spec, d.args, d.state, d.items = spec, (), None, []
    return d


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, _NumpyDtype) or not isinstance(data, bytes):
        raise UnsafeFileError("numpy scalar with other than a plain dtype and bytes")
    order = dtype.state[1] if isinstance(dtype.state, tuple) and len(dtype.state) > 1 else "<"
    order = order if order in ("<", ">") else "<"
    try:
        return np.frombuffer(data, dtype=np.dtype(order + dtype.spec), count=1)[0].item()
    except ValueError as e:
        raise UnsafeFileError(f"numpy scalar: {e}") from None


def _numpy_reconstruct(cls, shape, typecode) -> Inert:
    # An array is kept as an inert record (its state holds shape, dtype and raw bytes); nothing here
    # needs its values, and numpy's own reconstruction of object arrays would unpickle further.
    obj = object.__new__(_placeholder("numpy", "ndarray"))
    obj.args, obj.state, obj.items = (shape, typecode), None, []
    return obj


def _size(dims) -> torch.Size:
    if not isinstance(dims, (tuple, list)) or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        raise UnsafeFileError("torch.Size of other than integers")
    return torch.Size(dims)


def _device(spec, index=None) -> str:
    if not isinstance(spec, str) or (index is not None and not isinstance(index, int)):
        raise UnsafeFileError("torch.device of other than a name")
    return spec if index is None else f"{spec}:{index}"


_TENSOR_TYPE = _placeholder("torch", "Tensor")
_PARAMETER_TYPE = _placeholder("torch.nn.parameter", "Parameter")
_PLAIN = {"set": set, "frozenset": frozenset, "list": list, "tuple": tuple, "dict": dict, "complex": complex}
_SAFE: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _Safe("torch._utils._rebuild_tensor_v2", _rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): _Safe("torch._utils._rebuild_parameter", _rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Safe("_rebuild_parameter_with_state", _rebuild_parameter),
    ("torch._tensor", "_rebuild_from_type_v2"): _Safe("torch._tensor._rebuild_from_type_v2", _rebuild_from_type),
    ("torch", "Tensor"): _TENSOR_TYPE,
    ("torch.nn.parameter", "Parameter"): _PARAMETER_TYPE,
    ("torch", "Size"): _Safe("torch.Size", _size),
    ("torch", "device"): _Safe("torch.device", _device),
    ("collections", "OrderedDict"): _Safe("collections.OrderedDict", lambda *a: collections.OrderedDict(*a)),
    ("_codecs", "encode"): _Safe("_codecs.encode", _codecs_encode),
    ("numpy", "dtype"): _Safe("numpy.dtype", _numpy_dtype),
    ("numpy.core.multiarray", "scalar"): _Safe("numpy scalar", _numpy_scalar),
    ("numpy._core.multiarray", "scalar"): _Safe("numpy scalar", _numpy_scalar),
    ("numpy.core.multiarray", "_reconstruct"): _Safe("numpy array", _numpy_reconstruct),
    ("numpy._core.multiarray", "_reconstruct"): _Safe("numpy array", _numpy_reconstruct),
    **{(m, n): _Safe(n, f) for m in ("builtins", "__builtin__") for n, f in _PLAIN.items()},
    **{("torch", n): _StorageType(d) for n, d in _STORAGE_DTYPES.items()},
}
_DTYPES = {
    n: getattr(torch, n) for n in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool")
}
# Modules whose names a weights file never needs: refused on sight with a clear message, even though
# a placeholder could not run either.
_DENIED_MODULES = re.compile(
    r"^(builtins|__builtin__|os|posix|nt|subprocess|sys|shutil|importlib|runpy|pickle|_pickle|marshal|code|"
    r"codeop|ctypes|socket|operator|functools|itertools|io|_io|pty|webbrowser|asyncio|multiprocessing|"
    r"threading|signal|inspect|pdb|timeit|cProfile|profile|torch|torch\._.*|torch\.(?!nn\.).*|numpy|numpy\..*|"
    r"_codecs|codecs|copyreg|gc|tempfile|glob|pathlib|urllib(\..*)?|http(\..*)?|requests(\..*)?)$"
)


class _Refused(Exception):
    """Raised inside the unpickler; turned into one UnsafeFileError line naming the file."""


class _RestrictedUnpickler(pickle._Unpickler):  # the pure-Python machine: its opcodes can be replaced
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, data: bytes, storages) -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE:
            return _SAFE[(module, name)]
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]
        if _DENIED_MODULES.match(module):
            raise _Refused(f"it names {module}.{name}, which a weights file never needs")
        return _placeholder(module, name)

    def persistent_load(self, pid: Any) -> torch.Tensor:
        return self._storages(pid)

    def _reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if isinstance(func, _Safe):
            if not isinstance(args, tuple):
                raise _Refused(f"a call to {func.name} with malformed arguments")
            self.stack[-1] = func(*args)
        elif isinstance(func, type) and issubclass(func, Inert) and args == ():
            # A class rebuilt from no arguments (e.g. SimpleNamespace's reduce): an empty inert object.
            self.stack[-1] = _new_inert(func, ())
        else:
            what = func.cls_name if isinstance(func, type) and issubclass(func, Inert) else repr(func)[:60]
            raise _Refused(f"it calls {what} (a pickled function call)")

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
            raise _Refused(f"it creates an object of {cls!r} directly")
        return _new_inert(cls, args)

    def _build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, Inert):
            raise _Refused(f"it sets the state of a {type(inst).__name__}")
        inst.state = state

    def _setitems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        self._check_container(target, dict)
        for i in range(0, len(items), 2):
            self._put(target, items[i], items[i + 1])

    def _setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        target = self.stack[-1]
        self._check_container(target, dict)
        self._put(target, key, value)

    def _appends(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        self._check_container(target, list)
        (target.items if isinstance(target, Inert) else target).extend(items)

    def _append(self) -> None:
        value = self.stack.pop()
        target = self.stack[-1]
        self._check_container(target, list)
        (target.items if isinstance(target, Inert) else target).append(value)

    @staticmethod
    def _check_container(target: Any, kind: type) -> None:
        if not isinstance(target, (kind, Inert)):
            raise _Refused(f"it adds items to a {type(target).__name__}")

    @staticmethod
    def _put(target: Any, key: Any, value: Any) -> None:
        if isinstance(target, Inert):
            target.items.append((key, value))
        else:
            target[key] = value

    def _refuse_opcode(self) -> None:
        raise _Refused("it uses a pickle instruction that calls code (INST/OBJ/EXT)")

    dispatch[pickle.REDUCE[0]] = _reduce
    dispatch[pickle.NEWOBJ[0]] = _newobj
    dispatch[pickle.NEWOBJ_EX[0]] = _newobj_ex
    dispatch[pickle.BUILD[0]] = _build
    dispatch[pickle.SETITEMS[0]] = _setitems
    dispatch[pickle.SETITEM[0]] = _setitem
    dispatch[pickle.APPENDS[0]] = _appends
    dispatch[pickle.APPEND[0]] = _append
    for _op in (pickle.INST, pickle.OBJ, pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = _refuse_opcode


def _new_inert(cls: type[Inert], args: Any) -> Inert:
    obj = object.__new__(cls)  # no __init__ of any class runs
    obj.args, obj.state, obj.items = args, None, []
    return obj


def _archive(path: Path) -> tuple[zipfile.ZipFile, str]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(
            f"'{path}' is not a torch.save zip file ({e}); files from torch < 1.6 are not supported"
        ) from None
    pkls = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        zf.close()
        raise CheckpointError(f"'{path}' is a zip but not a torch.save file (no single <name>/data.pkl)")
    return zf, pkls[0].split("/")[0]


def pickle_mentions(path: str | Path, needle: bytes) -> bool:
    """Whether the pickle inside a torch.save file contains ``needle`` (e.g. a module name); False for other files."""
    try:
        zf, prefix = _archive(Path(path))
    except CheckpointError:
        return False
    with zf:
        return needle in zf.read(f"{prefix}/data.pkl")


def safe_load(path: str | Path) -> Any:
    """Load a torch.save file into tensors, plain containers and :class:`Inert` objects; nothing runs.

    Raises:
        UnsafeFileError: One line naming the file and what it asked for, when it needs a function call
            or a name outside the allowed set.
        CheckpointError: When the file is not a readable torch.save zip.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"'{p}' does not exist")
    zf, prefix = _archive(p)
    with zf:
        order = f"{prefix}/byteorder"
        if order in zf.namelist() and zf.read(order).strip() not in (b"little", b""):
            raise CheckpointError(f"'{p}' was written on a big-endian machine; not supported")
        cache: dict[str, torch.Tensor] = {}

        def storage(pid: Any) -> torch.Tensor:
            if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
                raise _Refused(f"unknown persistent id {str(pid)[:60]}")
            _, stype, key, _location, numel = pid
            if not isinstance(stype, _StorageType) or not isinstance(key, str) or not isinstance(numel, int):
                raise _Refused("a storage reference of unknown form")
            if key not in cache:
                try:
                    info = zf.getinfo(f"{prefix}/data/{key}")
                except KeyError:
                    raise _Refused(f"storage {key!r} is missing from the archive") from None
                if info.compress_type != zipfile.ZIP_STORED:
                    raise _Refused(f"storage {key!r} is compressed (torch.save never does this)")
                raw = bytearray(zf.read(info))
                item = torch.empty((), dtype=stype.dtype).element_size()
                if len(raw) != numel * item:
                    raise _Refused(f"storage {key!r} holds {len(raw)} bytes, not {numel} x {item}")
                cache[key] = torch.frombuffer(raw, dtype=stype.dtype) if raw else torch.empty(0, dtype=stype.dtype)
            return cache[key]

        try:
            return _RestrictedUnpickler(zf.read(f"{prefix}/data.pkl"), storage).load()
        except _Refused as e:
            raise UnsafeFileError(f"'{p}' was refused: {e}; nothing from it was run") from None
        except UnsafeFileError as e:
            raise UnsafeFileError(f"'{p}' was refused: {e}; nothing from it was run") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
            raise CheckpointError(f"'{p}' is truncated or corrupt: {detail}") from None
