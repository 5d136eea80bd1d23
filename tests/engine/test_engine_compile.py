"""compile.py: compile= trains compiled; weights save plain; multi-scale compiles once; DDP; fallback."""

import functools
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch._dynamo

from yolotrain.checkpoint_file import load_checkpoint
from yolotrain.config import resolve
from yolotrain.engine import step as step_module
from yolotrain.engine.trainer import Trainer


@pytest.fixture
def cfg_for(cfg_for):
    """The shared factory (conftest.py) with this module's defaults."""
    return functools.partial(cfg_for, amp="off", compile="aot_eager")


@pytest.mark.slow
def test_compiled_bf16_run_saves_plain_weights_and_resumes(tiny_data, tmp_path, cfg_for):
    torch._dynamo.reset()
    t = Trainer(cfg_for(amp="bf16", amp_check=False))
    t.fit()
    assert isinstance(t.run.step.train_model, torch._dynamo.eval_frame.OptimizedModule)  # trained compiled
    assert not isinstance(t.eval_model, torch._dynamo.eval_frame.OptimizedModule)  # validated plain
    last = tmp_path / "exp" / "weights" / "last.pt"
    state = load_checkpoint(last)
    assert state["precision"]["amp"] == "bf16"
    for key in ("model", "ema"):
        names = list(state[key])
        assert names and not [n for n in names if "_orig_mod" in n], key
    # the plain model's names: a compiled run's checkpoint loads into an uncompiled model
    assert set(state["model"]) == set(t.model.state_dict())
    resumed = Trainer(resolve({"resume": str(last), "epochs": 2}))
    resumed.fit()
    assert len(load_checkpoint(last)["history"]) == 2


@pytest.mark.slow
def test_multi_scale_compiles_one_graph_for_every_size(tiny_data, tmp_path, cfg_for):
    torch._dynamo.reset()
    # 96 +/- 50%: 64 to 144 (at 32, a feature map of 1 pixel, torch specialises the graph once more)
    t = Trainer(cfg_for(imgsz=96, multi_scale=0.5, epochs=2))
    sizes = set()
    t.callbacks.add("on_train_batch_end", lambda tr: sizes.add(tr.input_size))
    with torch._dynamo.config.patch(error_on_recompile=True):  # a second graph for another size would raise
        t.fit()
    assert len(sizes) >= 3, sizes  # the sizes did change
    assert t.run.step.compiled is not None  # and no recompilation error made the step fall back to eager


@pytest.mark.slow
def test_a_compile_failure_falls_back_to_eager_with_a_warning(tiny_data, tmp_path, monkeypatch, caplog, cfg_for):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no C compiler here")

    monkeypatch.setattr(
        step_module, "compile_model", lambda model, backend, dynamic: torch.compile(model, backend=broken_backend)
    )
    torch._dynamo.reset()
    t = Trainer(cfg_for())
    with caplog.at_level(logging.WARNING, logger="yolotrain"):
        t.fit()
    assert "compile: torch.compile failed" in caplog.text and "no C compiler here" in caplog.text
    assert t.run.step.compiled is None and len(t.history) == 1


def run_cli(args, out, timeout=600):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "YT_TEST_OUT": str(out)}
    env.pop("WORLD_SIZE", None)
    return subprocess.run(
        [sys.executable, "-m", "yolotrain", "train", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_ddp_compiled_matches_ddp_eager(tiny_data, tmp_path):
    common = ["nproc=2", "epochs=1", "imgsz=64", "batch=8", "nbs=8", "workers=0", "amp=off", "optimizer=SGD",
              "verbose=false", "warmup_epochs=0", "val=false", "plots=false", f"data={tiny_data}",
              "model=n"]  # fmt: skip
    weights = {}
    for backend in ("off", "aot_eager"):
        out = tmp_path / f"out_{backend}"
        out.mkdir()
        callbacks = f"callbacks={Path(__file__).with_name('compile_callbacks.py')}:on_train_end"
        proc = run_cli([*common, f"compile={backend}", f"project={tmp_path}", f"name={backend}", callbacks], out)
        assert proc.returncode == 0, proc.stderr[-3000:]
        weights[backend] = load_checkpoint(tmp_path / backend / "weights" / "last.pt")["model"]
        compiled = [int((out / f"compiled_rank{r}.txt").read_text()) for r in (0, 1)]
        assert all(compiled) if backend != "off" else not any(compiled), compiled  # each rank trained compiled
    moved = [
        k
        for k, v in weights["off"].items()
        if v.is_floating_point() and not torch.allclose(v, weights["aot_eager"][k], atol=1e-5)
    ]
    assert not moved, moved[:5]
