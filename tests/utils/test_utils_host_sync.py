"""HostSyncCounter: which calls count as host reads, and where it says they were made."""

import torch

from yolotrain.utils.host_sync import HostSyncCounter, host_data


def count(fn):
    x = torch.tensor([1.0, -2.0, 3.0])  # made outside the count
    with HostSyncCounter() as reads:
        fn(x)
    return dict(reads.kinds)


def test_value_and_shape_reads_are_counted_by_kind():
    assert count(lambda x: x.sum().item()) == {"item": 1}
    assert count(lambda x: bool(x[0] > 0)) == {"bool": 1}
    assert count(lambda x: x.tolist()) == {"tolist": 1}
    assert count(lambda x: x.cpu()) == {"cpu": 1}
    assert count(lambda x: x[x > 0]) == {"bool_index": 1}
    assert count(lambda x: torch.nonzero(x > 0)) == {"nonzero": 1}
    assert count(lambda x: torch.where(x > 0)) == {"nonzero": 1}


def test_device_work_is_not_counted():
    assert count(lambda x: torch.where(x > 0, x, 0.0).sum() * 2) == {}
    assert count(lambda x: x[torch.tensor([0, 2])]) == {}  # an integer index keeps its shape
    assert count(lambda x: torch.zeros(3, device=x.device) + x) == {}  # a fill: no copy from the host


def test_host_data_made_into_a_device_tensor_counts_as_h2d():
    # on a GPU each is a copy from pageable memory that waits for the stream (and breaks graph capture)
    assert count(lambda x: torch.tensor([2.0, 3.0], device=x.device)) == {"h2d": 1}
    assert count(lambda x: torch.as_tensor([2.0], device=x.device)) == {"h2d": 1}
    assert count(lambda x: x.new_tensor([2.0, 3.0, 4.0])) == {"h2d": 1}
    assert count(lambda x: torch.tensor([2.0, 3.0])) == {}  # stays on the host: the loader's kind of work
    assert count(lambda x: torch.as_tensor(x, device=x.device)) == {}  # already a tensor there: no host data


def test_reads_inside_host_data_are_not_counted():
    def packing(x):
        with host_data():
            x.tolist()
            torch.tensor([1], device=x.device)

    assert count(packing) == {}


def test_the_report_names_the_line_that_made_the_read():
    x = torch.ones(2)
    with HostSyncCounter() as reads:
        torch.tensor([1.0], device=x.device)  # a factory: torch calls the mode straight from C
        x.sum().item()  # a method
    line = test_the_report_names_the_line_that_made_the_read.__code__.co_firstlineno
    assert set(reads.where) == {f"h2d at {__file__}:{line + 3}", f"item at {__file__}:{line + 4}"}
