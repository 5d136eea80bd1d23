"""The body of each training process :func:`yolotrain.engine.launch.launch` starts: ``yolotrain train`` run as
that process's own program, forked from a fork server that imported torch once for all of them.

A fresh interpreter per worker imported torch, ``torch._dynamo`` (which every torch optimizer imports) and the
engine before its first step, once per worker and again at every elastic restart (a tiny two-process epoch took
9.4-10.5 CPU-seconds that way, 6.3 with the fork server). The launch's fork server (``multiprocessing``'s
``forkserver`` start method, which torch elastic offers for a callable entry point) imports them once, with
:mod:`yolotrain.engine.forkserver_preload`, and each worker is a fork of it.
The fork server is a process that has only imported modules: it never initialised CUDA, and with the launcher's
one thread per process (``OMP_NUM_THREADS=1``) it runs no other thread (a BLAS pool that more threads would start
stops around a fork), so its forks may use CUDA and NCCL as a fresh interpreter does. The ``fork`` start method
from the launcher would fork a process that runs the rendezvous store's thread and may have touched CUDA.

A worker starts where the launcher stood: its working directory, import path and command line, then runs
:func:`yolotrain.cli.main` as ``python -m yolotrain`` would and leaves with its exit code (75 when preempted).
"""

from __future__ import annotations

import os
import signal
import sys

# the fork server ignores these (so a stop signal to every process of the job leaves it alive to report the
# workers' exit codes); a worker answers them as any program does
FORKSERVER_IGNORED = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


def run_worker(argv: list[str], cwd: str, import_path: list[str]) -> None:
    """Run ``yolotrain`` with ``argv`` in this (forked) process, then exit with its code.

    Args:
        argv: The command and its ``key=value`` arguments (``["train", "cfg=..."]``).
        cwd: The launcher's working directory (relative paths in the settings are relative to it).
        import_path: The launcher's import path, so the user's callback modules import here too.
    """
    for sig in FORKSERVER_IGNORED:
        signal.signal(sig, signal.SIG_DFL)
    os.chdir(cwd)
    sys.path[:] = [*import_path, *(p for p in sys.path if p not in import_path)]  # the launcher's first
    sys.argv = ["yolotrain", *argv]
    from yolotrain.cli import main  # noqa: PLC0415 - imported by the fork server already

    try:
        code = main()  # argv None: this process is the program's own (yolotrain.utils.startup)
    except Exception:  # printed as the interpreter would (torch's hook adds the rank); torch's wrapper only files it
        sys.excepthook(*sys.exc_info())
        code = 1
    if code:  # multiprocessing flushes the standard streams as the process ends, whatever the code
        raise SystemExit(code)  # passes torch's wrappers untouched: the process's exit code
