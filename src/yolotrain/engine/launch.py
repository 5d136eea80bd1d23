"""``yolotrain train nproc=N`` / ``device=0,1,...``: start the training processes with torchrun.

The launch is PyTorch's own ``torch.distributed.run`` (torchrun) with the same settings, written to a
YAML file the workers read; nothing here re-implements process management. Under torchrun already
(``WORLD_SIZE`` set) nothing is launched. The user's callbacks travel as ``callbacks=module:function``
entries on the workers' command line (a ``cfg=`` file's callbacks are never run), so the workers import
and run them too.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from yolotrain.config import Config
from yolotrain.engine import distributed as dist
from yolotrain.errors import Preempted, TrainingError

LOGGER = logging.getLogger("yolotrain")


def processes_wanted(cfg: Config) -> int:
    """How many processes ``cfg`` asks for: ``nproc``, else one per GPU in a ``device=0,1`` list.

    Returns 1 when this process is already a worker of a distributed job.
    """
    if dist.world_size() > 1 or "TORCHELASTIC_RUN_ID" in os.environ:
        return 1
    if cfg.nproc:
        return int(cfg.nproc)
    device = str(cfg.device).strip()
    if "," in device:
        return len([d for d in device.split(",") if d.strip()])
    return 1


def _install_forwarding(proc: subprocess.Popen, received: list[int]) -> dict:
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}

    def forward(signum, _frame):
        received.append(signum)
        if signum == signal.SIGTERM:
            proc.send_signal(signum)

    return {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}


def torchrun_command(n: int, cfg_file: Path, max_restarts: int = 0, callbacks: list[str] = ()) -> list[str]:
    """The torchrun command line for ``n`` processes on this machine.

    ``callbacks`` go on the command line, not into ``cfg_file``: settings read from a file never run code.
    """
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        f"--nproc_per_node={n}",
        f"--max_restarts={max_restarts}",
        "-m",
        "yolotrain",
        "train",
        f"cfg={cfg_file}",
        *([f"callbacks={json.dumps(list(callbacks))}"] if callbacks else []),
    ]


def launch(cfg: Config, n: int, extra_callbacks: list[tuple[str, Callable[[Any], None]]] = ()) -> Path:
    """Run training in ``n`` torchrun workers and wait for them.

    The run folder is chosen here (so every restart of the workers finds the same one) and passed down with
    ``exist_ok=true``. Callbacks registered in Python are passed as importable references.

    Returns:
        The run folder.

    Raises:
        ConfigError: When a callback cannot be referenced by name from another process.
        TrainingError: When the workers fail (their error message is printed above by the failing rank).
    """
    from yolotrain.engine.build import per_process_batch, run_dir
    from yolotrain.engine.callbacks import callback_reference
    from yolotrain.engine.resume import checkpoint_path
    from yolotrain.utils.torch_utils import select_device

    select_device(cfg.device)  # e.g. device=0,1 without CUDA: refused here, not once per worker
    if isinstance(cfg.batch, int) and cfg.batch > 0:
        per_process_batch(cfg.batch, n)  # refuse a bad split before starting anything
    refs = [callback_reference(event, fn) for event, fn in extra_callbacks]
    values = {k: getattr(cfg, k) for k in cfg.explicit if k != "cfg"}
    values["nproc"] = 0
    values.pop("callbacks", None)
    callbacks = list(cfg.callbacks) + refs
    if cfg.resume and str(cfg.resume).lower() != "auto":
        save_dir = checkpoint_path(cfg).parent.parent
    else:
        save_dir = run_dir(cfg, create=False)  # the workers create it (exist_ok) once their set-up succeeded
        values.update(project=str(save_dir.parent), name=save_dir.name, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="yolotrain-launch-", delete=False) as f:
        yaml.safe_dump(values, f, sort_keys=False)
        cfg_file = Path(f.name)
    cmd = torchrun_command(n, cfg_file, cfg.max_restarts, callbacks)
    LOGGER.info(f"distributed: starting {n} processes: {' '.join(cmd)}")
    env = dict(os.environ)
    # what this process can import (the user's callback modules included), the workers can too
    env["PYTHONPATH"] = os.pathsep.join(p for p in [os.getcwd(), *sys.path] if p and os.path.isdir(p))
    received: list[int] = []
    try:
        proc = subprocess.Popen(cmd, env=env)
        # SIGTERM (a scheduler's preemption) goes to torchrun, which passes it to the workers: they save at
        # the next optimizer step and exit 75. SIGINT from a terminal reaches the whole process group by
        # itself, so it is only recorded here, not sent twice.
        old = _install_forwarding(proc, received)
        try:
            rc = proc.wait()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
    finally:
        cfg_file.unlink(missing_ok=True)
    if received:
        raise Preempted(
            f"stopped by {signal.Signals(received[0]).name}; continue with resume={save_dir / 'weights' / 'last.pt'}"
        )
    if rc != 0:
        raise TrainingError(
            f"distributed training with {n} processes failed (torchrun exit code {rc}); the "
            f"failing rank's error is printed above; outputs so far are in {save_dir}"
        )
    return save_dir
