"""Distributed training on CPU with gloo: torchrun workers started by ``nproc=2`` (and by hand for two nodes).

One module-scoped pair of runs (1 process vs 2 processes, same global batch) backs several checks.
"""

import csv
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from yolotrain.checkpoint_file import load_checkpoint

CALLBACKS = Path(__file__).with_name("ddp_callbacks.py")
# SGD: Adam's first steps are ~lr*sign(grad), which turns float noise in near-zero gradients into lr-sized
# differences; with SGD the 1- and 2-process runs must agree to float precision. K = 2 optimizer steps at the full
# lr (no warmup): on an untrained model the target assignment flips on near-ties, so float-level differences
# (summation order of a batch of 4 vs 8) grow about tenfold per step after that (measured: 6e-7, 3e-6, 6e-5, 6e-4).
COMMON = [
    "epochs=1",
    "imgsz=64",
    "batch=8",
    "nbs=8",
    "workers=0",
    "amp=off",
    "optimizer=SGD",
    "verbose=false",
    "exist_ok=true",
    "save_period=1",
    "warmup_epochs=0",
]


def run_cli(args, out: Path, timeout=300):
    # one thread per process in both runs (torchrun's default for its workers): the same conv kernels
    env = {**os.environ, "YT_TEST_OUT": str(out), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return subprocess.run(
        [sys.executable, "-m", "yolotrain", "train", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory):
    from yolotrain.data import ensure_demo_dataset

    # 7 validation images: the 2-rank sampler pads to 8, so one image is evaluated twice and must count once
    return ensure_demo_dataset(tmp_path_factory.mktemp("ddp") / "shapes", n_train=16, n_val=7, size=64)


@pytest.fixture(scope="module")
def ddp_runs(ddp_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp_runs")
    runs = {}
    for n in (1, 2):
        out = root / f"out{n}"
        out.mkdir()
        args = [
            f"data={ddp_data}",
            *COMMON,
            f"project={root}",
            f"name=p{n}",
            f"callbacks={CALLBACKS}:on_train_batch_end",
        ]
        if n == 2:
            args += ["nproc=2", "sync_bn=true"]  # draws the plots (rank 0 alone, checked below)
        else:
            args += ["plots=false"]  # no check reads the 1-process run's plots
        t0 = time.time()
        r = run_cli(args, out)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[n] = {"dir": root / f"p{n}", "out": out, "proc": r, "seconds": time.time() - t0}
    return runs


@pytest.mark.slow
def test_two_processes_match_one_process(ddp_runs):
    a = load_checkpoint(ddp_runs[1]["dir"] / "weights" / "last.pt")
    b = load_checkpoint(ddp_runs[2]["dir"] / "weights" / "last.pt")
    assert a["position"] == b["position"]
    for key in ("model", "ema"):
        for name, ta in a[key].items():
            tb = b[key][name]
            if ta.is_floating_point():
                torch.testing.assert_close(tb, ta, rtol=1e-4, atol=2e-5, msg=f"{key}.{name}")
            else:
                assert torch.equal(ta, tb), f"{key}.{name}"
    # each rank saw half of every global batch, and together exactly the images of the 1-process batch
    one = (ddp_runs[1]["out"] / "batches_rank0.txt").read_text().splitlines()
    r0 = (ddp_runs[2]["out"] / "batches_rank0.txt").read_text().splitlines()
    r1 = (ddp_runs[2]["out"] / "batches_rank1.txt").read_text().splitlines()
    assert len(one) == len(r0) == len(r1) == 2  # 16 images / batch 8; the user callback ran on both ranks
    for line, x, y in zip(one, r0, r1):
        assert sorted(eval(line.split(" ", 1)[1])) == sorted(eval(x.split(" ", 1)[1]) + eval(y.split(" ", 1)[1]))
        assert len(eval(x.split(" ", 1)[1])) == 4


@pytest.mark.slow
def test_sharded_validation_equals_single_process(ddp_runs):
    def last_row(run):
        with (run["dir"] / "results.csv").open() as f:
            return list(csv.DictReader(f))[-1]

    a, b = last_row(ddp_runs[1]), last_row(ddp_runs[2])
    for key in ("metrics/mAP50", "metrics/mAP50-95", "metrics/precision", "metrics/recall"):
        assert abs(float(a[key]) - float(b[key])) < 2e-3, key
    best = load_checkpoint(ddp_runs[2]["dir"] / "weights" / "last.pt")["best_metrics"]
    assert best["images"] == 7  # the padded duplicate counted once


@pytest.mark.slow
def test_rank0_alone_writes_outputs(ddp_runs):
    d = ddp_runs[2]["dir"]
    assert sorted(p.name for p in d.parent.iterdir() if p.name.startswith("p2")) == ["p2"]
    assert (d / "weights" / "last.pt").is_file() and (d / "args.yaml").is_file()
    assert (d / "results.png").is_file() and (d / "labels.jpg").is_file()  # plots are drawn, by rank 0 alone
    rows = list(csv.DictReader((d / "results.csv").open()))
    assert [r["epoch"] for r in rows] == ["1"]  # not written twice
    ckpt = load_checkpoint(d / "weights" / "last.pt")
    assert len(ckpt["rng_ranks"]) == 2  # every rank's RNG state is kept
    assert ddp_runs[2]["proc"].stdout.count("run folder:") == 1


@pytest.mark.slow
def test_every_training_process_starts_with_its_imports_frozen(ddp_runs):
    """`yolotrain train` and each worker it launches import torch with the collector paused, then freeze what is
    alive (yolotrain/utils/startup.py), and collect as usual while training."""
    for run, ranks in ((ddp_runs[1], (0,)), (ddp_runs[2], (0, 1))):
        for rank in ranks:
            frozen, enabled = (run["out"] / f"gc_rank{rank}.txt").read_text().split()
            # torch and torch._dynamo alone leave ~500,000 objects alive; a process that froze nothing shows 0
            assert int(frozen) > 200_000 and enabled == "True", (run["dir"].name, rank, frozen, enabled)


@pytest.mark.slow
def test_elastic_restart_resumes_and_matches(ddp_runs, ddp_data, tmp_path):
    """SIGKILL one of two workers mid-epoch; torchrun restarts both, they resume from last.pt by themselves."""
    out = tmp_path / "out"
    out.mkdir()
    r = run_cli(
        [
            f"data={ddp_data}",
            *COMMON,
            "plots=false",
            f"project={tmp_path}",
            "name=el",
            "nproc=2",
            "sync_bn=true",
            "max_restarts=1",
            f"callbacks=on_train_batch_end={CALLBACKS}:kill_rank1_once",
        ],
        out,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "killed").exists()
    assert "resume=auto: continuing" in r.stderr
    a = load_checkpoint(ddp_runs[2]["dir"] / "weights" / "last.pt")
    b = load_checkpoint(tmp_path / "el" / "weights" / "last.pt")
    for name, ta in a["model"].items():
        assert torch.equal(ta, b["model"][name]), name  # bit-identical to the uninterrupted 2-process run
    for name, ta in a["ema"].items():
        assert torch.equal(ta, b["ema"][name]), name


# Imports the workers' fork server preload in a fresh interpreter (the launcher gives the server one thread for
# OpenMP/BLAS), with torch's CUDA queries wrapped: a fork of a process that has asked the CUDA driver anything
# cannot use CUDA, and forking a process that runs other threads is unsafe.
PRELOAD_PROBE = """
import torch, torch.cuda
asked = []
def wrap(owner, name):
    real = getattr(owner, name)
    setattr(owner, name, lambda *a, **k: asked.append(name) or real(*a, **k))
for owner, name in [(torch._C, "_cuda_getDeviceCount"), (torch._C, "_cuda_init"), (torch.cuda, "_lazy_init"),
                    (torch.cuda, "is_available"), (torch.cuda, "device_count"), (torch.cuda, "init")]:
    wrap(owner, name)
import yolotrain.engine.forkserver_preload
import sys
threads = [line.split()[1] for line in open("/proc/self/status") if line.startswith("Threads:")][0]
print(sorted(set(asked)), threads, "torch._dynamo" in sys.modules, torch.cuda.is_initialized())
"""


@pytest.mark.slow
def test_fork_server_preload_asks_cuda_nothing_and_runs_one_thread():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PRELOAD_PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["[]", "1", "True", "False"]


@pytest.mark.slow
def test_failure_on_one_rank_ends_all(ddp_data, tmp_path):
    t0 = time.time()
    r = run_cli(
        [
            f"data={ddp_data}",
            *COMMON,
            "plots=false",
            f"project={tmp_path}",
            "name=f",
            "nproc=2",
            f"callbacks=on_train_batch_start={CALLBACKS}:fail_on_rank1",
            "dist_timeout=5",
        ],
        tmp_path,
    )
    assert r.returncode != 0
    # the worker's traceback as the interpreter prints it (torch's hook marks the rank), and not the agent's own
    assert "[rank1]: RuntimeError: injected failure on rank 1" in r.stderr
    assert "ProcessExitedException" not in r.stderr
    assert "distributed training with 2 processes failed" in r.stderr
    assert time.time() - t0 < 120  # ended by torchrun, not by the collective timeout


@pytest.mark.parametrize("batch, words", [(7, "does not divide"), (2, "at least 2")])
def test_bad_global_batch_is_refused(ddp_data, tmp_path, batch, words, capsys):
    from yolotrain.cli import main

    # the command's own entry point, in this process: the refusal comes before any worker is started
    code = main(["train", f"data={ddp_data}", "epochs=1", "imgsz=64", f"batch={batch}", "workers=0", "nproc=2",
                 f"project={tmp_path}"])  # fmt: skip
    assert code != 0
    err = capsys.readouterr().err
    assert f"setting 'batch'={batch}" in err and words in err
    assert not list(tmp_path.iterdir())  # nothing started, nothing written


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_with_c10d_rendezvous(ddp_data, tmp_path):
    """Two torchrun 'machines' on this host (--nnodes=2, c10d rendezvous on 127.0.0.1), one epoch."""
    port = _free_port()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = []
    for _node in range(2):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc_per_node=1",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint=127.0.0.1:{port}",
            "--rdzv_id=yt-test",
            "-m",
            "yolotrain",
            "train",
            f"data={ddp_data}",
            "epochs=1",
            "imgsz=64",
            "batch=8",
            "workers=0",
            "verbose=false",
            "plots=false",
            f"project={tmp_path}",
            "name=mn",
        ]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][1][-2000:] + outs[1][1][-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mn"]  # one run folder, written by global rank 0
    assert (tmp_path / "mn" / "weights" / "last.pt").is_file()
    assert sum(o.count("run folder:") for o, _ in outs) == 1
    assert load_checkpoint(tmp_path / "mn" / "weights" / "last.pt")["position"]["epoch"] == 0


@pytest.mark.slow
def test_api_refuses_callback_workers_cannot_import(tmp_path):
    from yolotrain import Detector
    from yolotrain.errors import ConfigError

    det = Detector("n")
    det.add_callback("on_train_end", lambda trainer: None)
    with pytest.raises(ConfigError, match="cannot be sent to the training processes"):
        det.train(data=str(tmp_path / "none.yaml"), nproc=2, project=str(tmp_path))


@pytest.mark.slow
def test_oom_on_one_rank_switches_all_and_sizes_agree(ddp_data, tmp_path):
    """An OOM injected on rank 1 only: both ranks switch to micro-batches together; multi-scale sizes agree."""
    out = tmp_path / "out"
    out.mkdir()
    env_args = [
        f"data={ddp_data}",
        "epochs=2",
        "imgsz=64",
        "batch=8",
        "nbs=8",
        "workers=0",
        "amp=off",
        "verbose=false",
        "plots=false",
        "nproc=2",
        f"project={tmp_path}",
        "name=oom",
        "multi_scale=0.5",
        f"callbacks=on_train_batch_end={CALLBACKS}:record_size",
    ]
    os.environ["YOLOTRAIN_INJECT_OOM"], os.environ["YOLOTRAIN_INJECT_OOM_RANK"] = "1:2", "1"
    try:
        r = run_cli(env_args, out)
    finally:
        del os.environ["YOLOTRAIN_INJECT_OOM"], os.environ["YOLOTRAIN_INJECT_OOM_RANK"]
    assert r.returncode == 0, r.stderr[-3000:]
    assert "out of memory at epoch 1, iteration 1 (on another rank): retrying with 2 micro-batches" in r.stderr
    assert "[rank 1] out of memory at epoch 1, iteration 1 (OutOfMemoryError)" in r.stderr
    assert load_checkpoint(tmp_path / "oom" / "weights" / "last.pt")["phase"]["micro_batches"] == 2
    s0 = (out / "sizes_rank0.txt").read_text().splitlines()
    s1 = (out / "sizes_rank1.txt").read_text().splitlines()
    # every rank trains at the same size at every iteration, and the size does vary: with imgsz=64,
    # multi_scale=0.5 and stride 32 the sizes allowed are 32, 64 and 96 (64 * (1 +/- 0.5), stride-rounded)
    assert s0 == s1 and len(s0) == 4
    sizes = [tuple(int(v) for v in line.split(" ", 2)[2].strip("()").split(",")) for line in s0]
    assert all(h == w and h in (32, 64, 96) for h, w in sizes), sizes
    assert len(set(sizes)) >= 2, sizes


@pytest.mark.slow
def test_sigterm_to_launcher_saves_and_exits_75(ddp_data, tmp_path):
    """SIGTERM to `yolotrain train nproc=2`: the workers save last.pt mid-epoch, the command exits 75, resume works."""
    import signal

    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "YT_TEST_OUT": str(out), "PYTHONWARNINGS": "ignore"}
    args = [
        f"data={ddp_data}",
        "epochs=3",
        "imgsz=64",
        "batch=4",
        "nbs=4",
        "workers=0",
        "amp=off",
        "verbose=false",
        "plots=false",
        "nproc=2",
        f"project={tmp_path}",
        "name=st",
        "val=false",
        f"callbacks=on_train_batch_end={CALLBACKS}:mark_started",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "yolotrain", "train", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (out / "started").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]
    assert "preempted:" in err
    state = load_checkpoint(tmp_path / "st" / "weights" / "last.pt")
    assert state["position"]["epoch"] < 2
    r = run_cli([f"resume={tmp_path / 'st' / 'weights' / 'last.pt'}", "nproc=2"], out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert load_checkpoint(tmp_path / "st" / "weights" / "last.pt")["position"] == {
        "epoch": 2,
        "iteration": 4,
        "complete": True,
        "iters_per_epoch": 4,
    }
