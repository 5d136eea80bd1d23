"""Label scanning at scale: one process per machine scans while the others wait for its cache."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

from data_helpers import make_shapes_split

from yolotrain.data import labels
from yolotrain.data.scan import scan_split


def _scan_child(img_dir: str, barrier, out) -> None:
    real = labels._scan_files

    def slow(*args, **kwargs):
        time.sleep(1.0)  # a scan long enough for the other process to arrive while it runs
        return real(*args, **kwargs)

    labels._scan_files = slow
    barrier.wait()
    recs, rep = scan_split([img_dir], nc=3, log_problems=False)
    out.put((os.getpid(), rep.from_cache, [(r.im_file, r.height, r.width, r.cls.tolist()) for r in recs]))


def test_two_processes_scan_once(tmp_path):
    """Two processes (as two DDP ranks) start scanning the same split together: one scans, the other
    waits on the lock (no collective) and reads the cache the first wrote."""
    img_dir = str(make_shapes_split(tmp_path, n=10, size=32))
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_scan_child, args=(img_dir, barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(r[1] for r in results) == [False, True]  # exactly one scanned, the other read its cache
    assert results[0][2] == results[1][2] and len(results[0][2]) == 10
