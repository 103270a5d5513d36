"""The outputs of consecutive micro-batches, merged into one publication.

Under a backlog the worker runs many micro-batches back to back, and a popular
item (or an active user) changes in most of them. Publishing each batch's vectors
sent every intermediate version of such a row through the producer, the broker
and every replica, only for the next batch to overwrite it. The :class:`Outbox`
keeps the last version of each row (or its tombstone) until the worker publishes,
which it does after at most ``publish_ms`` of batches and always before a
checkpoint, so a replica ends with the same vectors, and a checkpoint still never
passes output that is not in Kafka. Items a step only *marked* (``item_marks``: the
worker defers their composition) are composed once, when taken: as they are then.

Examples
--------
>>> import numpy as np
>>> from stream.core import BatchOutput
>>> from stream.vectors import VectorRecord
>>> v = lambda key, ms: VectorRecord(key, np.zeros(2, np.float32), 1, ms)
>>> box = Outbox()
>>> box.add(BatchOutput(items=[v("i1", 500), v("i2", 0)], users=[v("u1", 500)]), events=3)
>>> box.add(BatchOutput(items=[v("i1", 900)], evicted_users=["u1"]), events=2)
>>> out = box.take()
>>> [(r.key, r.event_ms) for r in out.items], out.users, out.evicted_users, box.events
([('i1', 500), ('i2', 0)], [], ['u1'], 0)
>>> box.add(BatchOutput(item_marks={"i3": 700, "i1": 0}), events=1)
>>> box.add(BatchOutput(item_marks={"i3": 650}), events=1)
>>> compose = lambda marks: [v(key, ms) for key, ms in marks.items()]
>>> [(r.key, r.event_ms) for r in box.take(compose).items]
[('i3', 650), ('i1', 0)]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from stream.core import BatchOutput, DeadLetter
from stream.vectors import VectorRecord


@dataclass(frozen=True)
class _Mark:
    """A row changed by a step, to be composed when taken (the earliest event's ms)."""

    event_ms: int


# key -> its last vector, its mark, or None: its tombstone
Rows = dict[str, VectorRecord | _Mark | None]
Compose = Callable[[Mapping[str, int]], list[VectorRecord]]


class Outbox:
    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []
        self.items: Rows = {}
        self.users: Rows = {}
        self.events = 0  # events of the batches merged since the last take
        self.merged = 0  # since the last take, vectors and tombstones a later batch replaced

    def add(self, out: BatchOutput, events: int) -> None:
        self.letters.extend(out.dead_letters)
        self.events += events
        for rows, vectors, evicted in (
            (self.items, out.items, out.evicted_items),
            (self.users, out.users, out.evicted_users),
        ):
            for rec in vectors:
                self._put(rows, rec.key, rec)
            if rows is self.items:
                for key, ms in out.item_marks.items():
                    self._put(rows, key, _Mark(ms))
            for key in evicted:
                self.merged += key in rows
                rows[key] = None

    def _put(self, rows: Rows, key: str, rec: VectorRecord | _Mark) -> None:
        self.merged += key in rows
        # the vector published is the first to hold the earlier batch's events too
        earlier = rows.get(key)
        ms = earlier.event_ms if earlier is not None else 0
        if ms and (not rec.event_ms or ms < rec.event_ms):
            rec = replace(rec, event_ms=ms)
        rows[key] = rec

    def __bool__(self) -> bool:
        return bool(self.letters or self.items or self.users)

    def take(self, compose: Compose | None = None) -> BatchOutput:
        """Everything merged since the last take, as one output to publish; empties the box.
        ``compose``: the vectors of marked items (needed when any step marked some)."""
        out = BatchOutput(dead_letters=self.letters)
        marks = {k: r.event_ms for k, r in self.items.items() if isinstance(r, _Mark)}
        if marks:
            if compose is None:
                raise ValueError("items were marked for composition: take needs compose")
            self.items.update((r.key, r) for r in compose(marks))
        out.items = [r for r in self.items.values() if isinstance(r, VectorRecord)]
        out.users = [r for r in self.users.values() if isinstance(r, VectorRecord)]
        out.evicted_items = [k for k, r in self.items.items() if r is None]
        out.evicted_users = [k for k, r in self.users.items() if r is None]
        self.letters, self.items, self.users, self.events, self.merged = [], {}, {}, 0, 0
        return out
