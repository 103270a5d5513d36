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

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from stream.frequency import RecentCounts

GRID = 0.05  # the level's step: what a replica may lag behind the exact log(1 + v)


class Velocity:
    """The positives of the last ``window``, and where each young item's first one fell."""

    def __init__(self, window: int = 5_000, cap: float = 20.0, grid: float = GRID) -> None:
        if cap < 1 or grid <= 0:
            raise ValueError(f"cap must be >= 1 and grid > 0, got {cap} and {grid}")
        self.window, self.cap, self.grid = window, cap, grid
        self.recent = RecentCounts(window)
        self.position = 0  # positives observed so far
        self.born: dict[str, int] = {}  # young item -> position of its first positive

    def arrive(self, items: Iterable[str]) -> None:
        """New items (their content, before any positive): their age counts from now. Items
        that come before the first positive are the catalogue the stream starts with (a
        worker's first read of the items topic), not new ones: they are not young."""
        if self.position == 0:
            return
        for item in items:
            self.born.setdefault(item, self.position)

    def observe(self, items: Sequence[str], new: Iterable[str]) -> list[str]:
        """Count a batch's positives (in order); ``new``: items that arrive with their first
        positive (never seen, no content; an item with history counts is not young). Returns
        the items *not* in the batch whose level moved: aged, or their positives left the
        window."""
        new = set(new)
        batch = set(items)
        # a young item with no positive in the window stays at level 0 until it has one
        young = [i for i in self.born if i not in batch and self.recent.get(i)]
        before = dict(zip(young, self.levels(young).tolist(), strict=True))
        for item in items:
            if item in new and item not in self.born:
                self.born[item] = self.position
            self.position += 1
        left = Counter(i for i in self.recent.observe(items) if i not in batch)
        for item in left:
            if item not in before:
                before[item] = None  # its level before the batch: recomputed below
        grown_up = [i for i, at in self.born.items() if self.position - at >= self.window]
        for item in grown_up:  # past the window the scale is 1 for good: no longer tracked
            del self.born[item]
        moved = []
        candidates = list(before)
        now = self.levels(candidates).tolist()
        for item, level in zip(candidates, now, strict=True):
            was = before[item]
            if was is None:  # an old item whose positives left the window (scale 1 both)
                was = self._level(self.recent.get(item) + left[item], 1.0)
            if was != level:
                moved.append(item)
        return moved

    def forget(self, items: Iterable[str]) -> None:
        """Items evicted from the tables: young no longer (they are born again if they come
        back)."""
        for item in items:
            self.born.pop(item, None)

    def levels(self, items: Sequence[str]) -> np.ndarray:
        """``log(1 + v)`` per item, on the grid (0 for an item with no recent positive)."""
        return np.fromiter((self._level(self.recent.get(i), self._scale(i)) for i in items),
                           dtype=np.float64, count=len(items))  # fmt: skip

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
        self.recent = RecentCounts.from_list(raw["recent"], self.window)
        self.position = int(raw["position"])
        self.born = {str(i): int(at) for i, at in raw["born"].items()}
