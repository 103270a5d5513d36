"""A bounded memory of recently seen event ids, so a redelivered event is applied once.

A first-in-first-out window of the last ``capacity`` distinct ids (by first
sighting). The window is a pure function of the id sequence, so a checkpoint
can carry it as a delta (:meth:`drain`) and a restore rebuilds it exactly.

Examples
--------
>>> seen = RecentIds(capacity=2)
>>> [seen.check_and_add(x) for x in ["a", "b", "a", "c", "a"]]
[False, False, True, False, False]
>>> seen.drain()          # (id, sequence number) added, ids that fell out of the window
([('a', 0), ('b', 1), ('c', 2), ('a', 3)], ['a', 'b'])
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable


class RecentIds:
    """A FIFO set of the last ``capacity`` distinct ids."""

    def __init__(self, capacity: int = 1_000_000) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._ids: OrderedDict[str, int] = OrderedDict()
        self._seq = 0
        self._added: list[tuple[str, int]] = []
        self._dropped: list[str] = []

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, key: object) -> bool:
        return key in self._ids

    def check_and_add(self, key: str) -> bool:
        """True if ``key`` is in the window; otherwise remember it."""
        if key in self._ids:
            return True
        self._ids[key] = self._seq
        self._added.append((key, self._seq))
        self._seq += 1
        if len(self._ids) > self.capacity:
            self._dropped.append(self._ids.popitem(last=False)[0])
        return False

    def drain(self) -> tuple[list[tuple[str, int]], list[str]]:
        """What changed since the last drain: ids added (with sequence) and ids dropped."""
        added, dropped = self._added, self._dropped
        self._added, self._dropped = [], []
        return added, dropped

    def undrain(self, added: list[tuple[str, int]], dropped: list[str]) -> None:
        """Put back a drain whose checkpoint failed: the next drain carries it again."""
        self._added[:0] = added
        self._dropped[:0] = dropped

    def restore(self, entries: Iterable[tuple[str, int]]) -> None:
        """Rebuild the window from (id, sequence) pairs read back from a checkpoint."""
        for key, seq in sorted(entries, key=lambda e: e[1])[-self.capacity :]:
            self._ids[key] = seq
            self._seq = max(self._seq, seq + 1)
