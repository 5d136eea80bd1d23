"""``yolotrain train nproc=N`` / ``device=0,1,...``: start the training processes with torch elastic.

The launch is PyTorch's own elastic agent (what ``torchrun --standalone`` runs), called in this process
with the same settings written to a YAML file the workers read; nothing here re-implements process
management. Owning the agent lets a preemption end as one line and exit code 75: a stop signal to this
process (or to every process of the job, as SLURM sends it) makes the agent pass SIGTERM to the workers,
which save and exit 75, and the agent's ``SignalException`` or the workers' exit codes become
:class:`~yolotrain.errors.Preempted` here instead of torchrun's traceback. Under torchrun already
(``WORLD_SIZE`` set) nothing is launched. The user's callbacks travel as ``callbacks=module:function``
entries on the workers' command line (a ``cfg=`` file's callbacks are never run), so the workers import
and run them too. The workers are forks of a fork server that imported torch and the engine once for all of them
and for every elastic restart (:mod:`yolotrain.engine.worker_process`).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from multiprocessing import forkserver
from pathlib import Path
from typing import Any

import yaml
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from yolotrain.checkpoint_file import load_checkpoint
from yolotrain.config import Config
from yolotrain.engine import distributed as dist
from yolotrain.engine.build import per_process_batch, run_dir
from yolotrain.engine.callbacks import callback_reference
from yolotrain.engine.resume import checkpoint_path
from yolotrain.engine.worker_process import run_worker
from yolotrain.errors import Preempted, TrainingError
from yolotrain.utils.files import release_dir
from yolotrain.utils.torch_utils import select_device

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


def launch_config(n: int, max_restarts: int = 0) -> LaunchConfig:
    """The elastic agent's settings for ``n`` processes on this machine (``torchrun --standalone``'s)."""
    return LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=n,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=max_restarts,
        monitor_interval=0.1,
        start_method="forkserver",  # with a callable entry point: workers forked from one server (see below)
    )


def check_batch_split(cfg: Config, n: int) -> None:
    """Refuse a global batch that does not split over ``n`` processes: the run's own batch when resuming.

    A resumed run trains with its checkpoint's batch, not with the ``batch`` setting (whose default the user
    never gave), so that is the one checked and named.
    """
    batch, whose = cfg.batch, "setting 'batch'"
    if cfg.resume and str(cfg.resume).lower() != "auto":
        path = checkpoint_path(cfg)
        saved = (load_checkpoint(path).get("config") or {}) if path.is_file() else {}
        if "batch" in saved:  # otherwise the workers report what is wrong with the file
            batch, whose = saved["batch"], f"resume={path}: the run's 'batch'"
    if isinstance(batch, int) and batch > 0:
        per_process_batch(batch, n, whose)


def worker_args(cfg_file: Path, callbacks: list[str] = ()) -> list[str]:
    """Each worker's ``yolotrain`` command line (``train cfg=...``).

    ``callbacks`` go on the command line, not into ``cfg_file``: settings read from a file never run code.
    """
    args = ["train", f"cfg={cfg_file}"]
    return args + ([f"callbacks={json.dumps(list(callbacks))}"] if callbacks else [])


PRELOAD = "yolotrain.engine.forkserver_preload"
ELASTIC_PROCESS_LOG = "torch.distributed.elastic.multiprocessing.api"


def _without_agent_traceback(record: logging.LogRecord) -> bool:
    """Drop the traceback torch elastic logs with a failed worker's exit code: it is the agent's own stack (the
    worker printed its error itself), one screen of noise for every preempted or failed worker."""
    if record.exc_info and str(record.msg).startswith("failed (exitcode"):
        record.exc_info, record.exc_text = None, None
    return True


@contextmanager
def _exit_codes_without_agent_tracebacks() -> Iterator[None]:
    log = logging.getLogger(ELASTIC_PROCESS_LOG)
    log.addFilter(_without_agent_traceback)
    try:
        yield
    finally:
        log.removeFilter(_without_agent_traceback)


@contextmanager
def _fork_server() -> Iterator[None]:
    """The workers' fork server for one launch: it imports :data:`PRELOAD` when the agent first starts workers and
    is stopped when the launch ends.

    One server a launch, not one a process: it keeps the environment and the standard streams of the moment it
    started, and the next launch of a program that trains twice (or of a test session) may have others. A server
    something else in this process started is used as it is and left running (the workers then import for
    themselves).

    ``multiprocessing`` has no public way to ask whether its fork server runs or to stop it, so this reads and
    calls the module's own (``_forkserver_pid``, and ``_stop``, the method CPython's own tests stop it with); on a
    Python without them the first launch's server is kept for the next.
    """
    server = getattr(forkserver, "_forkserver", None)  # the one server torch's workers are started through
    ours = getattr(server, "_forkserver_pid", None) is None
    if ours:
        multiprocessing.set_forkserver_preload([PRELOAD])
    try:
        yield
    finally:
        if ours and hasattr(server, "_stop"):
            # closes its pipe from here and waits for it (what it forked has ended: the agent waited for the
            # workers); a server that is already gone must not hide how the launch ended
            with suppress(OSError):
                server._stop()


# the agent sets handlers for these that raise SignalException and never puts the caller's back: a
# program that trained through the Python API would then die by a traceback on its next SIGTERM
_AGENT_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT") if hasattr(signal, n))


@contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """Put this process's handlers of the agent's signals back when the block ends (main thread only)."""
    old = {sig: signal.getsignal(sig) for sig in _AGENT_SIGNALS}
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():  # signal.signal works only there
            for sig, handler in old.items():
                if handler is not None:  # None: set from C, cannot be put back from Python
                    signal.signal(sig, handler)


def launch(cfg: Config, n: int, extra_callbacks: list[tuple[str, Callable[[Any], None]]] = ()) -> Path:
    """Run training in ``n`` worker processes (torch elastic) and wait for them.

    The run folder is chosen here (so every restart of the workers finds the same one) and passed down with
    ``exist_ok=true``. Callbacks registered in Python are passed as importable references.

    Returns:
        The run folder.

    Raises:
        ConfigError: When a callback cannot be referenced by name from another process.
        TrainingError: When the workers fail (their error message is printed above by the failing rank).
        Preempted: When this process or the workers were signalled to stop (the workers saved last.pt).
    """

    select_device(cfg.device)  # e.g. device=0,1 without CUDA: refused here, not once per worker
    check_batch_split(cfg, n)  # refuse a bad split before starting anything
    refs = [callback_reference(event, fn) for event, fn in extra_callbacks]
    values = {k: getattr(cfg, k) for k in cfg.explicit if k != "cfg"}
    values["nproc"] = 0
    values.pop("callbacks", None)
    callbacks = list(cfg.callbacks) + refs
    if cfg.resume and str(cfg.resume).lower() != "auto":
        save_dir = checkpoint_path(cfg).parent.parent
    else:
        save_dir = run_dir(cfg, create=False)  # claimed here; the workers fill it (exist_ok) once set up
        values.update(project=str(save_dir.parent), name=save_dir.name, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="yolotrain-launch-", delete=False) as f:
        yaml.safe_dump(values, f, sort_keys=False)
        cfg_file = Path(f.name)
    last = save_dir / "weights" / "last.pt"
    LOGGER.info(f"distributed: starting {n} processes (torch elastic, standalone)")
    # what this process can import (the user's callback modules included), the workers can too: they are given
    # the list, and the environment passes it on to any process they start
    cwd = os.getcwd()
    import_path = [p for p in [cwd, *sys.path] if p and os.path.isdir(p)]
    # torchrun's default: one thread per worker, so N processes do not oversubscribe the cores
    env = {"PYTHONPATH": os.pathsep.join(import_path), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with _signal_handlers_kept(), _fork_server(), _exit_codes_without_agent_tracebacks():
            elastic_launch(launch_config(n, cfg.max_restarts), run_worker)(
                worker_args(cfg_file, callbacks), cwd, import_path
            )
    except SignalException as e:  # this process was signalled: the agent stopped the workers (they saved)
        raise Preempted(f"stopped by {signal.Signals(e.sigval).name}; continue with resume={last}") from None
    except ChildFailedError as e:
        codes = sorted({f.exitcode for f in e.failures.values()})
        if set(codes) <= {Preempted.exit_code, -signal.SIGTERM}:  # the workers were signalled and saved
            raise Preempted(f"stopped by a signal; continue with resume={last}") from None
        raise TrainingError(
            f"distributed training with {n} processes failed (worker exit codes {codes}); the failing rank's error "
            f"is printed above; outputs so far are in {save_dir}"
        ) from None
    finally:
        cfg_file.unlink(missing_ok=True)
        release_dir(save_dir)  # only if no worker wrote anything (all refused at set-up)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return save_dir
