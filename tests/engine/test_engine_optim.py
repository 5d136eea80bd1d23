"""Optimizer groups, accumulation, weight-decay scaling and the position-based schedule."""

import math

import pytest
import torch.nn as nn

from yolotrain.engine.optim import Schedule, accumulation, build_optimizer, param_groups, scaled_weight_decay


def tiny_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1, bias=True))


def test_three_param_groups():
    net = tiny_net()
    decay, norm, bias = param_groups(net)
    assert [p.shape for p in decay] == [net[0].weight.shape, net[2].weight.shape]
    assert [p.shape for p in norm] == [net[1].weight.shape]
    assert {id(p) for p in bias} == {id(net[1].bias), id(net[2].bias)}
    opt, name, lr = build_optimizer(net, "SGD", 0.01, 0.9, 5e-4, total_iters=10, nc=4)
    assert name == "SGD" and opt.defaults["nesterov"]
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0, 0.0]


@pytest.mark.parametrize("iters,expected", [(100, "AdamW"), (50_000, "SGD")])
def test_auto_optimizer(iters, expected):
    _, name, lr = build_optimizer(tiny_net(), "auto", 0.01, 0.937, 5e-4, total_iters=iters, nc=4)
    assert name == expected
    assert lr == (0.01 if expected == "SGD" else pytest.approx(0.00125))


@pytest.mark.parametrize("batch,acc", [(16, 4), (64, 1), (128, 1), (24, 3), (1, 64)])
def test_accumulation_and_decay(batch, acc):
    assert accumulation(batch, 64) == acc
    assert scaled_weight_decay(5e-4, batch, acc, 64) == pytest.approx(5e-4 * batch * acc / 64)


def make_schedule(cos=False):
    return Schedule(
        epochs=10,
        iters_per_epoch=10,
        lrf=0.01,
        cos_lr=cos,
        warmup_iters=20,
        warmup_bias_lr=0.1,
        warmup_momentum=0.8,
        momentum=0.9,
    )


def test_warmup_ramps():
    opt, *_ = build_optimizer(tiny_net(), "SGD", 0.01, 0.9, 0.0, 10, 4)
    s = make_schedule()
    s.apply(opt, 0, 0)
    assert opt.param_groups[0]["lr"] == 0.0 and opt.param_groups[2]["lr"] == pytest.approx(0.1)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.8)
    s.apply(opt, 1, 0)  # iteration 10 of 20: halfway
    target = 0.01 * s.factor(1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(target / 2)
    assert opt.param_groups[2]["lr"] == pytest.approx(0.1 + (target - 0.1) / 2)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.85)
    s.apply(opt, 5, 0)  # after warmup: all groups follow the decay
    assert {round(g["lr"], 12) for g in opt.param_groups} == {round(0.01 * s.factor(5.0), 12)}


@pytest.mark.parametrize("cos", [False, True])
def test_decay_endpoints_and_monotonic(cos):
    s = make_schedule(cos)
    assert s.factor(0) == pytest.approx(1.0) and s.factor(10) == pytest.approx(0.01)
    vals = [s.factor(e / 4) for e in range(41)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    if cos:
        assert s.factor(5) == pytest.approx((1 + 0.01) / 2)


def test_schedule_is_a_function_of_position():
    """Resuming needs nothing but the position: applying (e, i) twice gives the same values."""
    opt1, *_ = build_optimizer(tiny_net(), "AdamW", 0.002, 0.9, 0.0, 10, 4)
    opt2, *_ = build_optimizer(tiny_net(), "AdamW", 0.002, 0.9, 0.0, 10, 4)
    s = make_schedule()
    for e in range(3):
        for i in range(10):
            s.apply(opt1, e, i)
    s.apply(opt2, 2, 9)
    for g1, g2 in zip(opt1.param_groups, opt2.param_groups):
        assert g1["lr"] == g2["lr"] and g1["betas"] == g2["betas"]
    assert not math.isnan(opt1.param_groups[0]["lr"])
