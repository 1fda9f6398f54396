"""How a batch of images is selected: lock-step on an accelerator, one image per CPU core on the CPU.

``select_batch`` and ``prune`` (for a batch of whole images) both go through ``run_batch``:

- tokens on an accelerator (or ``workers=1``): the method's batched variant where it has one (the greedy loops of
  all images in lock-step, one batched product per step), else image by image;
- tokens on the CPU with ``workers > 1``: the images are shared out to a pool of threads, each running the
  single-image selection with one BLAS thread. The work of a greedy selection is one image's float64 Gram product
  (half a GEMM) and a short loop; a batch cannot share that product, but two cores can each take an image, where
  one image's small product keeps two BLAS threads only partly busy and its loop runs on one core
  (``python -m resprune.bench select --batch 16`` measures it). NumPy's BLAS and torch release the GIL in the
  products, so threads suffice.

Each image's result is the single call's either way (tested): the images do not interact.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from .registry import batch_variant, method_info
from .types import Selection


def default_workers() -> int:
    """The CPU threads a batch uses by default: torch's intra-op thread count (what the user allows torch), at
    most the cores this process may run on."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cores))


def check_workers(workers: object) -> int | None:
    """``workers``: None (``default_workers()``) or an int >= 1 (a bool is refused)."""
    if workers is None:
        return None
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be None or an int >= 1 (CPU threads over the images), got {workers!r}")
    return workers


THREAD_MIN_WORK = 1 << 25
"""With ``workers=None`` the pool is used only when every image's Gram product, ``N^2 D`` multiply-adds, is at
least this (about a millisecond on one core): below it, starting threads costs more than they save (the offline
model's 144 x 192 tokens run one after the other)."""


@functools.cache
def _blas_controller() -> Any:  # noqa: ANN401 - threadpoolctl.ThreadpoolController, imported on first use
    """threadpoolctl's view of the loaded BLAS libraries, found once (a scan costs milliseconds)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _one_blas_thread() -> contextlib.AbstractContextManager:
    """NumPy's BLAS on one thread per caller while the pool runs (the pool's threads are the parallelism)."""
    return _blas_controller().limit(limits=1, user_api="blas")


def threads_for(items: Sequence[torch.Tensor], workers: int | None = None) -> int:
    """How many threads ``run_batch`` uses for these images (1: no pool)."""
    workers = check_workers(workers)
    if not all(t.device.type == "cpu" for t in items):
        return 1
    if workers is None:
        big = all(t.shape[0] ** 2 * t.shape[-1] >= THREAD_MIN_WORK for t in items)
        return min(len(items), default_workers()) if big else 1
    return min(len(items), workers)


def run_batch(
    method: str,
    items: Sequence[torch.Tensor],
    keep: int,
    queries: Sequence[torch.Tensor | None],
    internals: Sequence[dict[str, Any]],
    hparams: dict[str, Any],
    workers: int | None = None,
) -> list[Selection]:
    """One ``Selection`` per image (``items[b]``, ``queries[b]``, per-image keyword arguments ``internals[b]``,
    shared ``hparams``), each equal to the single call; see the module docstring for how they run."""
    info = method_info(method)
    n_workers = threads_for(items, workers)

    def single(b: int) -> Selection:
        return info.fn(items[b], keep, query=queries[b], **internals[b], **hparams)

    if n_workers > 1:
        with _one_blas_thread(), ThreadPoolExecutor(n_workers, thread_name_prefix="resprune-select") as pool:
            return list(pool.map(single, range(len(items))))
    fn: Callable[..., list] | None = batch_variant(method)
    if fn is not None:
        return fn(list(items), keep, list(queries), list(internals), **hparams)
    return [single(b) for b in range(len(items))]
