"""precision.py and amp_check.py: fp16/bf16/fp32 with one code path, the scaler, the offline AMP self-check."""

import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from yolotrain.checkpoint_file import load_checkpoint, save_checkpoint
from yolotrain.config import coerce, resolve
from yolotrain.engine import amp_check
from yolotrain.engine.precision import Precision, choose_amp
from yolotrain.engine.trainer import Trainer
from yolotrain.loss import DetectionLoss
from yolotrain.models import build_model


def make_trainer(data, tmp_path, **kw):
    base = dict(
        data=str(data),
        model="n",
        epochs=1,
        imgsz=64,
        batch=8,
        workers=0,
        project=str(tmp_path),
        verbose=False,
        val=False,
        plots=False,
        nbs=8,
        seed=0,
    )
    base.update(kw)
    t = Trainer(resolve(base))
    t.setup()
    return t


def test_amp_setting_aliases():
    assert coerce("amp", "true") == "auto" and coerce("amp", False) == "off" and coerce("amp", "BF16") == "bf16"
    assert resolve({"data": "x"}).amp == "auto"


def test_inf_gradient_skips_step_and_halves_scale(tiny_data, tmp_path):
    # batch 2 of a nominal 4: accumulate 2 (fp16 on a CPU is emulated: small batches keep the test quick)
    t = make_trainer(tiny_data, tmp_path, amp="fp16", amp_check=False, batch=2, nbs=4)
    assert t.run.precision.amp == "fp16" and t.run.precision.scaler.is_enabled() and t.run.step.accumulate == 2
    batch = next(iter(t.train_loader))
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.run.step.forward_backward(batch, 0, 0)  # scaled backward, no step yet
    scale0 = t.run.precision.scale
    g = next(t.model.parameters()).grad
    g[(0,) * g.dim()] = float("inf")  # injected overflow
    t.run.step.optimizer_step()
    assert t.run.precision.scale == scale0 * 0.5
    assert t.skipped_steps == 1 and t.run.state.epoch_skipped == 1
    after = t.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "running" not in k and "num_batches" not in k)
    assert t.run.ema.updates == 0  # the EMA did not average a skipped step


def test_scale_grows_after_growth_interval(tiny_data, tmp_path):
    # batch 2 of a nominal 2: accumulate 1, a step per batch (fp16 on a CPU is emulated: small batches keep it quick)
    t = make_trainer(tiny_data, tmp_path, amp="fp16", amp_check=False, batch=2, nbs=2)
    # a small initial scale, so that these gradients never overflow
    t.run.step.precision = Precision(t.device, "fp16", growth_interval=2, init_scale=256.0)
    batch = next(iter(t.train_loader))
    scales = []
    for i in range(3):
        t.run.step(batch, 0, i)  # forward/backward + the step (accumulate 1)
        scales.append(t.run.step.precision.scale)
    assert scales == [256.0, 512.0, 512.0]  # doubled after 2 clean steps, and only then
    assert t.skipped_steps == 0


def test_scaler_state_round_trips_exactly(tmp_path):
    p = Precision(torch.device("cpu"), "fp16", growth_interval=7, init_scale=1234.5)
    p.scaler.scale(torch.ones(()))  # the scaler's state is created lazily on first use
    save_checkpoint({"precision": p.state_dict()}, tmp_path / "c.pt")
    q = Precision(torch.device("cpu"), "fp16", growth_interval=7)
    q.load_state_dict(load_checkpoint(tmp_path / "c.pt")["precision"])
    assert q.scale == 1234.5
    assert q.scaler.state_dict() == p.scaler.state_dict()


def loss_trajectory(data, tmp_path, amp, steps=3):
    t = make_trainer(
        data,
        tmp_path / amp,
        amp=amp,
        amp_check=False,
        mosaic=0.0,
        optimizer="SGD",
        lr0=0.01,
        warmup_epochs=0,
        ema=False,
    )
    if amp == "fp16":
        # a settled loss scale, as a resumed fp16 run has: from GradScaler's 2**16 the first five steps of this
        # model overflow and are skipped (measured: 2048 is the first scale that steps), so the trajectory would
        # be five identical losses (fp16 steps take 5 s each on this CPU)
        t.run.step.precision.load_state_dict(Precision(t.device, "fp16", init_scale=SETTLED_SCALE).state_dict())
    out = []
    it = iter(t.train_loader)
    batch = next(it)
    for i in range(steps):  # the same batch each step: differences come from precision only
        t.run.schedule.apply(t.optimizer, 0, i + 1000)
        items = t.run.step(batch, 0, i).items
        out.append(float(items.sum()))
    return out, t.run.step.precision.scale


SETTLED_SCALE = 1024.0


@pytest.mark.slow
def test_bf16_and_fp16_follow_fp32(tiny_data, tmp_path):
    ref, _ = loss_trajectory(tiny_data, tmp_path, "off")
    assert ref[-1] < ref[0]  # the steps did train
    for amp in ("bf16", "fp16"):
        got, scale = loss_trajectory(tiny_data, tmp_path, amp)
        assert got[-1] < got[0], (amp, got)  # trained too: a skipped (overflowed) step leaves the loss unchanged
        for r, g in zip(ref, got):
            assert g == pytest.approx(r, rel=0.03), (amp, ref, got)
        if amp == "fp16":
            assert scale == SETTLED_SCALE  # no fp16 step overflowed (each would have halved the scale)


