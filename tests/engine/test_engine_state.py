"""EMA, checkpoint safety, precision objects and the non-finite-loss guard."""

import os

import pytest
import torch
import torch.nn as nn

from yolotrain.engine.checkpoint import load_checkpoint, save_checkpoint, to_plain, transfer_weights
from yolotrain.engine.ema import ModelEMA
from yolotrain.engine.precision import Precision, choose_amp
from yolotrain.errors import CheckpointError
from yolotrain.models import build_model


def test_ema_ramps_and_stays_fp32():
    net = nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.fill_(3.0)  # what the EMA starts from
        net.bias.fill_(-1.0)
    ema = ModelEMA(net, decay=0.9, tau=10)
    assert ema.current_decay() == 0.0
    with torch.no_grad():
        net.weight.fill_(1.0)
        net.bias.fill_(1.0)
    # by hand: d1 = 0.9 * (1 - e^-0.1) = 0.9 * 0.0951626 = 0.0856463;
    # ema = d1 * old + (1 - d1) * new: weight 3 * 0.0856463 + 0.9143537 = 1.1712926, bias -0.0856463 + 0.9143537
    ema.update(net)
    assert ema.current_decay() == pytest.approx(0.0856463, abs=1e-7)
    assert torch.allclose(ema.ema.weight, torch.full((2, 2), 1.1712926), atol=1e-6)
    assert torch.allclose(ema.ema.bias, torch.full((2,), 0.8287074), atol=1e-6)
    # d2 = 0.9 * (1 - e^-0.2) = 0.1631423; weight 1 + d2 * (1.1712926 - 1) = 1.0279451
    ema.update(net)
    assert torch.allclose(ema.ema.weight, torch.full((2, 2), 1.0279451), atol=1e-6)
    for _ in range(200):
        ema.update(net)
    assert ema.current_decay() == pytest.approx(0.9, abs=1e-6)
    assert ema.ema.weight.dtype == torch.float32 and not ema.ema.weight.requires_grad
    net_half = nn.Linear(2, 2).to(torch.bfloat16)
    assert ModelEMA(net_half).ema.weight.dtype == torch.float32


def test_checkpoint_round_trip_and_atomic(tmp_path):
    import numpy as np

    path = tmp_path / "w" / "last.pt"
    state = {
        "model": {"a": torch.ones(2)},
        "epoch": np.int64(3),
        "ver": torch.__version__,
        "p": tmp_path,
        "m": {"x": np.float32(0.5)},
    }
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3 and type(loaded["epoch"]) is int and loaded["ver"] == str(torch.__version__)
    assert torch.equal(loaded["model"]["a"], torch.ones(2))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp files left behind
    with pytest.raises(TypeError):
        to_plain({"bad": object()})


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        save_checkpoint({"epoch": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pt"
    torch.save({"format": "yolotrain-ckpt-1", "payload": Evil()}, bad)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(bad)
    assert not (tmp_path / "PWNED").exists()


def test_truncated_and_foreign_files(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint({"model": {"w": torch.randn(100, 100)}}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(cut)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="not a yolotrain checkpoint"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "text.pt")


def test_transfer_weights_counts_mismatches():
    src = build_model("n", nc=80)
    dst = build_model("n", nc=3)
    counts = transfer_weights(dst, src.state_dict())
    assert counts["mismatched"] > 0 and counts["missing"] == 0 and counts["unexpected"] == 0
    assert counts["matched"] + counts["mismatched"] == len(src.state_dict())
    body = [k for k in src.state_dict() if not k.startswith("head.")]
    assert all(torch.equal(dst.state_dict()[k], src.state_dict()[k]) for k in body)


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
