"""freeze.py: what to freeze, frozen BatchNorm, the batch-fitted lr, the phase of an epoch."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from yolotrain.engine.freeze import keep_frozen_bn_eval, phase_at, resolve_freeze, scale_lr, set_frozen
from yolotrain.errors import ConfigError
from yolotrain.models import build_model


@pytest.fixture(scope="module")
def model():
    return build_model("n", nc=3)


def _numel_under(model, prefix):
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix + "."))


# ----------------------------------------------------------------------------------------- freeze
def test_resolve_backbone_and_nothing(model):
    assert resolve_freeze(model, "backbone") == ["backbone"]
    for spec in (None, "", 0, False, "0"):
        assert resolve_freeze(model, spec) == []


def test_resolve_layer_count_runs_backbone_then_neck(model):
    five = resolve_freeze(model, 5)
    assert five == ["backbone.stem", "backbone.stage2", "backbone.stage3", "backbone.stage4", "backbone.stage5"]
    # the neck's parameter-free upsample is not a layer: the sixth layer is the first fusion block
    assert resolve_freeze(model, 6)[-1] == "neck.td4"
    assert resolve_freeze(model, "3") == five[:3]
    assert resolve_freeze(model, 12)[-1] == "head.box"  # 5 + 6 + the box branch
    with pytest.raises(ConfigError, match="0..12"):
        resolve_freeze(model, 13)  # would freeze everything
    with pytest.raises(ConfigError, match="freeze"):
        resolve_freeze(model, -1)


def test_resolve_module_names(model):
    assert resolve_freeze(model, ["backbone.stem", "neck.td4"]) == ["backbone.stem", "neck.td4"]
    assert resolve_freeze(model, "backbone.stem, neck.td4") == ["backbone.stem", "neck.td4"]
    # nested and repeated names collapse onto the outer one
    assert resolve_freeze(model, ["backbone.stem", "backbone", "backbone"]) == ["backbone"]
    with pytest.raises(ConfigError, match=r"'backbone\.stage9'.*backbone\.stem"):
        resolve_freeze(model, ["backbone.stage9"])
    with pytest.raises(ConfigError, match="every parameter"):
        resolve_freeze(model, ["backbone", "neck", "head"])
    with pytest.raises(ConfigError):
        resolve_freeze(model, True)


def test_set_frozen_counts_and_clears_grads():
    model = build_model("n", nc=3)
    prefixes = resolve_freeze(model, "backbone")
    sum(o.sum() for o in model(torch.rand(1, 3, 64, 64))).backward()
    n_backbone = _numel_under(model, "backbone")
    assert set_frozen(model, prefixes, True) == n_backbone
    assert set_frozen(model, prefixes, True) == 0  # idempotent: a resume may apply it again
    for name, p in model.named_parameters():
        frozen = name.startswith("backbone.")
        assert p.requires_grad is not frozen
        assert (p.grad is None) is frozen
    model.zero_grad(set_to_none=True)
    out = model(torch.rand(2, 3, 64, 64))
    sum(o.sum() for o in out).backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("backbone."))
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("neck."))
    assert set_frozen(model, prefixes, False) == n_backbone
    assert all(p.requires_grad for p in model.parameters())


def test_frozen_batchnorm_stays_in_eval_and_keeps_its_statistics():
    model = build_model("n", nc=3)
    prefixes = resolve_freeze(model, 5)
    set_frozen(model, prefixes, True)
    model.train()
    switched = keep_frozen_bn_eval(model, prefixes)
    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert switched == sum(n.startswith("backbone.") for n in bns) > 0
    for name, bn in bns.items():
        assert bn.training is not name.startswith("backbone.")
    before = {n: bn.running_mean.clone() for n, bn in bns.items()}
    model(torch.rand(2, 3, 64, 64) * 3)
    for name, bn in bns.items():
        unchanged = torch.equal(before[name], bn.running_mean)
        assert unchanged is name.startswith("backbone."), name
    model.train()  # undoing it is simply train() again
    assert all(bn.training for bn in bns.values())


def test_scale_lr_clamps_per_optimizer():
    assert scale_lr(16, 64, 0.01, "SGD") == pytest.approx(0.0025)
    assert scale_lr(1, 64, 0.01, "SGD") == pytest.approx(5e-4)  # floor
    assert scale_lr(1024, 64, 0.01, "sgd") == pytest.approx(5e-2)  # ceiling
    assert scale_lr(32, 64, 1e-3, "AdamW") == pytest.approx(5e-4)
    assert scale_lr(2, 64, 1e-3, "Adam") == pytest.approx(1e-4)
    assert scale_lr(640, 64, 1e-3, "AdamW") == pytest.approx(2e-3)
    # limits bound only what scaling adds: the user's own lr0 is never overridden
    assert scale_lr(64, 64, 1e-5, "AdamW") == pytest.approx(1e-5)
    assert scale_lr(64, 64, 0.1, "SGD") == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="optimizer"):
        scale_lr(16, 64, 0.01, "auto")
    with pytest.raises(ConfigError):
        scale_lr(0, 64, 0.01, "SGD")


def test_phase_is_a_function_of_the_epoch():
    assert [phase_at(e, 2) for e in range(4)] == ["frozen", "frozen", "unfrozen", "unfrozen"]
    assert phase_at(0, 0) == "unfrozen"


def test_freezer_applies_the_models_share_of_a_plan(caplog):
    from yolotrain.engine.freeze import Freezer
    from yolotrain.engine.phases import PhasePlan

    net = build_model("n", nc=3)
    freezer = Freezer(net, ["backbone"])
    with caplog.at_level("INFO", logger="yolotrain"):
        freezer.enter_phase(PhasePlan("frozen", ("backbone",), 4, 16, 0.01, 0.0), 0)
    assert not any(p.requires_grad for p in net.backbone.parameters())
    assert all(p.requires_grad for p in net.neck.parameters())
    assert "phase: frozen from epoch 1" in caplog.text
    freezer.train(net)  # train mode, with the frozen part's BatchNorm statistics kept fixed
    bns = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.training != n.startswith("backbone.") for n, m in bns)
    freezer.enter_phase(PhasePlan("unfrozen", (), 16, 4, 0.01, 0.0), 2)
    freezer.train(net)
    assert all(p.requires_grad for p in net.parameters()) and all(m.training for _, m in bns)
    nothing = Freezer(net, [])  # freeze= unset: a plan never touches the model
    nothing.enter_phase(PhasePlan("frozen", ("backbone",), 4, 16, 0.01, 0.0), 0)
    assert all(p.requires_grad for p in net.parameters())
