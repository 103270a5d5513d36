"""An in-process embedding table: collisionless (one row per distinct id), growing on demand.

This is the walking-skeleton parameter server: rows live in contiguous numpy
arrays addressed through an id -> slot dict, so distinct ids never share a row.
Reads never create rows; only the training path (``ensure``) does.

Examples
--------
>>> import numpy as np
>>> table = EmbeddingTable(TableConfig("items", dim=4))
>>> vecs, hit = table.pull(["a", "b"])
>>> hit.tolist(), len(table)          # a read creates nothing
([False, False], 0)
>>> table.ensure(["a"], now=1.0)
>>> vecs, hit = table.pull(["a", "b"])
>>> hit.tolist(), vecs.shape, bool(np.all(vecs[1] == 0))
([True, False], (2, 4), True)
>>> before = vecs[0].copy()
>>> table.push(["a"], np.ones((1, 4), dtype=np.float32), now=2.0)
>>> bool(np.all(table.pull(["a"])[0][0] < before)), table.meta("a").updates
(True, 1)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from paramserver.config import TableConfig
from paramserver.optim import rowwise_adagrad, sum_duplicates


@dataclass(frozen=True)
class RowMeta:
    """Per-row metadata: how many updates (also the row's version) and when (event time)."""

    updates: int
    last_update: float


def initial_row(key: str, dim: int, scale: float) -> np.ndarray:
    """Deterministic initial vector for ``key``: the same id always starts at the same point."""
    seed = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return (np.random.default_rng(seed).standard_normal(dim) * scale).astype(np.float32)


class EmbeddingTable:
    """Rows keyed by string id, with row-wise Adagrad applied server-side on ``push``."""

    def __init__(self, config: TableConfig) -> None:
        self.config = config
        self._slot: dict[str, int] = {}
        self._keys: list[str] = []
        cap = config.initial_capacity
        self._rows = np.zeros((cap, config.dim), dtype=np.float32)
        self._acc = np.zeros(cap, dtype=np.float32)
        self._updates = np.zeros(cap, dtype=np.int64)
        self._last = np.zeros(cap, dtype=np.float64)

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, key: object) -> bool:
        return key in self._slot

    def ids(self) -> Iterator[str]:
        return iter(self._slot)

    def pull(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors for ``ids`` in input order, zeros where missing, and the hit mask."""
        slots = np.fromiter((self._slot.get(k, -1) for k in ids), dtype=np.int64, count=len(ids))
        hit = slots >= 0
        out = np.zeros((len(ids), self.config.dim), dtype=np.float32)
        out[hit] = self._rows[slots[hit]]
        return out, hit

    def ensure(self, ids: Sequence[str], *, now: float) -> None:
        """Create rows (deterministically initialised) for ids that have none."""
        missing = [k for k in dict.fromkeys(ids) if k not in self._slot]
        if not missing:
            return
        self._grow(len(self._slot) + len(missing))
        cfg = self.config
        for key in missing:
            slot = len(self._slot)
            self._slot[key] = slot
            self._keys.append(key)
            self._rows[slot] = initial_row(key, cfg.dim, cfg.init_scale)
            self._acc[slot] = cfg.initial_accumulator
            self._last[slot] = now

    def push(self, ids: Sequence[str], grads: np.ndarray, *, now: float) -> None:
        """Apply gradients (duplicates summed) with row-wise Adagrad. Unknown ids are an error."""
        grads = np.asarray(grads, dtype=np.float32)
        if grads.shape != (len(ids), self.config.dim):
            raise ValueError(
                f"grads must have shape ({len(ids)}, {self.config.dim}), got {grads.shape}"
            )
        if not np.all(np.isfinite(grads)):
            raise ValueError("grads contain NaN or infinity")
        unique, summed = sum_duplicates(list(ids), grads)
        try:
            slots = np.array([self._slot[k] for k in unique], dtype=np.int64)
        except KeyError as err:
            raise KeyError(
                f"push to id {err.args[0]!r} that has no row; call ensure first"
            ) from None
        rows, acc = self._rows[slots], self._acc[slots]
        rowwise_adagrad(rows, acc, summed, lr=self.config.lr, eps=self.config.eps)
        self._rows[slots], self._acc[slots] = rows, acc
        self._updates[slots] += 1
        self._last[slots] = now

    def sample(self, n: int, rng: np.random.Generator) -> list[str]:
        """Up to ``n`` ids drawn uniformly (with replacement) from existing rows; a read."""
        if not self._keys or n <= 0:
            return []
        return [self._keys[i] for i in rng.integers(0, len(self._keys), size=n)]

    def meta(self, key: str) -> RowMeta:
        slot = self._slot[key]
        return RowMeta(updates=int(self._updates[slot]), last_update=float(self._last[slot]))

    def _grow(self, needed: int) -> None:
        cap = self._rows.shape[0]
        if needed <= cap:
            return
        new_cap = max(needed, cap * 2)
        self._rows = np.resize(self._rows, (new_cap, self.config.dim))
        self._acc = np.resize(self._acc, new_cap)
        self._updates = np.resize(self._updates, new_cap)
        self._last = np.resize(self._last, new_cap)
