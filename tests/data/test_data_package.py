"""yolotrain.data loads its modules on demand: the data tools and the demo set start without torch."""

import json
import subprocess
import sys

import pytest

import yolotrain.data


def test_every_public_name_resolves_to_its_module():
    for name in yolotrain.data.__all__:
        value = getattr(yolotrain.data, name)
        assert getattr(value, "__module__", "yolotrain.data").startswith("yolotrain.data"), name


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        yolotrain.data.no_such_name  # noqa: B018 - the lookup is the test


def test_data_tools_and_demo_set_do_not_import_torch(tmp_path):
    # a fresh interpreter: this one imported torch long ago
    code = (
        "import json, sys\n"
        "from yolotrain.data import check_dataset, convert_dataset, ensure_demo_dataset, load_data_yaml, scan_split\n"
        "from yolotrain.data.commands import run_data_command\n"
        f"y = ensure_demo_dataset({str(tmp_path / 'shapes')!r}, n_train=2, n_val=1, size=32)\n"
        "code = run_data_command(['check', f'data={y}'])\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'code': code}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"torch": False, "code": 0}
