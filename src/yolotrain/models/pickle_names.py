"""What the restricted unpickler resolves the names in a weights file to.

Only a fixed list of names becomes a callable, each one our own re-implementation that checks the
types of its arguments before touching them (so a file cannot make, say, ``list(tensor)`` turn one
storage into a million tensor objects). Every other class becomes an inert placeholder
(:class:`Inert`). Modules a weights file never needs are refused by name.
"""

from __future__ import annotations

import collections
import re
from typing import Any

import numpy as np
import torch

from yolotrain.errors import CheckpointError

__all__ = [
    "Inert",
    "UnsafeFileError",
    "Refused",
    "SAFE",
    "DTYPES",
    "DENIED_MODULES",
    "StorageType",
    "Safe",
    "SCALARS",
    "placeholder",
    "new_inert",
]


class UnsafeFileError(CheckpointError):
    """The file needs something other than tensors, plain containers and inert objects."""


class Refused(Exception):
    """Raised inside the unpickler; turned into one UnsafeFileError line naming the file."""


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


def placeholder(module: str, name: str) -> type[Inert]:
    """The (cached) inert class standing for ``module.name``."""
    key = (module, name)
    if key not in _PLACEHOLDERS:
        _PLACEHOLDERS[key] = type(f"Inert_{name}", (Inert,), {"cls_name": f"{module}.{name}"})
    return _PLACEHOLDERS[key]


def new_inert(cls: type[Inert], args: Any) -> Inert:
    obj = object.__new__(cls)  # no __init__ of any class runs
    obj.args, obj.state, obj.items = args, None, []
    return obj


class StorageType:
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


class Safe:
    """A function the file may call: our own implementation, looked up by the name the file uses.

    It is called as ``fn(unpickler, *args)``: the unpickler answers whether a value is a plain key
    (its tuples' depth and plainness are recorded when they are built, so the answer costs O(1)).
    """

    def __init__(self, name: str, fn) -> None:
        self.name, self.fn = name, fn

    def __call__(self, u, *args):
        return self.fn(u, *args)


SCALARS = (str, int, float, bool, bytes, type(None))  # the values a dict key or set item may be, with tuples of them


def _ints(dims: Any, what: str) -> tuple[int, ...]:
    if type(dims) not in (tuple, list, torch.Size) or not all(type(d) is int for d in dims):
        raise UnsafeFileError(f"a tensor's {what} is not a list of integers")
    return tuple(dims)


def _container(fn, name: str, kind: str = "items"):
    """``fn`` (list, tuple, set, dict...) of one plain container; ``kind`` says what its items must be:
    ``items`` anything, ``keys`` plain hashable values, ``pairs`` key/value pairs with plain keys."""

    def make(u, *args):
        if not args:
            return fn()
        x = args[0]
        if len(args) != 1 or type(x) not in (list, tuple, set, frozenset, dict, collections.OrderedDict):
            raise UnsafeFileError(f"{name}() of other than one plain container")
        if kind == "pairs" and type(x) in (list, tuple):
            if not all(type(p) in (list, tuple) and len(p) == 2 and u.plain_key(p[0]) for p in x):
                raise UnsafeFileError(f"{name}() of other than key/value pairs with plain keys")
        elif kind == "pairs" and type(x) not in (dict, collections.OrderedDict):
            raise UnsafeFileError(f"{name}() of a {type(x).__name__}")
        elif kind == "keys" and not all(u.plain_key(k) for k in x):
            raise UnsafeFileError(f"{name}() of other than plain values")
        return fn(x)

    return make


def _complex(u, *args) -> complex:
    if not all(type(a) in (int, float) for a in args) or len(args) > 2:
        raise UnsafeFileError("complex() of other than numbers")
    return complex(*args)


def _rebuild_parameter(u, data, *_rest) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise UnsafeFileError("a parameter is rebuilt from something other than a tensor")
    return data


def _codecs_encode(u, text, encoding="utf-8") -> bytes:
    # Protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeFileError("_codecs.encode with other than (str, 'latin1')")
    return text.encode("latin1")


class NumpyDtype(Inert):
    cls_name = "numpy.dtype"


def _numpy_dtype(u, spec, align=False, copy=True) -> NumpyDtype:
    if not isinstance(spec, str) or not re.fullmatch(r"[biufc]\d{1,2}", spec):
        raise UnsafeFileError(f"numpy dtype {str(spec)[:40]!r} is not a plain number type")
    d = new_inert(NumpyDtype, ())
    d.spec = spec
    return d


