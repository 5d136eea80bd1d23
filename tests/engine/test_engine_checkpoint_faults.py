"""Saves under faults (engine/checkpoint.py): a full disk during any save is one error line, the files written
before stay intact, a checkpoint names a best only once best.pt is on disk, and under DDP every rank stops
with the same line instead of waiting for rank 0 in a collective.

The full disk is real where the machine allows it (a small tmpfs mounted for the test, as root); the
injected ENOSPC covers each write step everywhere.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from yolotrain import checkpoint_file
from yolotrain.checkpoint_file import load_checkpoint
from yolotrain.engine import checkpoint as ckpt
from yolotrain.engine.checkpoint import Checkpointer
from yolotrain.errors import CheckpointError
from yolotrain.utils import files

SRC = Path(__file__).resolve().parents[2] / "src"


class Progress:
    """A part holding a tensor of ``nbytes`` and the best epoch it records."""

    KEYS = ("weights", "best_epoch")

    def __init__(self, nbytes: int) -> None:
        self.weights = torch.zeros(nbytes // 4)
        self.best_epoch = -1

    def state_dict(self):
        return {"weights": self.weights, "best_epoch": self.best_epoch}

    def load_state_dict(self, state):
        self.weights, self.best_epoch = state["weights"], state["best_epoch"]


def checkpointer(wdir: Path, nbytes: int = 4096) -> tuple[Checkpointer, Progress]:
    part = Progress(nbytes)
    return Checkpointer(wdir, {"progress": part}, {"model_cfg": {"scale": "n", "nc": 1}}), part


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "the checkpoints written before are intact" in msg, msg
    return msg


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 1 MiB filesystem (root only; skipped elsewhere, where the injected faults below still run)."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root); the injected-ENOSPC tests cover the same paths")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_real_full_disk_keeps_last_and_records_no_best_it_lacks(small_tmpfs):
    cp, part = checkpointer(small_tmpfs / "weights", nbytes=400_000)
    part.best_epoch = 0
    cp.save(["last.pt", "best.pt"])  # 0.8 MB of the 1 MiB: no room for a third copy
    part.best_epoch, part.weights = 1, torch.ones_like(part.weights)
    with pytest.raises(CheckpointError) as e:
        cp.save(["last.pt", "best.pt"])  # best.pt (written first) no longer fits
    msg = one_line(e)
    assert "best.pt" in msg and "No space left on device" in msg and "free some space" in msg
    last = load_checkpoint(small_tmpfs / "weights" / "last.pt")
    best = load_checkpoint(small_tmpfs / "weights" / "best.pt")
    assert last["best_epoch"] == best["best_epoch"] == 0 and float(last["weights"].sum()) == 0.0
    assert sorted(p.name for p in (small_tmpfs / "weights").iterdir()) == ["best.pt", "last.pt"]  # no temporary


@pytest.mark.parametrize("failing", ["best.pt", "epoch3.pt", "last.pt"])
@pytest.mark.parametrize("step", ["write", "fsync", "replace"])
def test_injected_enospc_at_each_write_step(tmp_path, monkeypatch, failing, step):
    cp, part = checkpointer(tmp_path / "weights")
    part.best_epoch = 0
    cp.save(["last.pt", "best.pt", "epoch3.pt"])
    part.best_epoch = 1
    real = {"fsync": os.fsync, "replace": os.replace}
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fails(target: str) -> bool:
        return Path(target).name.startswith(f".{failing}.") or Path(target).name == failing

    def fake_write(f, state):  # the payload write, inside atomic_write
        if fails(_path_of(f.fileno())):
            raise full
        f.write(state)

    if step == "write":
        orig = files.atomic_write
        monkeypatch.setattr(
            checkpoint_file, "atomic_write", lambda path, write: orig(path, lambda f: fake_write(f, _captured(write)))
        )
    elif step == "fsync":
        monkeypatch.setattr(files.os, "fsync", lambda fd: _raise(full) if fails(_path_of(fd)) else real["fsync"](fd))
    else:
        monkeypatch.setattr(files.os, "replace", lambda a, b: _raise(full) if fails(b) else real["replace"](a, b))
    with pytest.raises(CheckpointError) as e:
        cp.save(["last.pt", "best.pt", "epoch3.pt"])
    assert failing in one_line(e)
    wdir = tmp_path / "weights"
    assert sorted(p.name for p in wdir.iterdir()) == ["best.pt", "epoch3.pt", "last.pt"]  # no temporary left
    # last.pt is written last: whatever failed, it still names the best that best.pt holds
    assert load_checkpoint(wdir / "last.pt")["best_epoch"] == 0
    assert load_checkpoint(wdir / "best.pt")["best_epoch"] in ((0,) if failing == "best.pt" else (1,))


def _captured(write) -> bytes:
    import io

    buf = io.BytesIO()
    write(buf)
    return buf.getvalue()


def _path_of(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def _raise(e: Exception):
    raise e


def test_failure_message_without_a_last_checkpoint(tmp_path):
    msg = ckpt.write_failure(tmp_path / "last.pt", OSError(errno.EIO, "Input/output error"), tmp_path / "last.pt")
    assert msg.endswith("intact; fix that") and "errno 5" in msg


DDP_SCRIPT = textwrap.dedent(
    """
    import errno, json, os, sys
    import torch.distributed as dist
    sys.path.insert(0, sys.argv[2])
    from test_engine_checkpoint_faults import checkpointer
    from yolotrain.engine import checkpoint as ckpt
    from yolotrain.errors import CheckpointError
    from pathlib import Path
    dist.init_process_group("gloo", timeout=__import__("datetime").timedelta(seconds=60))
    rank = dist.get_rank()
    cp, part = checkpointer(Path(sys.argv[1]) / "weights")
    if rank == 0:
        def full(data, path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        ckpt.write_checkpoint_bytes = full
    try:
        cp.save(["last.pt"])
        out = "saved"
    except CheckpointError as e:
        out = str(e)
    dist.barrier()  # both ranks are still in step after the failed save
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
        json.dump(out, f)
    dist.destroy_process_group()
    """
)


@pytest.mark.slow
def test_ddp_every_rank_stops_with_rank0s_line(tmp_path):
    script = tmp_path / "ddp_save.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    r = subprocess.run([*cmd, str(tmp_path), str(Path(__file__).parent)], env=env, capture_output=True, text=True,
                       timeout=240)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert lines[0] == lines[1] and "cannot write checkpoint" in lines[0] and "No space left on device" in lines[0]


def test_one_serialisation_for_every_name(tmp_path, monkeypatch):
    """best.pt and last.pt of one save are the same bytes, made once (a model-n state is 48.6 MB of them)."""
    cp, _ = checkpointer(tmp_path / "weights")
    made = []
    real = ckpt.checkpoint_bytes
    monkeypatch.setattr(ckpt, "checkpoint_bytes", lambda state: made.append(1) or real(state))
    cp.save(["last.pt", "best.pt"])
    assert len(made) == 1
    wdir = tmp_path / "weights"
    assert (wdir / "best.pt").read_bytes() == (wdir / "last.pt").read_bytes()
    assert load_checkpoint(wdir / "best.pt")["best_epoch"] == load_checkpoint(wdir / "last.pt")["best_epoch"]
