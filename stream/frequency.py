"""Streaming item-frequency estimate, for the log-Q correction of sampled softmax.

Examples
--------
>>> freq = ItemFrequency()
>>> freq.observe(["a", "a", "b"])
>>> round(freq.probability(["a", "b", "c"]).tolist()[0], 3)
0.5
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence

import numpy as np


class ItemFrequency:
    """Additively smoothed counts: ``p(j) = (c_j + 1) / (C + V + 1)``.

    ``V`` is the number of distinct items seen, so an unseen item gets a small
    but non-zero probability. Counts decay by ``decay`` per observed batch so the
    estimate follows drifting popularity.
    """

    def __init__(self, decay: float = 1.0) -> None:
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        self.decay = decay
        self._counts: dict[str, float] = {}
        self._total = 0.0
        self._scale = 1.0  # counts are stored divided by the running decay factor
        self._changed: set[str] = set()
        self._gone: set[str] = set()
        # for sample: the ids sorted, their stored counts in that order, and the ids whose
        # count moved since (None: the set of ids changed, rebuild)
        self._order: list[str] | None = None
        self._pos: dict[str, int] = {}
        self._stored = np.zeros(0)
        self._moved: set[str] = set()

    def observe(self, items: Iterable[str]) -> None:
        self._scale /= self.decay
        if self._scale > 1e12:
            self._rescale()
        for item in items:
            if item not in self._counts:
                self._order = None
            self._counts[item] = self._counts.get(item, 0.0) + self._scale
            self._total += self._scale
            self._changed.add(item)
            self._moved.add(item)

    def add(self, counts: Mapping[str, float]) -> None:
        """Seed counts (e.g. from the bootstrap history) without a decay step."""
        self._order = None
        for item, count in counts.items():
            self._counts[item] = self._counts.get(item, 0.0) + count * self._scale
            self._total += count * self._scale
            self._changed.add(item)

    def forget(self, items: Iterable[str]) -> None:
        """Drop items (evicted from the tables) from the estimate."""
        for item in items:
            count = self._counts.pop(item, None)
            if count is not None:
                self._order = None
                self._total -= count
                self._changed.discard(item)
                self._gone.add(item)

    def drain(self) -> tuple[dict[str, float], list[str], tuple[float, float]]:
        """Changes since the last drain: counts written, items dropped, and (total, scale)."""
        changed = {k: self._counts[k] for k in self._changed}
        gone = sorted(self._gone - self._changed)
        self._changed, self._gone = set(), set()
        return changed, gone, (self._total, self._scale)

    def undrain(self, changed: Mapping[str, float], gone: Iterable[str]) -> None:
        """Put back a drain whose checkpoint failed (before the counts change again)."""
        self._changed.update(k for k in changed if k in self._counts)
        self._gone.update(gone)

    def restore(self, counts: dict[str, float], total: float, scale: float) -> None:
        self._counts, self._total, self._scale = dict(counts), total, scale
        self._order = None

    def counts(self, items: Sequence[str]) -> np.ndarray:
        """(Decayed) number of positive events per item; 0 for unseen items."""
        return np.fromiter(
            (self._counts.get(i, 0.0) / self._scale for i in items), dtype=np.float64,
            count=len(items),
        )  # fmt: skip

    def probability(self, items: Sequence[str]) -> np.ndarray:
        return self._smoothed(self.counts(items))

    def _smoothed(self, counts: np.ndarray) -> np.ndarray:
        """(Decayed) counts to probabilities: ``(c_j + 1) / (C + V + 1)``."""
        denom = self._total / self._scale + len(self._counts) + 1.0
        return (counts + 1.0) / denom

    def sample(self, n: int, rng: np.random.Generator) -> list[str]:
        """``n`` items drawn with replacement by :meth:`probability` (smoothed counts),
        among the items seen; none when nothing has been seen. Drawn over the ids in sorted
        order, so a restored estimate (whatever order its counts come back in) draws what
        the original would from the same generator state."""
        if not self._counts or n <= 0:
            return []
        ids = self._sorted()
        cum = np.cumsum(self._smoothed(self._stored / self._scale))  # probability(ids)
        picks = np.searchsorted(cum, rng.random(n) * cum[-1], side="right")
        return [ids[i] for i in np.minimum(picks, len(ids) - 1).tolist()]

    def _sorted(self) -> list[str]:
        """The ids in sorted order, with ``_stored`` brought up to date: rebuilt when the set
        of ids changed, else only the moved counts written (O(batch), not O(items))."""
        if self._order is None:
            self._order = sorted(self._counts)
            self._pos = {item: n for n, item in enumerate(self._order)}
            self._stored = np.fromiter((self._counts[i] for i in self._order), np.float64,
                                       count=len(self._order))  # fmt: skip
        elif self._moved:
            rows = [self._pos[i] for i in self._moved]
            self._stored[rows] = [self._counts[i] for i in self._moved]
        self._moved.clear()
        return self._order

    def _rescale(self) -> None:
        factor = 1.0 / self._scale
        self._counts = {k: v * factor for k, v in self._counts.items()}
        self._total *= factor
        self._scale = 1.0
        self._changed = set(self._counts)
        self._order = None


# what "popular" counts by default: the last 20k positives (a replica's --popular-window)
POPULAR_WINDOW = 20_000


class RecentCounts:
    """How often each item occurs among the last ``window`` observations: the popularity
    that serving falls back on and mixes in, and the evaluator's popularity baseline.

    Examples
    --------
    >>> recent = RecentCounts(window=3)
    >>> recent.observe(["a", "b", "a", "c"])     # the first "a" has left the window
    ['a']
    >>> recent.get("a"), recent.get("b"), recent.get("z"), len(recent)
    (1, 1, 0, 3)
    >>> RecentCounts.from_list(recent.to_list(), window=3).get("c")
    1
    """

    def __init__(self, window: int = POPULAR_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self._recent: deque[str] = deque(maxlen=window)
        self._counts: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._recent)

    def observe(self, items: Iterable[str]) -> list[str]:
        """Add ``items`` to the window; returns those that left it (oldest first), so a caller
        keeping counts elsewhere knows every item whose count changed."""
        left: list[str] = []
        for item in items:
            if len(self._recent) == self.window:
                gone = self._recent[0]
                left.append(gone)
                self._counts[gone] -= 1
                if not self._counts[gone]:
                    del self._counts[gone]
            self._recent.append(item)
            self._counts[item] += 1
        return left

    def get(self, item: str) -> int:
        return self._counts.get(item, 0)

    def to_list(self) -> list[str]:
        """The window, oldest first (what a save keeps)."""
        return list(self._recent)

    @classmethod
    def from_list(cls, items: Iterable[str], window: int) -> RecentCounts:
        recent = cls(window)
        recent.observe(items)
        return recent
