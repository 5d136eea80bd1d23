"""Training phases through the trainer: freeze/unfreeze, multi-scale, AutoBatch, OOM recovery, early stop."""

import functools

import pytest
import torch

from yolotrain.checkpoint_file import load_checkpoint
from yolotrain.config import resolve
from yolotrain.engine.trainer import Trainer
from yolotrain.errors import TrainingError
from yolotrain.eval import EvalResult


@pytest.fixture
def cfg_for(cfg_for):
    """The shared factory (conftest.py) with this module's defaults."""
    return functools.partial(cfg_for, epochs=2, val=False, amp="off")


def record(trainer, event, fn):
    trainer.callbacks.add(event, fn)


@pytest.mark.slow
def test_freeze_phase_switch(tiny_data, tmp_path, cfg_for):
    t = Trainer(
        cfg_for(
            freeze="backbone",
            freeze_epochs=1,
            freeze_batch=4,
            batch=8,
            nbs=16,
            optimizer="SGD",
            lr0=0.01,
            scale_lr=False,
        )
    )
    seen = []

    def on_batch(tr):
        bb_bn = [
            m for n, m in tr.model.named_modules() if n.startswith("backbone") and isinstance(m, torch.nn.BatchNorm2d)
        ]
        nk_bn = [m for n, m in tr.model.named_modules() if n.startswith("neck") and isinstance(m, torch.nn.BatchNorm2d)]
        seen.append(
            dict(
                epoch=tr.epoch,
                batch=tr.current_batch["img"].shape[0] if tr.current_batch is not None else None,
                bb_grad=any(p.requires_grad for p in tr.model.backbone.parameters()),
                bb_bn_train=any(m.training for m in bb_bn),
                neck_bn_train=all(m.training for m in nk_bn),
                accumulate=tr.run.step.accumulate,
                nb=tr.nb,
            )
        )

    snap = {}
    record(
        t,
        "on_train_start",
        lambda tr: snap.update(start={k: v.clone() for k, v in tr.model.backbone.state_dict().items()}),
    )
    record(t, "on_train_batch_start", on_batch)
    record(
        t,
        "on_train_epoch_end",
        lambda tr: snap.setdefault(tr.epoch, {k: v.clone() for k, v in tr.model.backbone.state_dict().items()}),
    )
    t.fit()
    e0 = [s for s in seen if s["epoch"] == 0]
    e1 = [s for s in seen if s["epoch"] == 1]
    assert len(e0) == 6 and len(e1) == 3  # 24 images: batch 4 while frozen, 8 after
    assert not any(s["bb_grad"] or s["bb_bn_train"] for s in e0) and all(s["neck_bn_train"] for s in e0)
    assert all(s["bb_grad"] and s["bb_bn_train"] for s in e1)
    assert {s["accumulate"] for s in e0} == {4} and {s["accumulate"] for s in e1} == {2}  # re-derived to nbs=16
    # frozen epoch: backbone weights and BN running statistics unchanged; afterwards they train
    assert all(torch.equal(snap["start"][k], snap[0][k]) for k in snap["start"] if "num_batches" not in k)
    assert any(not torch.equal(snap[0][k], snap[1][k]) for k in snap[0])


@pytest.mark.slow
def test_scale_lr_fits_lr_to_phase_batch(tiny_data, tmp_path, cfg_for):
    t = Trainer(
        cfg_for(
            freeze="backbone",
            freeze_epochs=1,
            freeze_batch=4,
            batch=8,
            nbs=64,
            optimizer="SGD",
            lr0=0.01,
            scale_lr=True,
            epochs=2,
        )
    )
    lrs = {}
    record(t, "on_train_epoch_start", lambda tr: lrs.setdefault(tr.epoch, (tr.phase.lr, tr.run.step.accumulate)))
    t.fit()
    assert lrs[0] == (pytest.approx(max(4 / 64 * 0.01, 5e-4)), 1)
    assert lrs[1] == (pytest.approx(8 / 64 * 0.01), 1)


