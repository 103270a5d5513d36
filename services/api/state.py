"""What a retrieval replica holds and serves: the item index, user vectors, freshness samples.

Pure of Kafka and HTTP: the tailer feeds it decoded vector records, the API
asks it for recommendations.

Examples
--------
>>> import numpy as np
>>> from stream.vectors import VectorRecord
>>> state = ServingState(dim=2)
>>> vec = lambda *x: np.array(x, dtype=np.float32)
>>> state.apply_items([VectorRecord("a", vec(1, 0), 5, 1000), VectorRecord("b", vec(0, 1), 9, 0)],
...                   now_ms=1250)
[0.25]
>>> state.recommend("nobody", k=1)                     # unknown user: popularity prior
('popular', [('b', 9.0)])
>>> state.apply_users([VectorRecord("u", vec(0.9, 0.1), 1, 1100)], now_ms=1200)
[0.1]
>>> state.recommend("u", k=1)[0], state.recommend("u", k=1)[1][0][0]
('personal', 'a')
"""

from __future__ import annotations

import heapq
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from services.ann.index import AnnIndex
from stream.vectors import VectorRecord


class ServingState:
    def __init__(self, dim: int, *, space: str = "ip", freshness_window: int = 100_000) -> None:
        self.index = AnnIndex(dim, space=space)
        self._users: dict[str, np.ndarray] = {}
        self._item_updates: dict[str, int] = {}
        self._lock = threading.Lock()
        # (observed at, seconds): recent freshness samples, for exact percentiles
        self.freshness: deque[tuple[float, float]] = deque(maxlen=freshness_window)

    @property
    def users(self) -> int:
        return len(self._users)

    def apply_items(self, records: Sequence[VectorRecord], now_ms: int) -> list[float]:
        """Upsert item vectors; returns the freshness (seconds) of those that carry an event."""
        if not records:
            return []
        latest = {r.key: r for r in records}  # coalesce: only the last vector of an id matters
        self.index.upsert(list(latest), np.stack([r.vector for r in latest.values()]))
        with self._lock:
            for r in latest.values():
                self._item_updates[r.key] = r.updates
        return self._fresh(records, now_ms)

    def apply_users(self, records: Sequence[VectorRecord], now_ms: int) -> list[float]:
        with self._lock:
            for r in records:
                self._users[r.key] = r.vector
        return self._fresh(records, now_ms)

    def remove_items(self, keys: Sequence[str]) -> int:
        """Evicted items leave the index (a tombstone on ``item-vectors``)."""
        with self._lock:
            for key in keys:
                self._item_updates.pop(key, None)
        return self.index.remove(keys)

    def remove_users(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self._users.pop(key, None)

    def _fresh(self, records: Sequence[VectorRecord], now_ms: int) -> list[float]:
        ages = [max(0, now_ms - r.event_ms) / 1000 for r in records if r.event_ms > 0]
        self.freshness.extend((now_ms / 1000, age) for age in ages)
        return ages

    def user_vector(self, user_id: str) -> np.ndarray | None:
        with self._lock:
            return self._users.get(user_id)

    def popular(self, k: int) -> list[tuple[str, float]]:
        with self._lock:
            top = heapq.nlargest(k, self._item_updates.items(), key=lambda kv: kv[1])
        return [(item, float(n)) for item, n in top]

    def recommend(self, user_id: str, k: int) -> tuple[str, list[tuple[str, float]]]:
        vector = self.user_vector(user_id)
        if vector is None:
            return "popular", self.popular(k)
        return "personal", self.index.search(vector, k)

    def similar(self, item_id: str, k: int) -> list[tuple[str, float]] | None:
        vector = self.index.vector(item_id)
        if vector is None:
            return None
        return self.index.search(vector, k, exclude={item_id})

    def freshness_percentiles(self, since: float = 0.0) -> dict[str, Any]:
        """p50/p95/p99 of the recent samples observed at or after ``since`` (unix seconds)."""
        samples = np.array([age for at, age in list(self.freshness) if at >= since])
        if samples.size == 0:
            return {"p50": None, "p95": None, "p99": None, "samples": 0}
        p50, p95, p99 = np.percentile(samples, [50, 95, 99])
        return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "samples": samples.size}
