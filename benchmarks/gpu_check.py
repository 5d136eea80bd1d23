"""One prepared check for a machine with an NVIDIA GPU, printing one JSON line.

On a GPU (default; one call of at most 9 minutes on one card, parts past ``--budget-s`` are skipped):

- **speed matrix**, most informative first: scale n and s, bf16 and fp16, batch 32 and 64, eager and
  ``cuda_graphs=true``, on real JPEGs (``--real``: a COCO128-style folder, its train images repeated to at
  least ``--real-images``, 2,048 by default) and on synthetic JPEGs; each entry gives images/s over the
  steady steps (the first ``WARMUP_STEPS`` left out), the host milliseconds spent inside the step call per
  step and the loader's data-wait share;
- **profile** of 20 steady steps of scale n, bf16, batch 32 (``torch.profiler``): GPU busy % (the union of
  kernel time over the window's wall time), host ms/step, host reads per step (counted by
  :mod:`yolotrain.utils.host_sync`) and the syncs ``torch.cuda.set_sync_debug_mode("warn")`` reported;
- **Ultralytics side by side** (``--ultralytics PATH``: a wheel file, or a folder holding one or an installed
  package): installed with ``pip install --no-deps --target <scratch>`` (the GPU machine has no network),
  trained on the same data, size, batch and precision; skipped with the reason when it cannot import;
- a real CUDA out-of-memory recovery (memory capped), AutoBatch's choice, ``compile=true``, and one epoch
  through the ``nproc=`` launcher (its worker is a fork of the launch's fork server: the check that such a fork
  uses CUDA and NCCL).

``--smoke`` runs the same code paths on the CPU in seconds (imgsz 64, scale n, fp32 and bf16, the
out-of-memory error injected with ``YOLOTRAIN_INJECT_OOM`` instead of a memory cap, no AutoBatch), so
the test suite keeps this script from rotting while no GPU is at hand.

Usage (the device call carries COCO128 and the Ultralytics wheel inside the repository, in an ignored folder)::

    python benchmarks/gpu_check.py --smoke                                # anywhere (the test suite runs this)
    mkdir -p .gpu && cp -r ../shared/datasets/coco128 .gpu/ && pip download ultralytics --no-deps -d .gpu/wheels
    python benchmarks/gpu_check.py --real .gpu/coco128 --ultralytics .gpu/wheels --log /tmp/parts.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from yolotrain.api import Detector
from yolotrain.config import SETTINGS


def make_dataset(root: Path, n: int, size: int) -> Path:
    """``n`` noisy images with one bright box each (one class) and their data YAML."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n if split == "train" else max(2, n // 8)):
            img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            w, h = (int(v) for v in rng.integers(size // 4, size // 2, 2))
            x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            img[y0 : y0 + h, x0 : x0 + w] = 255
            cv2.imwrite(str(root / "images" / split / f"{i}.jpg"), img)
            text = f"0 {(x0 + w / 2) / size} {(y0 + h / 2) / size} {w / size} {h / size}\n"
            (root / "labels" / split / f"{i}.txt").write_text(text)
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [box]\n")
    return root / "data.yaml"


def make_real_dataset(src: Path, root: Path, n: int) -> Path:
    """A COCO128-style folder's train images (and labels) linked ``n`` times over, with its class names."""
    import yaml  # noqa: PLC0415 - only the GPU run needs it

    spec = yaml.safe_load((src / "data.yaml").read_text())
    base = (src / spec.get("path", ".")) if not Path(str(spec.get("path", "."))).is_absolute() else Path(spec["path"])
    images = sorted((base / spec["train"]).glob("*.jpg"))
    if not images:
        raise FileNotFoundError(f"--real {src}: no .jpg under {base / spec['train']}")
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir(parents=True)
    for i in range(max(n, len(images))):
        img = images[i % len(images)]
        (root / "images" / f"{i:05d}_{img.name}").symlink_to(img.resolve())
        label = Path(str(img.parent).replace("images", "labels")) / f"{img.stem}.txt"
        (root / "labels" / f"{i:05d}_{img.stem}.txt").write_text(label.read_text() if label.is_file() else "")
    names = spec["names"]
    names = [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images", "val": "images", "names": names}))
    return root / "data.yaml"


# what a --smoke run must print (tests/test_benchmarks.py; tests/data/test_data_gpu_check_smoke.py checks the values)
SMOKE_KEYS = ("mode", "torch", "n amp=off", "n amp=bf16", "oom_recovery", "compile", "profile", "fork_server_launch")
WARMUP_STEPS = 15  # steps left out of images/s: worker start-up, cuDNN's search, graph capture, allocator growth


class StepTimer:
    """Callbacks timing a run: wall time per steady step (from batch end to batch end) and the host time spent
    inside the step call (the launch work; with no host read in the step it does not wait for the GPU)."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.inside: list[float] = []
        self.images = 0

    def attach(self, det: Any) -> None:
        det.add_callback("on_train_start", self.wrap_step)
        det.add_callback("on_train_batch_end", self.batch_end)

    def wrap_step(self, trainer: Any) -> None:
        step, timer = trainer.run.step, self

        class Timed(type(step)):  # the same object, its call timed
            def __call__(self, batch, epoch, i):
                t0 = time.perf_counter()
                try:
                    return super().__call__(batch, epoch, i)
                finally:
                    timer.inside.append(time.perf_counter() - t0)

        step.__class__ = Timed

    def batch_end(self, trainer: Any) -> None:
        self.ends.append(time.perf_counter())
        if len(self.ends) == WARMUP_STEPS + 1:
            self.images = 0
        self.images += int(trainer.current_batch["img"].shape[0])

    def result(self) -> dict[str, Any]:
        steady = self.ends[WARMUP_STEPS:]
        if len(steady) < 3:
            return {"steady_steps": len(steady)}
        seconds = steady[-1] - steady[0]
        inside = self.inside[WARMUP_STEPS:]
        return {
            "steady_images_per_s": round((self.images - self.images / len(steady)) / seconds, 1),
            "ms_per_step": round(1000 * seconds / (len(steady) - 1), 2),
            "host_ms_in_step": round(1000 * sum(inside) / max(len(inside), 1), 2),
            "steady_steps": len(steady),
        }


def train_once(data: Path, project: Path, profile: int = 0, **settings: Any) -> dict[str, Any]:
    """One short training run; what the trainer measured, read from its ``on_train_end`` callback.

    ``images_per_s`` and ``data_wait_share`` are the last epoch's (the first one also pays for worker
    start-up, cuDNN's algorithm search and the allocator's growth); ``epochs`` lists every epoch's pair.
    """
    seen: dict[str, Any] = {}
    cuda = torch.cuda.is_available() and str(settings.get("device", "")) != "cpu"

    def grab(trainer: Any) -> None:
        rows = trainer.history
        seen["images_per_s"] = round(float(rows[-1]["images_per_s"]), 1)
        seen["data_wait_share"] = round(float(rows[-1]["data_wait"]), 3)
        seen["epochs"] = [[round(float(r["images_per_s"]), 1), round(float(r["data_wait"]), 3)] for r in rows]
        seen["batch"] = int(trainer.cfg.batch)  # AutoBatch's choice is recorded in the run's config
        seen["oom_events"] = int(trainer.run.state.oom_events)
        seen["micro_batches"] = int(trainer.run.state.micro_batches)
        graphs = trainer.run.step.graphs
        if graphs is not None:  # cuda_graphs=true: how many shapes were captured whole, model only, or not
            seen["graphs"] = graphs.counts()
        if cuda:
            total = torch.cuda.get_device_properties(0).total_memory
            seen["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(0) / 2**30, 2)
            seen["peak_reserved_fraction"] = round(torch.cuda.max_memory_reserved(0) / total, 3)

    def training_starts(trainer: Any) -> None:  # after AutoBatch's probes, whose peaks are not training's
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(0)

    det = Detector(settings.pop("model", "n"))
    timer = StepTimer()
    timer.attach(det)
    profiled = attach_profile(det, profile, cuda) if profile else None  # the smoke check folds it into a run
    det.add_callback("on_train_end", grab)
    if cuda:
        det.add_callback("on_pretrain_routine_end", training_starts)
    t0 = time.perf_counter()
    det.train(data=str(data), project=str(project), exist_ok=True, val=False, verbose=False, **settings)
    seen["seconds"] = round(time.perf_counter() - t0, 1)
    seen.update(timer.result())
    if profiled is not None:
        seen["profile"] = profiled or {"error": f"the run ended before {WARMUP_STEPS + profile} steps"}
    return seen


def attach_profile(det: Any, steps: int, cuda: bool) -> dict[str, Any]:
    """Profile ``steps`` steady steps of ``det``'s next run (then stop it): GPU busy %, host ms per step, host reads
    and CUDA syncs per step, filled into the returned dict when the steps are done."""
    import warnings  # noqa: PLC0415

    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    from yolotrain.utils.host_sync import HostSyncCounter  # noqa: PLC0415

    out: dict[str, Any] = {}
    state: dict[str, Any] = {"i": 0}
    counter = HostSyncCounter(sites=True)

    def start(trainer: Any) -> None:
        state["i"] += 1
        if state["i"] == WARMUP_STEPS + 1:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("warn")
            state["warn"] = warnings.catch_warnings(record=True)
            state["caught"] = state["warn"].__enter__()
            warnings.simplefilter("always")
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            state["prof"] = profile(activities=acts)
            state["prof"].__enter__()
            counter.__enter__()
            state["t0"] = time.perf_counter()

    def end(trainer: Any) -> None:
        if state["i"] != WARMUP_STEPS + steps or "prof" not in state:
            return
        counter.__exit__(None, None, None)
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - state["t0"]
        state["prof"].__exit__(None, None, None)
        if cuda:
            torch.cuda.set_sync_debug_mode(0)
        state["warn"].__exit__(None, None, None)
        syncs = [w for w in state["caught"] if "synchroniz" in str(w.message).lower()]
        events = state["prof"].events()
        spans = sorted(
            (e.time_range.start, e.time_range.end)
            for e in events
            if getattr(e, "device_type", None) is not None and e.device_type.name == "CUDA"
        )
        busy, cur_s, cur_e = 0.0, None, None
        for a, b in spans:  # the union of kernel intervals, in microseconds
            if cur_e is None or a > cur_e:
                busy += 0.0 if cur_e is None else cur_e - cur_s
                cur_s, cur_e = a, b
            else:
                cur_e = max(cur_e, b)
        busy += 0.0 if cur_e is None else cur_e - cur_s
        out.update(
            {
                "steps": steps,
                "ms_per_step": round(1000 * wall / steps, 2),
                "gpu_busy_pct": round(100 * busy / 1e6 / wall, 1) if cuda else None,
                "host_reads_per_step": counter.count / steps,
                "host_read_sites": dict(counter.where.most_common(8)),
                "cuda_sync_warnings_per_step": len(syncs) / steps,
            }
        )
        trainer.stop = True

    det.add_callback("on_train_batch_start", start)
    det.add_callback("on_train_batch_end", end)
    return out


def profile_steps(data: Path, project: Path, base: dict[str, Any], steps: int = 20) -> dict[str, Any]:
    """A run of its own, profiled over ``steps`` steady steps (see :func:`attach_profile`)."""
    det = Detector(base.get("model", "n"))
    out = attach_profile(det, steps, torch.cuda.is_available() and base.get("device") != "cpu")
    settings = {k: v for k, v in base.items() if k != "model"}
    det.train(data=str(data), project=str(project), exist_ok=True, val=False, verbose=False, name="profile", **settings)
    return out or {"error": f"the run ended before {WARMUP_STEPS + steps} steps"}


def install_ultralytics(source: Path, scratch: Path) -> str | None:
    """Make Ultralytics importable from ``source`` (a wheel, a folder with one, or an installed tree); None if it
    cannot be, else the reason."""
    wheels = [source] if source.suffix == ".whl" else sorted(source.glob("ultralytics-*.whl"))
    if wheels:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--target",
            str(scratch),
            str(wheels[-1]),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            return f"pip install failed: {done.stderr.strip().splitlines()[-1:]}"
        sys.path.insert(0, str(scratch))
    elif (source / "ultralytics").is_dir():
        sys.path.insert(0, str(source))
    else:
        return f"no ultralytics-*.whl or ultralytics/ package under {source}"
    try:
        import ultralytics  # noqa: F401, PLC0415
    except Exception as e:  # noqa: BLE001 - a missing dependency of theirs is a reason to report
        return f"cannot import ultralytics: {type(e).__name__}: {e}"[:300]
    return None


def ultralytics_run(data: Path, project: Path, scale: str, imgsz: int, batch: int, amp: str, workers: int) -> dict:
    """Ultralytics trained on the same data and settings; images/s over its steady steps (its own callbacks)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO  # noqa: PLC0415

    ends: list[float] = []
    model = YOLO(f"yolov8{scale}.yaml")
    model.add_callback("on_train_batch_end", lambda trainer: ends.append(time.perf_counter()))
    t0 = time.perf_counter()
    model.train(
        data=str(data), epochs=1, imgsz=imgsz, batch=batch, amp=amp != "off", workers=workers, val=False,
        plots=False, project=str(project), name=f"ultra_{scale}", exist_ok=True, verbose=False, device=0,
    )  # fmt: skip
    steady = ends[WARMUP_STEPS:]
    out = {"seconds": round(time.perf_counter() - t0, 1), "steady_steps": len(steady), "version": _version()}
    if len(steady) >= 3:
        out["steady_images_per_s"] = round(batch * (len(steady) - 1) / (steady[-1] - steady[0]), 1)
    out["note"] = "Ultralytics' AMP is fp16 (it has no bf16 training setting)"
    return out


def _version() -> str:
    import ultralytics  # noqa: PLC0415

    return getattr(ultralytics, "__version__", "?")


class Sections:
    """Runs the check's parts in order, each on its own: a part that fails records its error and the
    next one still runs; once ``budget_s`` has passed the remaining parts are recorded as skipped (a
    lent GPU's minutes are few). With ``log`` set, each part's result is appended there as a JSON line
    the moment it is known, so a run stopped from outside still leaves what it measured."""

    def __init__(self, out: dict[str, Any], budget_s: float, log: Path | None) -> None:
        self.out, self.budget_s, self.log, self.t0 = out, budget_s, log, time.perf_counter()

    def run(self, name: str, fn: Any) -> None:
        elapsed = time.perf_counter() - self.t0
        if elapsed > self.budget_s:
            self.out[name] = f"skipped: {elapsed:.0f} s of the {self.budget_s:.0f} s budget spent"
        else:
            try:
                self.out[name] = fn()
            except Exception as e:  # noqa: BLE001 - one part's failure is a result to report, not the end
                self.out[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
        if self.log is not None:
            with self.log.open("a") as f:
                f.write(json.dumps({name: self.out[name], "elapsed_s": round(time.perf_counter() - self.t0, 1)}) + "\n")


@contextlib.contextmanager
def env(**values: str):
    """Environment variables set for the block (restored after)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def oom_recovery(data: Path, project: Path, base: dict[str, Any], cuda: bool) -> dict[str, Any]:
    """A batch that cannot fit at once must still train: a real capped CUDA allocator, or an injected
    out-of-memory error on the CPU."""
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(0.08, 0)
        try:
            r = train_once(data, project, model="n", amp="fp16", name="oom", **{**base, "batch": 256})
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, 0)
    else:
        with env(YOLOTRAIN_INJECT_OOM="0:1"):  # step 0: micro-batches above 1 image fail
            r = train_once(data, project, model="n", amp="off", name="oom", **base)
    r["recovered"] = r["oom_events"] > 0 and r["micro_batches"] > 1
    return r


def fork_server_launch(data: Path, project: Path, base: dict[str, Any]) -> dict[str, Any]:
    """One epoch through the ``nproc=`` launcher with one worker on this device. The worker is a fork of the
    launch's fork server (:mod:`yolotrain.engine.worker_process`), which imported torch without asking CUDA
    anything: a fork that could not use CUDA (or NCCL) fails here with the worker's error."""
    from yolotrain.config import resolve  # noqa: PLC0415 - this part alone launches
    from yolotrain.engine.launch import launch  # noqa: PLC0415

    cfg = resolve({**base, "data": str(data), "model": "n", "project": str(project), "name": "launched",
                   "val": False, "plots": False, "verbose": False})  # fmt: skip
    t0 = time.perf_counter()
    save_dir = launch(cfg, 1)
    last = save_dir / "weights" / "last.pt"
    return {"seconds": round(time.perf_counter() - t0, 1), "saved": last.is_file(), "device": str(cfg.device)}


def autobatch_check(data: Path, project: Path, base: dict[str, Any]) -> dict[str, Any]:
    """AutoBatch's chosen batch (``batch=-1``: at most 60% of the card) against the peak training then
    reserved (measured from the end of the probes; the log lists each probe's memory and speed)."""
    r = train_once(data, project, model="n", amp="fp16", name="autobatch", **{**base, "batch": -1})
    r["budget_fraction"] = 0.6
    return r


def speed_matrix(smoke: bool) -> list[tuple[str, dict[str, Any]]]:
    """(name, settings) of the speed runs, most informative first (the budget cuts from the end)."""
    if smoke:
        return [("n amp=off", {"model": "n", "amp": "off"}), ("n amp=bf16", {"model": "n", "amp": "bf16"})]
    lists: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for data in ("real", "synthetic"):
        lists[data] = []
        for scale, amp, batch, graphs in (
            ("n", "bf16", 32, False), ("n", "bf16", 32, True), ("n", "fp16", 32, False), ("n", "fp16", 32, True),
            ("n", "bf16", 64, False), ("n", "bf16", 64, True), ("s", "bf16", 32, False), ("s", "bf16", 32, True),
            ("s", "fp16", 32, False), ("n", "fp16", 64, False), ("s", "bf16", 64, False), ("s", "fp16", 64, True),
        ):  # fmt: skip
            name = f"{data} {scale} amp={amp} batch={batch} {'graphed' if graphs else 'eager'}"
            lists[data].append(
                (name, {"model": scale, "amp": amp, "batch": batch, "cuda_graphs": graphs, "data": data})
            )
    # real JPEGs first (what users train on), then synthetic ones (the step without decode), then the rest
    return lists["real"][:8] + lists["synthetic"][:4] + lists["real"][8:] + lists["synthetic"][4:]


def run(
    smoke: bool,
    budget_s: float = 480.0,
    log: Path | None = None,
    real: Path | None = None,
    real_images: int = 2048,
    ultralytics: Path | None = None,
) -> dict[str, Any]:
    global WARMUP_STEPS
    cuda = torch.cuda.is_available() and not smoke
    if not smoke and not cuda:
        raise SystemExit("no CUDA device: run with --smoke for the CPU check")
    WARMUP_STEPS = 1 if smoke else 15  # the smoke set has two batches per epoch
    out: dict[str, Any] = {"mode": "smoke-cpu" if smoke else "cuda", "torch": torch.__version__}
    if cuda:
        out["device"] = torch.cuda.get_device_name(0)
        out["cpu_count"] = os.cpu_count()
    imgsz, n_img = (64, 8) if smoke else (640, 2048)
    base = {"imgsz": imgsz, "epochs": 1, "device": "cpu" if smoke else "0", "amp_check": False}
    base |= {"workers": 0 if smoke else os.cpu_count(), "batch": 4 if smoke else 32}
    with tempfile.TemporaryDirectory() as tmp:
        datasets = {"synthetic": make_dataset(Path(tmp) / "data", n_img, imgsz)}
        if real is not None:
            datasets["real"] = make_real_dataset(real, Path(tmp) / "real", 16 if smoke else real_images)
        project = Path(tmp) / "runs"
        parts = Sections(out, budget_s, log)
        main_data = datasets.get("real", datasets["synthetic"])
        matrix = speed_matrix(smoke)
        # the first speed run, then the profile and Ultralytics (the figures the issue asks for first)
        for i, (name, cfg) in enumerate(matrix):
            cfg = dict(cfg)
            which = cfg.pop("data", "synthetic")
            if which not in datasets:
                out[name] = "skipped: no --real folder given"
                continue
            # the smoke check profiles its first run (a run of its own costs seconds there); on a GPU the profile
            # has its own run, so the profiler's overhead stays out of the speed figures
            fold = 1 if smoke and i == 0 else 0
            parts.run(
                name,
                lambda c=cfg, d=datasets[which], k=i, f=fold: train_once(d, project, f, name=f"r{k}", **{**base, **c}),
            )
            if i == 0:
                if smoke:
                    first = out.get(name)
                    out["profile"] = first.pop("profile", None) if isinstance(first, dict) else "the first run failed"
                else:
                    profiled = {**base, "model": "n", "amp": "bf16"}
                    parts.run("profile", lambda p=profiled: profile_steps(main_data, project, p, 20))
                if ultralytics is not None and cuda:
                    parts.run("ultralytics", lambda: ultralytics_side(ultralytics, main_data, project, Path(tmp), base))
                elif cuda:
                    out["ultralytics"] = "skipped: no --ultralytics wheel given"
                parts.run("oom_recovery", lambda: oom_recovery(datasets["synthetic"], project, base, cuda))
        if cuda:
            parts.run("autobatch", lambda: autobatch_check(datasets["synthetic"], project, base))
        if "compile" in SETTINGS:
            amp = "off" if smoke else "bf16"
            # the smoke check runs the same compile path (compile_model, the step, the fallback) through dynamo's
            # eager backend: inductor's first compile of the model takes minutes on 2 cores with a cold cache, and
            # aot_eager 9 s more than eager here; tests/engine/test_engine_compile.py trains through aot_eager
            backend = "eager" if smoke else "inductor"
            parts.run(
                "compile",
                lambda: train_once(main_data, project, model="n", amp=amp, name="compile", compile=backend, **base),
            )
        else:
            out["compile"] = "no compile setting yet"
        parts.run("fork_server_launch", lambda: fork_server_launch(datasets["synthetic"], project, base))
    out["seconds"] = round(time.perf_counter() - parts.t0, 1)
    return out


def ultralytics_side(source: Path, data: Path, project: Path, scratch: Path, base: dict[str, Any]) -> dict:
    """Ultralytics next to us: scale n, the same data, size and batch, fp16 (its only AMP), one epoch."""
    reason = install_ultralytics(source, scratch / "ultralytics_pkg")
    if reason is not None:
        return {"skipped": reason}
    return ultralytics_run(data, project, "n", base["imgsz"], base["batch"], "fp16", base["workers"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU smoke mode: the same code paths in seconds")
    ap.add_argument(
        "--budget-s",
        type=float,
        help="skip the parts not started by then (seconds; default 480 on a GPU, none with --smoke, which checks "
        "that every part runs, however slow a loaded CPU makes it)",
    )
    ap.add_argument("--log", type=Path, help="also append each part's result here as a JSON line, as it finishes")
    ap.add_argument("--real", type=Path, help="a COCO128-style folder (data.yaml, images/, labels/): real JPEGs")
    ap.add_argument("--real-images", type=int, default=2048, help="repeat the real images up to this many")
    ap.add_argument("--ultralytics", type=Path, help="an Ultralytics wheel (or a folder with one) to compare with")
    args = ap.parse_args(argv)
    budget_s = args.budget_s if args.budget_s is not None else (float("inf") if args.smoke else 480.0)
    out = run(args.smoke, budget_s, args.log, args.real, args.real_images, args.ultralytics)
    print(json.dumps(out))
    sys.stdout.flush()
    return out


if __name__ == "__main__":
    main()
