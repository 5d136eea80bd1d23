"""A user callback for the compile tests, ``callbacks=<this file>:on_train_end`` (not a test module): each rank
writes how many frames torch.compile compiled to ``$YT_TEST_OUT/compiled_rank{RANK}.txt``."""

import os
from pathlib import Path

from torch._dynamo.utils import counters


def on_train_end(trainer):
    out = Path(os.environ["YT_TEST_OUT"]) / f"compiled_rank{os.environ.get('RANK', '0')}.txt"
    out.write_text(str(counters["frames"]["ok"]))
