"""Label scanning at scale: one process per machine scans while the others wait for its cache; the fast
label-parse path for small files."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import numpy as np
import pytest
from data_helpers import make_shapes_split

from yolotrain.data import labels
from yolotrain.data.label_parse import _clean_rows, _rows_to_array, parse_label_file, validate_rows
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


@pytest.mark.slow
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


def test_small_label_files_parse_exactly_as_the_vectorised_path(tmp_path):
    """parse_label_file's plain-float path for small files gives validate_rows' result bit for bit, on clean
    rows and on every kind of row it must hand over (bad class, overshoot, duplicates, polygons, -0.0)."""
    rng = np.random.default_rng(0)
    edge = [
        "0 0.5 0.5 0.2 0.2", "2 0.1 0.1 0.2 0.2", "1 0.9999999 0.5 0.0000002 0.3", "1 0.5 0.5 1.0 1.0",
        "0 0.995 0.5 0.02 0.1", "3 0.5 0.5 0.1 0.1", "-1 0.5 0.5 0.1 0.1", "1.5 0.5 0.5 0.1 0.1",
        "0 nan 0.5 0.1 0.1", "0 0.5 0.5 0 0.1", "0 -0.0 0.5 0.1 0.1", "0 0.0 0.5 0.1 0.1",
        "1 0.1 0.1 0.3 0.1 0.3 0.3", "0 0.1 0.2 0.3 0.2 0.3 0.4 0.1 0.4", "0 1e-7 0.5 2e-7 0.1", "2 0.5 0.5 -0.1 0.1",
    ]  # fmt: skip
    clean = ["0 0.5 0.5 0.2 0.2", "2 0.1 0.1 0.2 0.2", "1 0.5 0.5 1.0 1.0", "0 0.5 0.5 0.2 -0.0", "1 0.5 -0.0 0.1 0.1"]
    clean += ["1 0.5 0.5 0.2 0.2", "0 0.50 0.5 0.2 0.2", "1 0.9999999 0.5 0.0000002 0.3"]
    clean += ["0 0.9999996 0.5 0.000001 0.3", "1 0.5 0.0000004 0.2 0.000001"]  # over a border by 1e-7: clipped
    files = []
    for k in range(400):
        n = int(rng.integers(1, 6))
        if k % 4 == 1:  # clean rows only, so duplicates and +-0.0 twins among them
            rows = [clean[int(j)] for j in rng.integers(0, len(clean), n)]
        elif k % 2:
            rows = [edge[int(j)] for j in rng.integers(0, len(edge), n)]
        else:  # random clean-looking rows, some near the borders
            w, h = rng.uniform(1e-4, 0.5, n), rng.uniform(1e-4, 0.5, n)
            cx, cy = rng.uniform(w / 2, 1 - w / 2), rng.uniform(h / 2, 1 - h / 2)
            if k % 4 == 0:  # and some crossing a border
                cx, cy = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
            rows = [" ".join(map(repr, (int(c), *map(float, v)))) for c, *v in zip(rng.integers(0, 3, n), cx, cy, w, h)]
        f = tmp_path / f"{k}.txt"
        f.write_text("\n".join(rows) + "\n")
        files.append((f, rows))
    fast_taken = 0
    for f, rows in files:
        got = parse_label_file(str(f), nc=3)
        arr = _rows_to_array([r.split() for r in rows], str(f))
        want = validate_rows(arr, 3, str(f)) if not isinstance(arr, str) else None
        fast_taken += _clean_rows([r.split() for r in rows], 3) is not None
        if want is None:
            assert got.status == "malformed"
            continue
        assert got.status == want.status and got.dropped == want.dropped, f
        assert (got.duplicates, got.clipped, got.out_of_range) == (want.duplicates, want.clipped, want.out_of_range)
        assert got.cls.dtype == want.cls.dtype and got.bboxes.dtype == want.bboxes.dtype
        assert got.cls.tobytes() == want.cls.tobytes() and got.bboxes.tobytes() == want.bboxes.tobytes(), f
    assert 100 < fast_taken < 400  # both paths were exercised
