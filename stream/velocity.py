"""How fast a young item is taking off: pure logic, no I/O.

A new item's content says what it is about, not how many people will want it. Its first
positives, counted against how long it has been around, do: ``v`` is an item's count among
the last ``window`` positives, scaled by the window over its age in positives (from its
arrival: its content, or else its first positive), at most ``cap`` times and at least once,
so a positive within a few positives of an item's arrival reads as a rate of ``cap`` per
window, one after a long wait as a slow item's, and an item older than the window reads as
its plain window count. Serving adds ``beta * (1 - a(n)) * level`` to an
item's score (``level`` = ``log(1 + v)``; ``a(n)`` the blend weight), so the term fades as
behaviour takes over (:mod:`stream.training`).

The level is rounded to a grid so that a served copy (a replica's index) can be kept equal
to it: it changes with the item's own positives and also, without one, as the item ages or
its positives leave the window; :meth:`Velocity.observe` returns the items whose level
moved that way, and the worker publishes them again.

Examples
--------
>>> v = Velocity(window=100, cap=20.0, grid=0.05)
>>> v.observe(["b"], new=())                  # "b" was seen before the tracker began: old
[]
>>> v.arrive(["a"])                           # its content: its age counts from here
>>> v.observe(["a"], new=())
[]
>>> v.levels(["a", "b", "c"]).round(2).tolist()     # a: 1 * 20 -> log 21; b: log 2
[3.05, 0.7, 0.0]
>>> aged = v.observe(["b"] * 8, new=set())          # a is 9 positives old: 100 / 9 = 11x
>>> aged, round(float(v.levels(["a"])[0]), 2)
(['a'], 2.5)
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from stream.frequency import RecentCounts

GRID = 0.05  # the level's step: what a replica may lag behind the exact log(1 + v)


class Velocity:
    """The positives of the last ``window``, and where each young item's first one fell.

    Per step it looks only at the items whose level may have moved: those whose positives
    left the window, and young ones whose age reached the point where their level next
    steps down (scheduled when their level was last read; a look that finds the level
    unmoved schedules another), so a step costs its batch and the looks due (O(log) each),
    not a pass over every young item.
    """

    def __init__(self, window: int = 5_000, cap: float = 20.0, grid: float = GRID) -> None:
        if cap < 1 or grid <= 0 or window < 1:
            raise ValueError(f"window and cap must be >= 1 and grid > 0, got {window}, {cap} "
                             f"and {grid}")  # fmt: skip
        self.window, self.cap, self.grid = window, cap, grid
        self._start()

    def _start(self) -> None:
        """Nothing seen yet."""
        self.recent = RecentCounts(self.window)
        self.position = 0  # positives observed so far
        self.born: dict[str, int] = {}  # young item -> position of its first positive
        self._births: deque[tuple[int, str]] = deque()  # (position, item), oldest first
        # young items with positives in the window: their level as last read, and the
        # position by which to look again (a heap, with stale entries skipped)
        self._tracked: dict[str, float] = {}
        self._next: dict[str, int] = {}
        self._due: list[tuple[int, str]] = []

    def arrive(self, items: Iterable[str]) -> None:
        """New items (their content, before any positive): their age counts from now. Items
        that come before the first positive are the catalogue the stream starts with (a
        worker's first read of the items topic), not new ones: they are not young."""
        if self.position == 0:
            return
        for item in items:
            self._birth(item)

    def observe(self, items: Sequence[str], new: Iterable[str]) -> list[str]:
        """Count a batch's positives (in order); ``new``: items that arrive with their first
        positive (never seen, no content; an item with history counts is not young). Returns
        the items *not* in the batch whose level moved, sorted: aged, or their positives
        left the window."""
        new = set(new)
        batch = set(items)
        for item in items:
            if item in new:
                self._birth(item)
            self.position += 1
        left = Counter(i for i in self.recent.observe(items) if i not in batch)
        while self._births and self.position - self._births[0][0] >= self.window:
            at, item = self._births.popleft()  # a window old: the scale is 1 for good
            if self.born.get(item) == at:
                del self.born[item]
        look = set(left)
        while self._due and self._due[0][0] <= self.position:
            at, item = heapq.heappop(self._due)
            if self._next.get(item) == at:
                del self._next[item]
                look.add(item)
        moved = []
        for item in sorted(look - batch):
            was = self._tracked.get(item)
            if was is None:  # an old item whose positives left the window (scale 1 both)
                was = self._level(self.recent.get(item) + left[item], 1.0)
            if self._follow(item) != was:
                moved.append(item)
        for item in batch:
            self._follow(item)
        return moved

    def forget(self, items: Iterable[str]) -> None:
        """Items evicted from the tables: young no longer (they are born again if they come
        back)."""
        for item in items:
            self.born.pop(item, None)
            self._tracked.pop(item, None)
            self._next.pop(item, None)

    def levels(self, items: Sequence[str]) -> np.ndarray:
        """``log(1 + v)`` per item, on the grid (0 for an item with no recent positive)."""
        return np.fromiter((self._level(self.recent.get(i), self._scale(i)) for i in items),
                           dtype=np.float64, count=len(items))  # fmt: skip

    def _birth(self, item: str) -> None:
        if item not in self.born:
            self.born[item] = self.position
            self._births.append((self.position, item))

    def _follow(self, item: str) -> float:
        """The item's level now. A young item with positives in the window is followed: its
        level kept, and a look scheduled at the age its level may next step down by."""
        count = self.recent.get(item)
        level = self._level(count, self._scale(item))
        at = self.born.get(item)
        if at is None or not count:
            self._tracked.pop(item, None)
            self._next.pop(item, None)
            return level
        self._tracked[item] = level
        # the level steps down once log(1 + count * scale) / grid < its step - 1/2, i.e.
        # once the scale, window / age, is below `floor`; looked at a little early (a look
        # that finds it unmoved looks again), never late
        floor = math.expm1((round(level / self.grid) - 0.5) * self.grid) / count
        age = self.position - at
        ahead = self.window if floor <= 1.0 else int(self.window / floor) - 1
        due = at + min(self.window, max(age + 1, ahead))
        self._next[item] = due
        heapq.heappush(self._due, (due, item))
        return level

    def _scale(self, item: str) -> float:
        at = self.born.get(item)
        if at is None:
            return 1.0
        return min(self.cap, max(1.0, self.window / max(self.position - at, 1)))

    def _level(self, count: int, scale: float) -> float:
        return round(np.log1p(count * scale) / self.grid) * self.grid if count else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"recent": self.recent.to_list(), "position": self.position, "born": self.born}

    def load_json(self, raw: Mapping[str, Any]) -> None:
        """Restore :meth:`to_json`'s state; what is derived from it (the births in order, the
        followed levels and their looks) is rebuilt."""
        self._start()
        self.recent = RecentCounts.from_list(raw["recent"], self.window)
        self.position = int(raw["position"])
        for item, at in sorted(raw["born"].items(), key=lambda kv: int(kv[1])):
            self.born[str(item)] = int(at)
            self._births.append((int(at), str(item)))
        for item in self.born:
            self._follow(item)