def _numpy_scalar(u, dtype, data=None):
    if not isinstance(dtype, NumpyDtype) or not isinstance(data, bytes):
        raise UnsafeFileError("numpy scalar with other than a plain dtype and bytes")
    order = dtype.state[1] if isinstance(dtype.state, tuple) and len(dtype.state) > 1 else "<"
    order = order if order in ("<", ">") else "<"
    try:
        return np.frombuffer(data, dtype=np.dtype(order + dtype.spec), count=1)[0].item()
    except (ValueError, TypeError) as e:
        raise UnsafeFileError(f"numpy scalar: {e}") from None


def _numpy_reconstruct(u, cls, shape, typecode) -> Inert:
    # An array is kept as an inert record (its state holds shape, dtype and raw bytes); nothing here
    # needs its values, and numpy's own reconstruction of object arrays would unpickle further.
    return new_inert(placeholder("numpy", "ndarray"), (shape, typecode))


def _size(u, *args) -> torch.Size:
    return torch.Size(_ints(args[0] if args else (), "size"))


def _device(u, spec, index=None) -> str:
    if not isinstance(spec, str) or (index is not None and type(index) is not int):
        raise UnsafeFileError("torch.device of other than a name")
    return spec if index is None else f"{spec}:{index}"


TENSOR_TYPE = placeholder("torch", "Tensor")
PARAMETER_TYPE = placeholder("torch.nn.parameter", "Parameter")


def _rebuild_from_type(u, func, new_type, args, state) -> torch.Tensor:
    if not isinstance(func, Safe) or new_type not in (TENSOR_TYPE, PARAMETER_TYPE) or type(args) is not tuple:
        raise UnsafeFileError("a tensor subclass is rebuilt through an unknown function")
    return func(u, *args)


_PLAIN = {
    "set": _container(set, "set", "keys"),
    "frozenset": _container(frozenset, "frozenset", "keys"),
    "list": _container(list, "list"),
    "tuple": _container(tuple, "tuple"),
    "dict": _container(dict, "dict", "pairs"),
    "complex": _complex,
}
# torch._utils._rebuild_tensor_v2 is bound by the unpickler (it counts each storage's views).
SAFE: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_parameter"): Safe("torch._utils._rebuild_parameter", _rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): Safe("_rebuild_parameter_with_state", _rebuild_parameter),
    ("torch._tensor", "_rebuild_from_type_v2"): Safe("torch._tensor._rebuild_from_type_v2", _rebuild_from_type),
    ("torch", "Tensor"): TENSOR_TYPE,
    ("torch.nn.parameter", "Parameter"): PARAMETER_TYPE,
    ("torch", "Size"): Safe("torch.Size", _size),
    ("torch", "device"): Safe("torch.device", _device),
    ("collections", "OrderedDict"): Safe(
        "collections.OrderedDict", _container(collections.OrderedDict, "OrderedDict", "pairs")
    ),
    ("_codecs", "encode"): Safe("_codecs.encode", _codecs_encode),
    ("numpy", "dtype"): Safe("numpy.dtype", _numpy_dtype),
    ("numpy.core.multiarray", "scalar"): Safe("numpy scalar", _numpy_scalar),
    ("numpy._core.multiarray", "scalar"): Safe("numpy scalar", _numpy_scalar),
    ("numpy.core.multiarray", "_reconstruct"): Safe("numpy array", _numpy_reconstruct),
    ("numpy._core.multiarray", "_reconstruct"): Safe("numpy array", _numpy_reconstruct),
    **{(m, n): Safe(n, f) for m in ("builtins", "__builtin__") for n, f in _PLAIN.items()},
    **{("torch", n): StorageType(d) for n, d in _STORAGE_DTYPES.items()},
}
DTYPES = {
    n: getattr(torch, n) for n in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool")
}
# Modules whose names a weights file never needs: refused on sight with a clear message, even though
# a placeholder could not run either.
DENIED_MODULES = re.compile(
    r"^(builtins|__builtin__|os|posix|nt|subprocess|sys|shutil|importlib|runpy|pickle|_pickle|marshal|code|"
    r"codeop|ctypes|socket|operator|functools|itertools|io|_io|pty|webbrowser|asyncio|multiprocessing|"
    r"threading|signal|inspect|pdb|timeit|cProfile|profile|torch|torch\._.*|torch\.(?!nn\.).*|numpy|numpy\..*|"
    r"_codecs|codecs|copyreg|gc|tempfile|glob|pathlib|urllib(\..*)?|http(\..*)?|requests(\..*)?)$"
)
