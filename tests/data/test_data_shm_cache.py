"""cache=ram keeps one copy of the decoded images per machine, in shared memory, and memory stays flat.

Memory is measured from ``/proc/<pid>/smaps``: RSS counts a shared page once in every process that
maps it, so it cannot tell one shared copy from one copy per process. PSS divides each shared page
among the processes that map it (summed over processes it counts the page once), and USS (private
clean + private dirty) is what a process holds alone: a leak or a private copy shows up there.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from data_helpers import augment_settings, make_shapes_split

from yolotrain.data import shm_cache
from yolotrain.data.dataset import DetectionDataset
from yolotrain.data.loader import build_dataloader, set_loader_epoch
from yolotrain.data.scan import scan_split

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    img_dir = make_shapes_split(tmp_path_factory.mktemp("shm"), n=24, size=96)
    recs, _ = scan_split([str(img_dir)], nc=3, use_cache=False)
    return recs


def _smaps(pid: int, name: str) -> dict[str, int]:
    """kB totals of one process: ``rss``, ``uss`` (private pages), ``pss``, and ``cache_rss`` / ``cache_pss`` /
    ``cache_private`` of the mappings whose path contains ``name``."""
    out = dict.fromkeys(("rss", "uss", "pss", "cache_rss", "cache_pss", "cache_private"), 0)
    in_cache = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if not head[0].endswith(":") or re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", head[0]):
                in_cache = name in line
                continue
            key, kb = head[0][:-1], int(head[1]) if head[1].isdigit() else 0
            if key in ("Private_Clean", "Private_Dirty"):
                out["uss"] += kb
                if in_cache:
                    out["cache_private"] += kb
            elif key == "Pss":
                out["pss"] += kb
                if in_cache:
                    out["cache_pss"] += kb
            elif key == "Rss":
                out["rss"] += kb
                if in_cache:
                    out["cache_rss"] += kb
    return out


def _decoded_bytes(records, imgsz: int, augment: bool) -> int:
    """Bytes of every image decoded without any cache (an independent measure of what cache=ram holds)."""
    plain = DetectionDataset(records, imgsz, augment, augment_settings(), buffer=0)
    return sum(plain.images.decode(i)[0].nbytes for i in range(len(records)))


def test_refused_when_it_does_not_fit_says_need_and_have(records, monkeypatch, caplog):
    decoded = _decoded_bytes(records, 96, False)
    monkeypatch.setattr(shm_cache, "memory_available", lambda: (decoded / 2, 64e9))  # shm too small
    with caplog.at_level(logging.WARNING, logger="yolotrain"):
        ds = DetectionDataset(records, 96, False, cache="ram")
    assert ds.images.ram is None
    (msg,) = [r.getMessage() for r in caplog.records if "cache=ram" in r.getMessage()]
    assert "\n" not in msg and "refused" in msg and "64.00 GB of RAM" in msg
    need_mb = float(re.search(r"need ([\d.]+) MB", msg).group(1))
    have_mb = float(re.search(r"has ([\d.]+) MB free", msg).group(1))
    assert decoded <= need_mb * 1e6 <= 1.25 * decoded + 1e5  # the estimate covers the pixels, with little slack
    assert have_mb == pytest.approx(decoded / 2e6, abs=0.1)
    caplog.clear()
    # RAM too small this time (shm is large): refused too
    monkeypatch.setattr(shm_cache, "memory_available", lambda: (64e9, decoded))
    with caplog.at_level(logging.WARNING, logger="yolotrain"):
        assert DetectionDataset(records, 96, False, cache="ram").images.ram is None
    assert any("refused" in r.getMessage() for r in caplog.records)
    # enough of both: cached
    monkeypatch.setattr(shm_cache, "memory_available", lambda: (64e9, 64e9))
    assert DetectionDataset(records, 96, False, cache="ram").images.ram is not None


def test_cached_pixels_are_the_decoded_pixels_and_read_only(records):
    ds = DetectionDataset(records, 96, True, augment_settings(), cache="ram")
    plain = DetectionDataset(records, 96, True, augment_settings(), buffer=0)
    assert ds.images.ram is not None and ds.images.ram.cached() == len(records)
    for i in range(len(records)):
        img, shape = ds.images.ram[i]
        ref, ref_shape = plain.images.decode(i)
        assert shape == ref_shape == (records[i].height, records[i].width)
        np.testing.assert_array_equal(img, ref)
        assert not img.flags.writeable
    with pytest.raises((ValueError, TypeError)):
        ds.images.ram[0][0][0, 0, 0] = 1  # mapped read-only: no process can change another's pixels


@pytest.mark.slow
def test_memory_flat_over_epochs_and_one_copy_across_workers(records):
    """Main process + 2 persistent workers: after a warm-up epoch, memory per process stays within a few percent
    (and 1 MB of allocator noise) between epoch 1 and epoch 4, and the cache file's pages are counted once
    (PSS summed over the processes).

    A worker is measured by USS (what it holds alone). The main process is measured by RSS: right after the
    fork nearly all its pages are shared with the workers, and every page it writes afterwards turns private
    again (copy on write), so its USS grows with whatever pytest and the interpreter's garbage collector
    touch (seen: 10 -> 58 MB in one run) without one byte more in use; a leak grows its RSS."""
    ds = DetectionDataset(records, 96, True, augment_settings(), cache="ram", seed=3)
    assert ds.images.ram is not None
    name = ds.images.ram.path.name
    file_kb = ds.images.ram.path.stat().st_size / 1024
    loader = build_dataloader(ds, batch_size=8, workers=2, shuffle=True, seed=3)
    samples = []

    def epoch(e: int) -> dict[int, dict[str, int]]:
        set_loader_epoch(loader, e)
        for b in loader:
            samples.append(b["img"].shape[0])
        pids = [os.getpid(), *(w.pid for w in loader._iterator._workers)]
        return {pid: _smaps(pid, name) for pid in pids}

    epoch(0)  # warm-up: the workers' first batches, the allocator's first arenas
    first = epoch(1)
    for e in range(2, 5):
        last = epoch(e)
    assert sum(samples) == 5 * len(records)
    assert len(first) == 3 and first.keys() == last.keys()
    for pid in first:
        a, b = first[pid], last[pid]
        if pid == os.getpid():  # RSS is hundreds of MB here and moved by 12 kB over 3 epochs (measured)
            assert b["rss"] <= a["rss"] + 2048, (pid, a, b)
        else:
            assert b["uss"] <= 1.03 * a["uss"] + 1024, (pid, a, b)  # flat: no per-epoch growth (kB)
        assert b["cache_private"] == 0, (pid, b)  # no process holds a private copy of cached pixels
    # every worker maps the pixels it read; summed PSS counts each page once: at most one copy in all
    workers = [last[p] for p in last if p != os.getpid()]
    assert all(w["cache_rss"] > 0.5 * file_kb for w in workers)
    total_pss = sum(v["cache_pss"] for v in last.values())
    total_rss = sum(v["cache_rss"] for v in last.values())
    assert total_pss <= 1.05 * file_kb + 8
    assert total_rss > 1.5 * total_pss  # the same pages are resident in several processes


RANK_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch.distributed as dist
    sys.path.insert(0, sys.argv[3])
    from data_helpers import augment_settings
    from yolotrain.data.dataset import DetectionDataset
    from yolotrain.data.scan import scan_split
    dist.init_process_group("gloo")
    recs, _ = scan_split([sys.argv[1]], nc=3, use_cache=False)
    ds = DetectionDataset(recs, 64, True, augment_settings(), cache="ram")  # a size no other test caches
    ds[0]  # touch the pixels
    name = ds.images.ram.path.name
    inodes = sorted({line.split()[4] for line in open("/proc/self/maps") if name in line})
    dist.barrier()  # every rank holds its cache before any looks
    files = sorted(p for p in os.listdir(ds.images.ram.path.parent) if p.startswith(name.split(".")[0]))
    px = int(ds.images.ram[5][0].sum())
    out = {"rank": dist.get_rank(), "name": name, "inodes": inodes, "files": files, "px": px}
    with open(os.path.join(sys.argv[2], f"rank{dist.get_rank()}.json"), "w") as f:
        json.dump(out, f)
    dist.barrier()  # the owner removes the file only after every rank has looked
    dist.destroy_process_group()
    """
)


