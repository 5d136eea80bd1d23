"""tools/uv_sources.py: uv (which reads no pip configuration) is given the package sources pip has here."""

import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "uv_sources.py"
_spec = importlib.util.spec_from_file_location("uv_sources", SCRIPT)
uv_sources = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(uv_sources)

# what `pip config list` printed on the development machine, plus a user file and settings uv has no use for
LISTING = """\
:env:.cert='/etc/ssl/certs/ca-certificates.crt'
:env:.find-links='/opt/wheels'
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'
global.find-links='/srv/old-wheels'
global.index-url='https://mirror.example/simple'
user.index-url='https://user.example/simple'
global.timeout='60'
"""


def test_pip_settings_become_uv_options_with_pip_precedence():
    args = uv_sources.uv_arguments(uv_sources.pip_settings(LISTING))
    assert args == [
        "--index-strategy", "unsafe-best-match",
        "--find-links", "/opt/wheels",  # the PIP_FIND_LINKS variable wins over global.find-links
        "--index-url", "https://user.example/simple",  # the user file comes after the global one
        "--extra-index-url", "file:///opt/pypi/simple",
        "--extra-index-url", "file:///opt/pypi-more/simple",
        "--constraint", "/etc/xdg/pip/constraints.txt",
    ]  # fmt: skip


def test_no_pip_configuration_gives_only_the_index_strategy():
    assert uv_sources.uv_arguments(uv_sources.pip_settings("")) == ["--index-strategy", "unsafe-best-match"]
    assert uv_sources.uv_arguments(uv_sources.pip_settings("global.cert='/x'\nnot a setting\n")) == [
        "--index-strategy",
        "unsafe-best-match",
    ]


def test_the_script_reads_pip_and_prints_one_shell_line(tmp_path):
    # PIP_* variables win over whatever configuration files this machine has
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PIP_FIND_LINKS": "/srv/wheels",
           "PIP_EXTRA_INDEX_URL": "file:///srv/a file:///srv/b"}  # fmt: skip
    out = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, check=True).stdout
    words = shlex.split(out)
    assert words[:2] == ["--index-strategy", "unsafe-best-match"]
    pairs = list(zip(words[2::2], words[3::2]))
    assert [v for o, v in pairs if o == "--find-links"] == ["/srv/wheels"]
    assert [v for o, v in pairs if o == "--extra-index-url"] == ["file:///srv/a", "file:///srv/b"]
