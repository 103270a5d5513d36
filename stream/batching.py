"""Micro-batches cut by content alone, so a replay after a crash re-forms the same batches.

Faust hands the agent whatever the consumer fetched within a time limit, which
depends on timing. Training on those groups directly would make the tables
depend on timing too, and a restarted worker could never reproduce an
uninterrupted one. :class:`Batcher` therefore re-cuts the records by rules that
look only at the records: a batch closes when it holds ``size``
records, or when a record arrives whose timestamp is ``window_ms`` or more past
the batch's first record. A quiet stream's last partial batch is closed by
:meth:`Batcher.flush_idle` once the consumer has read to the end of the log,
has delivered nothing for a while, and the wall clock is ``grace_ms`` past the
batch's window. The timestamps are the broker's append times (the pipeline
creates ``interactions`` with ``message.timestamp.type=LogAppendTime``), so by
then no record belonging to the window can still arrive, and a replay cuts the
same batches. On a topic with producer timestamps (``CreateTime``) a record that
reached the broker more than ``grace_ms`` after its timestamp could land in
another batch than on a replay: still applied exactly once, but not the same
update (measured with the broker-outage test: 3 of 9 runs ended with other tables
than a steady run's before append-time stamps and the broker check of
``stream.app``; see docs/reliability.md).

Examples
--------
>>> from stream.core import RawRecord
>>> b = Batcher(size=3, window_ms=100)
>>> recs = [RawRecord(b"x", t, partition=0, offset=n) for n, t in enumerate([0, 10, 20, 30, 200])]
>>> [[r.offset for r in batch] for batch in b.add(recs)]   # full at 3; 200 closes the window
[[0, 1, 2], [3]]
>>> b.pending_offsets(), b.due(now_ms=250, grace_ms=100), b.flush_idle(now_ms=250, grace_ms=100)
({0: 4}, False, [])
>>> [[r.offset for r in batch] for batch in b.flush_idle(now_ms=400, grace_ms=100)]
[[4]]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stream.core import RawRecord

# the worker's micro-batch: at most this many records. Below ~5,000 events/s the window
# closes a batch first, so this only bounds a step under a backlog or a higher rate: 1,024
# instead of 256 carried a paced 10,000 ev/s at freshness p99 0.66 s instead of 2.0 s and
# drained 16,443 ev/s instead of 11,005 (bench.e2e, same session), at a cost to learning
# where every batch is full (the evaluator's by-size cadence): recall@10 0.4959 -> 0.4897
# on the generator, 0.0589 -> 0.0584 on MovieLens (docs/scaling.md)
BATCH_SIZE = 1024
BATCH_MS = 50  # ... whose timestamps lie within this many milliseconds of the first's


def window_closed(first_ms: float, ts_ms: float, window_ms: float) -> bool:
    """Whether a record at ``ts_ms`` falls outside the window of a batch begun at ``first_ms``.

    >>> window_closed(0, 49, 50), window_closed(0, 50, 50)
    (False, True)
    """
    return ts_ms >= first_ms + window_ms


class Batcher:
    """One pending batch over everything the worker reads, cut by the records alone.

    Records of all the worker's partitions share batches: cutting each partition
    separately made batches several times smaller at moderate rates, and every
    batch republishes its sampled negatives, which flooded the replicas' index
    (measured: freshness p50 0.1 s -> 0.5 s at 500 events/s over 4 partitions).
    Within one partition the cuts are a pure function of its records; across
    partitions they follow the arrival order.
    """

    def __init__(self, size: int, window_ms: int) -> None:
        if size < 1 or window_ms < 1:
            raise ValueError("batch size and window must be positive")
        self.size = size
        self.window_ms = window_ms
        self._pending: list[RawRecord] = []

    def add(self, records: Iterable[RawRecord]) -> list[list[RawRecord]]:
        """Take records (each partition's in offset order); return the batches they closed."""
        closed: list[list[RawRecord]] = []
        pending = self._pending
        for rec in records:
            if pending and window_closed(pending[0].timestamp_ms, rec.timestamp_ms, self.window_ms):
                closed.append(pending)
                pending = []
            pending.append(rec)
            if len(pending) >= self.size:
                closed.append(pending)
                pending = []
        self._pending = pending
        return closed

    def due(self, now_ms: int, grace_ms: int) -> bool:
        """Whether the partial batch's window ended more than ``grace_ms`` ago (wall clock)."""
        pending = self._pending
        return bool(pending) and now_ms >= pending[0].timestamp_ms + self.window_ms + grace_ms

    def flush_idle(self, now_ms: int, grace_ms: int) -> list[list[RawRecord]]:
        """Close the partial batch if it is :meth:`due`."""
        if not self.due(now_ms, grace_ms):
            return []
        pending, self._pending = self._pending, []
        return [pending]

    def pending_offsets(self) -> dict[int, int]:
        """The first not-yet-processed offset of each partition with records waiting."""
        return {p: offset for p, (offset, _) in self.pending_positions().items()}

    def pending_positions(self) -> dict[int, tuple[int, int]]:
        """Each partition's first waiting event's position (offset, index in a batch record)."""
        first: dict[int, tuple[int, int]] = {}
        for rec in self._pending:
            first.setdefault(rec.partition, rec.position)
        return first

    def __len__(self) -> int:
        return len(self._pending)
