"""The explicit correspondence between Ultralytics' YOLOv8/YOLO11 layer numbering and our module names.

Ultralytics numbers the layers of its yaml (``model.0`` ... ``model.22``/``model.23``); we name them
(``backbone.stem``, ``neck.td4``, ``head.cls.0``, ...). Inside a mapped layer the sub-names are the same
on both sides (``cv1.conv.weight``, ``m.0.cv2.bn.running_mean``, ``attn.qkv.conv.weight``), because our
blocks use the published attribute names. Every tensor of the file must land on a tensor of ours of
the same shape and every tensor of ours must be filled: anything else is an error listing the names.
"""

from __future__ import annotations

import torch

from yolotrain.errors import CheckpointError

__all__ = ["LAYER_MAP", "HEAD_LAYER", "map_state_dict"]

_COMMON = {
    "backbone.stem": 0,
    "backbone.stage2.0": 1,
    "backbone.stage2.1": 2,
    "backbone.stage3.0": 3,
    "backbone.stage3.1": 4,
    "backbone.stage4.0": 5,
    "backbone.stage4.1": 6,
    "backbone.stage5.0": 7,
    "backbone.stage5.1": 8,
    "backbone.stage5.2": 9,  # SPPF
}
# Layers of the yaml without weights (Upsample, Concat) are simply absent from both sides.
LAYER_MAP: dict[str, dict[str, int]] = {
    "v8": {
        **_COMMON,
        "neck.td4": 12,
        "neck.td3": 15,
        "neck.down3": 16,
        "neck.bu4": 18,
        "neck.down4": 19,
        "neck.bu5": 21,
    },
    "11": {
        **_COMMON,
        "backbone.stage5.3": 10,  # C2PSA
        "neck.td4": 13,
        "neck.td3": 16,
        "neck.down3": 17,
        "neck.bu4": 19,
        "neck.down4": 20,
        "neck.bu5": 22,
    },
}
HEAD_LAYER = {"v8": 22, "11": 23}


def _our_name(family: str, name: str) -> str | None:
    """Our tensor name for an Ultralytics one (``model.12.cv1.conv.weight``), or None when it has no place."""
    parts = name.split(".")
    if len(parts) < 3 or parts[0] != "model" or not parts[1].isdigit():
        return None
    layer, rest = int(parts[1]), ".".join(parts[2:])
    if layer == HEAD_LAYER[family]:
        # Detect: cv2 = box branch, cv3 = class branch, one entry per level.
        branch, _, tail = rest.partition(".")
        return {"cv2": f"head.box.{tail}", "cv3": f"head.cls.{tail}"}.get(branch)
    for ours, theirs in LAYER_MAP[family].items():
        if theirs == layer:
            return f"{ours}.{rest}"
    return None


def map_state_dict(
    family: str, theirs: dict[str, torch.Tensor], own: dict[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """Rename an Ultralytics state dict onto ours, checking every name and shape both ways.

    The DFL layer's fixed weights (``model.<head>.dfl.conv.weight``, the bin values 0..reg_max-1) have no
    counterpart here (our decoding computes them) and are checked instead of copied.

    Args:
        family: ``"v8"`` or ``"11"``.
        theirs: The file's tensors under Ultralytics names.
        own: Our model's ``state_dict()`` (names and shapes to fill).
        source: The file, for messages.

    Returns:
        The file's tensors under our names, covering every tensor of ``own`` except ``stride``.

    Raises:
        CheckpointError: Listing tensors without a place, shape differences and tensors left unfilled.
    """
    out: dict[str, torch.Tensor] = {}
    homeless, shapes = [], []
    dfl = f"model.{HEAD_LAYER[family]}.dfl.conv.weight"
    for name, t in theirs.items():
        if name == dfl:
            bins = torch.arange(t.numel(), dtype=torch.float32).view_as(t)
            if not torch.equal(t.float(), bins):
                shapes.append(f"{name} (DFL bins are not 0..{t.numel() - 1})")
            continue
        ours = _our_name(family, name)
        if ours is None or ours not in own:
            homeless.append(name)
        elif tuple(own[ours].shape) != tuple(t.shape):
            shapes.append(f"{name} -> {ours}: {tuple(t.shape)} vs ours {tuple(own[ours].shape)}")
        else:
            out[ours] = t
    unfilled = [k for k in own if k not in out and k != "stride"]
    problems = []
    if homeless:
        problems.append(f"{len(homeless)} tensor(s) with no place here ({_few(homeless)})")
    if shapes:
        problems.append(f"{len(shapes)} with a different shape ({_few(shapes)})")
    if unfilled:
        problems.append(f"{len(unfilled)} of ours not in the file ({_few(unfilled)})")
    if problems:
        raise CheckpointError(f"'{source}' does not map onto YOLO{family}: " + "; ".join(problems))
    return out


def _few(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f", ... {len(names) - n} more" if len(names) > n else "")
