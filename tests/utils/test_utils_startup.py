"""utils/startup.py: the yolotrain program's own process imports with the collector paused, then freezes;
a caller's process (``main(argv)``, the Python API) keeps its collector as it was."""

import gc
import json
import subprocess
import sys
import textwrap

import pytest

from yolotrain.cli import main

PROGRAM = textwrap.dedent("""
    import gc, json, sys
    from yolotrain.config import resolve
    from yolotrain.utils.startup import imports_then_freeze, start_program

    data = sys.argv[1]
    out = {"frozen_at_start": gc.get_freeze_count()}
    gc.disable()  # a collector the process had turned off stays off
    with imports_then_freeze():
        pass
    out["kept_disabled"] = not gc.isenabled()
    gc.enable()
    start_program("train", resolve({"data": data, "nproc": 2}))  # a launcher: its workers build the optimizers
    out["launcher"] = {"frozen": gc.get_freeze_count(), "dynamo": "torch._dynamo" in sys.modules}
    start_program("train", resolve({"data": data}))  # trains here
    out["trainer"] = {"frozen": gc.get_freeze_count(), "dynamo": "torch._dynamo" in sys.modules}
    out["enabled"] = gc.isenabled()
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_start_program_freezes_imports_and_imports_dynamo_only_where_it_trains(tiny_data):
    proc = subprocess.run([sys.executable, "-c", PROGRAM, str(tiny_data)], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["frozen_at_start"] == 0 and out["kept_disabled"] and out["enabled"]
    assert out["launcher"]["frozen"] > 100_000 and not out["launcher"]["dynamo"]  # torch and yolotrain frozen
    assert out["trainer"]["dynamo"] and out["trainer"]["frozen"] > out["launcher"]["frozen"] + 50_000


def test_main_with_arguments_leaves_the_callers_collector_alone(capsys):
    frozen, enabled = gc.get_freeze_count(), gc.isenabled()
    assert main(["info", "model=n", "imgsz=64"]) == 0
    assert "GFLOPs at imgsz 64" in capsys.readouterr().out
    assert gc.get_freeze_count() == frozen and gc.isenabled() == enabled
