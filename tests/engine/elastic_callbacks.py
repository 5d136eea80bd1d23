"""User callbacks for the elastic-resume tests, given as ``callbacks=on_train_batch_end=<this file>:<function>``
(not a test module). They write under ``$YT_TEST_OUT``."""

import hashlib
import json
import os
import signal
import time
from pathlib import Path


def record_and_stop(trainer):
    """Record every trained batch's samples with a hash of their pixels and boxes; stop at ``$YT_STOP_AT``.

    One line per batch, ``{"epoch", "iteration", "world", "attempt", "samples": {index: sha1}}``, in a file per
    process (a resumed run appends its own files). ``YT_STOP_AT=E:I`` makes rank 0 send itself SIGTERM after
    iteration I of epoch E (the run saves at that step and exits 75). ``YT_PAUSE_AT=E:I`` makes every rank of
    torchrun's first attempt write ``paused_<pid>`` (holding its agent's pid) after that iteration and wait
    for a file ``go``, before the step's save.
    """
    batch = trainer.current_batch
    samples = {}
    for j, index in enumerate(batch["index"].tolist()):
        h = hashlib.sha1(batch["img"][j].numpy().tobytes())
        h.update(batch["bboxes"][batch["batch_idx"] == j].numpy().tobytes())
        samples[str(index)] = h.hexdigest()
    out = Path(os.environ["YT_TEST_OUT"])
    row = {
        "epoch": trainer.epoch,
        "iteration": trainer.last_iteration,
        "world": int(os.environ.get("WORLD_SIZE", "1")),
        "attempt": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
        "samples": samples,
    }
    with (out / f"steps_{os.getpid()}.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    here = f"{trainer.epoch}:{trainer.last_iteration}"
    if os.environ.get("YT_STOP_AT") == here and os.environ.get("RANK", "0") == "0":
        os.kill(os.getpid(), signal.SIGTERM)
    if os.environ.get("YT_PAUSE_AT") == here and row["attempt"] == 0:
        (out / f"paused_{os.getpid()}").write_text(str(os.getppid()))
        deadline = time.monotonic() + 300
        while not (out / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.1)


def rows(out):
    """Every record in ``out``, from every process."""
    return [
        json.loads(line) for path in sorted(Path(out).glob("steps_*.jsonl")) for line in path.read_text().splitlines()
    ]


def steps(out, keep=lambda row: True):
    """{(epoch, iteration): {index: hash}} over the records in ``out`` that ``keep``, and the worlds per step."""
    merged, worlds = {}, {}
    for row in rows(out):
        if keep(row):
            key = (row["epoch"], row["iteration"])
            part = merged.setdefault(key, {})
            assert not set(part) & set(row["samples"]), f"step {key}: a sample trained twice"
            part.update(row["samples"])
            worlds.setdefault(key, set()).add(row["world"])
    return merged, worlds
