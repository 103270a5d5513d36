"""Which items each user has recently interacted with, for "exclude already-seen" filters.

Bounded both ways: the last ``per_user`` items of each user, and at most
``max_users`` users (the least recently active are forgotten first). Pure: the
replica's tailer feeds it the events of the ``interactions`` topic.

Examples
--------
>>> seen = SeenItems(per_user=2, max_users=2)
>>> seen.add("u1", "a"); seen.add("u1", "b"); seen.add("u1", "c")
>>> sorted(seen.get("u1"))                       # only the last two
['b', 'c']
>>> seen.add("u2", "x"); seen.add("u3", "y")     # u1 is the least recently active
>>> seen.get("u1"), len(seen), seen.recent(5)
(frozenset(), 2, ['u3', 'u2'])
>>> SeenItems.from_json(seen.to_json(), per_user=2, max_users=2).get("u3")
frozenset({'y'})
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from typing import Any


class SeenItems:
    def __init__(self, per_user: int = 50, max_users: int = 1_000_000) -> None:
        if per_user < 1 or max_users < 1:
            raise ValueError("per_user and max_users must be >= 1")
        self.per_user = per_user
        self.max_users = max_users
        self._users: OrderedDict[str, OrderedDict[str, None]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._users)

    def add(self, user_id: str, item_id: str) -> None:
        with self._lock:
            items = self._users.pop(user_id, None)
            if items is None:
                items = OrderedDict()
                if len(self._users) >= self.max_users:
                    self._users.popitem(last=False)
            items.pop(item_id, None)
            items[item_id] = None
            if len(items) > self.per_user:
                items.popitem(last=False)
            self._users[user_id] = items

    def get(self, user_id: str) -> frozenset[str]:
        with self._lock:
            items = self._users.get(user_id)
            return frozenset(items) if items else frozenset()

    def recent(self, n: int) -> list[str]:
        """The ``n`` most recently active users, most recent first."""
        with self._lock:
            return list(itertools.islice(reversed(self._users), n))

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {user: list(items) for user, items in self._users.items()}

    @classmethod
    def from_json(cls, body: dict[str, Any], per_user: int, max_users: int) -> SeenItems:
        seen = cls(per_user, max_users)
        for user, items in body.items():
            for item in items:
                seen.add(str(user), str(item))
        return seen
