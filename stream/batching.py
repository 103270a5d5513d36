"""Micro-batches cut by content alone, so a replay after a crash re-forms the same batches.

Faust hands the agent whatever the consumer fetched within a time limit, which
depends on timing. Training on those groups directly would make the tables
depend on timing too, and a restarted worker could never reproduce an
uninterrupted one. :class:`Batcher` therefore re-cuts each partition's records
by rules that look only at the records: a batch closes when it holds ``size``
records, or when a record arrives whose timestamp is ``window_ms`` or more past
the batch's first record. A quiet stream's last partial batch is closed by
:meth:`Batcher.flush_idle` once the consumer has delivered nothing for a while
and the wall clock is ``grace_ms`` past the batch's window, by which time no
record belonging to it can still arrive (unless a record reached the broker more
than ``grace_ms`` after its timestamp: then it lands in a later batch, still
applied exactly once).

Examples
--------
>>> from stream.core import RawRecord
>>> b = Batcher(size=3, window_ms=100)
>>> recs = [RawRecord(b"x", t, partition=0, offset=n) for n, t in enumerate([0, 10, 20, 30, 200])]
>>> [[r.offset for r in batch] for batch in b.add(recs)]   # full at 3; 200 closes the window
[[0, 1, 2], [3]]
>>> b.pending_offsets(), b.flush_idle(now_ms=250, grace_ms=100)
({0: 4}, [])
>>> [[r.offset for r in batch] for batch in b.flush_idle(now_ms=400, grace_ms=100)]
[[4]]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stream.core import RawRecord


class Batcher:
    def __init__(self, size: int, window_ms: int) -> None:
        if size < 1 or window_ms < 1:
            raise ValueError("batch size and window must be positive")
        self.size = size
        self.window_ms = window_ms
        self._pending: dict[int, list[RawRecord]] = {}

    def add(self, records: Iterable[RawRecord]) -> list[list[RawRecord]]:
        """Take records (each partition's in offset order); return the batches they closed."""
        closed: list[list[RawRecord]] = []
        for rec in records:
            pending = self._pending.setdefault(rec.partition, [])
            if pending and rec.timestamp_ms >= pending[0].timestamp_ms + self.window_ms:
                closed.append(pending)
                pending = self._pending[rec.partition] = []
            pending.append(rec)
            if len(pending) >= self.size:
                closed.append(pending)
                self._pending[rec.partition] = []
        return closed

    def flush_idle(self, now_ms: int, grace_ms: int) -> list[list[RawRecord]]:
        """Close partial batches whose window ended more than ``grace_ms`` ago (wall clock)."""
        closed = []
        for partition, pending in self._pending.items():
            if pending and now_ms >= pending[0].timestamp_ms + self.window_ms + grace_ms:
                closed.append(pending)
                self._pending[partition] = []
        return closed

    def pending_offsets(self) -> dict[int, int]:
        """The first not-yet-processed offset of each partition with records waiting."""
        return {p: recs[0].offset for p, recs in self._pending.items() if recs}

    def __len__(self) -> int:
        return sum(len(r) for r in self._pending.values())
