"""resume.py: killed runs continue bit-exactly, SIGTERM exits 75, settings are checked, requeued jobs continue."""

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from state_helpers import flat_tensors

from yolotrain.checkpoint_file import load_checkpoint
from yolotrain.cli import main
from yolotrain.config import resolve
from yolotrain.engine.resume import ELASTIC_MARKER, elastic_resume, mark_elastic_run

ARGS = [
    "model=n",
    "epochs=3",
    "imgsz=64",
    "batch=4",
    "nbs=8",
    "workers=0",
    "save_period=1",
    "verbose=false",
    "plots=false",
    "seed=3",
    "close_mosaic=1",
]  # accumulate 2: saves happen only at optimizer-step boundaries

KILLER = textwrap.dedent("""
    import os, signal, sys
    from yolotrain.config import parse_cli_args, resolve
    from yolotrain.errors import Preempted
    from yolotrain.utils.logging import setup_logging
    from yolotrain.utils.startup import start_program
    setup_logging(False)
    event, at, sig = sys.argv[1], int(sys.argv[2]), getattr(signal, sys.argv[3])
    cfg = resolve(parse_cli_args(sys.argv[4:]))
    start_program("train", cfg)  # imports as `yolotrain train` does
    from yolotrain.engine.trainer import Trainer
    t = Trainer(cfg)
    count = [0]
    def hook(tr):
        count[0] += 1
        if count[0] == at:
            os.kill(os.getpid(), sig)
    t.callbacks.add(event, hook)
    try:
        t.fit()
    except Preempted:
        sys.exit(75)
""")


# records every trained batch (epoch, iteration, image indices) to $YT_RECORD; given on the command line
RECORD = f"callbacks=on_train_batch_end={Path(__file__).with_name('resume_callbacks.py')}:record_batch"


def run_killed(tiny_data, project, event, at, sig="SIGKILL", record=None):
    cmd = [sys.executable, "-c", KILLER, event, str(at), sig, f"data={tiny_data}", f"project={project}", *ARGS]
    env = {**os.environ, "YT_RECORD": str(record)} if record else None
    return subprocess.run(cmd + ([RECORD] if record else []), capture_output=True, text=True, timeout=300, env=env)


def recorded(path):
    """[(epoch, iteration, indices)] from a record_batch file."""
    rows = []
    for line in Path(path).read_text().splitlines():
        epoch, it, idx = line.split(" ", 2)
        rows.append((int(epoch), int(it), idx))
    return rows


def main_recording(args, record):
    os.environ["YT_RECORD"] = str(record)
    try:
        return main([*args, RECORD])
    finally:
        del os.environ["YT_RECORD"]


def flat(state):
    return flat_tensors(state, ("model", "ema", "optimizer", "precision"))


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory):
    """The uninterrupted run's last.pt, with its batch order under ``"batches"``."""
    project = tmp_path_factory.mktemp("ref")
    assert main_recording(["train", f"data={tiny_data}", f"project={project}", *ARGS], project / "batches.txt") == 0
    state = dict(load_checkpoint(project / "exp" / "weights" / "last.pt"))  # a copy the batch order is added to
    state["batches"] = recorded(project / "batches.txt")
    assert len(state["batches"]) == 3 * 6  # 24 images / batch 4, three epochs
    return state


