"""The test tiers: tests marked ``gpu`` are skipped where there is no CUDA device, and only those; the modules that
hold slow tests are handed out first."""

import importlib.util
from pathlib import Path

import pytest
import torch

# tests/conftest.py loaded by its path: ``import conftest`` returns whichever conftest module pytest put in
# sys.modules first, which depends on the order the suite collects its folders
_spec = importlib.util.spec_from_file_location("tests_root_conftest", Path(__file__).with_name("conftest.py"))
conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(conftest)


class Item:
    """The part of a pytest item the collection hook uses."""

    def __init__(self, *markers, nodeid="tests/test_x.py::test_x"):
        self.markers, self.added, self.nodeid = set(markers), [], nodeid

    def get_closest_marker(self, name):
        return name if name in self.markers else None

    def add_marker(self, marker):
        self.added.append(marker)


def test_gpu_tests_are_skipped_without_cuda_and_run_with_it(monkeypatch):
    gpu, slow, plain = Item("gpu", nodeid="tests/a.py::g"), Item("slow", nodeid="tests/b.py::s"), Item()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    conftest.pytest_collection_modifyitems(None, [gpu, slow, plain])
    assert [m.mark.name for m in gpu.added] == ["skip"] and "CUDA" in gpu.added[0].mark.kwargs["reason"]
    assert slow.added == [] and plain.added == []
    gpu.added.clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    conftest.pytest_collection_modifyitems(None, [gpu, slow, plain])
    assert gpu.added == []


def test_modules_holding_slow_tests_come_first_each_kept_whole_and_in_order():
    a1, a2 = Item(nodeid="tests/a.py::one"), Item(nodeid="tests/a.py::two")
    b1, b2 = Item(nodeid="tests/sub/b.py::one"), Item("slow", nodeid="tests/sub/b.py::two")
    c1 = Item(nodeid="tests/c.py::one")
    d1, d2 = Item("slow", nodeid="tests/d.py::one"), Item(nodeid="tests/d.py::two[x::y]")
    e1, e2 = Item("slow", nodeid="tests/e.py::one"), Item("slow", nodeid="tests/e.py::two")
    items = [a1, a2, b1, b2, c1, d1, d2, e1, e2]
    conftest.pytest_collection_modifyitems(None, items)
    # e holds two slow tests, b and d one each (kept in file order), a and c none
    assert items == [e1, e2, b1, b2, d1, d2, a1, a2, c1]


@pytest.mark.gpu
def test_a_gpu_marked_test_sees_cuda():
    assert torch.cuda.is_available()  # runs only where the hook did not skip it
