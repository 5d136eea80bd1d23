"""`yolotrain ckpt info/strip/diff` and fine-tuning from a checkpoint (model=*.pt, pretrained=, load=)."""

import json

import pytest
import torch

from yolotrain.checkpoint_file import Checkpoint, load_checkpoint
from yolotrain.cli import main


@pytest.mark.slow
def test_info_json_and_text(trained_run, capsys):
    last = trained_run / "weights" / "last.pt"
    assert main(["ckpt", "info", str(last), "json=true"]) == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert d["resumable"] and d["position"]["epoch"] == 1 and d["position"]["complete"]
    assert d["model"] == {"scale": "n", "nc": 4} and d["config"]["epochs"] == 2
    assert d["tensors"]["model"]["tensors"] > 100 and d["versions"]["torch"] == torch.__version__
    assert main(["ckpt", "info", str(last)]) == 0
    out = capsys.readouterr().out
    assert "position: epoch 2" in out and "model: scale n, 4 classes" in out


@pytest.mark.slow
def test_strip_keeps_fp16_ema_and_still_predicts(trained_run, tmp_path, capsys):
    src = trained_run / "weights" / "best.pt"
    out = tmp_path / "slim.pt"
    assert main(["ckpt", "strip", str(src), str(out)]) == 0
    slim = load_checkpoint(out)
    full = load_checkpoint(src)
    assert "optimizer" not in slim and "position" not in slim
    assert all(v.dtype == torch.float16 for v in slim["model"].values() if v.is_floating_point())
    k = "head.cls.0.0.conv.weight" if "head.cls.0.0.conv.weight" in full["ema"] else next(iter(full["ema"]))
    assert torch.allclose(slim["model"][k].float(), full["ema"][k], atol=1e-2, rtol=1e-3)
    assert out.stat().st_size < src.stat().st_size / 3
    # a stripped file cannot be resumed, but validates
    assert main(["train", f"resume={out}"]) == 2
    assert "no training state" in capsys.readouterr().err
    assert main(["val", f"model={out}", "workers=0", "verbose=false"]) == 0


def test_diff_exit_codes(trained_run, tmp_path, capsys):
    last = trained_run / "weights" / "last.pt"
    assert main(["ckpt", "diff", str(last), str(last)]) == 0
    assert capsys.readouterr().out.strip().endswith("identical")
    state = torch.load(last, weights_only=True)
    state.pop("integrity")
    model = Checkpoint(state)["model"]  # the weights, wherever the file's layout keeps them
    first = next(iter(model))
    model[first] = model[first] + 0.5
    from yolotrain.checkpoint_file import save_checkpoint

    other = tmp_path / "other.pt"
    save_checkpoint({k: v for k, v in state.items() if k != "format"}, other)
    assert main(["ckpt", "diff", str(last), str(other)]) == 1
    out = capsys.readouterr().out
    assert "max |A-B| = 0.5" in out and out.strip().endswith("different")
    assert main(["ckpt", "bogus"]) == 2


@pytest.mark.slow
def test_finetune_with_other_class_count_reports_counts(trained_run, tiny_data, tmp_path, capsys):
    # a 1-class dataset from the same images: the head's class branch no longer fits
    yaml, root = tmp_path / "one.yaml", tmp_path / "one"
    for split in ("train", "val"):  # the same images, every box relabelled as class 0
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for img in (tiny_data.parent / "images" / split).iterdir():
            (root / "images" / split / img.name).symlink_to(img)
            label = tiny_data.parent / "labels" / split / f"{img.stem}.txt"
            rows = [f"0 {ln.split(' ', 1)[1]}" for ln in label.read_text().splitlines() if ln.strip()]
            (root / "labels" / split / label.name).write_text("".join(r + "\n" for r in rows))
    yaml.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: [thing]\n")
    lbl = tmp_path
    assert (
        main(
            [
                "train",
                f"data={yaml}",
                f"model={trained_run / 'weights' / 'best.pt'}",
                "epochs=1",
                "imgsz=64",
                "batch=8",
                "workers=0",
                f"project={lbl}",
                "verbose=true",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "re-initialised" in err and "in the head's class branch (the file has" in err and "the model 1)" in err
    assert (
        main(
            [
                "train",
                f"data={tiny_data}",
                "model=n",
                f"pretrained={trained_run / 'weights' / 'best.pt'}",
                "load=backbone",
                "epochs=1",
                "imgsz=64",
                "batch=8",
                "workers=0",
                f"project={lbl}",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "outside the backbone (load=backbone)" in err and "different shape" not in err