@pytest.mark.slow
def test_resume_in_unfrozen_phase_is_exact(tiny_data, tmp_path, cfg_for):
    kw = dict(freeze="backbone", freeze_epochs=1, freeze_batch=4, batch=8, nbs=8, epochs=2, optimizer="SGD")
    Trainer(cfg_for(name="full", **kw)).fit()
    t = Trainer(cfg_for(name="cut", **kw))
    record(t, "on_fit_epoch_end", lambda tr: setattr(tr, "stop", True))  # stop after the frozen epoch
    t.fit()
    r = Trainer(cfg_for(resume=str(tmp_path / "cut" / "weights" / "last.pt"), epochs=2))
    phases = []
    record(r, "on_train_epoch_start", lambda tr: phases.append((tr.phase.name, tr.run.loaders.rank_batch)))
    r.fit()
    assert phases == [("unfrozen", 8)]
    a = load_checkpoint(tmp_path / "full" / "weights" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "weights" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kw, allowed",
    [
        (dict(multi_scale=0.5), {32, 64, 96}),
        (dict(min_size=[32, 64], max_size=64), {32, 64}),
    ],
)
def test_multi_scale_sizes(tiny_data, tmp_path, kw, allowed, cfg_for):
    t = Trainer(cfg_for(epochs=2, **kw))
    sizes = []
    record(t, "on_train_batch_end", lambda tr: sizes.append(tr.input_size))
    t.fit()
    assert len(sizes) == 6
    assert all(h == w and h in allowed and h % 32 == 0 for h, w in sizes)
    assert len(set(sizes)) > 1  # it does vary


@pytest.mark.slow
def test_autobatch_picks_and_records_a_batch(tiny_data, tmp_path, monkeypatch, cfg_for):
    import yolotrain.engine.autobatch_probe as autobatch_probe

    calls = []

    def fake_autobatch(step_fn, device, fraction, batch_sizes, multiple_of, **kw):
        step_fn(2)  # the real probe runs (forward + loss + backward on synthetic data)
        calls.append(fraction)
        return 4

    monkeypatch.setattr(autobatch_probe, "autobatch", fake_autobatch)
    t = Trainer(cfg_for(batch=0.7, epochs=1))
    t.fit()
    assert calls == [0.7] and t.run.planner.batch == 4 and t.cfg.batch == 4
    assert "batch: 4" in (t.save_dir / "args.yaml").read_text()
    assert load_checkpoint(t.wdir / "last.pt")["config"]["batch"] == 4


@pytest.mark.slow
def test_autobatch_real_probe_on_cpu(tiny_data, tmp_path, cfg_for):
    t = Trainer(cfg_for(batch=-1, epochs=1))
    t.fit()
    assert isinstance(t.run.planner.batch, int) and 1 <= t.run.planner.batch <= 1024


@pytest.mark.slow
def test_oom_is_recovered_with_micro_batches(tiny_data, tmp_path, monkeypatch, cfg_for):
    monkeypatch.setenv("YOLOTRAIN_INJECT_OOM", "1:4,4:2")  # step 1: > 4 images fail; step 4: > 2 fail
    t = Trainer(cfg_for(batch=8, nbs=16, epochs=2))  # accumulate 2: step 1 replays batch 0
    t.fit()
    assert t.run.state.oom_events == 2 and t.run.state.micro_batches == 4
    assert [f[0] for f in t.run.step.oom_injector.fired][:1] == [1]
    assert load_checkpoint(t.wdir / "last.pt")["phase"]["micro_batches"] == 4
    for v in t.model.state_dict().values():
        assert torch.isfinite(v.float()).all()


@pytest.mark.slow
def test_oom_below_one_image_is_a_clear_error(tiny_data, tmp_path, monkeypatch, cfg_for):
    monkeypatch.setenv("YOLOTRAIN_INJECT_OOM", "0:0")
    with pytest.raises(TrainingError, match="one image per micro-batch"):
        Trainer(cfg_for(batch=8, epochs=1)).fit()


@pytest.mark.slow
def test_oom_in_validation_halves_the_batch(tiny_data, tmp_path, monkeypatch, cfg_for):
    monkeypatch.setenv("YOLOTRAIN_INJECT_OOM", "val@0:3")
    t = Trainer(cfg_for(batch=8, epochs=1, val=True))
    t.fit()
    assert t.run.validator.chunk == 2 and t.metrics.images == 8


def scripted_validation(trainer, values):
    it = iter(values)

    def validate():
        return EvalResult(map50_95=next(it), map50=0.5)

    trainer.validate = validate


@pytest.mark.slow
def test_early_stopping_and_its_state_across_resume(tiny_data, tmp_path, cfg_for):
    t = Trainer(cfg_for(epochs=6, patience=2, val=True))
    record(t, "on_pretrain_routine_end", lambda tr: scripted_validation(tr, [0.5, 0.4, 0.3, 0.2, 0.1, 0.0]))
    t.fit()
    assert t.run.state.stopped_early and t.epoch == 2  # best at epoch 1, two epochs without improvement
    # a run that ended before patience ran out keeps its early-stop state in the checkpoint
    t2 = Trainer(cfg_for(name="b", epochs=2, patience=2, val=True))
    record(t2, "on_pretrain_routine_end", lambda tr: scripted_validation(tr, [0.5, 0.4]))
    t2.fit()
    state = load_checkpoint(t2.wdir / "last.pt")["early_stop"]
    assert state["best_epoch"] == 0
    r = Trainer(cfg_for(resume=str(t2.wdir / "last.pt"), epochs=6, patience=2))
    record(r, "on_pretrain_routine_end", lambda tr: scripted_validation(tr, [0.3, 0.9]))
    r.fit()
    assert r.run.state.stopped_early and r.epoch == 2  # not reset by the resume: stops after one more epoch


