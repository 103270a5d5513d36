"""A single-writer hnswlib index keyed by string item ids.

The wrapper owns the id <-> label map and one lock: hnswlib is not safe for a
search concurrent with an insert (hnswlib#29, #562), so reads and writes take
turns. Upserting an existing id replaces its vector in place; the index grows
(doubling) when full.

Examples
--------
>>> import numpy as np
>>> index = AnnIndex(dim=2, space="ip", capacity=2)
>>> index.upsert(["a", "b", "c"], np.array([[1, 0], [0, 1], [0.7, 0.7]], dtype=np.float32))
>>> [item for item, _ in index.search(np.array([1.0, 0.1], dtype=np.float32), k=2)]
['a', 'c']
>>> index.upsert(["a"], np.array([[0, -1]], dtype=np.float32))   # moved away
>>> [item for item, _ in index.search(np.array([1.0, 0.1], dtype=np.float32), k=2)]
['c', 'b']
>>> len(index), index.capacity >= 3
(3, True)
>>> index.remove(["c"]), "c" in index, len(index)            # an evicted item
(1, False, 2)
>>> [item for item, _ in index.search(np.array([1.0, 0.1], dtype=np.float32), k=3)]
['b', 'a']
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence

import hnswlib
import numpy as np

SPACES = ("ip", "cosine", "l2")


class AnnIndex:
    def __init__(
        self,
        dim: int,
        *,
        space: str = "ip",
        capacity: int = 1024,
        m: int = 16,
        ef_construction: int = 100,
        ef: int = 64,
    ) -> None:
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}")
        self.dim = dim
        self.space = space
        self._ef = ef
        self._index = hnswlib.Index(space=space, dim=dim)
        self._index.init_index(max_elements=capacity, M=m, ef_construction=ef_construction)
        self._index.set_ef(ef)
        self._label: dict[str, int] = {}
        self._ids: list[str] = []
        self._deleted: set[int] = set()  # labels of removed ids; re-adding one revives it
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._ids) - len(self._deleted)

    def __contains__(self, item_id: object) -> bool:
        if not isinstance(item_id, str):
            return False
        label = self._label.get(item_id)
        return label is not None and label not in self._deleted

    @property
    def capacity(self) -> int:
        return int(self._index.get_max_elements())

    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        with self._lock:
            labels = np.empty(len(ids), dtype=np.int64)
            for n, item_id in enumerate(ids):
                label = self._label.get(item_id)
                if label is None:
                    label = self._label[item_id] = len(self._ids)
                    self._ids.append(item_id)
                labels[n] = label
            if len(self._ids) > self.capacity:
                self._index.resize_index(max(len(self._ids), 2 * self.capacity))
            for label in labels.tolist():
                if label in self._deleted:
                    self._index.unmark_deleted(label)
                    self._deleted.discard(label)
            # one thread: concurrent adds of an existing label are not safe in hnswlib
            self._index.add_items(vectors, labels, num_threads=1)

    def remove(self, ids: Sequence[str]) -> int:
        """Drop ids from search results (hnswlib ``mark_deleted``); returns how many were live."""
        removed = 0
        with self._lock:
            for item_id in ids:
                label = self._label.get(item_id)
                if label is not None and label not in self._deleted:
                    self._index.mark_deleted(label)
                    self._deleted.add(label)
                    removed += 1
        return removed

    def vector(self, item_id: str) -> np.ndarray | None:
        with self._lock:
            label = self._label.get(item_id)
            if label is None or label in self._deleted:
                return None
            return np.asarray(self._index.get_items([label])[0], dtype=np.float32)

    def search(
        self, query: np.ndarray, k: int, exclude: Collection[str] = ()
    ) -> list[tuple[str, float]]:
        """Top-``k`` ids with scores (higher is closer: ``1 - distance``), ``exclude`` left out."""
        with self._lock:
            n = len(self._ids) - len(self._deleted)
            if n == 0 or k <= 0:
                return []
            want = min(n, k + len(exclude))
            self._index.set_ef(max(self._ef, want))
            labels, distances = self._index.knn_query(
                np.asarray(query, dtype=np.float32).reshape(1, self.dim), k=want, num_threads=1
            )
            pairs = zip(labels[0], distances[0], strict=True)
            found = [(self._ids[int(label)], 1.0 - float(d)) for label, d in pairs]
        return [(i, s) for i, s in found if i not in exclude][:k]