def assert_identical(a, b):
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    diff = [k for k in fa if not torch.equal(fa[k], fb[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"
    assert (
        a["ema_updates"] == b["ema_updates"] and a["history"][-1]["metrics/mAP50"] == b["history"][-1]["metrics/mAP50"]
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "event,at",
    [
        ("on_train_batch_end", random.Random(0).randint(8, 12)),  # mid-epoch, in epoch 2 of 3
        ("on_fit_epoch_end", 1),  # right after the epoch-1 checkpoint
        ("on_train_epoch_end", 2),  # before epoch 2's validation and save
    ],
)
def test_sigkill_then_resume_is_bit_identical(tiny_data, tmp_path, reference, event, at):
    proc = run_killed(tiny_data, tmp_path, event, at, record=tmp_path / "killed.txt")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    last = tmp_path / "exp" / "weights" / "last.pt"
    assert last.is_file()
    pos = load_checkpoint(last)["position"]
    # where training must continue: the batch after the last one the checkpoint holds
    done = pos["complete"] or pos["iteration"] >= pos["iters_per_epoch"]
    start = (pos["epoch"] + 1, 0) if done else (pos["epoch"], pos["iteration"])
    ref = reference["batches"]
    k = [b[:2] for b in ref].index(start)
    assert k > 0  # the checkpoint is not at the very start, so a restart from scratch would show
    killed = recorded(tmp_path / "killed.txt")
    assert killed[:k] == ref[:k]  # the killed run had trained the same batches up to the checkpoint
    assert main_recording(["train", f"resume={last}"], tmp_path / "resumed.txt") == 0
    resumed = recorded(tmp_path / "resumed.txt")
    assert resumed[0][:2] == start  # continued at the checkpoint's iteration, not at iteration 0
    assert resumed == ref[k:]  # and the data order from there equals the uninterrupted run's
    assert_identical(load_checkpoint(last), reference)


@pytest.mark.slow
def test_sigterm_saves_and_exits_75_then_resume_true(tiny_data, tmp_path, reference, monkeypatch):
    proc = run_killed(tiny_data, tmp_path, "on_train_batch_end", 9, "SIGTERM")
    assert proc.returncode == 75, proc.stderr[-2000:]
    assert "SIGTERM received" in proc.stderr
    state = load_checkpoint(tmp_path / "exp" / "weights" / "last.pt")
    assert state["position"]["complete"] is False
    monkeypatch.chdir(tmp_path)
    assert main(["train", "resume=true", f"project={tmp_path}"]) == 0
    assert_identical(load_checkpoint(tmp_path / "exp" / "weights" / "last.pt"), reference)


@pytest.mark.slow
def test_finished_run_and_extension(tiny_data, tmp_path, capsys):
    base = [
        "train",
        f"data={tiny_data}",
        f"project={tmp_path}",
        "model=n",
        "epochs=1",
        "imgsz=64",
        "batch=8",
        "workers=0",
        "verbose=false",
        "plots=false",
    ]
    assert main(base) == 0
    last = tmp_path / "exp" / "weights" / "last.pt"
    assert main(["train", f"resume={last}"]) == 0
    assert "already finished" in capsys.readouterr().err
    assert main(["train", f"resume={last}", "epochs=2"]) == 0
    state = load_checkpoint(last)
    assert state["position"]["epoch"] == 1 and len(state["history"]) == 2
    rows = (tmp_path / "exp" / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + one row per epoch, no duplicates
    assert not (tmp_path / "exp2").exists()  # the resumed run continues in its own folder


@pytest.mark.slow
def test_incompatible_changes_are_refused(tiny_data, tmp_path, capsys):
    assert (
        main(
            [
                "train",
                f"data={tiny_data}",
                f"project={tmp_path}",
                "epochs=1",
                "imgsz=64",
                "batch=8",
                "workers=0",
                "verbose=false",
                "plots=false",
            ]
        )
        == 0
    )
    last = tmp_path / "exp" / "weights" / "last.pt"
    capsys.readouterr()
    assert main(["train", f"resume={last}", "imgsz=128"]) == 2
    assert "imgsz=128" in capsys.readouterr().err
    assert main(["train", f"resume={last}", "data=other.yaml"]) == 2
    assert "data=" in capsys.readouterr().err
    assert main(["train", f"resume={last}", "epochs=0"]) == 2  # out of range
    assert main(["train", f"resume={tmp_path / 'nope.pt'}"]) == 2
    assert main(["train", "resume=true", f"project={tmp_path / 'empty'}"]) == 2


def test_tampered_checkpoint_is_refused(tiny_data, tmp_path):
    from yolotrain.checkpoint_file import save_checkpoint
    from yolotrain.errors import CheckpointError

    path = tmp_path / "c.pt"
    save_checkpoint({"w": torch.ones(3)}, path)
    state = torch.load(path, weights_only=True)
    state["w"][0] = 2.0  # changed content, old digest
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(path)


@pytest.mark.slow
def test_mid_epoch_resume_refuses_a_dataset_with_another_iteration_count(tiny_data, tmp_path, capsys):
    """What "a dataset whose size changed is refused" means exactly: a checkpoint written mid-epoch, and
    a dataset that now gives another number of iterations per epoch."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data.parent, data)
    proc = run_killed(data / "data.yaml", tmp_path / "runs", "on_train_batch_end", 3, "SIGTERM")
    assert proc.returncode == 75, proc.stderr[-2000:]
    last = tmp_path / "runs" / "exp" / "weights" / "last.pt"
    assert load_checkpoint(last)["position"] == {"epoch": 0, "iteration": 4, "complete": False, "iters_per_epoch": 6}
    for img in sorted((data / "images" / "train").iterdir())[:8]:  # 24 -> 16 images: 4 iterations of 4
        img.unlink()
    capsys.readouterr()
    assert main(["train", f"resume={last}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "error: cannot resume: the run had 6 iterations per epoch, the data now gives 4 (images were added or removed)"
    )


def test_requeued_slurm_job_continues_its_own_run(tmp_path, monkeypatch):
    for var in ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    mine, other = tmp_path / "exp3", tmp_path / "exp7"
    for folder in (mine, other):
        (folder / "weights").mkdir(parents=True)
        (folder / "weights" / "last.pt").write_bytes(b"x")
    mark_elastic_run(mine)
    (other / ELASTIC_MARKER).write_text("slurm:999")  # another job's run
    cfg = resolve({"data": "d.yaml", "project": str(tmp_path)})
    assert elastic_resume(cfg).resume == ""  # the first start: nothing to continue
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # SLURM sets it on a requeued job
    assert elastic_resume(cfg).resume == str(mine / "weights" / "last.pt")
    monkeypatch.setenv("SLURM_JOB_ID", "5555")
    assert elastic_resume(cfg).resume == ""  # a job with no run of its own starts fresh


@pytest.mark.parametrize(
    "batch, world, says",
    [
        (8, 3, "setting 'batch'=8 does not divide over 3 processes; it trains on 1, 2 or 4 processes"),
        (12, 8, "does not divide over 8 processes; it trains on 1, 2, 3, 4 or 6 processes"),
        (8, 8, "gives 1 image per process over 8 processes; BatchNorm needs at least 2; it trains on 1, 2 or 4"),
        (3, 2, "setting 'batch'=3 does not divide over 2 processes; it trains on 1 process"),
    ],
)
def test_a_batch_that_does_not_split_is_refused_with_the_counts_that_work(batch, world, says):
    from yolotrain.engine.build import per_process_batch
    from yolotrain.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        per_process_batch(batch, world)
    assert says in str(e.value)
    assert per_process_batch(12, 6) == 2 and per_process_batch(12, 1) == 12


@pytest.mark.parametrize(
    "saved, now, sync_bn, says",
    [
        (2, 1, False, "the per-process batch changed from 4 to 8 images"),
        (1, 4, False, "the per-process batch changed from 8 to 2 images"),
        (2, 1, True, "BatchNorm statistics stay over the global batch (sync_bn)"),
        (2, 2, False, ""),
    ],
)
def test_resume_on_another_number_of_processes_says_what_changes(saved, now, sync_bn, says, caplog):
    from yolotrain.engine.resume import note_world_change

    state = {"rng_ranks": [{}] * saved}
    with caplog.at_level("INFO", logger="yolotrain"):
        note_world_change(state, now, 8, sync_bn)
    assert says in caplog.text if says else caplog.text == ""
    if says and not sync_bn:
        assert "BatchNorm statistics are computed per process, so they will differ" in caplog.text
