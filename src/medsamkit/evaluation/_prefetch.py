"""Read the next images in a background thread while the current one is segmented."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["prefetch"]

T = TypeVar("T")


def prefetch(items: Iterable[T], load: Callable[[T], Any], *, ahead: int = 2) -> Iterator[tuple[T, Any, BaseException | None]]:
    """Yield ``(item, load(item), None)`` in order, loading up to ``ahead`` items early.

    Image decoding (OpenCV) releases the GIL, so reading and decoding the next files
    overlaps with the encoder working on the current one. An exception raised by
    ``load`` is yielded as ``(item, None, exc)`` instead of stopping the iteration.

    Args:
        items: Items to load, in order.
        load: Function reading one item (e.g. ``Sample.load``).
        ahead: How many items to read in advance (0 reads in the caller's thread).
    """
    if ahead <= 0:
        for item in items:
            try:
                yield item, load(item), None
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                yield item, None, exc
        return
    iterator = iter(items)
    pending: deque[tuple[T, Future[Any]]] = deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medsamkit-read") as pool:

        def submit() -> None:
            for item in iterator:
                pending.append((item, pool.submit(load, item)))
                return

        for _ in range(ahead + 1):
            submit()
        while pending:
            item, future = pending.popleft()
            submit()
            try:
                yield item, future.result(), None
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                yield item, None, exc
