"""A collisionless embedding table keyed by 64-bit ids, growing without a fixed vocabulary.

Rows, their optimizer state and metadata live in contiguous numpy arrays
addressed through a :class:`~paramserver.keys.HashIndex`, so distinct ids never
share a row. Reads (:meth:`pull`, :meth:`sample`, :meth:`meta`) never create
rows; only the training path does, through :meth:`admit`, and only for ids that
have passed the admission filter. Everything is pure (no I/O): a checkpoint
takes :meth:`drain_changes` and a restore feeds :meth:`load_rows`.

Examples
--------
>>> import numpy as np
>>> table = EmbeddingTable(TableConfig("items", dim=4, min_count=2, ttl_seconds=60))
>>> ids = np.array([10, 20], dtype=np.uint64)
>>> table.admit(ids, now=1.0).tolist(), len(table)     # first sighting: no rows yet
([False, False], 0)
>>> table.admit(ids[:1], now=2.0).tolist(), len(table)  # id 10's second sighting
([True], 1)
>>> vecs, hit = table.pull(ids)
>>> hit.tolist(), vecs.shape
([True, False], (2, 4))
>>> table.push(ids[:1], np.ones((1, 4), dtype=np.float32), now=3.0)
>>> bool(np.all(table.pull(ids[:1])[0] < vecs[:1])), table.meta(ids[:1])[0].tolist()
(True, [1])
>>> table.expire(now=100.0).tolist(), len(table)         # idle for 97 s > ttl
([10], 0)
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np

from paramserver.admission import CountingFilter
from paramserver.config import TableConfig
from paramserver.keys import HashIndex
from paramserver.optim import sum_duplicates

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def as_matrix(values: np.ndarray, n: int, dim: int, what: str) -> np.ndarray:
    """``values`` as an (n, dim) float32 matrix of finite numbers, or a ValueError naming it."""
    out = np.asarray(values, dtype=np.float32)
    if out.shape != (n, dim):
        raise ValueError(f"{what} must have shape ({n}, {dim}), got {out.shape}")
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{what} contain NaN or infinity")
    return out


def initial_rows(keys: np.ndarray, dim: int, scale: float, seed: int = 0) -> np.ndarray:
    """Deterministic N(0, scale^2) vectors: the same id (and seed) always starts at the same point.

    Counter-based (splitmix64 of id, seed and column, then Box-Muller), so it is
    vectorised and independent of which other ids share the batch.
    """
    keys = np.asarray(keys, dtype=np.uint64)
    cols = np.arange(dim, dtype=np.uint64)
    with np.errstate(over="ignore"):  # the hash wraps modulo 2**64 by design
        salt = np.uint64(seed) * _GOLDEN
    base = _splitmix(keys ^ salt)
    bits = _splitmix(base[:, None] + (cols[None, :] + np.uint64(1)) * _GOLDEN)
    u1 = ((bits >> np.uint64(40)).astype(np.float64) + 0.5) / float(1 << 24)
    u2 = ((bits & np.uint64(0xFFFFFF)).astype(np.float64)) / float(1 << 24)
    normal = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return (normal * scale).astype(np.float32)


@dataclass
class TableStats:
    """Cumulative counts of what the table did; the metrics edge turns them into counters."""

    admissions: int = 0
    evictions: int = 0


@dataclass
class TableChanges:
    """Rows written and keys deleted since the last :meth:`EmbeddingTable.drain_changes`."""

    keys: np.ndarray
    slots: np.ndarray
    rows: np.ndarray
    state: np.ndarray
    updates: np.ndarray
    last_update: np.ndarray
    deleted: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))

    def __len__(self) -> int:
        return len(self.keys)


class EmbeddingTable:
    """Rows keyed by uint64 id; the configured optimizer is applied server-side on ``push``."""

    def __init__(self, config: TableConfig) -> None:
        self.config = config
        self.optimizer = config.optimizer
        self.stats = TableStats()
        width = config.filter_width if config.min_count > 1 else 1  # unused at min_count 1
        self.filter = CountingFilter(config.min_count, width=width)
        cap = config.initial_capacity
        self._index = HashIndex(cap)
        self._keys = np.zeros(cap, dtype=np.uint64)
        self._rows = np.zeros((cap, config.dim), dtype=np.float32)
        self._state = np.zeros((cap, self.optimizer.state_width(config.dim)), dtype=np.float32)
        self._updates = np.zeros(cap, dtype=np.uint32)
        self._last = np.zeros(cap, dtype=np.float64)
        self._live = np.zeros(cap, dtype=bool)
        self._dirty = np.zeros(cap, dtype=bool)
        self._deleted: set[int] = set()
        self._free: list[int] = []  # a heap: new rows take the lowest free slot
        self._high = 0  # slots [0, high) have been used

    @property
    def dim(self) -> int:
        return self.config.dim

    def __len__(self) -> int:
        return len(self._index)

    @property
    def nbytes(self) -> int:
        """Bytes held for rows, optimizer state, metadata and the key index."""
        arrays = (self._keys, self._rows, self._state, self._updates, self._last)
        flags = self._live.nbytes + self._dirty.nbytes
        return sum(a.nbytes for a in arrays) + flags + self._index.nbytes

    def _slots(self, keys: np.ndarray) -> np.ndarray:
        return self._index.lookup(keys)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        return self._slots(np.asarray(keys, dtype=np.uint64)) >= 0

    def keys(self) -> np.ndarray:
        return self._keys[: self._high][self._live[: self._high]].copy()

    def pull(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectors for ``keys`` in input order (zeros where missing) and the hit mask. A read."""
        slots = self._slots(np.asarray(keys, dtype=np.uint64))
        hit = slots >= 0
        if hit.all():
            out = self._rows[slots]
        else:
            out = np.zeros((len(slots), self.dim), dtype=np.float32)
            out[hit] = self._rows[slots[hit]]
        return out, hit

    def meta(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(update count, last update time) per key; -1 and NaN where missing. A read."""
        slots = self._slots(np.asarray(keys, dtype=np.uint64))
        hit = slots >= 0
        updates = np.full(len(slots), -1, dtype=np.int64)
        last = np.full(len(slots), np.nan)
        updates[hit] = self._updates[slots[hit]]
        last[hit] = self._last[slots[hit]]
        return updates, last

    def admit(self, keys: np.ndarray, *, now: float) -> np.ndarray:
        """The training path: count sightings, create rows for ids that earned one; hit mask.

        Ids that already have a row are not counted again. New rows start at their
        deterministic initial vector with fresh optimizer state.
        """
        keys = np.asarray(keys, dtype=np.uint64)
        slots = self._slots(keys)
        missing = slots < 0
        if not missing.any():
            return np.ones(len(keys), dtype=bool)
        hit = ~missing
        admitted = self.filter.observe(keys[missing])
        new_keys = np.unique(keys[missing][admitted])
        if len(new_keys):
            self._create(new_keys, now)
            hit[np.flatnonzero(missing)[admitted]] = True
        return hit

    def put(
        self, keys: np.ndarray, rows: np.ndarray, *, now: float, updates: np.ndarray | None = None
    ) -> None:
        """Set rows outright (e.g. from a bootstrap checkpoint), bypassing admission.

        Missing ids get a row; every put row gets fresh optimizer state, its update
        count (default 0) and ``now`` as its last update.
        """
        keys = np.asarray(keys, dtype=np.uint64)
        if keys.ndim != 1:
            raise ValueError(f"keys must be one-dimensional, got shape {keys.shape}")
        rows = as_matrix(rows, len(keys), self.dim, "rows")
        if len(np.unique(keys)) != len(keys):
            raise ValueError("put takes each id once")
        counts = np.zeros(len(keys), dtype=np.uint32) if updates is None else updates
        missing = self._slots(keys) < 0
        if missing.any():
            self._create(keys[missing], now)
        slots = self._slots(keys)
        self._rows[slots] = rows
        self._state[slots] = self.optimizer.init_state(rows)
        self._updates[slots] = np.asarray(counts, dtype=np.uint32)
        self._last[slots] = now
        self._dirty[slots] = True

    def _create(self, keys: np.ndarray, now: float) -> None:
        slots = self._take_slots(len(keys))
        rows = initial_rows(keys, self.dim, self.config.init_scale, self.config.seed)
        self._keys[slots] = keys
        self._rows[slots] = rows
        self._state[slots] = self.optimizer.init_state(rows)
        self._updates[slots] = 0
        self._last[slots] = now
        self._live[slots] = True
        self._dirty[slots] = True
        self._deleted.difference_update(keys.tolist())
        self._index.insert(keys, slots)
        self.stats.admissions += len(keys)

    def _take_slots(self, n: int) -> np.ndarray:
        reused = [heapq.heappop(self._free) for _ in range(min(n, len(self._free)))]
        fresh = np.arange(self._high, self._high + n - len(reused), dtype=np.int64)
        self._high += len(fresh)
        self._grow(self._high)
        return np.concatenate([np.array(reused, dtype=np.int64), fresh])

    def push(self, keys: np.ndarray, grads: np.ndarray, *, now: float) -> None:
        """Apply gradients (duplicate ids summed first). Unknown ids and bad grads raise, first."""
        keys = np.asarray(keys, dtype=np.uint64)
        if keys.ndim != 1:
            raise ValueError(f"keys must be one-dimensional, got shape {keys.shape}")
        grads = as_matrix(grads, len(keys), self.dim, "grads")
        unique, summed = sum_duplicates(keys, grads)
        slots = self._slots(unique)
        if (slots < 0).any():
            missing = unique[slots < 0][:5].tolist()
            raise KeyError(f"push to ids without a row (admit them first): {missing}")
        rows, state = self._rows[slots], self._state[slots]
        self.optimizer.apply(rows, state, summed)
        self._rows[slots], self._state[slots] = rows, state
        self._updates[slots] += 1
        self._last[slots] = now
        self._dirty[slots] = True

    def expire(self, *, now: float) -> np.ndarray:
        """Evict rows idle longer than the TTL (by event time ``now``); returns their ids."""
        ttl = self.config.ttl_seconds
        if ttl is None or not len(self):
            return np.zeros(0, dtype=np.uint64)
        idle = self._live[: self._high] & (self._last[: self._high] < now - ttl)
        return self.remove(self._keys[: self._high][idle])

    def remove(self, keys: np.ndarray) -> np.ndarray:
        """Delete rows (admin or expiry); returns the ids that had one."""
        keys = np.asarray(keys, dtype=np.uint64)
        slots = self._index.remove(keys)
        gone = slots[slots >= 0]
        self._live[gone] = False
        self._dirty[gone] = False
        for slot in gone.tolist():
            heapq.heappush(self._free, slot)
        removed = keys[slots >= 0]
        self._deleted.update(removed.tolist())
        self.stats.evictions += len(removed)
        return removed

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Up to ``n`` ids drawn uniformly, with replacement, from existing rows. A read."""
        if n <= 0 or not len(self):
            return np.zeros(0, dtype=np.uint64)
        picked: list[np.ndarray] = []
        have = 0
        for _ in range(64):  # rejection of freed slots; bounded, ample unless mostly freed
            draw = rng.integers(0, self._high, size=n)
            draw = draw[self._live[draw]][: n - have]
            picked.append(draw)
            have += len(draw)
            if have == n:
                break
        return self._keys[np.concatenate(picked)]

    def drain_changes(self) -> TableChanges:
        """Everything written since the last drain (for a checkpoint); clears the record."""
        slots = np.flatnonzero(self._dirty[: self._high])
        self._dirty[slots] = False
        deleted = np.array(sorted(self._deleted), dtype=np.uint64)
        self._deleted.clear()
        return TableChanges(
            keys=self._keys[slots].copy(),
            slots=slots,
            rows=self._rows[slots].copy(),
            state=self._state[slots].copy(),
            updates=self._updates[slots].copy(),
            last_update=self._last[slots].copy(),
            deleted=deleted,
        )

    def undrain(self, changes: TableChanges) -> None:
        """Put back a drain whose checkpoint failed, so the next drain carries it again.

        Only valid before the table changes again (the worker holds its lock from the
        drain to the commit): a drained row's slot still holds that row.
        """
        slots = changes.slots
        same = self._live[slots] & (self._keys[slots] == changes.keys)
        self._dirty[slots[same]] = True
        self._deleted.update(changes.deleted.tolist())

    def load_rows(self, changes: TableChanges, high: int) -> None:
        """Restore rows into their recorded slots (into an empty table); ``high``: slots used."""
        if len(self):
            raise RuntimeError("load_rows restores into an empty table")
        if len(changes) and int(changes.slots.max()) >= high:
            raise ValueError("a restored slot lies beyond the recorded high-water mark")
        self._grow(high)
        s = changes.slots
        self._keys[s] = changes.keys
        self._rows[s] = changes.rows
        self._state[s] = changes.state
        self._updates[s] = changes.updates
        self._last[s] = changes.last_update
        self._live[s] = True
        self._index.insert(changes.keys, s)
        self._high = high
        self._free = np.flatnonzero(~self._live[:high]).tolist()  # sorted: already a heap

    @property
    def high_water(self) -> int:
        return self._high

    def _grow(self, needed: int) -> None:
        cap = len(self._keys)
        if needed <= cap:
            return
        new_cap = max(needed, cap * 2)
        for name in ("_keys", "_rows", "_state", "_updates", "_last", "_live", "_dirty"):
            old = getattr(self, name)
            new = np.zeros((new_cap, *old.shape[1:]), dtype=old.dtype)
            new[:cap] = old
            setattr(self, name, new)
