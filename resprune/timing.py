"""One timing helper for every measurement: synchronised wall-clock time of a callable on a device, warm-up and
repeats, the median reported (a single ``perf_counter`` around GPU work measures only the kernel launches)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


def synchronize(device: Any) -> None:
    """Wait for the work queued on ``device`` (CUDA / MPS); a no-op on the CPU."""
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":  # pragma: no cover - Apple only
        torch.mps.synchronize()


@dataclass(frozen=True)
class Timing:
    """Seconds of each repeat, their median, and the last call's result."""

    seconds: tuple[float, ...]
    result: Any

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def measure(fn: Callable[[], Any], device: Any = "cpu", *, repeats: int = 3, warmup: int = 0) -> Timing:
    """Time ``fn()`` ``repeats`` times after ``warmup`` untimed calls, synchronising ``device`` around each call.

    >>> t = measure(lambda: sum(range(1000)), repeats=3)
    >>> len(t.seconds), t.result
    (3, 499500)
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    result = None
    for _ in range(warmup):
        result = fn()
    synchronize(device)
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        synchronize(device)
        seconds.append(time.perf_counter() - t0)
    return Timing(tuple(seconds), result)
