"""A skipped optimizer step changes nothing (weights, momentum, Adam moments, EMA), decided on the device."""

import copy

import pytest
import torch
import torch.nn as nn

from yolotrain.engine.ema import ModelEMA
from yolotrain.engine.optim import build_optimizer, param_groups, skippable_step
from yolotrain.engine.optimizer_step import OptimizerStep
from yolotrain.engine.precision import Precision
from yolotrain.engine.step_counters import StepCounters
from yolotrain.utils.host_sync import HostSyncCounter

CPU = torch.device("cpu")
TRUE, FALSE = torch.tensor(True), torch.tensor(False)


def net():
    torch.manual_seed(0)
    # eval mode: BatchNorm's running statistics move with forwards, not steps; here only steps may change things
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2)).eval()


def backward(model, precision=None, poison=False):
    out = model(torch.rand(2, 3, 6, 6)).sum()
    (out if precision is None else precision.scaler.scale(out)).backward()
    if poison:
        g = model[0].weight.grad
        g[0, 0, 0, 0] = float("inf")


def snapshot(model, opt, ema):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    moments = [{k: v.clone() for k, v in s.items() if torch.is_tensor(v)} for s in opt.state.values()]
    return state, moments, {k: v.clone() for k, v in ema.ema.state_dict().items()}, ema.updates


def assert_same(a, b):
    for x, y in zip(a[:3], b[:3]):
        items = zip(x.values(), y.values()) if isinstance(x, dict) else zip(x, y)
        for u, v in items:
            if isinstance(u, dict):
                assert all(torch.equal(u[k], v[k]) for k in u)
            else:
                assert torch.equal(u, v)
    assert a[3] == b[3]


@pytest.mark.parametrize("name", ["SGD", "AdamW"])
@pytest.mark.parametrize("amp", ["off", "fp16"])
def test_a_skipped_step_changes_nothing_and_reads_nothing(name, amp):
    model = net()
    model(torch.rand(2, 3, 6, 6))  # materialise the lazy layer
    opt, _, _ = build_optimizer(model, name, 0.01, 0.9, 1e-3, 100, 2)
    assert opt.defaults.get("fused")  # fused kernels: the skip is the kernel's own found_inf
    ema = ModelEMA(model, tau=3.0)
    precision = Precision(CPU, amp)
    counters = StepCounters(CPU)
    step = OptimizerStep(model, opt, precision, ema, counters)
    backward(model, precision)
    step(TRUE)  # one real step, so momentum / moments exist
    before = snapshot(model, opt, ema)
    backward(model, precision, poison=True)
    with HostSyncCounter() as reads:
        step(TRUE)  # an overflowed gradient
    assert reads.count == 0, reads.report()
    assert_same(snapshot(model, opt, ema), before)
    backward(model, precision)
    step(FALSE)  # no finite loss in the window
    assert_same(snapshot(model, opt, ema), before)
    assert counters.read().skipped == 2
    backward(model, precision)
    step(TRUE)
    after = snapshot(model, opt, ema)
    assert not torch.equal(after[0]["0.weight"], before[0]["0.weight"]) and after[3] == before[3] + 1


def test_a_skipped_first_sgd_step_leaves_zero_momentum():
    # fused SGD allocates its momentum buffers uninitialised on the first step; skipped, they would stay garbage
    model = net()
    model(torch.rand(2, 3, 6, 6))
    opt, _, _ = build_optimizer(model, "SGD", 0.01, 0.9, 1e-3, 100, 2)
    reference = copy.deepcopy(model)
    decay, norm, bias = param_groups(reference)
    groups = [{"params": decay, "weight_decay": 1e-3}, {"params": norm + bias, "weight_decay": 0.0}]
    ref_opt = torch.optim.SGD(groups, lr=0.01, momentum=0.9, nesterov=True, foreach=False)  # the plain loop
    backward(model)
    skippable_step(opt, TRUE)
    assert all(torch.count_nonzero(s["momentum_buffer"]) == 0 for s in opt.state.values())
    for m, o in ((model, opt), (reference, ref_opt)):  # the next real step equals a fresh optimizer's first
        o.zero_grad()
        torch.manual_seed(1)
        backward(m)
        if o is opt:
            skippable_step(o, FALSE)
        else:
            o.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(a, b, atol=1e-7)
