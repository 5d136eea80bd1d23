"""benchmarks/gpu_check.py in its CPU smoke mode: the GPU check's code paths stay runnable without a GPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_smoke_mode(capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--smoke"])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith('{"mode": "smoke-cpu"')
    for key in ("n amp=off", "n amp=bf16"):
        r = out[key]
        assert r["images_per_s"] > 0 and r["batch"] == 4 and r["oom_events"] == 0
        assert 0.0 <= r["data_wait_share"] <= 1.0
    oom = out["oom_recovery"]
    assert oom["recovered"] and oom["oom_events"] >= 1 and oom["micro_batches"] >= 2
    assert out["compile"]["images_per_s"] > 0  # the compile path trained (a failed part is an error string)
    profile = out["profile"]  # the profile's code path (on the CPU: no GPU busy share)
    assert {"ms_per_step", "host_reads_per_step", "cuda_sync_warnings_per_step"} <= set(profile), profile
    assert profile["gpu_busy_pct"] is None
    assert out["fork_server_launch"]["saved"]  # a worker forked from the launch's fork server trained and saved
