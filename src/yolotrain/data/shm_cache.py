"""``cache=ram``: one copy of a dataset's decoded, resized images per machine, in shared memory.

The images live in one file under ``/dev/shm`` (a RAM-backed tmpfs; ``$YOLOTRAIN_SHM`` overrides the
folder), named by a hash of the user, the image list with each image's size, ``imgsz``, the resize
mode and a layout version. Every process that builds the same dataset (the main process, each
loader worker, each DDP rank on the machine, another run on the same data) maps the same file
read-only, so the pixels exist once in memory whatever the number of processes.

Layout: a 64-byte header (magic, image count, data offset, owner pid, a "complete" flag), then one
int64 row per image (byte offset, h, w, original h, original w; h = 0: not cached, decoded on use),
then the pixels (uint8 HWC, each image at its offset).

Creation is serialised by an exclusive ``flock`` on ``<name>.lock``: the first process builds the
file under a temporary name and renames it into place; the others wait on the lock (no collective,
so no DDP timeout can fire while they wait) and then map the finished file.

Clean-up: the process that built the file (its *owner*) removes it and its lock file at exit
(``atexit``; a ``SIGTERM`` the trainer turns into a normal exit included). Processes that still have it
mapped keep their pages until they exit. After ``SIGKILL`` (or a power cut) nothing runs: the file
stays in ``/dev/shm`` until the next run that builds the same cache adopts it (it finds the owner pid
dead, reuses the pixels and removes the file at its own exit), or until reboot or ``rm
/dev/shm/yolotrain-ram-*``. A build killed half-way leaves its temporary ``<name>.bin.<pid>.tmp`` (fully
reserved with ``fallocate``): the next ``cache=ram`` run on the machine, whatever its data, removes every
temporary whose builder is dead or holds no lock (:func:`reclaim_temporaries`).

Trust: ``/dev/shm`` is writable by every user, so every file here is opened with ``O_NOFOLLOW`` and used
only when it is a regular file owned by this user that no other user may write; anything else (a planted
link, another user's file) means no cache, with one warning line.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import logging
import mmap
import os
import stat
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil

from yolotrain.data.records import ImageRecord

LOGGER = logging.getLogger("yolotrain")

MAGIC = b"YTSHM001"
PREFIX = "yolotrain-ram-"
TMP_SUFFIX = ".tmp"
_HEADER = struct.Struct("<8sqqqq")  # magic, n, data offset, owner pid, complete
HEADER_BYTES = 64
ROW = 5  # int64 per image: offset, h, w, h0, w0
ALIGN = 64

_OWNED: dict[str, int] = {}  # files built (or adopted) here -> the pid that removes them at exit


def shm_dir() -> Path:
    """Where shared caches live: ``$YOLOTRAIN_SHM``, else ``/dev/shm`` (RAM), else the temp folder."""
    env = os.environ.get("YOLOTRAIN_SHM")
    if env:
        return Path(env)
    return Path("/dev/shm") if os.path.isdir("/dev/shm") else Path(os.environ.get("TMPDIR", "/tmp"))


def resized_shape(h: int, w: int, imgsz: int) -> tuple[int, int]:
    """``(h, w)`` of an ``h x w`` image resized so its long side is ``imgsz`` (as the decoder resizes)."""
    r = imgsz / max(h, w)
    if r == 1:
        return h, w
    return max(1, min(imgsz, round(h * r))), max(1, min(imgsz, round(w * r)))


def slot_bytes(records: list[ImageRecord], imgsz: int) -> np.ndarray:
    """Bytes reserved per image: its resized size plus one row and column (a reduced-scale JPEG
    decode can round one pixel differently), aligned to 64 bytes."""
    sizes = np.empty(len(records), dtype=np.int64)
    for k, r in enumerate(records):
        h, w = resized_shape(r.height, r.width, imgsz)
        sizes[k] = 3 * (h + 1) * (w + 1)
    return -(-sizes // ALIGN) * ALIGN


def cache_name(records: list[ImageRecord], imgsz: int, resize: str) -> str:
    """File name of a dataset's shared cache: a hash of everything the pixels depend on.

    The images' contents are not read (that would cost a stat per image at every start): an image
    edited in place while a cache of it is alive keeps its old pixels until the cache is removed.
    """
    h = hashlib.sha256(f"v1|uid={os.getuid()}|imgsz={imgsz}|resize={resize}|n={len(records)}\n".encode())
    h.update("".join(f"{r.im_file}|{r.height}|{r.width}\n" for r in records).encode())
    return f"{PREFIX}{h.hexdigest()[:24]}.bin"


def memory_available() -> tuple[float, float]:
    """``(bytes free in the shared-memory folder, bytes of RAM available)``."""
    try:
        st = os.statvfs(shm_dir())
        shm_free = float(st.f_bavail * st.f_frsize)
    except OSError:
        shm_free = 0.0
    try:
        ram = float(psutil.virtual_memory().available)
    except Exception:  # unsupported platform: trust the user
        ram = float("inf")
    return shm_free, ram


def refusal(need: float, shm_free: float, ram: float) -> str | None:
    """The one-line reason ``cache=ram`` does not fit, or None when it does.

    The pixels must fit in the shared-memory folder's free space and leave 20% of the available RAM.
    """
    if need <= shm_free and need <= 0.8 * ram:
        return None
    return (
        f"cache=ram refused: the decoded images need {_size(need)}; {shm_dir()} has {_size(shm_free)} "
        f"free and {_size(ram)} of RAM is available (it must fit in both with 20% of the RAM to spare); "
        "training without the image cache (cache=disk keeps the decoded images on disk instead)"
    )


def _size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class UnsafeCacheFile(OSError):
    """A file in the shared-memory folder that this process must not trust (a link, another user's, writable
    by others): the cache is then not used."""


def _open_own(path: Path, flags: int) -> int:
    """``os.open`` that follows no symbolic link and accepts only a regular file of this user that no
    one else may write (``/dev/shm`` is writable by every user: anyone could plant a file there)."""
    fd = os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        os.close(fd)
        raise UnsafeCacheFile(
            f"{path} is not a regular file of this user writable only by it (uid {st.st_uid}, mode "
            f"{stat.S_IMODE(st.st_mode):o}); not used"
        )
    return fd


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = _open_own(path, os.O_RDWR | os.O_CREAT)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            LOGGER.info("cache=ram: waiting for another process to finish building %s", path.with_suffix(".bin"))
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def reclaim_temporaries(folder: Path) -> list[Path]:
    """Remove the half-built cache files (``<name>.<pid>.tmp``) that killed builds left in ``folder``.

    A build holds its ``<name>.lock`` while it writes the temporary, so a temporary whose lock can be taken
    at once (or whose builder pid is gone) has no writer and never will: its RAM is given back. Only
    this user's files are touched. Returns the files removed.
    """
    removed = []
    for tmp in folder.glob(f"{PREFIX}*.bin.*{TMP_SUFFIX}"):
        try:
            pid = int(tmp.name[: -len(TMP_SUFFIX)].rsplit(".", 1)[1])
            if tmp.is_symlink() or tmp.stat().st_uid != os.getuid():
                continue
            if pid == os.getpid():
                continue
            lock = tmp.parent / (tmp.name.split(".bin.")[0] + ".lock")
            if _pid_alive(pid) and not _lock_free(lock):
                continue
            tmp.unlink()
        except (OSError, ValueError, IndexError):
            continue
        removed.append(tmp)
        LOGGER.info("cache=ram: removed %s, left half-built by a killed process (pid %d)", tmp, pid)
    return removed


def _lock_free(lock: Path) -> bool:
    """Whether no process holds ``lock`` (taken and released at once); a missing lock file is free."""
    try:
        fd = _open_own(lock, os.O_RDWR)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _remove_owned() -> None:
    for name, pid in list(_OWNED.items()):
        if pid != os.getpid():
            continue  # a forked child (a loader worker) inherited the table: the owner removes the file
        for p in (Path(name), Path(name).with_suffix(".lock")):
            with contextlib.suppress(OSError):
                p.unlink()
        del _OWNED[name]


atexit.register(_remove_owned)


class SharedImages:
    """The decoded images of one dataset, mapped read-only from the shared file.

    ``images[i]`` is ``(img uint8 (h, w, 3) read-only view, (h0, w0))``, or None when image ``i`` is
    not in the cache (it is then decoded as without a cache). Pickling (a spawned worker) sends the
    path, and the other side maps the same file again.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._map(self.path)

    def _map(self, path: Path) -> None:
        fd = _open_own(path, os.O_RDONLY)
        try:
            self._mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        magic, n, data_offset, _, complete = _HEADER.unpack_from(self._mm, 0)
        if magic != MAGIC or not complete:
            raise ValueError(f"{path}: not a complete yolotrain image cache")
        self.n = int(n)
        self._rows = np.frombuffer(self._mm, dtype=np.int64, count=n * ROW, offset=HEADER_BYTES).reshape(n, ROW)
        self._buf = np.frombuffer(self._mm, dtype=np.uint8)
        self.nbytes = len(self._mm)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[np.ndarray, tuple[int, int]] | None:
        if i >= self.n:
            return None  # the file was gone when this process attached
        off, h, w, h0, w0 = self._rows[i].tolist()
        if h == 0:
            return None
        return self._buf[off : off + h * w * 3].reshape(h, w, 3), (h0, w0)

    def cached(self) -> int:
        """How many images the file holds."""
        return int((self._rows[:, 1] > 0).sum())

    def __getstate__(self) -> dict:
        return {"path": str(self.path)}

    def __setstate__(self, state: dict) -> None:
        self.path = Path(state["path"])
        try:
            self._map(self.path)
        except (OSError, ValueError):  # removed meanwhile (its owner exited): every image decodes
            self.n, self.nbytes = 0, 0
            self._rows = np.zeros((0, ROW), dtype=np.int64)
            self._buf = np.zeros(0, dtype=np.uint8)


