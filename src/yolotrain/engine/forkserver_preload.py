"""Imported by the fork server of a ``nproc=N`` launch, and by no other process: what every training process
imports, once, before the workers are forked from it (:mod:`yolotrain.engine.worker_process`).

The imports are the ``yolotrain train`` program's own start-up (:func:`yolotrain.utils.startup.start_program`:
the garbage collector paused, everything then frozen), so the forks share those pages and their collectors skip
them.

The fork server ignores SIGTERM and SIGHUP: SLURM stops a job by signalling every process of it, and a fork
server killed that way reports every worker's exit code as 255 (its pipe closes) while the workers are still
saving their checkpoint. The workers put the default handlers back first thing. It ends when the launch stops
it; a launcher killed outright leaves it to end with the last of its workers (each holds the other end of the pipe
it watches), which train on as orphans, as fresh-interpreter workers did.
"""

import signal

from yolotrain.engine.worker_process import FORKSERVER_IGNORED

for _sig in FORKSERVER_IGNORED:  # first: a stop signal may come while the imports run
    signal.signal(_sig, signal.SIG_IGN)

import yolotrain.cli  # noqa: E402, F401 - the workers' entry point, as the program imports it before start-up
from yolotrain.utils.startup import start_program  # noqa: E402

start_program("train", builds_optimizer=True)  # every worker trains
