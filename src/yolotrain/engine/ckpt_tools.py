"""``yolotrain ckpt info|strip|diff``: look into, slim down and compare checkpoints.

yolotrain ckpt info runs/train/exp/weights/last.pt [json=true]
yolotrain ckpt strip runs/train/exp/weights/best.pt best-fp16.pt
yolotrain ckpt strip best.pt best.safetensors format=safetensors   # also from an Ultralytics .pt
yolotrain ckpt diff a.pt b.pt          # exit 0 only when every tensor is identical
yolotrain ckpt resave old.pt new.pt trust=true   # add the integrity record to a checkpoint written without it
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from yolotrain.checkpoint_file import load_checkpoint, save_checkpoint
from yolotrain.errors import ConfigError
from yolotrain.models.weights_io import read_weights, save_safetensors

TENSOR_GROUPS = ("model", "ema", "optimizer", "precision", "rng")


def flat_tensors(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Every tensor in the checkpoint by a path like ``model/backbone.stem.conv.weight``.

    The paths start at the checkpoint's keys (:class:`~yolotrain.checkpoint_file.Checkpoint`), not its
    layout, so files of either version compare tensor by tensor.
    """
    out: dict[str, torch.Tensor] = {}

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            out[prefix] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(f"{prefix}/{i}", v)

    for key in state:
        walk(key, state[key])
    return out


def group_of(path: str) -> str:
    """``model/backbone.stem.conv.weight`` -> ``model/backbone``; ``optimizer/state/3/exp_avg`` -> ``optimizer``."""
    top, _, rest = path.partition("/")
    if top in ("model", "ema") and rest:
        return f"{top}/{rest.split('.')[0]}"
    return top


def info(path: str | Path) -> dict[str, Any]:
    """A summary of a checkpoint as plain data."""
    state = load_checkpoint(path)
    sizes: dict[str, dict[str, float]] = defaultdict(lambda: {"tensors": 0, "elements": 0, "mb": 0.0})
    for p, t in flat_tensors(state).items():
        g = sizes[p.split("/")[0]]
        g["tensors"] += 1
        g["elements"] += t.numel()
        g["mb"] = round(g["mb"] + t.numel() * t.element_size() / 2**20, 3)
    cfg = state.get("config") or {}
    return {
        "file": str(path),
        "bytes": Path(path).stat().st_size,
        "format": state.version,
        "parts": sorted(state.parts),
        "keys": sorted(state),
        "position": state.get("position"),
        "resumable": "position" in state,
        "model": state.get("model_cfg"),
        "names": state.get("names"),
        "metrics": state.get("metrics"),
        "best_metrics": state.get("best_metrics"),
        "config": {
            k: cfg.get(k) for k in ("data", "model", "epochs", "imgsz", "batch", "optimizer", "amp", "seed") if k in cfg
        },
        "precision": (state.get("precision") or {}).get("amp"),
        "tensors": dict(sizes),
        "versions": state.get("versions"),
    }


def format_info(d: dict[str, Any]) -> str:
    pos = d["position"]
    lines = [
        f"{d['file']}: {d['bytes'] / 2**20:.1f} MB, {'resumable training state' if d['resumable'] else 'weights only'}",
        f"  format: version {d['format']}" + (f", parts: {', '.join(d['parts'])}" if d["parts"] else ""),
        f"  keys: {', '.join(d['keys'])}",
    ]
    if pos:
        lines.append(
            f"  position: epoch {pos['epoch'] + 1}, iteration {pos['iteration']}/{pos['iters_per_epoch']}"
            f"{' (epoch complete)' if pos['complete'] else ''}"
        )
    if d["model"]:
        lines.append(f"  model: scale {d['model'].get('scale')}, {d['model'].get('nc')} classes")
    for key in ("metrics", "best_metrics"):
        m = d.get(key)
        if m:
            lines.append(
                f"  {key}: mAP50 {m.get('mAP50', 0):.4f} mAP50-95 {m.get('mAP50-95', 0):.4f} "
                f"P {m.get('precision', 0):.3f} R {m.get('recall', 0):.3f}"
            )
    if d["config"]:
        lines.append("  config: " + " ".join(f"{k}={v}" for k, v in d["config"].items()))
    for g, s in d["tensors"].items():
        lines.append(f"  {g}: {s['tensors']} tensors, {s['elements']:,} values, {s['mb']:.2f} MB")
    if d["versions"]:
        lines.append("  versions: " + " ".join(f"{k} {v}" for k, v in d["versions"].items()))
    return "\n".join(lines)


