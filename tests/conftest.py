"""Shared fixtures (a tiny generated dataset made once per session, a run trained on it, a config factory)
and the test tiers: ``@pytest.mark.slow`` (``make test-fast`` leaves these out) and ``@pytest.mark.gpu``
(skipped where CUDA is not available).
"""

import os
from collections import Counter
from pathlib import Path

import pytest


def pytest_configure(config):
    """Under pytest-xdist each worker, and every process its tests start, gets its share of the cores.

    torch otherwise gives each worker one thread per core: two workers on this 2-core machine ran the fast tier
    in 200 s (379 CPU-seconds, the threads spinning against each other), against 77 s with a thread each.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # read by torch when it loads, here and in child processes


def pytest_collection_modifyitems(config, items):
    """Run the modules that hold slow tests first, the most slow tests first; skip the tests marked ``gpu`` when
    there is no CUDA device.

    ``make test`` and ``make test-fast`` hand whole modules to their workers (``--dist loadfile``, so a module's
    expensive fixture is made once) in this order (``--no-loadscope-reorder``): the long modules start first and
    the many short ones even out the end, instead of one worker finishing a 2-minute DDP module while the others
    wait. The count of slow tests stands in for a module's length: in file order the benchmarks module (15 slow
    tests, 160 s) started last and the suite ended on it; replaying the junit times of two fresh-clone runs on
    three workers, the last worker ended 611 s and 606 s into the run ordered by count, 632 s and 623 s in file
    order, where ordering by the measured times themselves gives 612 s and 607 s.
    """

    def module(item) -> str:
        return item.nodeid.split("::")[0]  # loadfile's unit

    slow_tests = Counter(module(item) for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow_tests[module(item)])  # stable: file order otherwise
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return  # torch is not imported for a run without gpu tests
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (marked gpu); no CUDA device here")
    for item in gpu_tests:
        item.add_marker(skip)


def _live_non_daemon_children() -> set:
    import multiprocessing

    return {p for p in multiprocessing.active_children() if not p.daemon}  # active_children() also reaps


@pytest.fixture(autouse=True)
def _no_process_left_behind():
    """Fail the test that leaves a non-daemon multiprocessing child running: at exit Python joins every such
    child, so one that never ends hangs the whole pytest process after the last test (CI then times out)."""
    before = _live_non_daemon_children()
    yield
    left = _live_non_daemon_children() - before
    for proc in left:
        proc.join(timeout=10)
    alive = [proc for proc in left if proc.is_alive()]
    _kill(alive)
    assert not alive, f"the test left child processes running (killed now): {alive}"


def pytest_sessionfinish(session, exitstatus):
    """Whatever a test left running is killed, so the pytest process can exit (see above)."""
    _kill(_live_non_daemon_children())


def _kill(procs) -> None:
    for proc in procs:
        proc.kill()
        proc.join(timeout=10)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A tiny demo-style dataset (shapes, 4 classes): 24 train / 8 val images of 64 px."""
    from yolotrain.data import ensure_demo_dataset

    return ensure_demo_dataset(tmp_path_factory.mktemp("tiny") / "shapes", n_train=24, n_val=8, size=64)


@pytest.fixture(scope="session")
def trained_run(tiny_data, tmp_path_factory) -> Path:
    """A 2-epoch run on :func:`tiny_data`, shared by the tests that only read its outputs."""
    from yolotrain.cli import main

    project = tmp_path_factory.mktemp("runs")
    code = main(
        [
            "train",
            f"data={tiny_data}",
            "model=n",
            "epochs=2",
            "imgsz=64",
            "batch=8",
            "workers=0",
            f"project={project}",
            "name=exp",
            "verbose=false",
        ]
    )
    assert code == 0
    return project / "exp"


@pytest.fixture
def cfg_for(tiny_data, tmp_path):
    """A factory of resolved training configs on :func:`tiny_data`, runs under ``tmp_path``.

    ``cfg_for(epochs=2, val=False)``: scale n, 1 epoch at 64 px, batch 8, no workers, no plots, quiet,
    run folder ``tmp_path/exp``; keywords override any of these. A test module may override this fixture
    with its own defaults (``functools.partial(cfg_for, amp="off")``).
    """
    from yolotrain.config import resolve

    def make(**kw):
        base = dict(data=str(tiny_data), model="n", epochs=1, imgsz=64, batch=8, workers=0, project=str(tmp_path),
                    name="exp", verbose=False, plots=False)  # fmt: skip
        return resolve({**base, **kw})

    return make
