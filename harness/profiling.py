"""Timing of the named parts of a training step (off unless a benchmark script turns it on)."""
from __future__ import annotations

import resource
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

import torch


class Sections:
    def __init__(self) -> None:
        self.enabled = False
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self.cuda_peak_bytes: dict[str, int] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if cuda:
                torch.cuda.synchronize()
                self.cuda_peak_bytes[name] = max(self.cuda_peak_bytes.get(name, 0), torch.cuda.max_memory_allocated())
            self.seconds[name].append(time.perf_counter() - t0)

    def reset(self) -> None:
        self.seconds.clear()
        self.cuda_peak_bytes.clear()


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
