"""Preemption on its own: the save timer, signals turned into a save-then-exit, and the second Ctrl-C."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from yolotrain.checkpoint_file import load_checkpoint
from yolotrain.engine.preempt import Preemption
from yolotrain.errors import Preempted


def test_save_is_due_every_save_period_iterations():
    p = Preemption(save_period=3)
    assert p.agree(False, 2) == (False, False)
    assert p.agree(False, 3) == (False, True)
    p.saved(3)
    assert p.agree(False, 5) == (False, False) and p.agree(False, 6) == (False, True)
    assert p.agree(True, None) == (True, False)  # at an epoch's end the timer is not asked


def test_save_minutes(monkeypatch):
    import yolotrain.engine.preempt as preempt

    now = [1000.0]
    monkeypatch.setattr(preempt.time, "monotonic", lambda: now[0])
    p = Preemption(save_minutes=2)
    now[0] += 119
    assert p.agree(False, 1) == (False, False)
    now[0] += 2
    assert p.agree(False, 2) == (False, True)


@pytest.mark.slow
def test_sigterm_is_recorded_and_handlers_are_restored():
    p = Preemption()
    before = signal.getsignal(signal.SIGTERM)
    with p.handling_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        assert p.signal_received == signal.SIGTERM  # recorded, training goes on to the next step
        with pytest.raises(Preempted, match="stopped by SIGTERM at epoch 3; continue with resume=w/last.pt"):
            p.raise_if_signalled("at epoch 3", "w/last.pt")
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_second_signal_stops_at_once_but_a_repeat_within_a_second_is_the_same_event():
    p = Preemption()
    with p.handling_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # the process group's copy and the launcher's forwarded one
        assert p.signal_received == signal.SIGTERM
        p.signal_time -= 2.0  # two seconds later: a person or a scheduler insisting
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.slow
def test_warning_signal_saves_at_the_next_step_and_goes_on():
    p = Preemption(save_signal="usr1")
    with p.handling_signals():
        assert p.agree(False, 1) == (False, False)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert p.signal_received == 0  # not a stop
        assert p.agree(False, 2) == (False, True)
        p.saved(2)
        assert p.agree(False, 3) == (False, False)  # one save per warning


def test_requeue_calls_scontrol_with_the_job_id(tmp_path, monkeypatch, caplog):
    stub = tmp_path / "scontrol"
    stub.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls"}\n')
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    p = Preemption(save_signal="USR1", requeue=True)
    p.save_requested = True
    p.saved(5)
    p.save_requested = True
    p.saved(7)  # asked once per job
    assert (tmp_path / "calls").read_text() == "requeue 4242\n"
    monkeypatch.delenv("SLURM_JOB_ID")
    q = Preemption(save_signal="USR1", requeue=True)
    q.save_requested = True
    q.saved(1)
    assert "not running under SLURM" in caplog.text and not q.requeued


def test_no_signal_no_stop():
    """Without a stop signal nothing stops: not by itself, and not after the warning signal (which saves)."""
    p = Preemption(save_signal="usr1")
    with p.handling_signals():
        assert p.agree(False, 1) == (False, False)  # nothing asked: neither a stop nor a save
        p.raise_if_signalled("anywhere", "last.pt")  # returns; Preempted would fail the test
        assert p.signal_received == 0
        os.kill(os.getpid(), signal.SIGUSR1)  # the warning signal asks for a save, never for a stop
        assert p.signal_received == 0 and p.save_requested
        p.raise_if_signalled("anywhere", "last.pt")
        assert p.agree(False, 2) == (False, True)  # save now, keep training


# ---------------------------------------------------------------------------------------- through the CLI
HOOKS = Path(__file__).with_name("preempt_hooks.py")
ARGS = ["model=n", "epochs=2", "imgsz=64", "batch=4", "nbs=8", "workers=2", "seed=3", "val=false", "plots=false"]
# 24 images, batch 4: 6 iterations per epoch, an optimizer step every 2 (accumulate 2)


def train_cmd(data, project, name, *extra):
    return [sys.executable, "-m", "yolotrain", "train", f"data={data}", f"project={project}", f"name={name}",
            *ARGS, *extra]  # fmt: skip


def start(cmd, env):
    # a session of its own, as a batch job has; stdout/stderr kept for the checks
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip


def signal_job(proc, mark: Path, sig=signal.SIGTERM) -> None:
    """Wait for the hook's marker, then signal every process of the job (as SLURM does), loader workers too."""
    deadline = time.monotonic() + 300
    while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mark.exists(), proc.stderr.read()[-3000:] if proc.poll() is not None else "no marker"
    tree = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    assert len(tree) >= 3  # the trainer and its loader workers (and the DDP workers)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def finish(proc):
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out + err


def weights(path):
    state = load_checkpoint(path)
    return state, {**{f"model/{k}": v for k, v in state["model"].items()},
                   **{f"ema/{k}": v for k, v in state["ema"].items()}}  # fmt: skip


