"""cuda_graphs=true on a CPU: the step's wiring around the capture, with a stand-in for make_graphed_callables.

Capturing needs CUDA (``benchmarks/gpu_check.py`` measures it on a GPU). What a CPU can check: the captured
callable computes the same loss and gradients as the eager step, it reads nothing back and copies nothing from
the host (either would break a real capture), one graph is made per shape and reused, and the fallbacks.
"""

import logging

import torch

from yolotrain.engine.cuda_graphs import GraphedForward
from yolotrain.engine.ema import ModelEMA
from yolotrain.engine.optim import build_optimizer
from yolotrain.engine.precision import Precision
from yolotrain.engine.state import TrainState
from yolotrain.engine.step import TrainStep
from yolotrain.loss import DetectionLoss
from yolotrain.models import build_model
from yolotrain.utils.host_sync import HostSyncCounter

CPU = torch.device("cpu")
CAPTURE_ERROR = "operation not permitted when stream is capturing"


class StandInCapture:
    """Checks what torch's capture checks and runs its warm-up, then hands back the callable itself as the graph.

    Args:
        fail: Names of the captured module classes whose capture raises (as an uncapturable op would on a GPU).
    """

    def __init__(self, fail=()):
        self.fail = set(fail)
        self.captured = []  # (module class, shapes of the sample args)

    def __call__(self, module, args, num_warmup_iters):
        name = type(module).__name__
        if name in self.fail:
            raise RuntimeError(CAPTURE_ERROR)
        assert all(isinstance(a, torch.Tensor) for a in args) and not module._forward_hooks
        params = [p for p in module.parameters() if p.requires_grad]
        with HostSyncCounter() as reads:  # torch warms up with real forwards and autograd.grad, then captures
            for _ in range(num_warmup_iters):
                outs = [o for o in module(*args) if o.requires_grad]
                torch.autograd.grad(outs, params, [torch.ones_like(o) for o in outs], allow_unused=True)
        assert reads.count == 0, reads.report()  # a read or host copy here fails a real capture
        self.captured.append((name, [tuple(a.shape) for a in args]))
        return module


def make_batch(counts, seed=0):
    """64 px images with ``counts[i]`` boxes in image i."""
    g = torch.Generator().manual_seed(seed)
    n = sum(counts)
    return {
        "img": (torch.rand(len(counts), 3, 64, 64, generator=g) * 255).to(torch.uint8),
        "cls": torch.randint(0, 2, (n, 1), generator=g).float(),
        "bboxes": torch.cat([torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.2 + 0.1], 1),
        "batch_idx": torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)).float(),
    }


# four batches of four images: label buckets 4, 4, 8, 4 (the largest count rounded up to a power of two)
BATCHES = [make_batch(c, seed) for seed, c in enumerate([[1, 4, 0, 3], [2, 2, 3, 0], [8, 1, 0, 2], [0, 0, 1, 4]])]


def make_step(capture=None):
    torch.manual_seed(0)
    model = build_model("n", nc=2)
    opt, _, _ = build_optimizer(model, "AdamW", 0.001, 0.9, 5e-4, 100, 2)
    criterion = DetectionLoss.from_model(model)
    step = TrainStep(model, criterion, opt, Precision(CPU, "off"), ModelEMA(model), TrainState(), device=CPU)
    step.configure(2, 100)
    if capture is not None:  # what TrainStep builds on CUDA, here with the stand-in
        step.graphs = GraphedForward(model, criterion, capture=capture)
    return step


def train(step, batches=BATCHES):
    items = [step(batch, 0, i).items.clone() for i, batch in enumerate(batches)]
    return items, dict(step.model.state_dict())


def assert_same_training(a, b):
    (items_a, state_a), (items_b, state_b) = a, b
    assert all(torch.equal(x, y) for x, y in zip(items_a, items_b))
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a), "weights or BatchNorm statistics differ"


def test_the_whole_step_is_captured_once_per_shape_and_trains_like_the_eager_step():
    capture = StandInCapture()
    step = make_step(capture)
    graphed = train(step)
    assert capture.captured == [  # the loss is inside: the captured module takes the labels
        ("_StepLoss", [(4, 3, 64, 64), (4, 4, 5), (4, 4)]),
        ("_StepLoss", [(4, 3, 64, 64), (4, 8, 5), (4, 8)]),
    ]
    assert step.graphs.counts() == {"whole_step": 2, "model_only": 0, "whole_step_failed": 0, "model_failed": 0}
    assert_same_training(graphed, train(make_step()))  # warm-ups left BatchNorm's statistics as they were
    step.graphs.reset()  # a freeze phase changes the trainable parameters: every graph is dropped
    assert step.graphs.counts() == {"whole_step": 0, "model_only": 0, "whole_step_failed": 0, "model_failed": 0}


def test_a_step_that_cannot_be_captured_whole_captures_the_model_with_one_log_line(caplog):
    capture = StandInCapture(fail={"_StepLoss"})
    with caplog.at_level(logging.INFO, logger="yolotrain"):
        graphed = train(make_step(capture), BATCHES[:2])
    lines = [r.getMessage() for r in caplog.records if "cuda_graphs" in r.getMessage()]
    assert lines == [
        f"cuda_graphs: capturing the model with the loss failed at input (4, 3, 64, 64) (RuntimeError: "
        f"{CAPTURE_ERROR}); the model alone is captured, the loss runs eagerly"
    ]
    assert capture.captured == [("_Outputs", [(4, 3, 64, 64)])]
    assert_same_training(graphed, train(make_step(), BATCHES[:2]))


def test_a_shape_that_cannot_be_captured_at_all_trains_eagerly(caplog):
    capture = StandInCapture(fail={"_StepLoss", "_Outputs"})
    step = make_step(capture)
    with caplog.at_level(logging.INFO, logger="yolotrain"):
        graphed = train(step, BATCHES[:2])
    lines = [r.getMessage().split(" (")[0] for r in caplog.records if "cuda_graphs" in r.getMessage()]
    assert lines == [
        "cuda_graphs: capturing the model with the loss failed at input",
        "cuda_graphs: capturing the model failed at input",
    ]  # once each: the second batch of the same shape does not try again
    assert step.graphs.counts() == {"whole_step": 0, "model_only": 0, "whole_step_failed": 1, "model_failed": 1}
    assert_same_training(graphed, train(make_step(), BATCHES[:2]))


def test_a_split_batch_runs_its_parts_through_the_models_graph():
    capture = StandInCapture()
    step = make_step(capture)
    step.state.micro_batches = 2  # as after an out-of-memory error
    train(step, BATCHES[:2])
    assert capture.captured == [("_Outputs", [(2, 3, 64, 64)])]  # its normaliser is the whole batch's
