"""Collisionless keys: a vectorised uint64 -> slot hash index, and string ids mapped to uint64.

:class:`HashIndex` is open addressing with linear probing over two flat numpy
arrays (the key and its slot), so every distinct 64-bit id gets its own row and
nothing is hashed modulo a fixed vocabulary. It costs 12 bytes per bucket and
stays at most 70% full, about 17-34 bytes per row.

:class:`KeyMap` turns string ids into 64-bit keys. The key is a 64-bit blake2b
hash; when two strings would share one (about 1 in 37 million for a million
ids), the later one is given a salted hash instead and remembered, so distinct
strings never share a key.

Examples
--------
>>> import numpy as np
>>> index = HashIndex()
>>> index.insert(np.array([7, 2**64 - 1], dtype=np.uint64), np.array([0, 1]))
>>> index.lookup(np.array([2**64 - 1, 8, 7], dtype=np.uint64)).tolist()
[1, -1, 0]
>>> keys = KeyMap()
>>> k = keys.assign(["user-1"])
>>> keys.find(["user-1", "user-2"])[1].tolist(), keys.string_of(int(k[0]))
([True, False], 'user-1')
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

import numpy as np

EMPTY = -1
TOMBSTONE = -2
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MAX_ID_BYTES = 1024


class HashIndex:
    """uint64 key -> non-negative int slot, open addressing, batch operations."""

    def __init__(self, capacity: int = 1024, max_load: float = 0.7) -> None:
        self.max_load = max_load
        self._alloc(max(16, 1 << (int(capacity / max_load) - 1).bit_length()))

    def _alloc(self, buckets: int) -> None:
        self._keys = np.zeros(buckets, dtype=np.uint64)
        self._slots = np.full(buckets, EMPTY, dtype=np.int32)
        self._mask = np.uint64(buckets - 1)
        self._shift = np.uint64(64 - (buckets.bit_length() - 1))
        self._live = 0
        self._used = 0  # live + tombstones: what probing has to walk past

    def __len__(self) -> int:
        return self._live

    @property
    def nbytes(self) -> int:
        return self._keys.nbytes + self._slots.nbytes

    def _home(self, keys: np.ndarray) -> np.ndarray:
        # Fibonacci hashing: the top bits of key * 2^64/phi spread sequential ids well
        return (keys * _GOLDEN) >> self._shift

    def _probe(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(bucket of each key or -1, slot of each key or -1)."""
        n = len(keys)
        bucket = np.full(n, -1, dtype=np.int64)
        slot = np.full(n, EMPTY, dtype=np.int64)
        pos = self._home(keys)
        active = np.arange(n)
        while len(active):
            at = pos.astype(np.int64)
            s = self._slots[at]
            found = (s >= 0) & (self._keys[at] == keys[active])
            bucket[active[found]] = at[found]
            slot[active[found]] = s[found]
            more = ~found & (s != EMPTY)
            active, pos = active[more], (pos[more] + np.uint64(1)) & self._mask
        return bucket, slot

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The slot of each key, -1 where absent, in input order."""
        return self._probe(np.asarray(keys, dtype=np.uint64))[1]

    def insert(self, keys: np.ndarray, slots: np.ndarray) -> None:
        """Add keys that are absent and distinct (the caller checks) with their slots."""
        keys = np.asarray(keys, dtype=np.uint64)
        slots = np.asarray(slots, dtype=np.int64)
        if len(self._slots) * self.max_load < self._used + len(keys):
            self._rehash(self._live + len(keys))
        pos = self._home(keys)
        active = np.arange(len(keys))
        while len(active):
            at = pos.astype(np.int64)
            free = self._slots[at] < 0
            # of several keys landing on one free bucket, the first takes it
            cand = active[free]
            _, first = np.unique(at[free], return_index=True)
            winners = cand[first]
            wat = at[free][first]
            reused = int(np.count_nonzero(self._slots[wat] == TOMBSTONE))
            self._keys[wat] = keys[winners]
            self._slots[wat] = slots[winners]
            self._live += len(winners)
            self._used += len(winners) - reused
            placed = np.zeros(len(active), dtype=bool)
            placed[np.flatnonzero(free)[first]] = True
            active, pos = active[~placed], (pos[~placed] + np.uint64(1)) & self._mask

    def remove(self, keys: np.ndarray) -> np.ndarray:
        """Remove keys; returns the slots they had (-1 for keys that were absent)."""
        bucket, slot = self._probe(np.asarray(keys, dtype=np.uint64))
        hit = bucket >= 0
        self._slots[bucket[hit]] = TOMBSTONE
        self._live -= int(np.count_nonzero(hit))
        return slot

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        live = self._slots >= 0
        return self._keys[live].copy(), self._slots[live].astype(np.int64)

    def _rehash(self, needed: int) -> None:
        keys, slots = self.items()
        self._alloc(max(16, 1 << (int(max(needed, 16) / self.max_load * 1.5)).bit_length()))
        if len(keys):
            self.insert(keys, slots)


def string_key(value: str, salt: int = 0) -> int:
    """The 64-bit key of a string id (``salt`` > 0 only to step past a collision)."""
    data = value.encode() if not salt else f"{salt}\x00{value}".encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def check_ids(ids: Iterable[object]) -> list[str]:
    """Validate string ids: non-empty ``str`` of at most 1 KiB in UTF-8. Raises ValueError."""
    out = []
    for i, value in enumerate(ids):
        if not isinstance(value, str) or not value:
            raise ValueError(f"id #{i} must be a non-empty string, got {value!r:.80}")
        # a str of n characters encodes to at most 4n bytes: only long ones need encoding
        if len(value) * 4 > MAX_ID_BYTES and (
            len(value) > MAX_ID_BYTES or len(value.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES
        ):
            raise ValueError(f"id #{i} is longer than {MAX_ID_BYTES} bytes")
        out.append(value)
    return out


class KeyMap:
    """String id <-> uint64 key, one to one. Only :meth:`assign` adds; :meth:`find` is a read."""

    def __init__(self, hasher: Callable[[str, int], int] = string_key) -> None:
        self._hash = hasher
        self._string: dict[int, str] = {}
        self._key: dict[str, int] = {}  # the same objects: a lookup costs no hashing
        self.collisions = 0  # strings that were given a salted key

    def __len__(self) -> int:
        return len(self._string)

    def find(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Keys of known ids (0 where unknown) and the known mask, in input order."""
        get = self._key.get
        found = [get(value) for value in ids]
        known = np.fromiter((k is not None for k in found), dtype=bool, count=len(found))
        keys = np.fromiter((k or 0 for k in found), dtype=np.uint64, count=len(found))
        return keys, known

    def assign(self, ids: Sequence[str]) -> np.ndarray:
        """Keys for ``ids``, giving unknown ids a fresh key no other string has."""
        get = self._key.get
        keys = [get(value) for value in ids]
        for i, key in enumerate(keys):
            if key is None:
                keys[i] = self._key.get(ids[i]) or self._place(ids[i])
        return np.array(keys, dtype=np.uint64)

    def _place(self, value: str) -> int:
        salt = 0
        while True:
            key = self._hash(value, salt)
            if key not in self._string:
                break
            salt += 1
        self._register(key, value)
        return key

    def _register(self, key: int, value: str) -> None:
        self._string[key] = value
        self._key[value] = key
        if self._hash(value, 0) != key:
            self.collisions += 1

    def restore(self, key: int, value: str) -> None:
        """Re-register a (key, string) pair read back from a checkpoint."""
        self._register(int(key), value)

    def forget(self, keys: Iterable[int]) -> list[str]:
        """Drop keys (evicted rows); returns their strings."""
        out = []
        for key in keys:
            value = self._string.pop(int(key))
            del self._key[value]
            if self._hash(value, 0) != int(key):
                self.collisions -= 1
            out.append(value)
        return out

    def string_of(self, key: int) -> str:
        return self._string[int(key)]

    def strings_of(self, keys: Iterable[int]) -> list[str]:
        string = self._string
        return [string[int(k)] for k in keys]
