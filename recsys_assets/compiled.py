"""Helpers of the compiled (numba) loops, for every package that has some: how their
arrays are handed over and how their work is spread over the threads."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import polars as pl


def frozen(array: np.ndarray, dtype: type) -> np.ndarray:
    """`array` in `dtype`, read-only: the form of the kernels' input arrays (a writable
    array is another type to numba)."""
    array = np.ascontiguousarray(array, dtype=dtype).view()
    array.flags.writeable = False
    return array


def spans(indptr: np.ndarray, entries: int) -> list[tuple[int, int]]:
    """Ranges of rows of about `entries` entries each (rows whole), from a row pointer."""
    starts = np.searchsorted(indptr, np.arange(0, int(indptr[-1]), entries), side="right") - 1
    bounds = np.unique(np.r_[0, starts, indptr.size - 1]).tolist()
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def on_threads(kernel: Callable[..., Any], blocks: list[tuple[int, ...]], *arguments: Any) -> list:
    """`kernel(*block, *arguments)` for each block, on the threads (kernels release the GIL)."""
    with ThreadPoolExecutor(max_workers=max(1, pl.thread_pool_size())) as pool:
        return list(pool.map(lambda block: kernel(*block, *arguments), blocks))
