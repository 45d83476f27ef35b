"""Process-wide caches shared by every browser session: thread-safe LRUs with a byte budget.

Each cache maps a small hashable key to a value and evicts the least recently used entries
once the summed size of its values exceeds its budget. ``get_or_compute`` is *single-flight*:
if two sessions (or two Dask tasks) ask for the same missing key at once, one computes and the
other waits for that result instead of doing the work twice.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

import numpy as np


def nbytes(value: Any, _depth: int = 0) -> int:
    """Approximate memory held by ``value``: numpy arrays counted exactly, containers recursively."""
    if _depth > 4:
        return 64
    if isinstance(value, np.ndarray):
        return int(value.nbytes) if value.base is None or value.flags.owndata else int(value.nbytes)
    if isinstance(value, (list, tuple)):
        return 64 + sum(nbytes(v, _depth + 1) for v in value)
    if isinstance(value, dict):
        return 64 + sum(nbytes(v, _depth + 1) for v in value.values())
    size = getattr(value, "cache_nbytes", None)
    if size is not None:
        return int(size() if callable(size) else size)
    if hasattr(value, "__dict__"):
        return 64 + sum(nbytes(v, _depth + 1) for v in vars(value).values())
    return sys.getsizeof(value)


class LRUCache:
    """A thread-safe LRU map bounded by ``budget`` bytes (values sized with :func:`nbytes`).

    A single value larger than the budget is returned but not kept.
    """

    def __init__(self, name: str, budget: int):
        self.name = name
        self.budget = int(budget)
        self._data: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.RLock()
        self._inflight: dict[Hashable, threading.Event] = {}
        self.hits = self.misses = 0

    # -- inspection -------------------------------------------------------------------
    @property
    def size(self) -> int:
        with self._lock:
            return sum(s for _, s in self._data.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._data

    def keys(self) -> list:
        with self._lock:
            return list(self._data)

    def items_like(self, prefix: tuple) -> list:
        """``(key, value)`` pairs whose tuple key starts with ``prefix``."""
        with self._lock:
            return [(k, v) for k, (v, _) in self._data.items()
                    if isinstance(k, tuple) and k[:len(prefix)] == prefix]

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    # -- access -----------------------------------------------------------------------
    def get(self, key, default=None):
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return default
            self._data.move_to_end(key)
            return item[0]

    def put(self, key, value) -> Any:
        size = nbytes(value)
        with self._lock:
            self._data.pop(key, None)
            if size <= self.budget:
                self._data[key] = (value, size)
                self._evict()
        return value

    def _evict(self) -> None:
        total = sum(s for _, s in self._data.values())
        while total > self.budget and self._data:
            _, (_, s) = self._data.popitem(last=False)
            total -= s

    def get_or_compute(self, key, compute: Callable[[], Any]):
        """The cached value for ``key``, computing it once (other callers wait) if missing."""
        while True:
            with self._lock:
                item = self._data.get(key)
                if item is not None:
                    self._data.move_to_end(key)
                    self.hits += 1
                    return item[0]
                event = self._inflight.get(key)
                if event is None:
                    event = self._inflight[key] = threading.Event()
                    owner = True
                    self.misses += 1
                else:
                    owner = False
            if not owner:
                event.wait()
                continue  # stored, too large to keep, or the owner failed: look again
            try:
                value = compute()
            except BaseException:
                with self._lock:
                    self._inflight.pop(key, None)
                event.set()
                raise
            size = nbytes(value)
            with self._lock:
                self._inflight.pop(key, None)
                if size <= self.budget:
                    self._data[key] = (value, size)
                    self._evict()
            event.set()
            return value


MB = 1 << 20

#: loaded data sets with their (n, 125000) float64 coefficients: the big one
DATASETS = LRUCache("datasets", 1600 * MB)
#: K-means training selections per (data set, M)
SELECTIONS = LRUCache("selections", 8 * MB)
#: descriptor distances per (data set, gamma, Delta, training set)
DISTANCES = LRUCache("distances", 256 * MB)
#: coefficient Gram matrices and mean per (data set, training set)
GRAMS = LRUCache("grams", 256 * MB)
#: one kernel eigendecomposition per (distances, sigma)
EIGEN = LRUCache("eigen", 256 * MB)
#: CV choices, fitted density models and energy stages (small, M-space)
MODELS = LRUCache("models", 256 * MB)
#: models opened from files: an ML-HK one holds M x 125,000 numbers several times (600 MB for benzene
#: at M = 200), and a by-reference file is refitted to get it, so keep the open one (and a second)
FILE_MODELS = LRUCache("model files", 1024 * MB)
#: densities of single molecules on the fine view grid, and per-voxel training spreads
GRIDS = LRUCache("grids", 384 * MB)
#: learning-curve points
CURVES = LRUCache("curves", 4 * MB)

ALL = (DATASETS, SELECTIONS, DISTANCES, GRAMS, EIGEN, MODELS, FILE_MODELS, GRIDS, CURVES)


def stats() -> dict:
    """``{cache name: (entries, bytes, budget)}`` for the status line and the benchmark."""
    return {c.name: (len(c), c.size, c.budget) for c in ALL}
