"""The Python API: Detector(...).train / val / predict return result objects."""

import pytest

from yolotrain import Detector


@pytest.mark.slow
def test_detector_train_val_predict(tiny_data, tmp_path):
    det = Detector("n")
    events = []
    det.add_callback("on_train_epoch_end", lambda t: events.append(t.epoch))
    best = det.train(data=str(tiny_data), epochs=2, imgsz=64, batch=8, workers=0, project=str(tmp_path), verbose=False)
    assert events == [0, 1]
    assert best is not None and 0.0 <= best.map50 <= 1.0
    assert det.model.endswith("best.pt")
    metrics = det.val(data=str(tiny_data), imgsz=64, workers=0, verbose=False)
    assert metrics.images == 8 and metrics.to_dict()["instances"] > 0
    preds = det.predict(str(tiny_data.parent / "images" / "val"), conf=0.0, max_det=3, project=str(tmp_path / "pred"))
    assert len(preds) == 8 and all(p.boxes.shape[1] == 4 and len(p.boxes) <= 3 for p in preds)
    assert preds[0].names[0] == "circle"


class _Boom(RuntimeError):
    pass


def _fail_at_start(trainer) -> None:
    raise _Boom("stop here")


@pytest.mark.slow
def test_a_failed_train_leaves_its_trainer_to_inspect(tiny_data, tmp_path):
    det = Detector("n")
    det.add_callback("on_train_start", _fail_at_start)
    with pytest.raises(_Boom):
        det.train(data=str(tiny_data), epochs=1, imgsz=64, batch=8, workers=0, project=str(tmp_path), verbose=False)
    assert det.trainer is not None and det.trainer.save_dir == tmp_path / "exp"  # the run that failed
    assert det.model == "n"  # no weights to move on to
