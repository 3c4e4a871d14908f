"""Ordered parallel map over record batches with a bounded number of batches in flight."""
from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def resolve_workers(workers: int) -> int:
    """``0`` means one process per CPU core available to this process."""
    if workers > 0:
        return workers
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int,
                initializer: Callable[[], None] | None = None) -> Iterator[R]:
    """``map(fn, items)`` over ``workers`` processes, results in input order.

    At most ``2 * workers`` items are in flight, so memory stays bounded however long ``items`` is.
    With one worker everything runs in this process (no start-up cost for small inputs).
    """
    if workers <= 1:
        if initializer is not None:
            initializer()
        yield from map(fn, items)
        return
    # forkserver: workers never inherit a parent's torch threads or open model files.
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=initializer) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
