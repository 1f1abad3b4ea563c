"""prefetch: order kept, loads ahead in another thread, errors handed over, not raised."""

from __future__ import annotations

import threading

import pytest

from medsamkit.evaluation._prefetch import prefetch


@pytest.mark.parametrize("ahead", [0, 1, 3])
def test_order_and_values(ahead):
    out = list(prefetch(range(7), lambda i: i * i, ahead=ahead))
    assert [(i, v) for i, v, _ in out] == [(i, i * i) for i in range(7)]
    assert all(err is None for *_, err in out)


def test_loads_in_a_background_thread_ahead_of_the_consumer():
    threads, loaded = [], []

    def load(i):
        threads.append(threading.current_thread().name)
        loaded.append(i)
        return i

    gen = prefetch(range(5), load, ahead=2)
    next(gen)
    # While the caller holds item 0, items 1 and 2 were requested too.
    for _ in range(100):
        if len(loaded) >= 3:
            break
        threading.Event().wait(0.01)
    assert len(loaded) >= 3
    list(gen)
    assert all(name.startswith("medsamkit-read") for name in threads)


def test_errors_are_yielded_and_iteration_goes_on():
    def load(i):
        if i == 1:
            raise OSError("bad file")
        return i

    out = list(prefetch(range(3), load, ahead=1))
    assert [i for i, *_ in out] == [0, 1, 2]
    assert isinstance(out[1][2], OSError) and out[1][1] is None
    assert out[2][1] == 2
