"""Print the uv options that make ``uv pip install`` read the package sources pip is configured with here.

uv reads no pip configuration (pip.conf, PIP_* variables), so on a machine whose wheels (a CUDA build of torch,
say) lie in a local index or folder, uv would download them instead. The Makefile passes these options to uv:
pip's find-links, index-url, extra-index-url and constraint settings, from ``pip config list`` (which reports the
files and the environment alike), and the index strategy that matches pip's (the best version over all indexes).
Nothing is printed for a setting pip does not have. Run with the Python that makes the virtual environment.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

# pip's setting -> uv's option; pip's values are whitespace-separated lists
OPTIONS = {"find-links": "--find-links", "index-url": "--index-url", "extra-index-url": "--extra-index-url",
           "constraint": "--constraint"}  # fmt: skip


def pip_settings(listing: str) -> dict[str, list[str]]:
    """``pip config list`` lines (``global.find-links='/opt/wheels'``) as {setting: values}.

    As in pip, a PIP_* variable (listed as ``:env:.name``) wins over the files, and among the files the one
    listed later (global, then user, then site) wins.
    """
    from_files: dict[str, list[str]] = {}
    from_env: dict[str, list[str]] = {}
    for line in listing.splitlines():
        key, sep, value = line.partition("=")
        origin, _, name = key.rpartition(".")
        if sep and name in OPTIONS:
            values = " ".join(shlex.split(value)).split()
            (from_env if origin == ":env:" else from_files)[name] = values
    return from_files | from_env


def uv_arguments(settings: dict[str, list[str]]) -> list[str]:
    """The uv command-line options for pip's settings, in a stable order."""
    args = ["--index-strategy", "unsafe-best-match"]
    for name, option in OPTIONS.items():
        for value in settings.get(name, []):
            args += [option, value]
    return args


def main() -> int:
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    print(shlex.join(uv_arguments(pip_settings(listing.stdout if listing.returncode == 0 else ""))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
