"""A bounded memory of recently seen event ids, so a redelivered event is applied once.

Examples
--------
>>> seen = RecentIds(capacity=2)
>>> [seen.check_and_add(x) for x in ["a", "b", "a", "c", "a"]]
[False, False, True, False, True]
>>> seen.check_and_add("b")  # evicted: only the last 2 distinct ids are remembered
False
"""

from __future__ import annotations

from collections import OrderedDict


class RecentIds:
    """An LRU set of the last ``capacity`` distinct ids."""

    def __init__(self, capacity: int = 1_000_000) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def check_and_add(self, key: str) -> bool:
        """True if ``key`` was seen before (and refresh it); otherwise remember it."""
        if key in self._ids:
            self._ids.move_to_end(key)
            return True
        self._ids[key] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return False