def strip(src: str | Path, out: str | Path, fmt: str = "pt") -> Path:
    """Write a deployment checkpoint: the EMA (else raw) weights in fp16, the model description, names.

    ``fmt="safetensors"`` writes a ``.safetensors`` file instead (description and names in its metadata),
    from any file ``model=`` accepts, Ultralytics checkpoints included.
    """
    if fmt == "safetensors":
        return save_safetensors(read_weights(src), out, half=True)
    state = load_checkpoint(src)
    weights = state.get("ema") or state.get("model")
    if not weights:
        raise ConfigError(f"checkpoint '{src}' holds no weights to keep")
    run = {k: state.run[k] for k in ("model_cfg", "names", "config", "versions") if k in state.run}
    progress = {k: state[k] for k in ("best_metrics", "metrics") if k in state}
    half = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    # the training part keeps only its results: without a position the file is not resumable
    slim = {"run": run, "parts": {"model": {"model": half}, "train": progress}, "stripped_from": str(src)}
    save_checkpoint(slim, out)
    return Path(out)


def resave(src: str | Path, out: str | Path, trust: bool = False) -> Path:
    """Re-write ``src`` with an integrity record; ``trust=True`` accepts a file that has none.

    Checkpoints written before the record was mandatory load only this way: the user vouches for the file
    once (``trust=true``) and every later load checks the new file's digest. The file keeps its layout and
    its format tag (a version-1 file stays one).
    """
    state = load_checkpoint(src, trust=trust)
    save_checkpoint(state.content, out)
    return Path(out)


def diff(a: str | Path, b: str | Path) -> tuple[bool, list[str]]:
    """Largest absolute difference per tensor group; identical means same tensors, bit for bit."""
    fa, fb = flat_tensors(load_checkpoint(a)), flat_tensors(load_checkpoint(b))
    lines, identical = [], True
    only_a, only_b = sorted(fa.keys() - fb.keys()), sorted(fb.keys() - fa.keys())
    if only_a or only_b:
        identical = False
        lines.append(
            f"tensors only in A: {len(only_a)}, only in B: {len(only_b)}"
            + (f" (e.g. {(only_a or only_b)[0]})" if only_a or only_b else "")
        )
    groups: dict[str, float] = {}
    for k in sorted(fa.keys() & fb.keys()):
        x, y = fa[k], fb[k]
        if x.shape != y.shape or x.dtype != y.dtype:
            identical = False
            groups[group_of(k)] = float("inf")
            continue
        equal = torch.equal(x, y)  # NaN != NaN, so a NaN anywhere reads as a difference
        d = 0.0 if equal else float((x.double() - y.double()).abs().max())
        identical &= equal
        groups[group_of(k)] = max(groups.get(group_of(k), 0.0), d)
    width = max((len(g) for g in groups), default=5)
    lines += [f"{g:<{width}}  max |A-B| = {v:.3g}" for g, v in groups.items()]
    lines.append("identical" if identical else "different")
    return identical, lines


def run_ckpt_command(args: list[str]) -> int:
    """Dispatch ``yolotrain ckpt ...``; returns the exit code."""
    pos = [a for a in args if "=" not in a]
    opts = dict(a.split("=", 1) for a in args if "=" in a)
    as_json = opts.pop("json", "false").lower() in ("1", "true", "yes")
    fmt = opts.pop("format", "pt")
    trust = opts.pop("trust", "false").lower() in ("1", "true", "yes")
    if opts:
        raise ConfigError(
            f"ckpt: unknown option(s) {', '.join(opts)}; only json=true, format= and trust=true are accepted"
        )
    if fmt not in ("pt", "safetensors"):
        raise ConfigError(f"ckpt strip: format={fmt!r} is not one of pt, safetensors")
    usage = (
        "usage: yolotrain ckpt info PATH [json=true] | strip PATH OUT [format=pt|safetensors] | diff A B "
        "| resave PATH OUT [trust=true]"
    )
    if not pos or pos[0] not in ("info", "strip", "diff", "resave"):
        raise ConfigError(usage)
    verb, rest = pos[0], pos[1:]
    need = {"info": 1, "strip": 2, "diff": 2, "resave": 2}[verb]
    if len(rest) != need:
        raise ConfigError(usage)
    if verb == "info":
        d = info(rest[0])
        print(json.dumps(d, default=str) if as_json else format_info(d))
        return 0
    if verb == "strip":
        out = strip(rest[0], rest[1], fmt)
        print(f"stripped {rest[0]} -> {out} ({out.stat().st_size / 2**20:.1f} MB)")
        return 0
    if verb == "resave":
        out = resave(rest[0], rest[1], trust=trust)
        print(f"re-saved {rest[0]} -> {out} with an integrity record")
        return 0
    same, lines = diff(rest[0], rest[1])
    print("\n".join(lines))
    return 0 if same else 1
