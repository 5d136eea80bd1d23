"""Benchmarks cannot rot: every ``benchmarks/*.py`` has a ``--smoke`` mode that the suite runs.

Each script declares ``SMOKE_KEYS`` (the JSON keys its smoke run must print as the last stdout line) and, when
its smoke run needs a module that is not a dependency (a peer such as ultralytics), ``SMOKE_NEEDS``. Both are
read from the source without importing the script (its imports may need those modules).
"""

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))
# smoke runs a dedicated test already makes (and checks more closely): not run a second time here
SMOKE_RUN_ELSEWHERE = {"gpu_check.py": "tests/data/test_data_gpu_check_smoke.py"}


def declared(script: Path, name: str) -> tuple | None:
    """The tuple a script assigns to the module-level ``name``, read from its source, or None."""
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    return None


def last_json(stdout: str) -> dict:
    lines = stdout.strip().splitlines()
    assert lines, "no stdout"
    return json.loads(lines[-1])


def test_declared_reads_module_level_tuples(tmp_path):
    script = tmp_path / "bench.py"
    script.write_text('"""doc"""\nimport os\nSMOKE_KEYS = ("a", "b")\n\ndef f():\n    SMOKE_NEEDS = ("x",)\n')
    assert declared(script, "SMOKE_KEYS") == ("a", "b")
    assert declared(script, "SMOKE_NEEDS") is None  # only module level counts


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_benchmark_declares_smoke_keys_and_a_smoke_flag(script):
    keys = declared(script, "SMOKE_KEYS")
    assert keys and all(isinstance(k, str) for k in keys), f"{script.name}: no SMOKE_KEYS tuple of key names"
    assert '"--smoke"' in script.read_text(), f"{script.name}: no --smoke flag"


@pytest.mark.slow
@pytest.mark.timeout(1600)  # seconds to 2 minutes on an idle machine; a shared 2-core one was 10 times slower
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_smoke_mode_prints_its_keys(script, tmp_path):
    keys = declared(script, "SMOKE_KEYS")
    if script.name in SMOKE_RUN_ELSEWHERE:
        pytest.skip(f"{script.name} --smoke runs in {SMOKE_RUN_ELSEWHERE[script.name]}")
    missing = [m for m in declared(script, "SMOKE_NEEDS") or () if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{script.name} --smoke needs {', '.join(missing)} (not installed)")
    env = {**os.environ, "YOLOTRAIN_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, str(script), "--smoke"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500
    )
    assert proc.returncode == 0, f"{script.name} --smoke exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    out = last_json(proc.stdout)
    absent = [k for k in keys if out.get(k) is None]
    assert not absent, f"{script.name} --smoke printed no value for {absent}: {sorted(out)}"
