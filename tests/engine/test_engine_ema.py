"""ema.py: the EMA's decay ramp and values, computed by hand."""

import pytest
import torch
import torch.nn as nn

from yolotrain.engine.ema import ModelEMA


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
