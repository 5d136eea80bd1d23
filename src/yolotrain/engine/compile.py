"""``compile=true``: ``torch.compile`` on the training model only.

The step trains through the compiled module; the plain module stays what the optimizer steps, the EMA
averages, validation runs (the EMA copy, or the plain model in eval mode: compiling those would compile
a second graph for another mode) and the checkpoint saves, so saved weights never carry the
``_orig_mod.`` prefix of the compiled wrapper and a compiled run resumes with or without compiling.

Multi-scale training compiles with dynamic height and width from the start (``dynamic=True``): one graph
for every size instead of a recompilation per size. Without it, the shapes start static; the one other
batch size an epoch's last batch may have makes torch mark that dimension dynamic (one recompilation).

A compile failure (no C compiler for inductor, an unsupported platform or operator) shows at the first
forward; the step then logs one warning and trains without compiling (:func:`is_compile_error`).
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

LOGGER = logging.getLogger("yolotrain")


def compile_model(model: nn.Module, backend: str, dynamic: bool) -> nn.Module:
    """The compiled training module around ``model`` (which keeps its own parameters and state dict).

    Args:
        model: The plain model.
        backend: ``inductor`` (what ``compile=true`` means), ``aot_eager`` or ``eager`` (for debugging).
        dynamic: Compile with dynamic shapes from the start (multi-scale); else static, dynamic on demand.
    """
    LOGGER.info(f"compile: torch.compile(backend={backend}, dynamic={'true' if dynamic else 'on demand'})")
    # The modules' float attributes (BatchNorm's eps and momentum, Upsample's factor) are constants of the model.
    # Left unspecialised (dynamo's default), each becomes a symbolic input under dynamic shapes, which AOT
    # autograd then specialises after all by restarting the whole trace: the multi-scale compile test spent
    # 54 s compiling in two attempts. Process-wide, as it is torch.export's default.
    torch._dynamo.config.specialize_float = True
    return torch.compile(model, backend=backend, dynamic=True if dynamic else None)


def is_compile_error(e: BaseException) -> bool:
    """Whether ``e`` came from torch's compiler stack (dynamo, AOT autograd, inductor) rather than the model."""
    return any(c.__module__.startswith(("torch._dynamo", "torch._inductor")) for c in type(e).__mro__)
