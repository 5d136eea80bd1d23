"""Property tests (Hypothesis) of the weights reader on mutated real checkpoints: every input either loads
or fails with one line naming the file; never another exception, a crash or a traceback, and the process's
peak memory stays within the bound.

The seeds are a real Ultralytics checkpoint (golden/yolov8_best.pt, written by Ultralytics' trainer) and a
yolotrain checkpoint of a tiny model. Example counts are small so the suite stays fast; Hypothesis keeps
the failing examples it finds in its database and shrinks them to a minimal file.
"""

from __future__ import annotations

import functools
import itertools
import resource
import tempfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yolotrain.checkpoint_file import save_checkpoint
from yolotrain.errors import CheckpointError
from yolotrain.models import build_model
from yolotrain.models.weights_io import read_weights

GOLDEN = Path(__file__).with_name("golden") / "yolov8_best.pt"
SETTINGS = settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True
)
_COUNT = itertools.count()


@functools.lru_cache(maxsize=1)
def seeds() -> dict[str, dict[str, bytes]]:
    """Each seed file's zip members (name -> bytes); a function, not a fixture, so Hypothesis does not print
    the whole files with a failing example."""
    folder = Path(tempfile.mkdtemp(prefix="seeds-"))
    ours = folder / "ours.pt"
    model = build_model(scale="custom", family="v8", depth=0.33, width=0.0625, max_channels=32, nc=2)
    save_checkpoint({"model_cfg": model.config(), "model": model.state_dict(), "names": ["a", "b"]}, ours)
    out = {}
    for name, path in (("ultralytics", GOLDEN), ("yolotrain", ours)):
        with zipfile.ZipFile(path) as z:
            out[name] = {i.filename: z.read(i) for i in z.infolist()}
    ours.unlink()
    folder.rmdir()
    return out


def _write(folder: Path, members: dict[str, bytes]) -> Path:
    path = folder / f"m{next(_COUNT)}.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _loads_or_one_line(path: Path) -> None:
    try:
        read_weights(path)
    except CheckpointError as e:  # the only way out besides success
        msg = str(e)
        assert "\n" not in msg and str(path) in msg, msg
    finally:
        path.unlink()


def _pickle_name(members: dict[str, bytes]) -> str:
    return next(n for n in members if n.endswith("/data.pkl"))


edits = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=4)), min_size=1,
                 max_size=6)  # fmt: skip


@pytest.fixture(scope="module")
def peak():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grew_mb <= 256, f"peak RSS grew {grew_mb:.0f} MB while reading mutated checkpoints"


@pytest.mark.parametrize("seed", ["ultralytics", "yolotrain"])
@SETTINGS
@given(changes=edits)
def test_mutated_pickle_loads_or_fails_in_one_line(seed, tmp_path, peak, changes):
    members = dict(seeds()[seed])
    name = _pickle_name(members)
    data = bytearray(members[name])
    for where, new in changes:  # overwrite a few bytes of the pickle; the zip around it stays valid
        at = int(where * len(data))
        data[at : at + len(new)] = new
    members[name] = bytes(data)
    _loads_or_one_line(_write(tmp_path, members))


@pytest.mark.parametrize("seed", ["ultralytics", "yolotrain"])
@SETTINGS
@given(cut=st.floats(0, 1), drop=st.booleans())
def test_truncated_or_member_dropped_fails_in_one_line(seed, tmp_path, peak, cut, drop):
    members = dict(seeds()[seed])
    name = _pickle_name(members)
    if drop:  # one storage record missing
        storages = sorted(n for n in members if "/data/" in n)
        del members[storages[int(cut * (len(storages) - 1))]]
    else:
        members[name] = members[name][: int(cut * len(members[name]))]
    _loads_or_one_line(_write(tmp_path, members))


@SETTINGS
@given(changes=edits)
def test_mutated_zip_bytes_fail_in_one_line(tmp_path, peak, changes):
    raw = (GOLDEN).read_bytes()
    data = bytearray(raw)
    for where, new in changes:  # anywhere in the file: headers, directory, storages
        at = int(where * len(data))
        data[at : at + len(new)] = new
    path = tmp_path / f"z{next(_COUNT)}.pt"
    path.write_bytes(bytes(data))
    _loads_or_one_line(path)
