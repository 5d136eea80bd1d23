"""commands.py: the command line and the API reach what needs torch through one table, imported on use."""

import ast
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from yolotrain import api, cli, runners
from yolotrain.commands import ENTRIES, entry

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_every_entry_names_a_function(name):
    assert callable(entry(name))


@pytest.mark.parametrize(
    "code",
    [
        "from yolotrain.cli import main; main(['--help'])",
        "from yolotrain.cli import main; main(['help', 'imgsz'])",
        "import yolotrain; yolotrain.Detector('n')",
    ],
)
def test_help_and_import_load_no_torch(code):
    check = f"import sys; {code}; print('torch loaded' if 'torch' in sys.modules else 'no torch')"
    out = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(SRC)}
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "no torch"


@pytest.mark.parametrize("module", [cli, api, runners])
def test_no_import_hides_inside_a_function(module):
    tree = ast.parse(inspect.getsource(module))
    inner = [
        f"{fn.name}:{node.lineno}"
        for fn in ast.walk(tree)
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(fn)
        if isinstance(node, (ast.Import, ast.ImportFrom))
    ]
    assert not inner, f"{module.__name__} imports inside functions (use yolotrain.commands): {inner}"