def _build(
    path: Path,
    records: list[ImageRecord],
    imgsz: int,
    load: Callable[[int], tuple[np.ndarray, tuple[int, int]]],
    slots: np.ndarray,
) -> None:
    """Decode every image into a new file ``path`` (written under a temporary name, then renamed)."""
    n = len(records)
    data_offset = -(-(HEADER_BYTES + 8 * ROW * n) // ALIGN) * ALIGN
    offsets = data_offset + np.concatenate([[0], np.cumsum(slots)[:-1]]).astype(np.int64)
    total = int(data_offset + slots.sum())
    tmp = path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # left by a killed process that had this pid (we hold the lock: no one builds it now)
    try:
        fd = _open_own(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        with open(fd, "w+b") as f:
            # Reserve the pages now: writing into a sparse tmpfs file that runs out of space is a SIGBUS,
            # a full /dev/shm here is an OSError (ENOSPC) instead.
            os.posix_fallocate(f.fileno(), 0, max(total, 1))
            mm = mmap.mmap(f.fileno(), max(total, 1))
        _fill(mm, n, offsets, slots, load)
        _HEADER.pack_into(mm, 0, MAGIC, n, data_offset, os.getpid(), 1)
        mm.flush()
        mm.close()
        os.replace(tmp, path)  # readers see the whole file or none
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _fill(
    mm: mmap.mmap,
    n: int,
    offsets: np.ndarray,
    slots: np.ndarray,
    load: Callable[[int], tuple[np.ndarray, tuple[int, int]]],
) -> None:
    """Decode every image into its slot of ``mm`` and write its index row (the views end with this call,
    so the map can be closed)."""
    rows = np.frombuffer(mm, dtype=np.int64, count=n * ROW, offset=HEADER_BYTES).reshape(n, ROW)
    rows[:, 0] = offsets
    buf = np.frombuffer(mm, dtype=np.uint8)

    def fill(i: int) -> None:
        img, (h0, w0) = load(i)
        h, w = img.shape[:2]
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or h * w * 3 > slots[i]:
            return  # not what the records promised (file edited since the scan): decoded on use
        buf[offsets[i] : offsets[i] + h * w * 3].reshape(h, w, 3)[:] = img
        rows[i, 1:] = (h, w, h0, w0)

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        list(pool.map(fill, range(n)))  # decoding releases the GIL


def _owner_pid(path: Path) -> int | None:
    """The owner pid in a complete cache file's header, or None for a damaged or incomplete one."""
    try:
        with open(_open_own(path, os.O_RDONLY), "rb") as f:
            head = f.read(_HEADER.size)
        magic, _, _, pid, complete = _HEADER.unpack(head)
    except UnsafeCacheFile:
        raise
    except (OSError, struct.error):
        return None
    return int(pid) if magic == MAGIC and complete else None


def _adopt(path: Path) -> None:
    """Write this process's pid as the owner of a file whose owner died (this process removes it at exit)."""
    with open(_open_own(path, os.O_RDWR), "r+b") as f:
        f.seek(struct.calcsize("<8sqq"))
        f.write(struct.pack("<q", os.getpid()))
    _OWNED[str(path)] = os.getpid()


def shared_images(
    records: list[ImageRecord],
    imgsz: int,
    resize: str,
    load: Callable[[int], tuple[np.ndarray, tuple[int, int]]],
) -> SharedImages | None:
    """Map the machine's shared cache of these images, building it first when no process has.

    Args:
        records: The dataset's records (their sizes plan the layout).
        imgsz: Long side of the resized images.
        resize: How the images were resized (``train``, or evaluation's ``area`` / ``bilinear``); part of
            the name, so datasets that resize differently never share a file.
        load: Decodes and resizes image ``i`` -> ``(img, (h0, w0))``.

    Returns:
        The mapped images, or None when the cache does not fit (one warning line says why).
    """
    folder = shm_dir()
    path = folder / cache_name(records, imgsz, resize)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return _shared_images(path, records, imgsz, load)
    except OSError as e:  # no shared-memory folder, not writable, or full meanwhile
        LOGGER.warning(f"cache=ram: cannot use {folder} ({e}); training without the image cache")
        return None


def _shared_images(
    path: Path, records: list[ImageRecord], imgsz: int, load: Callable[[int], tuple[np.ndarray, tuple[int, int]]]
) -> SharedImages | None:
    with _locked(path.with_suffix(".lock")):
        reclaim_temporaries(path.parent)
        pid = _owner_pid(path) if path.exists() else None
        if pid is not None:
            if pid != os.getpid() and not _pid_alive(pid):
                LOGGER.info("cache=ram: reusing %s left by an ended process (pid %d)", path, pid)
                _adopt(path)
            images = SharedImages(path)
            LOGGER.info("cache=ram: mapped %d images (%s) from %s", images.cached(), _size(images.nbytes), path)
            return images
        slots = slot_bytes(records, imgsz)
        need = float(slots.sum())
        why = refusal(need, *memory_available())
        if why:
            LOGGER.warning(why)
            return None
        _build(path, records, imgsz, load, slots)
        _OWNED[str(path)] = os.getpid()
        images = SharedImages(path)
    LOGGER.info("cache=ram: cached %d images (%s) in %s, shared by every process", images.cached(), _size(need), path)
    return images
