"""Weights files that try to exhaust memory or the stack, or to make the reader call a method: each is refused
in one line naming the file, within the stated bounds (models/safe_pickle.py, models/torch_zip.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
import weights_bombs as bombs
from ultralytics_fixtures import write_ultralytics_checkpoint

from yolotrain.checkpoint_file import save_checkpoint
from yolotrain.errors import CheckpointError
from yolotrain.models import build_model, safe_pickle, torch_zip
from yolotrain.models.safe_pickle import safe_load
from yolotrain.models.weights_io import read_weights

SRC = Path(__file__).resolve().parents[2] / "src"


def refused(path: Path, reader=safe_load) -> str:
    """The one line ``reader`` refuses ``path`` with (never a traceback or another exception type)."""
    with pytest.raises(CheckpointError) as e:
        reader(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


def test_stride0_view_is_refused_not_copied(tmp_path):
    path = bombs.stride0_view(tmp_path / "view.pt")
    assert path.stat().st_size < 2000
    assert "show 128000000 elements of a storage of 1" in refused(path)
    assert "show 128000000 elements" in refused(path, read_weights)


def test_views_that_partition_a_storage_are_views(tmp_path):
    base = torch.arange(12.0)
    path = tmp_path / "views.pt"
    torch.save({"a": base[:6].view(2, 3), "b": base[6:], "a_again": base[:6].view(2, 3)}, path)
    got = safe_load(path)
    assert got["a"].tolist() == [[0, 1, 2], [3, 4, 5]] and got["b"].tolist() == [6, 7, 8, 9, 10, 11]
    # views of one storage, not copies: one buffer holds all three
    assert got["a"].untyped_storage().data_ptr() == got["b"].untyped_storage().data_ptr()
    assert got["a_again"] is got["a"]  # the same view saved twice is one object


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_DEFLATED])
def test_compressed_pickle_is_refused_before_it_is_expanded(tmp_path, method):
    path = bombs.compressed_pickle(tmp_path / "bomb.pt", method, mb=16)
    assert path.stat().st_size < 100_000
    assert "data.pkl is compressed" in refused(path)
    assert "data.pkl is compressed" in refused(path, read_weights)


def test_compressed_storage_is_refused(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(1000)}, good)
    bad = tmp_path / "deflated.pt"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            kind = zipfile.ZIP_DEFLATED if "/data/" in info.filename else zipfile.ZIP_STORED
            zout.writestr(info.filename, zin.read(info), compress_type=kind)
    assert "storage '0' is compressed" in refused(bad)


def test_additems_on_a_built_object_is_refused(tmp_path):
    assert "adds set items to a Tensor" in refused(bombs.additems_on_tensor(tmp_path / "add.pt"))


def test_deep_tuple_key_is_refused_without_a_crash(tmp_path):
    # plain pickle (torch.load(weights_only=False)) of this file dies with SIGSEGV while hashing the key
    assert "nests tuples more than 100 deep" in refused(bombs.deep_tuple_key(tmp_path / "deep.pt"))


def test_deep_lists_are_refused_without_recursion(tmp_path):
    # 200,000 levels: within the instruction budget, so the depth check is what refuses it
    assert "nests containers more than 100 deep" in refused(bombs.deep_list(tmp_path / "deep.pt", 200_000))


def test_module_cycle_is_refused(tmp_path):
    path = bombs.module_cycle(tmp_path / "cycle.pt")
    assert "contains itself (a cycle)" in refused(path)
    assert "contains itself (a cycle)" in refused(path, read_weights)


def test_instruction_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(safe_pickle, "MAX_OPS", 1000)
    assert isinstance(safe_load(bombs.many_objects(tmp_path / "ok.pt", 400)), list)
    assert "more than 1000 instructions" in refused(bombs.many_objects(tmp_path / "many.pt", 600))


def test_member_and_entry_caps(tmp_path, monkeypatch):
    path = tmp_path / "w.pt"
    torch.save({f"t{i}": torch.zeros(2) for i in range(20)}, path)
    monkeypatch.setattr(torch_zip, "MAX_ENTRIES", 10)
    assert "entries (at most 10 are read)" in refused(path)
    monkeypatch.setattr(torch_zip, "MAX_ENTRIES", 1000)
    monkeypatch.setattr(torch_zip, "MAX_PICKLE_BYTES", 100)
    assert "(at most 100 are read)" in refused(path)


def test_storages_larger_than_the_file_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "w.pt"
    torch.save({"a": torch.zeros(1000), "b": torch.zeros(1000)}, path)
    real = path.stat().st_size
    monkeypatch.setattr(torch_zip, "_file_size", lambda p: 6000)  # as if two members overlapped in the zip
    assert real > 8000 and "storages add up to more bytes than the file holds" in refused(path)


def test_odd_field_type_is_one_line(tmp_path):
    assert "is not a well-formed Ultralytics checkpoint" in refused(bombs.odd_field(tmp_path / "odd.pt"), read_weights)


def test_ultralytics_text_in_a_yolotrain_checkpoint_does_not_make_it_ultralytics(tmp_path):
    # the kind follows from the structure: a path that spells the Ultralytics module is only text
    model = build_model("n", nc=2)
    path = tmp_path / "ours.pt"
    state = {"model_cfg": model.config(), "model": model.state_dict(), "names": ["a", "b"]}
    save_checkpoint({**state, "data_yaml": "/data/ultralytics.nn.tasks/DetectionModel/data.yaml"}, path)
    lw = read_weights(path)
    assert lw.kind == "yolotrain" and lw.state["data_yaml"].startswith("/data/ultralytics.nn")


def test_an_ultralytics_class_elsewhere_does_not_make_it_ultralytics(tmp_path):
    model = build_model("n", nc=2).eval()
    path = write_ultralytics_checkpoint(tmp_path / "u.pt", model, "v8")
    obj = safe_load(path)
    moved = tmp_path / "moved.pt"  # the same model under another key: not where Ultralytics keeps it
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(moved, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"X\x03\x00\x00\x00ema", b"X\x03\x00\x00\x00emb")
            zout.writestr(info, data)
    assert obj["ema"] is not None and read_weights(path).kind == "ultralytics"
    assert "not a yolotrain checkpoint" in refused(moved, read_weights)


# ------------------------------------------------------------------------------------------ peak memory
PEAK_SCRIPT = textwrap.dedent(
    """
    import json, re, sys
    from yolotrain.errors import CheckpointError
    from yolotrain.models.weights_io import read_weights
    from yolotrain.models.safe_pickle import safe_load

    def kb(key):
        return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))

    safe_load(sys.argv[1])  # warm-up: imports, allocator arenas (a small legitimate file)
    out = {}
    for path in sys.argv[2:]:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM) to the current resident size
        before = kb("VmRSS")
        try:
            read_weights(path)
            how = "loaded"
        except CheckpointError as e:
            how = str(e)
        out[path] = [how, (kb("VmHWM") - before) * 1024]
    print(json.dumps(out))
    """
)
SMALL_CONSTANT = 128 << 20  # bytes: what MAX_OPS instructions can build (~95 MiB measured), zip directory, slack


@pytest.mark.slow
def test_peak_memory_of_hostile_and_legitimate_files(tmp_path):
    """Peak RSS growth while reading each file <= 2x its tensors' bytes + a small constant (a fresh process's
    VmHWM, reset to the resident size before each file through /proc/self/clear_refs)."""
    warm = tmp_path / "warm.pt"
    save_checkpoint({"model_cfg": {"scale": "n", "nc": 2}, "w": torch.zeros(4)}, warm)
    big = tmp_path / "big.pt"  # a legitimate checkpoint holding 64 MB of tensors
    model = build_model("n", nc=2)
    tensors = {f"t{i}": torch.rand(1 << 20) for i in range(16)}
    save_checkpoint({"model_cfg": model.config(), "model": model.state_dict(), "extra": tensors}, big)
    big_bytes = sum(t.nbytes for t in tensors.values()) + sum(t.nbytes for t in model.state_dict().values())
    hostile = [
        bombs.stride0_view(tmp_path / "view.pt"),
        bombs.compressed_pickle(tmp_path / "bz2.pt", zipfile.ZIP_BZIP2, mb=16),
        bombs.compressed_pickle(tmp_path / "zip.pt", zipfile.ZIP_DEFLATED, mb=256),
        bombs.deep_tuple_key(tmp_path / "deep_key.pt"),
        bombs.deep_list(tmp_path / "deep_list.pt", 200_000),
        bombs.many_objects(tmp_path / "many.pt", safe_pickle.MAX_OPS // 2 - 2),  # just within the budget
    ]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    cmd = [sys.executable, "-c", PEAK_SCRIPT, str(warm), *map(str, hostile), str(big)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    for path in hostile:
        how, grew = got[str(path)]
        assert how != "loaded" or path.name == "many.pt", (path.name, how)
        assert grew <= SMALL_CONSTANT, (path.name, grew / 2**20, how)
    how, grew = got[str(big)]
    assert how == "loaded" and grew <= 2 * big_bytes + SMALL_CONSTANT, (grew / 2**20, big_bytes / 2**20)
