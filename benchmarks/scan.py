"""Label scanning at scale: first scan and cached scan of N tiny labelled images, as one JSON line.

Generates ``--n`` small JPEGs (default 200,000; a handful of distinct encodings written under
different names) with one or two label rows each into a temporary folder, then, each in a fresh
child process (so peak RSS is that phase's own): the first scan (every image header checked, every
label parsed, the cache written) and the cached scan (the cache read back and re-validated).

Usage::

    python benchmarks/scan.py                 # 200,000 images
    python benchmarks/scan.py --n 20000
    python benchmarks/scan.py --smoke         # 200 images, seconds

Targets (issue #16, 2-core machine): first scan >= 5,000 images/s, cached >= 200,000 images/s,
peak RSS < 1 GB at N = 200,000.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the keys a --smoke run must print (the test suite runs every benchmark's smoke mode and checks them)
SMOKE_KEYS = ("n", "first_scan_images_per_s", "first_scan_peak_rss_mb", "cached_scan_images_per_s")
CHILD = r"""
import json, resource, sys, time
from yolotrain.data.scan import scan_split
t0 = time.perf_counter()
records, report = scan_split([sys.argv[1]], nc=3, log_problems=False)
dt = time.perf_counter() - t0
rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"images": len(records), "seconds": dt, "from_cache": report.from_cache, "peak_rss_mb": rss_mb}))
"""


def generate(root: Path, n: int) -> Path:
    """``n`` labelled 32x24 JPEGs under ``root/images/train`` (labels under ``root/labels/train``)."""
    import cv2
    import numpy as np

    img_dir, lbl_dir = root / "images" / "train", root / "labels" / "train"
    img_dir.mkdir(parents=True)
    lbl_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    blobs = [cv2.imencode(".jpg", rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))[1].tobytes() for _ in range(16)]
    rows = ["0 0.5 0.5 0.2 0.3\n", "1 0.3 0.4 0.1 0.1\n2 0.7 0.6 0.2 0.2\n"]
    for i in range(n):
        (img_dir / f"{i:07d}.jpg").write_bytes(blobs[i % len(blobs)])
        (lbl_dir / f"{i:07d}.txt").write_text(rows[i % 2])
    return img_dir


def run_child(img_dir: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, str(img_dir)], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--smoke", action="store_true", help="200 images, seconds: keeps the script from rotting")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n = 200
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        img_dir = generate(Path(tmp), args.n)
        gen_s = time.perf_counter() - t0
        first, cached = run_child(img_dir), run_child(img_dir)
    assert not first["from_cache"] and cached["from_cache"]
    out = {
        "n": args.n,
        "cpu": os.cpu_count(),
        "generate_s": round(gen_s, 1),
        "first_scan_images_per_s": round(first["images"] / first["seconds"]),
        "first_scan_peak_rss_mb": round(first["peak_rss_mb"]),
        "cached_scan_images_per_s": round(cached["images"] / cached["seconds"]),
        "cached_scan_peak_rss_mb": round(cached["peak_rss_mb"]),
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