def assert_same_weights(a, b):
    (sa, wa), (sb, wb) = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    assert not [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert sa["ema_updates"] == sb["ema_updates"]


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory):
    project = tmp_path_factory.mktemp("ref")
    order = project / "order.txt"
    env = {**os.environ, "YT_ORDER": str(order)}
    hook = f"callbacks=on_train_batch_end={HOOKS}:record_order"
    done = subprocess.run(train_cmd(tiny_data, project, "ref", "verbose=false", hook), env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return project / "ref" / "weights" / "last.pt", order.read_text().splitlines()


@pytest.mark.slow
def test_sigterm_to_every_process_saves_once_exits_75_and_resumes_exactly(tiny_data, tmp_path, uninterrupted):
    mark, order = tmp_path / "mark", tmp_path / "order.txt"
    env = {**os.environ, "YT_AT": "9", "YT_MARK": str(mark), "YT_ORDER": str(order)}
    hooks = f"callbacks=[on_train_batch_end={HOOKS}:wait_for_stop_signal,on_train_batch_end={HOOKS}:record_order]"
    proc = start(train_cmd(tiny_data, tmp_path, "job", hooks), env)
    signal_job(proc, mark)
    code, log = finish(proc)
    assert code == 75 and "Traceback" not in log and "killed by signal" not in log, log[-3000:]
    last = tmp_path / "job" / "weights" / "last.pt"
    # the signal landed at batch 9 = epoch 2, iteration 2; the window ends after iteration 3: saved at 4 of 6
    assert load_checkpoint(last)["position"] == {"epoch": 1, "iteration": 4, "complete": False, "iters_per_epoch": 6}
    record = f"callbacks=on_train_batch_end={HOOKS}:record_order"
    resumed = subprocess.run(train_cmd(tiny_data, tmp_path, "job", f"resume={last}", record), env=env,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume: at epoch 2, iteration 4 of 6" in resumed.stderr
    assert_same_weights(last, uninterrupted[0])
    # the killed run's batches up to its save (10), then the resumed run's (2): the uninterrupted order
    assert order.read_text().splitlines() == uninterrupted[1]


@pytest.mark.slow
def test_warning_signal_saves_requeues_and_the_requeued_job_continues(tiny_data, tmp_path, uninterrupted):
    stub = tmp_path / "bin" / "scontrol"
    stub.parent.mkdir()
    # records its arguments, then does what SLURM does on requeue: stops the job (SIGTERM to the job's group)
    stub.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls"}\nkill -TERM 0\n')
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}", "SLURM_JOB_ID": "77", "YT_AT": "3"}
    env.pop("SLURM_RESTART_COUNT", None)
    cmd = train_cmd(tiny_data, tmp_path, "job", "save_signal=USR1", "requeue=true",
                    f"callbacks=on_train_batch_end={HOOKS}:send_warning_signal")  # fmt: skip
    code, log = finish(start(cmd, env))
    assert code == 75 and "Traceback" not in log, log[-3000:]
    assert "USR1 received: saving at the next optimizer step" in log
    assert (tmp_path / "calls").read_text() == "requeue 77\n"
    # USR1 at batch 3 (iteration 2): saved after the window ends (iteration 4), requeued; the stop signal the
    # requeue brings arrives during that save, so the job stops right there
    last = tmp_path / "job" / "weights" / "last.pt"
    assert load_checkpoint(last)["position"] == {"epoch": 0, "iteration": 4, "complete": False, "iters_per_epoch": 6}
    # SLURM starts the same command again, with SLURM_RESTART_COUNT set: it finds its run and continues
    again = subprocess.run(train_cmd(tiny_data, tmp_path, "job", "save_signal=USR1"),
                           env={**env, "SLURM_RESTART_COUNT": "1", "YT_AT": "0"}, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(SLURM restart 1)" in again.stderr and "resume: at epoch 1, iteration 4 of 6" in again.stderr
    assert_same_weights(last, uninterrupted[0])


@pytest.mark.slow
def test_ddp_sigterm_to_every_process_saves_once_and_resumes_exactly(tiny_data, tmp_path):
    ddp = ["nproc=2", "workers=1"]
    ref = subprocess.run(train_cmd(tiny_data, tmp_path, "ref", *ddp), capture_output=True, text=True, timeout=900)
    assert ref.returncode == 0, ref.stderr[-3000:]
    mark = tmp_path / "mark"
    env = {**os.environ, "YT_AT": "9", "YT_MARK": str(mark)}
    proc = start(
        train_cmd(tiny_data, tmp_path, "job", *ddp, f"callbacks=on_train_batch_end={HOOKS}:wait_for_stop_signal"), env
    )
    signal_job(proc, mark)
    code, log = finish(proc)
    assert code == 75 and "Traceback" not in log and "killed by signal" not in log, log[-3000:]
    assert log.count("preempted: [rank") == 2  # every rank saved its part and exited 75
    last = tmp_path / "job" / "weights" / "last.pt"
    assert load_checkpoint(last)["position"] == {"epoch": 1, "iteration": 4, "complete": False, "iters_per_epoch": 6}
    resumed = subprocess.run(train_cmd(tiny_data, tmp_path, "job", *ddp, f"resume={last}"), capture_output=True,
                             text=True, timeout=900)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume: at epoch 2, iteration 4 of 6" in resumed.stderr
    assert_same_weights(last, tmp_path / "ref" / "weights" / "last.pt")


@pytest.mark.slow
def test_a_loader_worker_killed_otherwise_is_a_one_line_error(tiny_data, tmp_path):
    env = {**os.environ, "YT_AT": "2"}
    cmd = train_cmd(tiny_data, tmp_path, "job", "verbose=false",
                    f"callbacks=on_train_batch_end={HOOKS}:kill_a_loader_worker")  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "a data loader worker died: DataLoader worker (pid" in errors[0], errors
