"""The checkpointer: a run's whole state as its parts' states, written on rank 0 and given back on resume.

The file itself (format, digest, safe loading) is :mod:`yolotrain.checkpoint_file`; this module decides
what goes in it: the run description under ``run`` and every part's state under the part's own name.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from yolotrain.checkpoint_file import RUN_KEYS, Checkpoint, checkpoint_bytes, write_checkpoint_bytes
from yolotrain.engine import distributed as dist
from yolotrain.errors import CheckpointError


def write_failure(path: Path, error: OSError, last: Path) -> str:
    """The one line a failed checkpoint write stops training with."""
    why = error.strerror or str(error) or type(error).__name__
    fix = "free some space" if error.errno == errno.ENOSPC else "fix that"
    then = f", then continue with resume={last}" if last.is_file() else ""
    return (
        f"cannot write checkpoint '{path}': {why} (errno {error.errno}); the checkpoints written before are "
        f"intact; {fix}{then}"
    )


def epoch_end_files(done: int, epochs: int, improved: bool, validated: bool, save_epochs: int) -> list[str]:
    """The checkpoints written after 1-based epoch ``done`` of ``epochs``.

    Always ``last.pt``; ``best.pt`` when the epoch improved the best result, or at the last epoch of a run
    without any validated result (its final weights are the best there is); ``epoch{done}.pt`` every
    ``save_epochs`` epochs (0: never).
    """
    names = ["last.pt"]
    if improved or (not validated and done == epochs):
        names.append("best.pt")
    if save_epochs > 0 and done % save_epochs == 0:
        names.append(f"epoch{done}.pt")
    return names


class Checkpointer:
    """Writes the whole training state as the union of its parts' states, and restores it.

    Every part has ``KEYS`` (the keys of its state), ``state_dict()`` returning exactly those keys and
    ``load_state_dict(state)``. A part's state is stored under the name it is registered with; a key
    that neither a part nor the run description claims is an error on restore, not silently ignored. No
    two parts may own one key, so a version-1 file (every key at the top level) still restores part by part.

    Args:
        wdir: The run's ``weights`` folder.
        parts: The stateful parts by name (the name is where a part's state sits in the file).
        run_info: The run description (:data:`~yolotrain.checkpoint_file.RUN_KEYS`).
    """

    def __init__(self, wdir: Path, parts: dict[str, Any], run_info: dict[str, Any]):
        self.wdir, self.parts, self.run_info = Path(wdir), parts, run_info
        odd = sorted(k for k in run_info if k not in RUN_KEYS)
        if odd:  # a restore would refuse them: refuse to write them
            raise ValueError(f"the run description has keys that are not run keys: {', '.join(odd)}")
        owners: dict[str, Any] = {k: "run" for k in RUN_KEYS}
        for part in parts.values():
            for key in part.KEYS:
                if key in owners:
                    raise ValueError(f"checkpoint key '{key}' is claimed by two parts")
                owners[key] = part
        self.owners = owners

    def state_dict(self) -> dict[str, Any]:
        """The whole state: the run description and every part's state under its name."""
        parts = {}
        for name, part in self.parts.items():
            got = part.state_dict()
            if set(got) != set(part.KEYS):
                raise ValueError(f"{type(part).__name__}.state_dict() gave {sorted(got)}, it owns {list(part.KEYS)}")
            parts[name] = got
        return {"run": dict(self.run_info), "parts": parts}

    def save(self, names: list[str]) -> None:
        """Write the state to each of ``names`` in the weights folder (atomically), on rank 0.

        Every rank must call it: parts may gather from all ranks first (the RNG streams do). ``last.pt`` is
        written after every other name, so a ``last.pt`` that records a best epoch exists only once that
        epoch's ``best.pt`` is durably on disk. A failed write (a full disk) leaves every earlier file as it
        was and stops every rank with the same one-line :class:`CheckpointError` (no rank is left waiting
        in a collective for one that raised).
        """
        for part in self.parts.values():
            if hasattr(part, "gather"):
                part.gather()
        failure = None
        if dist.is_main():
            data = checkpoint_bytes(self.state_dict())  # serialised once for every name (best.pt and last.pt)
            ordered = [n for n in names if n != "last.pt"] + [n for n in names if n == "last.pt"]
            for name in ordered:
                try:
                    write_checkpoint_bytes(data, self.wdir / name)
                except OSError as e:
                    failure = write_failure(self.wdir / name, e, self.wdir / "last.pt")
                    break
        if dist.world_size() > 1:  # no rank leaves before rank 0 has written (a preempted job exits next)
            failure = dist.broadcast_object(failure)
        if failure is not None:
            raise CheckpointError(failure)

    def load_state_dict(self, state: Checkpoint | dict[str, Any]) -> None:
        """Give each part its state, from a file of either version.

        Raises:
            CheckpointError: For keys (or parts) no part claims, or keys a part needs that the file lacks.
        """
        ckpt = state if isinstance(state, Checkpoint) else Checkpoint(state)
        unknown = {k for k in ckpt if k not in self.owners and k != "integrity"}
        unknown |= {n for n in ckpt.parts if n not in self.parts}
        if unknown:
            raise CheckpointError(f"checkpoint has keys this trainer does not know: {', '.join(sorted(unknown))}")
        for name, part in self.parts.items():
            saved = ckpt.part(name, part.KEYS)
            misplaced = sorted(k for k in saved if k not in part.KEYS)
            if misplaced:  # a key of another part, filed under this one's name
                raise CheckpointError(f"checkpoint part '{name}' holds keys it does not own: {', '.join(misplaced)}")
            missing = [k for k in part.KEYS if k not in saved]
            if missing:
                raise CheckpointError(f"checkpoint lacks {', '.join(missing)} (needed by {type(part).__name__})")
            part.load_state_dict(saved)


class StatefulModule:
    """Adapts a module or optimizer to the checkpointer: its ``state_dict`` under one key."""

    def __init__(self, key: str, obj: Any, copy: bool = False):
        self.KEYS, self.obj, self.copy = (key,), obj, copy

    def state_dict(self) -> dict[str, Any]:
        sd = self.obj.state_dict()
        if self.copy:  # the weights keep changing after a save is taken, until it is written
            sd = {k: v.detach().clone() for k, v in sd.items()}
        return {self.KEYS[0]: sd}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.obj.load_state_dict(state[self.KEYS[0]])