@pytest.mark.slow
def test_two_ranks_share_one_cache(records, tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    img_dir = str(Path(records[0].im_file).parent)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    r = subprocess.run(
        [*cmd, img_dir, str(tmp_path), str(Path(__file__).parent)], env=env, capture_output=True, text=True, timeout=180
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert ranks[0]["name"] == ranks[1]["name"]
    stem = ranks[0]["name"][: -len(".bin")]
    # one pixel file (no second copy, no temporary left) beside its lock file
    assert ranks[0]["files"] == ranks[1]["files"] == [ranks[0]["name"], f"{stem}.lock"]
    assert len(ranks[0]["inodes"]) == 1 and ranks[0]["inodes"] == ranks[1]["inodes"]  # both map the same file
    assert ranks[0]["px"] == ranks[1]["px"]
    assert not (shm_cache.shm_dir() / ranks[0]["name"]).exists()  # the owner removed it at exit


KILLED_SCRIPT = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, sys.argv[2])
    from data_helpers import augment_settings
    from yolotrain.data.dataset import DetectionDataset
    from yolotrain.data.scan import scan_split
    recs, _ = scan_split([sys.argv[1]], nc=3, use_cache=False)
    ds = DetectionDataset(recs, 32, False, cache="ram")
    print(ds.images.ram.path, flush=True)
    os._exit(0)  # like SIGKILL: no atexit handler runs
    """
)


@pytest.mark.slow
def test_file_left_by_a_killed_process_is_adopted_and_removed(records, tmp_path, caplog):
    script = tmp_path / "killed.py"
    script.write_text(KILLED_SCRIPT)
    img_dir = str(Path(records[0].im_file).parent)
    env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONWARNINGS": "ignore"}
    r = subprocess.run(
        [sys.executable, str(script), img_dir, str(Path(__file__).parent)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    left = Path(r.stdout.strip().splitlines()[-1])
    assert left.is_file()  # nothing cleaned up after the kill
    with caplog.at_level(logging.INFO, logger="yolotrain"):
        ds = DetectionDataset(records, 32, False, cache="ram")
    assert ds.images.ram.path == left and "left by an ended process" in caplog.text  # reused, not rebuilt
    np.testing.assert_array_equal(
        ds.images.ram[3][0], DetectionDataset(records, 32, False, buffer=0).images.decode(3)[0]
    )
    shm_cache._remove_owned()  # what this process's exit runs
    assert not left.exists() and not left.with_suffix(".lock").exists()


def test_unusable_shared_memory_folder_means_no_cache_not_a_crash(records, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("YOLOTRAIN_SHM", str(blocker / "shm"))
    with caplog.at_level(logging.WARNING, logger="yolotrain"):
        ds = DetectionDataset(records, 96, False, cache="ram")
    assert ds.images.ram is None and ds.images.buffer > 0  # decodes as without a cache, buffer kept
    (msg,) = [r.getMessage() for r in caplog.records if "cache=ram" in r.getMessage()]
    assert str(blocker / "shm") in msg and "without the image cache" in msg and "\n" not in msg
    assert ds[0]["img"].shape[1:] == (96, 96)


def test_ram_bytes_is_what_the_shared_file_takes(records):
    """The profile's cache=ram advice quotes ram_bytes(): at least the decoded pixels, within the file's size."""
    ds = DetectionDataset(records, 96, True, augment_settings(), cache="ram")
    pixels = sum(ds.images.ram[i][0].nbytes for i in range(len(records)))
    assert pixels <= ds.images.ram_bytes() <= ds.images.ram.path.stat().st_size


# ------------------------------------------------------------------------------- kills, links, private copies
def _records(n: int, size: int) -> list:
    """Records of images that need not exist: the shared-cache functions take the decoder as an argument."""
    from yolotrain.data.records import ImageRecord  # noqa: PLC0415 - only these tests build records by hand

    return [ImageRecord(f"/nowhere/{size}/{i}.png", size, size, np.zeros(0, np.int64), np.zeros((0, 4), np.float32))
            for i in range(n)]  # fmt: skip


def _load(size: int):
    return lambda i: (np.full((size, size, 3), i % 251, np.uint8), (size, size))


BUILD_KILLED = textwrap.dedent(
    """
    import sys, threading, time
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from test_data_shm_cache import _records
    from yolotrain.data import shm_cache

    started = threading.Event()
    def load(i):
        started.set()
        time.sleep(600)  # the build never finishes: the parent kills this process meanwhile
    shm_cache.shared_images(_records(8, 64), 64, "train", load)
    """
)


@pytest.mark.slow
def test_build_killed_half_way_leaves_a_temporary_the_next_run_reclaims(tmp_path, monkeypatch, caplog):
    folder = tmp_path / "shm"
    env = {**os.environ, "PYTHONPATH": str(SRC), "YOLOTRAIN_SHM": str(folder), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-c", BUILD_KILLED, str(Path(__file__).parent)], env=env)
    deadline = time.monotonic() + 120
    while not list(folder.glob("*.tmp")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no atexit, no finally
    proc.wait()
    (tmp,) = folder.glob("*.tmp")
    assert tmp.stat().st_size >= 8 * 3 * 65 * 65  # fallocated: the pixels' RAM is held until someone frees it
    monkeypatch.setenv("YOLOTRAIN_SHM", str(folder))
    with caplog.at_level(logging.INFO, logger="yolotrain"):
        images = shm_cache.shared_images(_records(3, 32), 32, "train", _load(32))  # another dataset
    assert images is not None and not tmp.exists()
    assert f"removed {tmp}, left half-built by a killed process (pid {proc.pid})" in caplog.text
    shm_cache._remove_owned()


def test_a_planted_link_is_not_followed(tmp_path, monkeypatch, caplog):
    folder = tmp_path / "shm"
    folder.mkdir()
    monkeypatch.setenv("YOLOTRAIN_SHM", str(folder))
    records = _records(4, 32)
    victim = tmp_path / "victim"  # a file of this user another user wants written to
    victim.write_bytes(b"precious")
    lock = folder / shm_cache.cache_name(records, 32, "train").replace(".bin", ".lock")
    lock.symlink_to(victim)
    with caplog.at_level(logging.WARNING, logger="yolotrain"):
        assert shm_cache.shared_images(records, 32, "train", _load(32)) is None
    assert "training without the image cache" in caplog.text and victim.read_bytes() == b"precious"


@pytest.mark.parametrize("attack", ["other_user", "writable_by_others"])
def test_a_cache_file_this_user_does_not_solely_control_is_not_used(tmp_path, monkeypatch, caplog, attack):
    folder = tmp_path / "shm"
    monkeypatch.setenv("YOLOTRAIN_SHM", str(folder))
    records = _records(4, 32)
    built = shm_cache.shared_images(records, 32, "train", _load(32))
    shm_cache._OWNED.clear()  # keep the file: it stands for one someone else left (or planted) here
    path = built.path
    if attack == "other_user":
        if os.getuid() != 0:
            pytest.skip("changing a file's owner needs root")
        os.chown(path, 12345, 12345)
    else:
        path.chmod(0o666)
    with caplog.at_level(logging.WARNING, logger="yolotrain"):
        assert shm_cache.shared_images(records, 32, "train", _load(32)) is None
    assert f"{path} is not a regular file of this user writable only by it" in caplog.text
    path.unlink()


def _anon_private_kb(name: str) -> int:
    s = _smaps(os.getpid(), name)
    return s["uss"] - s["cache_private"]


def test_reading_every_cached_image_makes_no_private_copy(tmp_path):
    """Memory private to this process, outside the cache file's mapping, grows by far less than the cache
    from before the cache is built until every image was read twice: a private copy of the cache (made when
    it is mapped or image by image when read) would add its whole size."""
    img_dir = make_shapes_split(tmp_path, n=24, size=512)
    recs, _ = scan_split([str(img_dir)], nc=3, use_cache=False)
    DetectionDataset(recs[:1], 512, False, buffer=0)[0]  # warm-up: the decoder's first allocations
    before = _anon_private_kb("no cache mapped yet")
    ds = DetectionDataset(recs, 512, False, cache="ram", buffer=0)
    name = ds.images.ram.path.name
    file_kb = ds.images.ram.path.stat().st_size / 1024
    assert file_kb > 12_000  # 24 images of up to 512 x 512 x 3: ~15 MB, far above the allocator's noise
    for i in [*range(len(ds)), *range(len(ds))]:
        ds[i]
    grew = _anon_private_kb(name) - before
    assert grew < 0.5 * file_kb, (grew, file_kb)