def test_self_check_passes_on_real_model():
    model = build_model("n", nc=4)
    crit = DetectionLoss.from_model(model)
    for amp in ("bf16", "fp16"):
        res = amp_check.check_precision(model, crit, torch.device("cpu"), amp, 64)
        assert res.ok, res.detail
    # the check works on a copy: the model's BN statistics and gradients are untouched
    assert all(p.grad is None for p in model.parameters())
    assert int(model.backbone.stem.bn.num_batches_tracked) == 0 if hasattr(model.backbone, "stem") else True


@pytest.fixture
def fp16_silu_is_nan(monkeypatch):
    real = F.silu

    def broken(x, inplace=False):
        y = real(x, inplace=inplace)
        return y * float("nan") if x.dtype == torch.float16 else y

    monkeypatch.setattr(F, "silu", broken)


def test_self_check_falls_back_from_fp16(fp16_silu_is_nan, monkeypatch, caplog):
    monkeypatch.setattr(amp_check, "bf16_supported", lambda d: True)
    model = build_model("n", nc=4)
    crit = DetectionLoss.from_model(model)
    import logging

    logging.getLogger("yolotrain").propagate = True
    with caplog.at_level(logging.WARNING, logger="yolotrain"):
        chosen = amp_check.choose_checked_precision(model, crit, torch.device("cpu"), "fp16", 64)
    assert chosen == "bf16"
    assert "fp16 forward produced non-finite outputs" in caplog.text and "falling back to bf16" in caplog.text


def test_self_check_falls_back_to_fp32(monkeypatch):
    real = F.silu
    monkeypatch.setattr(
        F,
        "silu",
        lambda x, inplace=False: real(x) * float("nan") if x.dtype in (torch.float16, torch.bfloat16) else real(x),
    )
    monkeypatch.setattr(amp_check, "bf16_supported", lambda d: True)
    model = build_model("n", nc=4)
    assert (
        amp_check.choose_checked_precision(model, DetectionLoss.from_model(model), torch.device("cpu"), "fp16", 64)
        == "off"
    )


def test_self_check_reports_large_error(monkeypatch):
    real = F.silu
    # a kernel that is 30% off whenever autocast is on
    monkeypatch.setattr(
        F, "silu", lambda x, inplace=False: real(x) * (1.3 if torch.is_autocast_enabled("cpu") else 1.0)
    )
    model = build_model("n", nc=4)
    res = amp_check.check_precision(model, DetectionLoss.from_model(model), torch.device("cpu"), "bf16", 64)
    assert not res.ok and "differ from fp32 by" in res.detail


def test_trainer_uses_checked_precision(tiny_data, tmp_path, fp16_silu_is_nan, monkeypatch):
    monkeypatch.setattr(amp_check, "bf16_supported", lambda d: False)
    t = make_trainer(tiny_data, tmp_path, amp="fp16")
    assert t.precision.amp == "off" and not t.precision.scaler.is_enabled()


def _ddp_worker(rank, world, port, out_dir):
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # rank 1 alone would see a broken fp16; the decision must still come from rank 0
        if rank == 1:
            real = F.silu
            F.silu = lambda x, inplace=False: real(x) * float("nan")
        model = build_model("n", nc=4)
        chosen = amp_check.choose_checked_precision(
            model, DetectionLoss.from_model(model), torch.device("cpu"), "fp16", 64
        )
        (out_dir / f"rank{rank}.txt").write_text(chosen)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_decision_is_broadcast_to_all_ranks(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, tmp_path), nprocs=2, join=True)
    assert (tmp_path / "rank0.txt").read_text() == "fp16"
    assert (tmp_path / "rank1.txt").read_text() == "fp16"


def test_half_inference_matches_fp32(trained_run, tiny_data, capsys, monkeypatch):
    import json

    from yolotrain.cli import main
    from yolotrain.engine import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)  # bf16 weights on any CPU
    best = trained_run / "weights" / "best.pt"
    args = ["val", f"model={best}", f"data={tiny_data}", "imgsz=64", "workers=0", "json=true", "amp=off"]
    assert main(args) == 0
    fp32 = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(args + ["half=true"]) == 0
    captured = capsys.readouterr()
    half = json.loads(captured.out.strip().splitlines()[-1])
    assert "running the model in bfloat16" in captured.err
    assert half["images"] == fp32["images"]
    assert abs(half["mAP50"] - fp32["mAP50"]) < 0.1


def test_precision_objects():
    cpu = torch.device("cpu")
    assert not Precision(cpu, "off").scaler.is_enabled() and not Precision(cpu, "off").enabled
    assert not Precision(cpu, "bf16").scaler.is_enabled()
    assert Precision(cpu, "fp16").scaler.is_enabled()
    assert choose_amp("auto", torch.device("cuda", 0))[0] == "fp16"
    amp, why = choose_amp("auto", cpu)
    assert amp in ("bf16", "off") and why
    with Precision(cpu, "bf16").autocast():
        y = nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16
