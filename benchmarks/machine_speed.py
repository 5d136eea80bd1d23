"""How fast this machine is right now, as one JSON line: a fixed single-threaded torch workload, in CPU seconds.

The shared 2-core machine the suite is timed on runs the same tests up to twice as fast at one hour as at
another (docs/testing.md), so a suite time means little without the speed it ran at. Run this before and after
a timed run and report both: CPU seconds (``time.process_time``), which a busy neighbour on the host raises too.

Usage::

    .venv/bin/python benchmarks/machine_speed.py            # 10 rounds (about 1 CPU-second on 2026-12-03)
    .venv/bin/python benchmarks/machine_speed.py --smoke    # 2 rounds
"""

from __future__ import annotations

import argparse
import json
import time

import torch

# the keys a --smoke run must print (the test suite runs every benchmark's smoke mode and checks them)
SMOKE_KEYS = ("cpu_s_per_round", "rounds")


def measure(rounds: int) -> float:
    """CPU seconds per round of 8 single-threaded 32-channel 3x3 convolutions over 8 x 32 x 64 x 64."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    convs = torch.nn.Sequential(*[torch.nn.Conv2d(32, 32, 3, padding=1) for _ in range(8)])
    x = torch.randn(8, 32, 64, 64)
    with torch.no_grad():
        convs(x)  # first call: allocations and kernel selection, not timed
        start = time.process_time()
        for _ in range(rounds):
            convs(x)
        return (time.process_time() - start) / rounds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--smoke", action="store_true", help="2 rounds: the same workload, shorter")
    args = ap.parse_args()
    rounds = 2 if args.smoke else args.rounds
    print(json.dumps({"cpu_s_per_round": round(measure(rounds), 4), "rounds": rounds, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