@pytest.mark.slow
def test_close_mosaic_applies_after_resume(tiny_data, tmp_path, cfg_for):
    t = Trainer(cfg_for(epochs=3, close_mosaic=1))
    record(t, "on_fit_epoch_end", lambda tr: setattr(tr, "stop", tr.epoch == 1))
    t.fit()
    r = Trainer(cfg_for(resume=str(t.wdir / "last.pt"), epochs=3))
    mosaic = []
    record(r, "on_train_epoch_start", lambda tr: None)
    record(r, "on_train_batch_start", lambda tr: mosaic.append(tr.train_loader.sampler.mosaic))
    r.fit()
    assert mosaic and not any(mosaic)


def test_phase_plan_is_a_pure_function_of_the_epoch():
    from yolotrain.engine.horizon import Horizon
    from yolotrain.engine.phases import PhasePlan, PhasePlanner

    cfg = resolve(dict(data="x", epochs=5, freeze_epochs=2, freeze_batch=4, nbs=64, weight_decay=0.0005))
    horizon = Horizon(epochs=5, warmup_iters=0, close_mosaic=0)  # mosaic in every epoch
    planner = PhasePlanner(cfg, ["backbone"], batch=16, base_lr=0.01, optimizer_name="SGD")
    # frozen: batch 4 accumulates 16 batches to the nominal 64; decay 0.0005 * 4 * 16 / 64
    assert planner.plan(0, horizon) == PhasePlan("frozen", ("backbone",), 4, 16, 0.01, 0.0005)
    assert planner.plan(1, horizon) == planner.plan(0, horizon)
    # unfrozen from epoch 2: batch 16, accumulate 4, decay 0.0005 * 16 * 4 / 64
    assert planner.plan(2, horizon) == PhasePlan("unfrozen", (), 16, 4, 0.01, 0.0005)
    scaled = PhasePlanner(cfg.replace(scale_lr=True), ["backbone"], 16, 0.01, "SGD")
    assert scaled.plan(3, horizon) == PhasePlan("unfrozen", (), 16, 1, pytest.approx(16 / 64 * 0.01), 0.0005 * 16 / 64)
    assert PhasePlanner(cfg, [], 16, 0.01, "SGD").plan(0, horizon).name == "unfrozen"  # nothing to freeze


def test_phase_plan_turns_mosaic_off_in_the_horizons_close_mosaic_tail():
    from yolotrain.engine.horizon import Horizon
    from yolotrain.engine.phases import PhasePlanner

    planner = PhasePlanner(resolve(dict(data="x", epochs=5)), [], batch=16, base_lr=0.01, optimizer_name="SGD")
    # 5 epochs, the last 2 without mosaic: epochs 0, 1, 2 (0-based) with it
    assert [planner.plan(e, Horizon(5, 0, 2)).mosaic for e in range(5)] == [True, True, True, False, False]
    # the same epoch in a longer (refitted) horizon still has mosaic
    assert planner.plan(3, Horizon(8, 0, 2)).mosaic
    # close_mosaic=0: mosaic in every epoch, the last included
    assert all(planner.plan(e, Horizon(5, 0, 0)).mosaic for e in range(5))


def test_build_run_returns_autobatch_choice_without_touching_the_callers_config(
    tiny_data, tmp_path, monkeypatch, cfg_for
):
    import yolotrain.engine.autobatch_probe as autobatch_probe
    from yolotrain.engine.build import build_run

    monkeypatch.setattr(autobatch_probe, "autobatch", lambda *a, **k: 4)
    cfg = cfg_for(batch=0.7, epochs=1)
    run = build_run(cfg, None, tmp_path / "exp", torch.device("cpu"))
    assert cfg.batch == 0.7 and run.cfg.batch == 4 and run.planner.batch == 4
    assert run.loaders.train_loader.batch_size == 4 and (tmp_path / "exp" / "args.yaml").is_file()
    parts = {type(p).__name__ for p in run.checkpointer.parts.values()}
    assert parts >= {"TrainState", "RngStreams", "Precision", "ModelEMA"}
