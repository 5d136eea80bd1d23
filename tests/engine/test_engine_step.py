"""TrainStep on its own: the window boundary, micro-batch gradients, and the out-of-memory replay."""

import copy
import gc
import types
import weakref

import pytest
import torch

from yolotrain.engine import step as step_module
from yolotrain.engine import validator as validator_module
from yolotrain.engine.oom import OOMInjector
from yolotrain.engine.precision import Precision
from yolotrain.engine.state import TrainState
from yolotrain.engine.step import TrainStep
from yolotrain.loss import DetectionLoss
from yolotrain.models import build_model

CPU = torch.device("cpu")


def make_batch() -> dict:
    """4 images of 64 px; image 0 has one box, images 1-3 have four each (unequal targets per part)."""
    g = torch.Generator().manual_seed(0)
    counts = [1, 4, 4, 4]
    n = sum(counts)
    xy = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    wh = torch.rand(n, 2, generator=g) * 0.2 + 0.1
    return {
        "img": (torch.rand(4, 3, 64, 64, generator=g) * 255).to(torch.uint8),
        "cls": torch.randint(0, 2, (n, 1), generator=g).float(),
        "bboxes": torch.cat([xy, wh], 1),
        "batch_idx": torch.repeat_interleave(torch.arange(4), torch.tensor(counts)).float(),
    }


def make_step(model, micro_batches=1, injector=None, accumulate=1, iters=10):
    state = TrainState()
    state.micro_batches = micro_batches
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    step = TrainStep(
        model, DetectionLoss.from_model(model), opt, Precision(CPU, "off"), None, state, device=CPU,
        oom_injector=injector,
    )  # fmt: skip
    step.configure(accumulate, iters)
    return step


def grads(model):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model("n", nc=2)


def test_boundary_every_accumulate_and_at_the_epoch_end(model):
    step = make_step(model, accumulate=3, iters=7)
    assert [i for i in range(7) if step.is_boundary(i)] == [2, 5, 6]


def test_split_batch_gives_the_unsplit_gradient(model):
    # BatchNorm in eval mode uses its running statistics, so splitting changes nothing but the normaliser:
    # the part with one box and the part with twelve must still be weighted by the whole batch's targets
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    other = copy.deepcopy(model)
    batch = make_batch()
    whole = make_step(model, micro_batches=1)
    items_whole = whole.forward_backward(batch, 0, 0)
    split = make_step(other, micro_batches=2)
    items_split = split.forward_backward(batch, 0, 0)
    for a, b in zip(grads(model), grads(other)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7 + 1e-4 * a.abs().max().item())
    assert torch.allclose(items_whole, items_split, rtol=1e-4)


def test_split_gradient_adds_to_the_windows_earlier_gradient(model):
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    other = copy.deepcopy(model)
    batch = make_batch()
    whole = make_step(model, micro_batches=1, accumulate=2)
    whole.forward_backward(batch, 0, 0)
    whole.forward_backward(batch, 0, 1)
    split = make_step(other, micro_batches=1, accumulate=2)
    split.forward_backward(batch, 0, 0)
    split.state.micro_batches = 2  # an out-of-memory split between two batches of one window
    split.forward_backward(batch, 0, 1)
    for a, b in zip(grads(model), grads(other)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7 + 1e-4 * a.abs().max().item())


def test_oom_replay_equals_a_window_split_from_the_start(model):
    model.train()  # BatchNorm in training mode: its running statistics move with every forward
    reference = copy.deepcopy(model)
    batch = make_batch()
    # iteration 0's backward fails for micro-batches above 2 images: the first (whole-batch) attempt ran
    # its forward, updating BatchNorm statistics, before failing
    failing = make_step(model, injector=OOMInjector({("backward", 0): 2}))
    failing(batch, 0, 0)
    assert failing.state.oom_events == 1 and failing.state.micro_batches == 2
    clean = make_step(reference, micro_batches=2)
    clean(batch, 0, 0)
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name  # weights after the step and BatchNorm statistics


