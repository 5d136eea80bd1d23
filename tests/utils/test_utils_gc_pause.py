"""utils/gc_pause.py: the collector is off inside the block and back as it was after, an error included."""

import gc

import pytest

from yolotrain.utils.gc_pause import collector_paused


def test_collector_is_off_inside_and_as_it_was_after():
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        assert not gc.isenabled()
        raise RuntimeError("inside")
    assert gc.isenabled()  # back on, though the block raised
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # a collector the caller had turned off stays off
    finally:
        gc.enable()
