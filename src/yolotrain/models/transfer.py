"""Fine-tuning transfer: copy a file's weights into a fresh model where names and shapes agree.

Unlike an import (every tensor must land), a transfer is partial by design: the class branch of the
head depends on the number of classes, ``load=backbone`` takes only the backbone, and ``pretrained=``
may come from another scale. What was loaded, re-initialised and why is counted so it can be logged.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["transfer_weights", "describe_transfer"]


def transfer_weights(model: nn.Module, weights: dict[str, torch.Tensor], load: str = "all") -> dict:
    """Load the tensors of ``weights`` whose names and shapes match ``model``.

    Args:
        model: The fresh model.
        weights: Tensors by our names.
        load: ``"all"`` or ``"backbone"`` (only ``backbone.*`` tensors are taken).

    Returns:
        Counts ``matched``, ``missing`` (in the model, not in the file), ``unexpected`` (in the file, not in
        the model), ``mismatched`` (same name, other shape), ``reinitialised`` (model tensors left at their
        fresh initialisation, for any reason) and ``reasons``: a list of (count, why) for the log.
    """
    own = model.state_dict()
    own_keys = list(own)
    offered = dict(weights)
    skipped_by_load = []
    if load == "backbone":
        skipped_by_load = [k for k in own_keys if not k.startswith("backbone.")]
        offered = {k: v for k, v in offered.items() if k.startswith("backbone.")}
    matched = {k: v for k, v in offered.items() if k in own and own[k].shape == v.shape}
    mismatched = [k for k, v in offered.items() if k in own and own[k].shape != v.shape]
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in matched.items()}, strict=False)
    cls_mismatch = [k for k in mismatched if k.startswith("head.cls.")]
    other_mismatch = [k for k in mismatched if not k.startswith("head.cls.")]
    absent = [k for k in own_keys if k not in offered and k not in skipped_by_load]
    reasons = []
    if cls_mismatch:
        file_nc = _classes_in(weights)
        reasons.append(
            (
                len(cls_mismatch),
                f"the head's class branch (the file has {file_nc} classes, the model {getattr(model, 'nc', '?')})",
            )
        )
    if skipped_by_load:
        reasons.append((len(skipped_by_load), "outside the backbone (load=backbone)"))
    if other_mismatch:
        reasons.append((len(other_mismatch), f"a different shape in the file (e.g. {other_mismatch[0]})"))
    if absent:
        reasons.append((len(absent), f"not in the file (e.g. {absent[0]})"))
    return {
        "matched": len(matched),
        "missing": len([k for k in own_keys if k not in weights]),
        "unexpected": len([k for k in offered if k not in own]),
        "mismatched": len(mismatched),
        "reinitialised": len(own_keys) - len(matched),
        "reasons": reasons,
    }


def _classes_in(weights: dict[str, torch.Tensor]) -> int | str:
    out = weights.get("head.cls.0.2.bias")
    return int(out.shape[0]) if out is not None else "?"


def describe_transfer(counts: dict, source: str) -> str:
    """One log line: how many tensors were loaded from ``source``, re-initialised, and why."""
    line = f"model: loaded {counts['matched']} tensors from {source}, re-initialised {counts['reinitialised']}"
    if counts["reasons"]:
        line += ": " + "; ".join(f"{n} in {why}" if "branch" in why else f"{n} {why}" for n, why in counts["reasons"])
    if counts["unexpected"]:
        line += f"; {counts['unexpected']} tensors of the file have no place in this model"
    return line
