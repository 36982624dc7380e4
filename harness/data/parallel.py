"""Run a function over a long stream of items with a few threads, a bounded window and a progress bar."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

from tqdm import tqdm

from benchmarks.common import show_progress

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, total: int, workers: int, desc: str,
                progress: bool = True) -> list[R]:
    """[fn(item) for item in items] with `workers` threads; at most 2 * workers items are in flight (so a
    stream of millions stays in bounded memory). An exception (or Ctrl-C) stops it: pending items are
    cancelled, those in flight finish, and the exception is raised."""
    results: list[R | None] = [None] * total
    pending: dict[Future, int] = {}
    workers = max(1, workers)
    bar = tqdm(total=total, desc=desc, unit="img", disable=not show_progress(progress))
    pool = ThreadPoolExecutor(max_workers=workers)

    def collect(done: set[Future]) -> None:
        for fut in done:
            results[pending.pop(fut)] = fut.result()
            bar.update(1)

    try:
        for i, item in enumerate(items):
            if i >= total:
                break
            pending[pool.submit(fn, item)] = i
            if len(pending) >= 2 * workers:
                collect(wait(pending, return_when=FIRST_COMPLETED)[0])
        while pending:
            collect(wait(pending, return_when=FIRST_COMPLETED)[0])
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        bar.close()
    pool.shutdown()
    return [r for r in results if r is not None]
