"""Two-phase (frozen, then unfrozen) training: which parameters to freeze and the batch-fitted lr.

The phase is a pure function of the epoch (:func:`phase_at`), so a resumed run lands in the right phase
by calling the same idempotent functions again::

    prefixes = resolve_freeze(model, cfg.freeze)              # once, on the plain (unwrapped) model
    frozen = phase_at(epoch, cfg.freeze_epochs) == "frozen"
    set_frozen(model, prefixes, frozen)
    model.train()
    if frozen:
        keep_frozen_bn_eval(model, prefixes)                  # after every model.train()

:class:`Freezer` is the trainer's part that does this for each phase plan.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch.nn as nn

from yolotrain.errors import ConfigError

if TYPE_CHECKING:  # phases.py imports this module
    from yolotrain.engine.phases import PhasePlan

LOGGER = logging.getLogger("yolotrain")

FROZEN, UNFROZEN = "frozen", "unfrozen"

# Learning-rate limits of scale_lr, per optimizer: (lr_min, lr_max).
# SGD: linear scaling from lr0=0.01 at nbs=64 gives 6e-4 at batch 4, and below ~5e-4 SGD with momentum
#   barely moves a detector within a fine-tuning budget; above 5e-2 the Nesterov momentum of ~0.94
#   (effective step ~lr/(1-m) ~ 0.8) makes early training diverge even after warmup.
# Adam/AdamW: the per-parameter step is already about lr whatever the gradient scale, so linear batch
#   scaling matters much less and the useful range is narrow: 2e-3 is the largest lr that optimizer=auto
#   trusts for these heads (see optim.build_optimizer), and below 1e-4 the run mostly stands still.
LR_LIMITS: dict[str, tuple[float, float]] = {
    "sgd": (5e-4, 5e-2),
    "adam": (1e-4, 2e-3),
    "adamw": (1e-4, 2e-3),
}


def _freezable_layers(model: nn.Module) -> list[str]:
    """Dotted names of the layers an integer ``freeze=N`` counts, in forward order.

    The layers are the direct children of ``model.backbone``, then ``model.neck``, then ``model.head``
    that hold parameters (parameter-free modules such as the neck's upsample are not "layers"). For the
    built-in detector that is: backbone stem, stage2..stage5 (5), neck td4, td3, down3, bu4, down4, bu5 (6,
    declaration order is the order they run), head box, cls (2).
    """
    names = []
    for part in ("backbone", "neck", "head"):
        sub = getattr(model, part, None)
        if sub is None:
            continue
        for child_name, child in sub.named_children():
            if any(True for _ in child.parameters()):
                names.append(f"{part}.{child_name}")
    return names


def _dedupe_prefixes(prefixes: Iterable[str]) -> list[str]:
    """Drop duplicates and prefixes nested inside another listed prefix, keeping the given order."""
    ordered = list(dict.fromkeys(p for p in prefixes if p))
    return [p for p in ordered if not any(p != q and p.startswith(q + ".") for q in ordered)]


def resolve_freeze(model: nn.Module, spec: int | str | Sequence[str] | None) -> list[str]:
    """Turn the ``freeze`` setting into the module-name prefixes whose parameters to freeze.

    Args:
        model: The plain detector (not a DDP wrapper: names would gain a ``module.`` prefix).
        spec: One of
            - None, "", 0 or False: nothing is frozen;
            - "backbone": the whole backbone;
            - an int N (or a digit string): the first N layers in forward order, counting the direct
              children with parameters of ``model.backbone``, then ``model.neck``, then ``model.head``
              (for the built-in detector 5 + 6 + 2 layers; N=5 is the backbone). N may not cover every
              layer, since nothing would be left to train;
            - a list of module names as in ``model.named_modules()`` (e.g. ``["backbone.stem",
              "neck.td4"]``) or the same as one comma-separated string.

    Returns:
        Module-name prefixes, without duplicates or nested repeats (empty when nothing is frozen).

    Raises:
        ConfigError: For a negative or too large N, an unknown module name or a wrong type.
    """
    if spec is None or spec is False:
        return []
    if spec is True:
        raise ConfigError("setting 'freeze'=True is ambiguous; use freeze=backbone, a layer count or module names")
    if isinstance(spec, str):
        text = spec.strip()
        if text in ("", "0", "none", "None"):
            return []
        if text.lstrip("-").isdigit():
            spec = int(text)
        else:
            spec = [s.strip() for s in text.split(",") if s.strip()]
    if isinstance(spec, int):
        layers = _freezable_layers(model)
        if spec < 0 or spec >= len(layers):
            raise ConfigError(
                f"setting 'freeze'={spec} must count 0..{len(layers) - 1} layers of this model "
                f"(first: {', '.join(layers[:3])}, ...; the last one must stay trainable)"
            )
        return layers[:spec]
    if not isinstance(spec, (list, tuple)) or not all(isinstance(s, str) for s in spec):
        raise ConfigError(f"setting 'freeze'={spec!r} must be backbone, a layer count or a list of module names")
    modules = dict(model.named_modules())
    for name in spec:
        if name not in modules or name == "":
            valid = [n for n in modules if n and n.count(".") <= 1][:8]
            raise ConfigError(
                f"setting 'freeze' names unknown module {name!r}; valid names include "
                f"{', '.join(valid)}, ... (see model.named_modules())"
            )
    prefixes = _dedupe_prefixes(spec)
    trainable = [n for n, _ in model.named_parameters() if not _under(n, prefixes)]
    if not trainable:
        raise ConfigError(f"setting 'freeze'={','.join(spec)} freezes every parameter; nothing would be trained")
    return prefixes


def _under(name: str, prefixes: Sequence[str]) -> bool:
    """Whether the dotted ``name`` is one of ``prefixes`` or lies inside one."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def set_frozen(model: nn.Module, prefixes: Sequence[str], frozen: bool) -> int:
    """Set ``requires_grad = not frozen`` on every parameter under ``prefixes`` (idempotent).

    Frozen parameters also lose their ``.grad`` (set to None): optimizers skip parameters without a
    gradient, so a frozen weight gets neither a stale update nor weight decay.

    Args:
        model: The plain detector.
        prefixes: From :func:`resolve_freeze`.
        frozen: True to freeze, False to unfreeze.

    Returns:
        The number of parameter elements whose ``requires_grad`` changed.
    """
    changed = 0
    for name, p in model.named_parameters():
        if not _under(name, prefixes):
            continue
        if p.requires_grad == frozen:  # it is in the other state: this call changes it
            changed += p.numel()
        p.requires_grad_(not frozen)
        if frozen:
            p.grad = None
    return changed


def keep_frozen_bn_eval(model: nn.Module, prefixes: Sequence[str]) -> int:
    """Put every BatchNorm under ``prefixes`` into eval mode; call it after every ``model.train()``.

    A frozen BatchNorm in train mode would still update its running statistics (and normalise with
    batch statistics), silently changing the frozen features. ``model.train()`` undoes this.

    Args:
        model: The plain detector.
        prefixes: From :func:`resolve_freeze`.

    Returns:
        The number of BatchNorm layers switched to eval mode.
    """
    count = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and _under(name, prefixes):
            m.eval()
            count += 1
    return count


def scale_lr(batch: int, nbs: int, lr0: float, optimizer_name: str) -> float:
    """Fit the learning rate to the batch: ``clamp(batch / nbs * lr0, lr_min, lr_max)``.

    The limits per optimizer are in :data:`LR_LIMITS` (SGD 5e-4..5e-2, Adam/AdamW 1e-4..2e-3; the
    comment there says why). They bound only what the scaling adds: the interval is widened to include
    ``lr0`` itself, so a deliberately small or large lr0 at ``batch == nbs`` is never overridden.

    Args:
        batch: Images per optimizer step (batch size times gradient accumulation, if any; scaling the
            lr down for a small batch while also accumulating up to ``nbs`` would count it twice).
        nbs: Nominal batch size at which ``lr0`` was tuned.
        lr0: Base learning rate.
        optimizer_name: The resolved optimizer: SGD, Adam or AdamW (case-insensitive).

    Returns:
        The learning rate to use.

    Raises:
        ConfigError: For non-positive inputs or an optimizer without limits.
    """
    key = str(optimizer_name).lower()
    if key not in LR_LIMITS:
        raise ConfigError(f"setting 'optimizer'={optimizer_name} has no scale_lr limits; use one of SGD, Adam, AdamW")
    if batch <= 0 or nbs <= 0 or not (lr0 > 0 and math.isfinite(lr0)):
        raise ConfigError(f"scale_lr needs batch, nbs and lr0 > 0, got batch={batch} nbs={nbs} lr0={lr0}")
    lo, hi = LR_LIMITS[key]
    lo, hi = min(lo, lr0), max(hi, lr0)
    return min(max(batch / nbs * lr0, lo), hi)


def phase_at(epoch: int, freeze_epochs: int) -> str:
    """The training phase at 0-based ``epoch``: ``"frozen"`` for the first ``freeze_epochs``, then ``"unfrozen"``."""
    return FROZEN if epoch < freeze_epochs else UNFROZEN


class Freezer:
    """The model's share of a phase plan: which parameters train, and frozen BatchNorm kept in eval mode.

    Args:
        model: The plain detector.
        prefixes: From :func:`resolve_freeze` (empty: nothing is ever frozen).
    """

    def __init__(self, model: nn.Module, prefixes: Sequence[str]):
        self.model, self.prefixes = model, tuple(prefixes)
        self.frozen = False  # whether the prefixes are frozen now

    def enter_phase(self, plan: PhasePlan, epoch: int) -> None:
        """Freeze or unfreeze the prefixes as ``plan`` says (idempotent), logging a change from ``epoch``."""
        if not self.prefixes:
            return
        self.frozen = bool(plan.frozen)
        n = set_frozen(self.model, self.prefixes, self.frozen)
        if n:
            LOGGER.info(
                f"phase: {plan.name} from epoch {epoch + 1} ({n:,} parameters "
                f"{'frozen' if self.frozen else 'unfrozen'}: {', '.join(self.prefixes)})"
            )

    def train(self, train_model: nn.Module) -> None:
        """``train()`` the model being trained (it holds this model), keeping a frozen part's BatchNorm in eval."""
        train_model.train()
        if self.frozen:
            keep_frozen_bn_eval(self.model, self.prefixes)
