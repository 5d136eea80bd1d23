"""Through the CLI: a class id outside the data YAML's classes stops training with one line naming the file and row."""

from __future__ import annotations

from data_helpers import make_split

from yolotrain.cli import main


def test_train_refuses_out_of_range_class_id(tmp_path, capsys):
    make_split(tmp_path, "train", {"a": "0 0.5 0.5 0.2 0.2\n", "b": "1 0.5 0.5 0.2 0.2\n3 0.4 0.4 0.1 0.1\n"})
    yaml = tmp_path / "data.yaml"
    yaml.write_text(f"path: {tmp_path}\ntrain: images/train\nval: images/train\nnames: [cat, dog]\n")
    code = main(["train", f"data={yaml}", "epochs=1", "imgsz=64", "batch=2", "workers=0", f"project={tmp_path}/runs"])
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]  # the log goes there too
    assert code == 2
    assert len(errors) == 1
    assert "labels/train/b.txt: row 2: class id 3 is outside [0, 2)" in errors[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.pt"))  # nothing trained
