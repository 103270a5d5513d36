"""The worker's pure micro-batch step: raw records in, dead letters and vector updates out.

The faust agent only decodes Kafka events into :class:`RawRecord`, calls
:meth:`WorkerCore.process` and writes what it returns, so everything here is
tested without a broker.

Examples
--------
>>> from stream.training import OnlineTrainer, TrainConfig
>>> core = WorkerCore(OnlineTrainer.create(TrainConfig(dim=8, negatives=2)))
>>> ok = b'{"event_id":"e1","user_id":"u1","item_id":"i1","type":"click","ts":5}'
>>> out = core.process([RawRecord(ok, 1000), RawRecord(b"{oops", 1001), RawRecord(ok, 1002)])
>>> out.accepted, out.duplicates, [d.reason for d in out.dead_letters]
(1, 1, ['bad_json'])
>>> [(r.key, r.event_ms) for r in out.users], [(r.key, r.event_ms) for r in out.items]
([('u1', 1000)], [('i1', 1000)])
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from paramserver.table import EmbeddingTable
from stream.dedup import RecentIds
from stream.schemas import Interaction, InvalidEvent, dead_letter, parse_event
from stream.training import OnlineTrainer
from stream.vectors import VectorRecord


@dataclass(frozen=True)
class RawRecord:
    """One Kafka record as the worker saw it; ``timestamp_ms`` is its produce time."""

    value: bytes | None
    timestamp_ms: int
    partition: int = 0
    offset: int = -1

    def reject(self, err: InvalidEvent) -> DeadLetter:
        """The dead letter for this record: reason, original bytes and where it came from."""
        payload = dead_letter(self.value, err, partition=self.partition, offset=self.offset)
        return DeadLetter(err.reason, payload)


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    payload: bytes


@dataclass
class BatchOutput:
    accepted: int = 0
    duplicates: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    items: list[VectorRecord] = field(default_factory=list)
    users: list[VectorRecord] = field(default_factory=list)
    loss: float | None = None
    oldest_event_ms: int | None = None


class WorkerCore:
    """Validation, de-duplication and training for one partition's micro-batches."""

    def __init__(self, trainer: OnlineTrainer, dedup: RecentIds | None = None) -> None:
        self.trainer = trainer
        self.dedup = dedup or RecentIds()

    def process(self, records: Sequence[RawRecord]) -> BatchOutput:
        out = BatchOutput()
        events: list[Interaction] = []
        produced: list[int] = []
        for rec in records:
            try:
                event = parse_event(rec.value, self.trainer.config.type_weights)
            except InvalidEvent as err:
                out.dead_letters.append(rec.reject(err))
                continue
            if self.dedup.check_and_add(event.event_id):
                out.duplicates += 1
                continue
            events.append(event)
            produced.append(rec.timestamp_ms)
            out.by_type[event.type] += 1
        out.accepted = len(events)
        if not events:
            return out
        out.oldest_event_ms = min(produced)
        stats = self.trainer.apply(events)
        if stats.positives + stats.skips:
            out.loss = stats.loss
        first_ms_user: dict[str, int] = {}
        first_ms_item: dict[str, int] = {}
        for event, ms in zip(events, produced, strict=True):
            first_ms_user[event.user_id] = min(ms, first_ms_user.get(event.user_id, ms))
            first_ms_item[event.item_id] = min(ms, first_ms_item.get(event.item_id, ms))
        trainer = self.trainer
        out.users = _records(stats.users, first_ms_user, trainer.user_vectors, trainer.users)
        out.items = _records(stats.items, first_ms_item, trainer.item_vectors, trainer.items)
        return out


def _records(
    ids: Sequence[str],
    first_ms: dict[str, int],
    vectors_of: Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]],
    table: EmbeddingTable,
) -> list[VectorRecord]:
    if not ids:
        return []
    vectors, _ = vectors_of(ids)
    return [
        # event_ms 0: changed only as a sampled negative, no event of its own to time
        VectorRecord(key, vec, table.meta(key).updates, first_ms.get(key, 0))
        for key, vec in zip(ids, vectors, strict=True)
    ]
