"""User callbacks for the elastic-resume tests, given as ``callbacks=on_train_batch_end=<this file>:<function>``
(not a test module). They write under ``$YT_TEST_OUT``."""

import hashlib
import json
import os
import signal
from pathlib import Path


def record_and_stop(trainer):
    """Record every trained batch's samples with a hash of their pixels and boxes; stop at ``$YT_STOP_AT``.

    One line per batch, ``{"epoch", "iteration", "world", "samples": {index: sha1}}``, in a file per process
    (a resumed run appends its own files). ``YT_STOP_AT=E:I`` makes rank 0 send itself SIGTERM after
    iteration I of epoch E (the run saves at that step and exits 75).
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
        "samples": samples,
    }
    with (out / f"steps_{os.getpid()}.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    stop = os.environ.get("YT_STOP_AT")
    if (
        stop
        and os.environ.get("RANK", "0") == "0"
        and [trainer.epoch, trainer.last_iteration] == [int(v) for v in stop.split(":")]
    ):
        os.kill(os.getpid(), signal.SIGTERM)


def steps(out):
    """{(epoch, iteration): {index: hash}} over every process's records in ``out``, and the worlds per step."""
    merged, worlds = {}, {}
    for path in sorted(Path(out).glob("steps_*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            key = (row["epoch"], row["iteration"])
            part = merged.setdefault(key, {})
            assert not set(part) & set(row["samples"]), f"step {key}: a sample trained twice"
            part.update(row["samples"])
            worlds.setdefault(key, set()).add(row["world"])
    return merged, worlds
