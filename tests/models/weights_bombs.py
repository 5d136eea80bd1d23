"""Hand-made weights files that try to exhaust memory, the C stack or the reader's trust (see safe_pickle).

Each builder writes a file and returns its path; the files are a few KB at most, written opcode by opcode
(``pickle`` itself would refuse to write most of them).
"""

from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path

P = pickle
STORAGE_PID = b"X\x07\x00\x00\x00storage"  # BINUNICODE 'storage'


def unicode(s: str) -> bytes:
    b = s.encode()
    return P.BINUNICODE + struct.pack("<I", len(b)) + b


def global_(module: str, name: str) -> bytes:
    return P.GLOBAL + f"{module}\n{name}\n".encode()


def int_(n: int) -> bytes:
    return P.BININT + struct.pack("<i", n)


def tensor(key: str, numel_storage: int, size: tuple[int, ...], stride: tuple[int, ...]) -> bytes:
    """Opcodes that push ``_rebuild_tensor_v2(storage key, 0, size, stride)`` of a float32 storage."""
    pid = P.MARK + unicode("storage") + global_("torch", "FloatStorage") + unicode(key) + unicode("cpu")
    pid += int_(numel_storage) + P.TUPLE + P.BINPERSID
    ints = lambda t: P.MARK + b"".join(int_(v) for v in t) + P.TUPLE  # noqa: E731
    args = P.MARK + pid + int_(0) + ints(size) + ints(stride) + P.NEWFALSE + global_("collections", "OrderedDict")
    args += P.EMPTY_TUPLE + P.REDUCE + P.TUPLE
    return global_("torch._utils", "_rebuild_tensor_v2") + args + P.REDUCE


def write(path: Path, pickle_bytes: bytes, storages: dict[str, bytes] | None = None, pkl_compression=None) -> Path:
    """A torch.save-shaped zip: ``archive/data.pkl`` (+ ``archive/data/<key>``), stored unless told."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", P.PROTO + b"\x02" + pickle_bytes + P.STOP, compress_type=pkl_compression)
        z.writestr("archive/byteorder", "little")
        for key, raw in (storages or {}).items():
            z.writestr(f"archive/data/{key}", raw)
    return path


def stride0_view(path: Path, n: int = 128_000_000) -> Path:
    """One float32 element shown as ``n`` elements (stride 0): 512 MB if the view were copied."""
    return write(path, tensor("0", 1, (n,), (0,)), {"0": struct.pack("<f", 1.0)})


def compressed_pickle(path: Path, method=zipfile.ZIP_BZIP2, mb: int = 64) -> Path:
    """A data.pkl that decompresses to ``mb`` MB (a long string of zeros) from a few hundred bytes."""
    body = P.BINUNICODE8 + struct.pack("<Q", mb << 20) + b"0" * (mb << 20)
    return write(path, body, pkl_compression=method)


def additems_on_tensor(path: Path) -> Path:
    """ADDITEMS with a tensor on the stack: plain pickle would call ``tensor.add(1.0)``."""
    body = tensor("0", 4, (4,), (1,)) + P.MARK + P.BINFLOAT + struct.pack(">d", 1.0) + P.ADDITEMS
    return write(path, body, {"0": b"\0" * 16})


def deep_tuple_key(path: Path, depth: int = 1_000_000) -> Path:
    """A dict key nested ``depth`` tuples deep: hashing it recursed in C until the process crashed."""
    body = P.EMPTY_DICT + P.EMPTY_TUPLE + P.TUPLE1 * depth + P.NONE + P.SETITEM
    return write(path, body)


def deep_list(path: Path, depth: int = 1_000_000) -> Path:
    """Lists nested ``depth`` deep (no hashing involved): any recursive walk of it overflows."""
    return write(path, P.MARK * depth + P.EMPTY_LIST + P.LIST * depth)


def module_cycle(path: Path) -> Path:
    """An Ultralytics model whose ``_modules`` holds the model itself."""
    body = P.EMPTY_DICT + unicode("ema") + global_("ultralytics.nn.tasks", "DetectionModel") + P.EMPTY_TUPLE
    body += P.NEWOBJ + P.MEMOIZE  # memo 0: the model
    body += P.EMPTY_DICT + unicode("_modules") + P.EMPTY_DICT + unicode("model") + P.BINGET + b"\x00"
    body += P.SETITEM + P.SETITEM + P.BUILD + P.SETITEM
    return write(path, body)


def many_objects(path: Path, n: int) -> Path:
    """``n`` empty dicts appended to one list (2 instructions each)."""
    return write(path, P.EMPTY_LIST + (P.EMPTY_DICT + P.APPEND) * n)


def odd_field(path: Path) -> Path:
    """An Ultralytics model whose ``_modules`` is a string: the importer must say so in one line."""
    body = P.EMPTY_DICT + unicode("ema") + global_("ultralytics.nn.tasks", "DetectionModel") + P.EMPTY_TUPLE
    body += P.NEWOBJ + P.EMPTY_DICT + unicode("_modules") + unicode("not a dict") + P.SETITEM + P.BUILD + P.SETITEM
    return write(path, body)
