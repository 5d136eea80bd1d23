"""The zip container of a ``torch.save`` file, read within stated bounds.

``torch.save`` writes ``<name>/data.pkl`` (the pickle), ``<name>/data/<key>`` (one raw record per tensor
storage) and a few small records, all *stored* (never compressed). So a file that holds a compressed
member is not one torch wrote, and decompressing it could expand a few hundred bytes into gigabytes: it
is refused before anything is read. The bounds, each checked before the bytes are read:

- at most :data:`MAX_ENTRIES` zip entries (the central directory is parsed into one object per entry);
- ``data.pkl`` at most :data:`MAX_PICKLE_BYTES`;
- every member stored, its sizes consistent, and the storages read together no larger than the file
  itself (overlapping entries that point at the same bytes cannot multiply it);
- each storage is read in 1 MiB chunks straight into its tensor, so it exists once in memory.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import torch

from yolotrain.errors import CheckpointError
from yolotrain.models.pickle_names import UnsafeFileError

__all__ = ["TorchZip", "MAX_ENTRIES", "MAX_PICKLE_BYTES"]

MAX_ENTRIES = 50_000  # a YOLO checkpoint with optimizer and EMA has a few thousand storages
MAX_PICKLE_BYTES = 32 << 20  # real checkpoints' data.pkl: well under 1 MiB
_CHUNK = 1 << 20
_EOCD = b"PK\x05\x06"


def _entry_count(path: Path) -> int | None:
    """Entries the zip's end record announces (None when there is no plain end record), read before
    the central directory is parsed."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - (1 << 16) - 22))
        tail = f.read()
    at = tail.rfind(_EOCD)
    if at < 0 or at + 22 > len(tail):
        return None
    (entries,) = struct.unpack_from("<H", tail, at + 10)
    return None if entries == 0xFFFF else entries  # 0xFFFF: zip64, the central directory says more


def _file_size(path: Path) -> int:
    return path.stat().st_size


class TorchZip:
    """An open ``torch.save`` zip whose members are read with size checks.

    Args:
        path: The file.

    Raises:
        CheckpointError: One line naming the file when it is not such a zip or breaks a bound.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.file_bytes = _file_size(self.path)
        self.storage_bytes = 0  # read so far
        entries = _entry_count(self.path)
        if entries is not None and entries > MAX_ENTRIES:
            raise self.error(f"its zip lists {entries} entries (at most {MAX_ENTRIES} are read)")
        try:
            self.zf = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, ValueError, struct.error) as e:
            with open(self.path, "rb") as f:
                starts_as_zip = f.read(4) == b"PK\x03\x04"
            if starts_as_zip:  # a zip whose end (the central directory) is missing or damaged
                raise CheckpointError(f"'{self.path}' is truncated or corrupt: {e}") from None
            raise CheckpointError(
                f"'{self.path}' is not a torch.save zip file ({e}); files from torch < 1.6 are not supported"
            ) from None
        infos = self.zf.infolist()
        if len(infos) > MAX_ENTRIES:
            self.zf.close()
            raise self.error(f"its zip lists {len(infos)} entries (at most {MAX_ENTRIES} are read)")
        pkls = [i.filename for i in infos if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
        if len(pkls) != 1:
            self.zf.close()
            raise CheckpointError(f"'{self.path}' is a zip but not a torch.save file (no single <name>/data.pkl)")
        self.prefix = pkls[0].split("/")[0]

    def error(self, what: str) -> UnsafeFileError:
        return UnsafeFileError(f"'{self.path}' was refused: {what}; nothing from it was run")

    def close(self) -> None:
        self.zf.close()

    def __enter__(self) -> TorchZip:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _info(self, name: str, what: str) -> zipfile.ZipInfo:
        try:
            info = self.zf.getinfo(f"{self.prefix}/{name}")
        except KeyError:
            raise self.error(f"{what} is missing from the archive") from None
        if info.compress_type != zipfile.ZIP_STORED:
            raise self.error(f"{what} is compressed (torch.save never compresses)")
        if info.file_size != info.compress_size:
            raise self.error(f"{what} declares {info.file_size} bytes but stores {info.compress_size}")
        return info

    def big_endian(self) -> bool:
        """Whether the file says it was written on a big-endian machine."""
        name = f"{self.prefix}/byteorder"
        if name not in self.zf.NameToInfo:
            return False
        info = self._info("byteorder", "the byteorder record")
        if info.file_size > 16:
            raise self.error("its byteorder record is not a word")
        return self.zf.read(info).strip() not in (b"little", b"")

    def read_pickle(self) -> bytes:
        """The bytes of ``data.pkl`` (at most :data:`MAX_PICKLE_BYTES`)."""
        info = self._info("data.pkl", "data.pkl")
        if info.file_size > MAX_PICKLE_BYTES:
            raise self.error(f"its data.pkl is {info.file_size} bytes (at most {MAX_PICKLE_BYTES} are read)")
        return self.zf.read(info)

    def read_storage(self, key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        """Storage ``key`` as a flat tensor of ``numel`` elements of ``dtype`` (one copy in memory)."""
        what = f"storage {key!r}"
        info = self._info(f"data/{key}", what)
        item = torch.empty((), dtype=dtype).element_size()
        if info.file_size != numel * item:
            raise self.error(f"{what} holds {info.file_size} bytes, not {numel} x {item}")
        self.storage_bytes += info.file_size
        if self.storage_bytes > self.file_bytes:
            raise self.error(f"its storages add up to more bytes than the file holds ({self.file_bytes})")
        out = torch.empty(info.file_size, dtype=torch.uint8)
        view = memoryview(out.numpy()) if info.file_size else None
        pos = 0
        with self.zf.open(info) as f:  # the CRC is checked when the member has been read to its end
            while pos < info.file_size:
                chunk = f.read(min(_CHUNK, info.file_size - pos))
                if not chunk:
                    raise self.error(f"{what} ends early")
                view[pos : pos + len(chunk)] = chunk
                pos += len(chunk)
            f.read(1)  # reach the end: a CRC mismatch raises here
        return out.view(dtype) if numel else torch.empty(0, dtype=dtype)
