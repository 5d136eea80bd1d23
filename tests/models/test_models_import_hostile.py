"""Hostile files: nothing a file carries may run, and the refusal is one line naming the file.

Each hostile fixture is also loaded once with plain pickle (``torch.load(weights_only=False)``, what
Ultralytics does) to prove the payload is real: that load creates the marker file ours must not create.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import pytest
import torch
from ultralytics_fixtures import plain_load, write_ultralytics_checkpoint

from yolotrain.errors import CheckpointError
from yolotrain.models import build_model
from yolotrain.models.safe_pickle import UnsafeFileError, safe_load
from yolotrain.models.weights_io import read_weights


class ShellCall:
    """Unpickling this runs ``touch <marker>`` through os.system."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class EvalCall:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').close()",))


class GetattrCall:
    def __reduce__(self):
        return (getattr, ("abc", "upper"))


def _proves_payload_runs(path, marker, fakes) -> None:
    """Plain pickle (what ``weights_only=False`` does) runs the payload: the fixture is really hostile."""
    try:
        plain_load(path, fakes)
    except Exception:  # the payload may leave an unusable object behind; only its side effect matters
        pass
    assert marker.exists()
    marker.unlink()


def _one_line(e: pytest.ExceptionInfo, path) -> str:
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "nothing from it was run" in msg
    return msg


# Protocol 2 (torch.save's) spells builtins the Python 2 way: __builtin__.
@pytest.mark.parametrize(("payload", "named"), [(ShellCall, "posix.system"), (EvalCall, "__builtin__.eval")])
def test_reduce_to_a_call_is_refused_and_never_runs(tmp_path, payload, named):
    marker = tmp_path / "pwned"
    fakes = []
    model = build_model("n", nc=2).eval()
    extra = {"train_args": {"x": payload(marker)}}
    path = write_ultralytics_checkpoint(tmp_path / "evil.pt", model, "v8", extra=extra, fakes_out=fakes)
    with pytest.raises(UnsafeFileError) as e:
        read_weights(path)
    assert named in _one_line(e, path)
    assert not marker.exists()
    _proves_payload_runs(path, marker, fakes[0])


def test_getattr_global_is_refused(tmp_path):
    path = tmp_path / "getattr.pt"
    torch.save({"model": None, "ema": GetattrCall()}, path)
    with pytest.raises(UnsafeFileError) as e:
        safe_load(path)
    assert "__builtin__.getattr, which a weights file never needs" in _one_line(e, path)


def test_hostile_setstate_of_a_named_class_never_runs(tmp_path):
    marker = tmp_path / "setstate-ran"

    def hostile(fakes):
        # A class registered under an Ultralytics path whose __setstate__ writes the marker. Plain pickle
        # imports it and calls __setstate__; ours must keep an inert record of the state instead.
        def __setstate__(self, state):
            open(state["marker"], "w").close()

        cls = fakes.cls("Hooked", object, {"__setstate__": __setstate__})
        obj = cls()
        obj.__dict__["marker"] = str(marker)
        return obj

    def mutate(tree, fakes):
        tree.criterion = hostile(fakes)

    fakes = []
    model = build_model("n", nc=2).eval()
    path = write_ultralytics_checkpoint(tmp_path / "hooked.pt", model, "v8", mutate=mutate, fakes_out=fakes)
    with fakes[0]:  # even with the hostile class importable (as if ultralytics were installed) ...
        fakes[0].register()
        lw = read_weights(path)  # ... it loads: the class is only a name here
        inert = safe_load(path)["ema"].get("criterion")
    assert lw.model_cfg == {"scale": "n", "nc": 2}
    assert inert.cls_name == "ultralytics.nn.modules.block.Hooked" and inert.state == {"marker": str(marker)}
    assert not marker.exists()
    _proves_payload_runs(path, marker, fakes[0])  # with the class importable, plain pickle runs __setstate__


def test_unknown_reduce_to_an_ultralytics_function_is_refused(tmp_path):
    def fetch(url):  # stands for any function the file names; it must never be called
        raise AssertionError("called")

    def mutate(tree, fakes):
        fakes.add("ultralytics.utils.downloads", "attempt_download", fetch)

        class Fetch:
            def __reduce__(self):
                return (fetch, ("http://example.invalid/x",))

        tree.extra = Fetch()

    path = write_ultralytics_checkpoint(tmp_path / "fetch.pt", build_model("n", nc=2).eval(), "v8", mutate=mutate)
    with pytest.raises(UnsafeFileError) as e:
        read_weights(path)
    assert "it calls ultralytics.utils.downloads.attempt_download (a pickled function call)" in _one_line(e, path)


def _rewrite_pickle(src, dst, edit) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info, edit(data) if info.filename.endswith("data.pkl") else data)


def test_tensor_reaching_past_its_storage_is_refused(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(4)}, good)
    # Claim 400 elements for a 4-element storage: the rebuilt view would read past the storage.
    bad = tmp_path / "bad.pt"

    def grow(data: bytes) -> bytes:
        size4 = pickle.BININT1 + bytes([4]) + pickle.TUPLE1  # the size tuple (4,)
        assert data.count(size4) == 1
        return data.replace(size4, pickle.BININT2 + (400).to_bytes(2, "little") + pickle.TUPLE1)

    _rewrite_pickle(good, bad, grow)
    with pytest.raises(
        CheckpointError, match="does not fit its storage|show 400 elements of a storage of 4|truncated or corrupt"
    ):
        safe_load(bad)


def test_inst_opcode_is_refused(tmp_path):
    # Protocol 0 spells "call os.system" as INST; torch.save never writes it, so it is refused outright.
    payload = b"(S'touch " + str(tmp_path / "m").encode() + b"'\nios\nsystem\n."
    path = tmp_path / "inst.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", payload)
    with pytest.raises(UnsafeFileError, match="INST/OBJ/EXT"):
        safe_load(path)
    assert not (tmp_path / "m").exists()


def test_not_a_zip_is_a_clean_error(tmp_path):
    (tmp_path / "x.pt").write_bytes(io.BytesIO(b"not a zip").getvalue())
    with pytest.raises(CheckpointError, match="not a torch.save zip"):
        safe_load(tmp_path / "x.pt")
