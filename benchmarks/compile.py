"""Training step throughput with and without ``compile=true`` (torch.compile, inductor) at one fixed size.

    PYTHONPATH=src .venv/bin/python benchmarks/compile.py                  # n, 160 px, batch 16, bf16 where native
    PYTHONPATH=src .venv/bin/python benchmarks/compile.py --imgsz 320 --steps 20 --amp off
    PYTHONPATH=src .venv/bin/python benchmarks/compile.py --smoke    # 64 px, batch 2, eager backend: seconds

Each mode runs in its own child process (so one's compiled code and caches cannot help the other) on the
same synthetic batch (random pixels, 4 random boxes per image, 4 classes): the training step as the
trainer runs it (forward under autocast, loss, backward, optimizer step), without data loading. The
first ``--warmup`` steps are not timed; for the compiled model their extra time over the steady step
time is reported as the compile time. The last stdout line is one JSON object:
{"eager": {...}, "compiled": {...}, "speedup": compiled/eager images per second, "settings": {...}}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# the keys a --smoke run must print (the test suite runs every benchmark's smoke mode and checks them)
SMOKE_KEYS = ("eager", "compiled", "speedup", "settings")


def child(a: argparse.Namespace) -> dict:
    # imported here, in the child that measures: the parent only starts the two children and compares them
    import torch

    from yolotrain.engine.compile import compile_model
    from yolotrain.engine.precision import Precision, choose_amp
    from yolotrain.loss import DetectionLoss
    from yolotrain.models import build_model

    torch.manual_seed(0)
    device = torch.device("cpu")
    model = build_model("n", nc=4).to(memory_format=torch.channels_last).train()
    criterion = DetectionLoss.from_model(model)
    amp = choose_amp(a.amp, device)[0]
    precision = Precision(device, amp)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    net = compile_model(model, a.backend, dynamic=False) if a.mode == "compiled" else model
    imgs = torch.rand(a.batch, 3, a.imgsz, a.imgsz).contiguous(memory_format=torch.channels_last)
    n = 4 * a.batch
    batch = {
        "batch_idx": torch.arange(a.batch).repeat_interleave(4).float(),
        "cls": torch.randint(0, 4, (n, 1)).float(),
        "bboxes": torch.cat([torch.rand(n, 2) * 0.6 + 0.2, torch.rand(n, 2) * 0.2 + 0.05], 1),
    }

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            preds = net(imgs)
        loss, _ = criterion([p.float() for p in preds], batch)
        loss.backward()
        optimizer.step()

    t0 = time.perf_counter()
    for _ in range(a.warmup):
        step()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    steady = (time.perf_counter() - t0) / a.steps
    return {
        "images_per_s": round(a.batch / steady, 2),
        "step_s": round(steady, 4),
        "warmup_s": round(warm, 1),
        "compile_s": round(warm - a.warmup * steady, 1) if a.mode == "compiled" else 0.0,
        "amp": amp,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--amp", default="auto", choices=("auto", "off", "bf16"))
    ap.add_argument("--mode", default=None, choices=("eager", "compiled"), help=argparse.SUPPRESS)  # the child
    ap.add_argument("--backend", default="inductor", choices=("inductor", "aot_eager", "eager"))
    ap.add_argument("--smoke", action="store_true", help="64 px, batch 2, 2 steps, eager backend: seconds")
    a = ap.parse_args()
    if a.smoke:  # the children get the same argv, so each takes these sizes too
        # dynamo's eager backend: the script's whole path in a few seconds (aot_eager's tracing adds ~10 s a
        # child); tests/engine/test_engine_compile.py trains through aot_eager
        a.imgsz, a.batch, a.steps, a.warmup, a.backend = 64, 2, 2, 1, "eager"
    if a.mode:
        print(json.dumps(child(a)))
        return
    out = {"settings": {"model": "n", "imgsz": a.imgsz, "batch": a.batch, "steps": a.steps, "warmup": a.warmup,
                        "backend": a.backend}}  # fmt: skip
    for mode in ("eager", "compiled"):
        args = [sys.executable, __file__, "--mode", mode, *sys.argv[1:]]
        proc = subprocess.run(args, capture_output=True, text=True, env=os.environ)
        if proc.returncode:
            if a.smoke:  # a smoke run exists to notice a broken path
                sys.stderr.write(proc.stderr[-3000:])
                raise SystemExit(f"{mode} child failed with exit code {proc.returncode}")
            out[mode] = {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
        else:
            out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{mode}: {out[mode]}", file=sys.stderr)
    for mode in ("eager", "compiled"):  # the children's threads and torch, the same for both
        for key in ("threads", "torch"):
            if key in out[mode]:
                out["settings"][key] = out[mode].pop(key)
    e, c = out["eager"].get("images_per_s"), out["compiled"].get("images_per_s")
    out["speedup"] = round(c / e, 3) if e and c else None
    out["load"] = os.getloadavg()[0]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
