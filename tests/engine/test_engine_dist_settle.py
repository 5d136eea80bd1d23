"""distributed.settle(): at the normal end of a run, gloo's worker threads let go of every collective before
the interpreter shuts down (a release that comes later aborts the process; see settle's docstring)."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from yolotrain.config import resolve
from yolotrain.engine import distributed as dist
from yolotrain.engine.trainer import Trainer
from yolotrain.errors import Preempted, TrainingError

WORKER = textwrap.dedent(
    """
    import json, sys, time
    import torch
    import torch.distributed as td
    from yolotrain.engine import distributed as dist

    td.init_process_group("gloo")
    seconds, uses, sums = 0.0, [], []
    for k in range(100):
        t = torch.full((1000,), float(k))  # held here, so its use count can be read
        td.all_reduce(t)  # right after this, a gloo worker still holds t about one time in three
        t0 = time.perf_counter()
        dist.settle()
        seconds = max(seconds, time.perf_counter() - t0)
        uses.append(t._use_count())
        sums.append(t[0].item())
    dist.cleanup()
    print(json.dumps({"seconds": seconds, "uses": uses, "sums": sums, "initialized": dist.is_initialized()}))
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_settle_returns_once_every_collective_is_released():
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2"}
        env |= {"RANK": str(rank), "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        cmd = [sys.executable, "-c", WORKER]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        r = json.loads(out.strip().splitlines()[-1])
        # no worker thread holds t any more (without settle: 4 about 1 in 3; with a settle that waited only for
        # its own collectives, 10 in 300 under load, as in a CI failure)
        assert r["uses"] == [1] * 100
        assert r["sums"] == [2.0 * k for k in range(100)] and not r["initialized"]  # summed; the group is gone
        assert r["seconds"] < 5.0  # each settle returned on the release, not on its 10 s limit


@pytest.mark.parametrize(
    "raised, together",
    [(None, True), (Preempted("stopped by SIGTERM after epoch 1"), True), (TrainingError("boom"), False)],
)
def test_trainer_settles_only_when_all_ranks_end_at_one_point(tiny_data, tmp_path, monkeypatch, raised, together):
    # Normal end and an agreed preemption stop: every rank is there, settle's collectives meet. Any other
    # error: the other ranks may never join a collective, so no settle (it would hang until dist_timeout).
    calls = []
    monkeypatch.setattr(dist, "setup", lambda device, timeout: True)  # as if fit() had created a group
    monkeypatch.setattr(dist, "cleanup", lambda together=False: calls.append(together))
    cfg = resolve(dict(data=str(tiny_data), model="n", epochs=1, imgsz=64, batch=8, workers=0, val=False,
                       plots=False, verbose=False, amp="off", project=str(tmp_path), name="exp"))  # fmt: skip
    trainer = Trainer(cfg)
    if raised is not None:

        def fail(t):
            raise raised

        trainer.callbacks.add("on_train_epoch_end", fail)
        with pytest.raises(type(raised)):
            trainer.fit()
    else:
        trainer.fit()
    assert calls == [together]
