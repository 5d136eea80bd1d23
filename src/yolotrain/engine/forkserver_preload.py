"""Imported by the fork server of a ``nproc=N`` launch, and by no other process: what every training process
imports, once, before the workers are forked from it (:mod:`yolotrain.engine.worker_process`).

The imports run as in the ``yolotrain`` program (:func:`yolotrain.utils.startup.start_program`: the garbage
collector paused, everything then frozen), so the forks share those pages and their collectors skip them.

The fork server ignores SIGTERM and SIGHUP: SLURM stops a job by signalling every process of it, and a fork
server killed that way reports every worker's exit code as 255 (its pipe closes) while the workers are still
saving their checkpoint. The workers put the default handlers back first thing. It ends when the launch stops
it; a launcher killed outright leaves it to end with the last of its workers (each holds the other end of the pipe
it watches), which train on as orphans, as fresh-interpreter workers did.
"""

import importlib
import signal

from yolotrain.engine.worker_process import FORKSERVER_IGNORED
from yolotrain.utils.startup import imports_then_freeze

for _sig in FORKSERVER_IGNORED:  # first: a stop signal may come while the imports run
    signal.signal(_sig, signal.SIG_IGN)

with imports_then_freeze():
    importlib.import_module("yolotrain.cli")
    importlib.import_module("yolotrain.runners")
    importlib.import_module("yolotrain.engine.trainer")
    importlib.import_module("torch._dynamo")
