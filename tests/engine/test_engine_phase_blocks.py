"""Freeze phases, learning-rate fitting, multi-scale sizes and early stopping (issue #6 building blocks)."""

from __future__ import annotations

import os
import random
import socket
from datetime import timedelta

import pytest
import torch
import torch.nn as nn

from yolotrain.engine.early_stop import EarlyStopping
from yolotrain.engine.freeze import keep_frozen_bn_eval, phase_at, resolve_freeze, scale_lr, set_frozen
from yolotrain.engine.multiscale import MultiScale, pick_synchronized, resize_batch
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


# ----------------------------------------------------------------------------------------- multi-scale
def test_fraction_mode_sizes_in_bounds_and_on_stride():
    ms = MultiScale(640, stride=32, fraction=0.5, seed=3)
    assert ms.enabled
    sizes = [ms.pick(e, i, (640, 640)) for e in range(5) for i in range(100)]
    sides = {h for h, _ in sizes}
    assert all(h == w for h, w in sizes)
    assert all(320 <= s <= 960 and s % 32 == 0 for s in sides)
    assert min(sides) == 320 and max(sides) == 960 and len(sides) == 21  # the whole range is reachable
    assert ms.largest() == (960, 960)
    # a range holding no stride multiple falls back to imgsz on the stride
    assert MultiScale(64, stride=32, fraction=0.1).pick(0, 0) == (64, 64)


def test_draws_are_deterministic_and_leave_global_rng_alone():
    a, b = MultiScale(640, fraction=0.5, seed=7), MultiScale(640, fraction=0.5, seed=7)
    py_state, torch_state = random.getstate(), torch.get_rng_state()
    seq = [a.pick(2, i) for i in range(50)]
    assert random.getstate() == py_state and torch.equal(torch.get_rng_state(), torch_state)
    assert seq == [b.pick(2, i) for i in range(50)]
    assert a.pick(2, 13) == seq[13]  # any order: a resumed run draws the same size at the same position
    assert seq != [MultiScale(640, fraction=0.5, seed=8).pick(2, i) for i in range(50)]
    assert seq != [a.pick(3, i) for i in range(50)]


def test_min_size_mode_keeps_aspect_and_caps_long_side():
    ms = MultiScale(640, stride=32, min_sizes=[640, 672, 704], max_size=1000, seed=0)
    for i in range(60):
        h, w = ms.pick(0, i, (480, 640))
        assert h % 32 == 0 and w % 32 == 0 and w <= 1000 and h < w
        assert h in (640, 672, 704)
        assert abs(w / h - 4 / 3) < 32 / h  # ratio kept up to stride rounding
    assert {ms.pick(0, i, (480, 640)) for i in range(60)} == {(640, 864), (672, 896), (704, 928)}
    h, w = ms.pick(0, 0, (640, 480))  # portrait: the long side is the height
    assert h > w and w in (640, 672, 704)
    # a very wide batch hits the cap, so the short side shrinks to keep the ratio
    assert MultiScale(640, min_sizes=[640], max_size=1000).pick(0, 0, (100, 400)) == (256, 992)
    assert ms.largest((480, 640)) == (704, 928)
    assert ms.largest() == (704, 992)  # worst case over aspect ratios


def test_disabled_and_invalid_settings():
    ms = MultiScale(640)
    assert not ms.enabled and ms.pick(0, 0, (480, 640)) == (480, 640) and ms.largest() == (640, 640)
    for kwargs in (
        {"fraction": 1.0},
        {"fraction": -0.1},
        {"min_sizes": [640, 0]},
        {"min_sizes": [640], "max_size": 16},
        {"fraction": 0.5, "min_sizes": [640]},
    ):
        with pytest.raises(ConfigError):
            MultiScale(640, stride=32, **kwargs)


def test_resize_batch():
    imgs = torch.rand(2, 3, 64, 64)
    assert resize_batch(imgs, (64, 64)) is imgs
    out = resize_batch(imgs, (96, 128))
    assert out.shape == (2, 3, 96, 128)
    assert out.mean().item() == pytest.approx(imgs.mean().item(), abs=0.02)
    with pytest.raises(ValueError, match="float"):
        resize_batch(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), (16, 16))


def test_pick_synchronized_in_one_process_is_pick():
    ms = MultiScale(640, fraction=0.5, seed=1)
    assert [pick_synchronized(ms, 0, i) for i in range(10)] == [ms.pick(0, i) for i in range(10)]


def _sync_worker(rank, world, port, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=30))
    try:
        ms = MultiScale(640, fraction=0.5, seed=100 + rank)  # deliberately different local seeds
        sizes = [pick_synchronized(ms, 1, i, (640, 640)) for i in range(20)]
        (out_dir / f"rank{rank}.txt").write_text(repr(sizes))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.timeout(90)
def test_pick_synchronized_agrees_across_two_ranks(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_sync_worker, args=(2, port, tmp_path), nprocs=2, join=True)
    r0, r1 = (eval((tmp_path / f"rank{r}.txt").read_text()) for r in (0, 1))
    assert r0 == r1
    assert r0 == [MultiScale(640, fraction=0.5, seed=100).pick(1, i) for i in range(20)]  # rank 0's draw
    # the local seeds really differ, so agreement comes from the broadcast
    assert r0 != [MultiScale(640, fraction=0.5, seed=101).pick(1, i) for i in range(20)]


# ----------------------------------------------------------------------------------------- early stopping
def test_early_stopping_counts_epochs_since_best():
    es = EarlyStopping(patience=3)
    decisions = [es.update(e, f) for e, f in enumerate([0.1, 0.2, 0.2, 0.1, 0.15])]
    assert decisions == [False, False, False, False, True]  # 0.2 again is not an improvement
    assert es.best_epoch == 1 and es.best_fitness == pytest.approx(0.2)
    msg = es.message()
    assert "best epoch 2" in msg and "patience=" in msg and "patience=0" in msg


def test_early_stopping_state_round_trip_resumes_the_count():
    fits = [0.3, 0.5, 0.4, 0.45, 0.2, 0.1]
    whole = EarlyStopping(4)
    expected = [whole.update(e, f) for e, f in enumerate(fits)]
    first = EarlyStopping(4)
    for e, f in enumerate(fits[:3]):
        first.update(e, f)
    state = first.state_dict()
    assert state == {"best_epoch": 1, "best_fitness": 0.5, "last_epoch": 2}
    resumed = EarlyStopping(4)
    resumed.load_state_dict(dict(state))
    assert [resumed.update(e, f) for e, f in enumerate(fits[3:], start=3)] == expected[3:]
    assert expected[-1] is True
    longer = EarlyStopping(10)  # a resumed run may raise patience
    longer.load_state_dict(state)
    assert not any(longer.update(e, f) for e, f in enumerate(fits[3:], start=3))


def test_early_stopping_disabled_and_unvalidated_epochs():
    off = EarlyStopping(0)
    assert not any(off.update(e, 0.0) for e in range(50)) and off.best_epoch == 0
    es = EarlyStopping(2)
    assert not es.update(0, None)  # nothing validated yet: never stop blind
    assert not es.update(1, 0.4)
    assert not es.update(2, float("nan"))
    assert es.update(3, None)  # epochs count even when not validated (val_period > 1)