def test_nonfinite_gradient_skips_the_step_and_counts_it(model):
    step = make_step(model)
    before = copy.deepcopy(model.state_dict())
    step.forward_backward(make_batch(), 0, 0)
    p = next(model.parameters())
    p.grad[(0,) * p.grad.dim()] = float("nan")
    step.optimizer_step()
    step.sync()  # the skip was counted on the device; a log point reads it into the train state
    assert step.state.skipped_steps == 1 and step.state.epoch_skipped == 1
    assert all(
        torch.equal(before[k], v) for k, v in model.state_dict().items() if "running" not in k and "num" not in k
    )


def test_oom_replay_starts_after_the_failed_attempts_tensors_are_gone(model, monkeypatch):
    # On a GPU a replay only fits when the failed attempt's activations are freed first; an error kept
    # alive (its traceback holds the frames) keeps them all, and every split fails down to one image.
    model.train()
    whole_batch_outputs = []  # weak references to the module outputs of the 4-image attempt

    def remember(module, args, output):
        if isinstance(output, torch.Tensor) and output.shape[0] == 4:
            whole_batch_outputs.append(weakref.ref(output))

    hooks = [m.register_forward_hook(remember) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    alive_at_free = []

    def free_memory(device=None):
        gc.collect()
        alive_at_free.append(sum(ref() is not None for ref in whole_batch_outputs))

    monkeypatch.setattr(step_module, "free_memory", free_memory)
    failing = make_step(model, injector=OOMInjector({("backward", 0): 2}))
    failing(make_batch(), 0, 0)
    for h in hooks:
        h.remove()
    assert failing.state.oom_events == 1 and len(whole_batch_outputs) > 50
    assert alive_at_free == [0]


def test_validation_oom_frees_the_failed_forward_before_the_smaller_one(monkeypatch):
    intermediates = []  # (batch size, weak reference) of every forward's intermediate tensor

    class FitsTwoImages(torch.nn.Module):
        def forward(self, x):
            y = x * 2  # allocated before the failure, as a real layer's output would be
            intermediates.append((x.shape[0], weakref.ref(y)))
            if x.shape[0] > 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (test)")
            return [y]

    alive_at_free = []

    def free_memory(device=None):
        gc.collect()
        alive_at_free.append(sum(ref() is not None for n, ref in intermediates if n > 2))

    monkeypatch.setattr(validator_module, "free_memory", free_memory)
    loader = types.SimpleNamespace(dataset=types.SimpleNamespace(records=[]))  # _forward never reads it
    val = validator_module.Validator(loader, ["a"], CPU, Precision(CPU, "off"), progress=False)
    out = val._forward(FitsTwoImages(), torch.ones(8, 3, 4, 4))
    assert val.chunk == 2 and out[0].shape[0] == 8
    assert alive_at_free == [0, 0]  # after the 8-image and the 4-image attempts


def test_enter_phase_applies_the_steps_share_of_a_plan(model, monkeypatch):
    from yolotrain.engine.phases import PhasePlan

    step = make_step(model, accumulate=1, iters=10)
    rewraps = []
    monkeypatch.setattr(step, "rewrap", lambda: rewraps.append(step.frozen))
    frozen = PhasePlan("frozen", ("backbone",), 4, 16, 0.02, 0.0005)
    step.enter_phase(frozen, 6)
    group = step.optimizer.param_groups[0]
    assert (step.accumulate, step.iters_per_epoch) == (16, 6) and rewraps == [("backbone",)]
    assert (group["initial_lr"], group["weight_decay"]) == (0.02, 0.0005)
    # the close-mosaic epoch changes only what the loader does: no new wrap, the window (and graphs) kept
    step.window = ["pending"]
    step.enter_phase(PhasePlan("frozen", ("backbone",), 4, 16, 0.02, 0.0005, mosaic=False), 6)
    assert step.window == ["pending"] and rewraps == [("backbone",)]
    # unfrozen: wrapped again for the new trainable set, a new accumulation and window
    step.enter_phase(PhasePlan("unfrozen", (), 16, 4, 0.01, 0.001), 2)
    assert rewraps == [("backbone",), ()] and (step.accumulate, step.iters_per_epoch) == (4, 2) and step.window == []
    assert (group["initial_lr"], group["weight_decay"]) == (0.01, 0.001)
