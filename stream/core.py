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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from stream.batching import BATCH_MS, BATCH_SIZE, Batcher
from stream.content import item_text
from stream.dedup import RecentIds
from stream.schemas import (
    LETTER_PAYLOAD_BYTES,
    Interaction,
    InvalidEvent,
    Refused,
    dead_letter,
    decode_batch,
    element_bytes,
    is_batch,
    parse_event,
    parse_item,
    validate_event,
)
from stream.training import ITEMS, USERS, OnlineTrainer, StepStats
from stream.vectors import VectorRecord


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ cost 2.3 µs, this 0.7
class RawRecord:
    """One Kafka record as the worker saw it, or one event of a batch record; ``timestamp_ms``
    is its Kafka timestamp (the broker's append time on the ``interactions`` topic the
    pipeline creates).

    An event of a batch record carries its place in the record (``index``, and whether it is
    the ``last``), its decoded JSON (``decoded``, a 1-tuple) and nothing in ``value``; its
    position ``(offset, index)`` is what exactly-once tracks. ``refused``: why the record as
    a whole cannot be read (a batch record that is not valid JSON): its dead letter.
    """

    value: bytes | None
    timestamp_ms: int
    partition: int = 0
    offset: int = -1
    key: bytes | None = None
    index: int = 0
    last: bool = True
    decoded: tuple[Any] | None = None
    refused: InvalidEvent | None = None

    @property
    def position(self) -> tuple[int, int]:
        return (self.offset, self.index)

    def after(self) -> tuple[int, int]:
        """The position of the next event on this record's partition."""
        return (self.offset + 1, 0) if self.last else (self.offset, self.index + 1)

    def reject(self, err: InvalidEvent, max_payload: int = LETTER_PAYLOAD_BYTES) -> DeadLetter:
        """The dead letter for this record: reason, the original bytes (bounded) and where it
        came from (with the event's index for one event of a batch record)."""
        where: dict[str, int] = {"partition": self.partition, "offset": self.offset}
        payload = self.value
        if self.decoded is not None:
            payload, where["index"] = element_bytes(self.decoded[0]), self.index
        return DeadLetter(err.reason, dead_letter(payload, err, max_payload, **where))

    def event(self, type_weights: Mapping[str, float]) -> Interaction:
        """The validated event, or :class:`InvalidEvent`."""
        if self.refused is not None:
            raise self.refused
        if self.decoded is not None:
            return validate_event(self.decoded[0], type_weights)
        return parse_event(self.value, type_weights)


def expand(records: Iterable[RawRecord]) -> list[RawRecord]:
    """Records with each batch record (a JSON array) replaced by its events, in order; a
    batch record that cannot be decoded stays one record, ``refused`` with the reason.

    >>> ev = b'{"event_id":"e1","user_id":"u1","item_id":"i1","type":"click","ts":5}'
    >>> both = RawRecord(b"[" + ev + b"," + ev + b"]", 0, offset=7)
    >>> [(r.offset, r.index, r.last) for r in expand([both])]
    [(7, 0, False), (7, 1, True)]
    >>> expand([RawRecord(b"[{", 0, offset=8)])[0].refused.reason
    'bad_json'
    """
    out: list[RawRecord] = []
    for rec in records:
        if rec.decoded is not None or not is_batch(rec.value):
            out.append(rec)
            continue
        try:
            elements = decode_batch(rec.value)
        except InvalidEvent as err:
            out.append(replace(rec, refused=err))
            continue
        last = len(elements) - 1
        common = (rec.timestamp_ms, rec.partition, rec.offset, rec.key)
        for n, element in enumerate(elements):
            value, error = element, None
            if isinstance(element, Refused):
                value, error = element.value, element.error
            out.append(RawRecord(None, *common, index=n, last=n == last, decoded=(value,),
                                 refused=error))  # fmt: skip
    return out


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
    evicted_users: list[str] = field(default_factory=list)
    evicted_items: list[str] = field(default_factory=list)
    # with deferred items (WorkerCore's ``defer_items``): the changed items whose vectors the
    # caller composes when it publishes (:meth:`WorkerCore.item_records`), and their event_ms
    item_marks: dict[str, int] = field(default_factory=dict)
    # the events the step learnt and their Kafka timestamps (the lists the step built)
    trained: list[Interaction] = field(default_factory=list)
    trained_ms: list[int] = field(default_factory=list)
    unadmitted: int = 0
    aged: int = 0  # of the items: published again for their velocity alone
    loss: float | None = None
    oldest_event_ms: int | None = None
    failed_steps: int = 0  # training steps that raised and were split to find the poison


@dataclass(frozen=True)
class _Trained:
    """The events one or more successful training steps took, and what they did."""

    step: StepStats
    events: list[Interaction]

    @property
    def unadmitted(self) -> int:
        return self.step.unadmitted

    @property
    def positives(self) -> int:
        return self.step.positives

    @property
    def skips(self) -> int:
        return self.step.skips

    @property
    def loss(self) -> float:
        return self.step.loss

    @staticmethod
    def merge(a: _Trained, b: _Trained) -> _Trained:
        """Two steps as one: rows changed by either, loss weighted by their counts."""
        na, nb = a.positives + a.skips, b.positives + b.skips
        loss = (a.loss * na + b.loss * nb) / (na + nb) if na + nb else 0.0
        items = tuple(dict.fromkeys((*a.step.items, *b.step.items)))
        aged = tuple(i for i in dict.fromkeys((*a.step.aged, *b.step.aged)) if i not in items)
        step = StepStats(
            a.positives + b.positives, a.skips + b.skips, loss,
            tuple(dict.fromkeys((*a.step.users, *b.step.users))), items,
            a.unadmitted + b.unadmitted, aged,
        )  # fmt: skip
        return _Trained(step, [*a.events, *b.events])


class WorkerCore:
    """Validation, de-duplication, batching and training of the ``interactions`` records.

    Per partition it remembers the offset after the last record it was given;
    records below it (a replay after a restart) are skipped, so each record is
    applied exactly once.

    One record's failure is that record's alone: any error decoding or validating it
    is its dead letter, and a training step that raises is split in halves until the
    events that fail it are found and dead-lettered (``processing_error``), while the
    rest train. An event id enters the de-duplication window only once its step has
    succeeded, so a redelivered copy of a failed event is judged again, not dropped.
    """

    def __init__(
        self,
        trainer: OnlineTrainer,
        dedup: RecentIds | None = None,
        batcher: Batcher | None = None,
        letter_bytes: int = LETTER_PAYLOAD_BYTES,
        defer_items: bool = False,
    ) -> None:
        self.trainer = trainer
        # items changed by a step are marked, not composed: a worker publishing many steps
        # at once composes each item once (items recur across steps far more than users)
        self.defer_items = defer_items
        self.letter_bytes = letter_bytes
        self.dedup = dedup if dedup is not None else RecentIds()
        # not `x or default`: a Batcher and RecentIds have __len__, so empty ones are falsy
        self.batcher = batcher if batcher is not None else Batcher(BATCH_SIZE, BATCH_MS)
        # partition -> position (offset, index in a batch record) after the last event taken
        self._next: dict[int, tuple[int, int]] = {}

    def resume(self, offsets: Mapping[int, int], within: Mapping[int, int] | None = None) -> None:
        """Start from a checkpoint: events before these positions are already in the tables
        (``within``: per partition, the events of the record at its offset already taken)."""
        within = within or {}
        self._next = {p: (o, within.get(p, 0)) for p, o in offsets.items()}

    def accept(self, records: Sequence[RawRecord]) -> tuple[list[list[RawRecord]], int]:
        """Feed fetched records to the batcher; (batches now closed, events skipped as replays)."""
        fresh = []
        events = expand(records)
        for rec in events:
            if rec.position < self._next.get(rec.partition, (0, 0)):
                continue
            self._next[rec.partition] = rec.after()
            fresh.append(rec)
        return self.batcher.add(fresh), len(events) - len(fresh)

    def checkpoint_positions(self) -> dict[int, tuple[int, int]]:
        """Per partition, the position of the first event the tables do not yet reflect."""
        positions = dict(self._next)
        positions.update(self.batcher.pending_positions())
        return positions

    def checkpoint_offsets(self) -> dict[int, int]:
        """Per partition, the first offset the tables do not wholly reflect (a batch record
        taken in part is not passed: Kafka may commit up to here)."""
        return {p: offset for p, (offset, _) in self.checkpoint_positions().items()}

    def process(self, records: Sequence[RawRecord]) -> BatchOutput:
        """Train on one micro-batch (as cut by the batcher, or any list of records)."""
        records = expand(records)  # a no-op for records from accept
        for rec in records:  # records handed in directly, not through accept
            self._next[rec.partition] = max(self._next.get(rec.partition, (0, 0)), rec.after())
        out = BatchOutput()
        events: list[Interaction] = []
        produced: list[int] = []
        sources: list[RawRecord] = []
        in_batch: set[str] = set()
        weights = self.trainer.config.type_weights
        for rec in records:
            try:
                event = rec.event(weights)
            except InvalidEvent as err:
                out.dead_letters.append(rec.reject(err, self.letter_bytes))
                continue
            if event.event_id in in_batch or event.event_id in self.dedup:
                out.duplicates += 1
                continue
            in_batch.add(event.event_id)
            events.append(event)
            produced.append(rec.timestamp_ms)
            sources.append(rec)
        stats = self._train(events, sources, out)
        if stats is None:
            events, produced = [], []
        else:
            kept = {id(e) for e in stats.events}
            produced = [ms for e, ms in zip(events, produced, strict=True) if id(e) in kept]
            events = list(stats.events)
        for event in events:
            self.dedup.check_and_add(event.event_id)
            out.by_type[event.type] += 1
        out.accepted = len(events)
        out.trained, out.trained_ms = events, produced
        if stats is None or not events:
            return out
        out.oldest_event_ms = min(produced)
        out.unadmitted = stats.unadmitted
        if stats.positives + stats.skips:
            out.loss = stats.loss
        evicted = self.trainer.expire_due(max(e.ts for e in events))
        out.evicted_users = evicted.get(USERS, [])
        out.evicted_items = evicted.get(ITEMS, [])
        first_ms_user: dict[str, int] = {}
        first_ms_item: dict[str, int] = {}
        for event, ms in zip(events, produced, strict=True):
            first_ms_user[event.user_id] = min(ms, first_ms_user.get(event.user_id, ms))
            first_ms_item[event.item_id] = min(ms, first_ms_item.get(event.item_id, ms))
        trainer = self.trainer
        session: dict[str, list[str]] = {}  # a cold user starts from this batch's items
        for event in events:
            if trainer.weight(event) > 0:
                session.setdefault(event.user_id, []).append(event.item_id)
        users_of = lambda ids: trainer.user_vectors(ids, session)  # noqa: E731
        out.users = _records(stats.step.users, first_ms_user, users_of, trainer, USERS)
        # aged: outside the batch, but their velocity level moved: published again
        published = [*stats.step.items, *stats.step.aged]
        out.aged = len(stats.step.aged)
        if self.defer_items:
            out.item_marks = {i: first_ms_item.get(i, 0) for i in published}
        else:
            out.items = _records(published, first_ms_item, trainer.item_vectors, trainer, ITEMS)
        return out

    def item_records(self, marks: Mapping[str, int]) -> list[VectorRecord]:
        """The current served vectors of the marked items, stamped with their event_ms."""
        return _records(list(marks), marks, self.trainer.item_vectors, self.trainer, ITEMS)

    def _train(
        self, events: list[Interaction], sources: list[RawRecord], out: BatchOutput
    ) -> _Trained | None:
        """One training step over ``events``; on an error, the halves in turn, down to the
        single events that fail (dead-lettered). None: nothing trained."""
        if not events:
            return None
        try:
            return _Trained(self.trainer.apply(events), events)
        except Exception as exc:  # noqa: BLE001 - a step's failure must not take the batch
            out.failed_steps += 1
            if len(events) == 1:
                err = InvalidEvent("processing_error", f"{type(exc).__name__}: {exc}")
                out.dead_letters.append(sources[0].reject(err, self.letter_bytes))
                return None
        mid = len(events) // 2
        parts = [
            self._train(events[:mid], sources[:mid], out),
            self._train(events[mid:], sources[mid:], out),
        ]
        done = [p for p in parts if p is not None]
        if not done:
            return None
        if len(done) == 1:
            return done[0]
        return _Trained.merge(done[0], done[1])

    def vectors(self, items: Sequence[str], users: Sequence[str]) -> BatchOutput:
        """Current served vectors of ``items`` and ``users`` (no event to time: event_ms 0)."""
        t, out = self.trainer, BatchOutput()
        out.items = _records(items, {}, t.item_vectors, t, ITEMS)
        out.users = _records(users, {}, t.user_vectors, t, USERS)
        return out

    def add_items(
        self, records: Sequence[RawRecord], encode: Callable[[list[str]], np.ndarray]
    ) -> BatchOutput:
        """Content from the ``items`` topic: embed, store, and serve each item at once.

        Not de-duplicated or offset-tracked: the content row is a pure function of the
        record, so applying one twice changes nothing. A record whose text the encoder
        fails on (or embeds as NaN) is that record's dead letter, not its batch's.
        """
        out = BatchOutput()
        latest: dict[str, tuple[str, int, float, RawRecord]] = {}
        for rec in records:
            try:
                item_id, title, tags, ts = parse_item(rec.key, rec.value)
            except InvalidEvent as err:
                out.dead_letters.append(rec.reject(err, self.letter_bytes))
                continue
            # rows are stamped in event time (as interactions stamp them, for expiry);
            # without a ts, the record's produce time stands in
            when = rec.timestamp_ms / 1000 if ts is None else ts
            latest[item_id] = (item_text(title, tags), rec.timestamp_ms, when, rec)
        vectors = self._embed(latest, encode, out)
        if not latest:
            return out
        ids = list(latest)
        ms = {i: latest[i][1] for i in ids}
        now = max(latest[i][2] for i in ids)
        self.trainer.add_content(ids, vectors, now=now)
        out.accepted = len(ids)
        out.items = _records(ids, ms, self.trainer.item_vectors, self.trainer, ITEMS)
        return out

    def _embed(
        self,
        latest: dict[str, tuple[str, int, float, RawRecord]],
        encode: Callable[[list[str]], np.ndarray],
        out: BatchOutput,
    ) -> np.ndarray:
        """The content embeddings of ``latest`` in its order; on an encoder error (or a
        non-finite vector) each text alone, dropping from ``latest`` and dead-lettering
        (``processing_error``) the ones that fail."""
        if not latest:
            return np.zeros((0, 0), np.float32)
        try:
            vectors = np.asarray(encode([v[0] for v in latest.values()]), np.float32)
            if vectors.shape[0] == len(latest) and np.isfinite(vectors).all():
                return vectors
        except Exception:  # noqa: BLE001 - one item's text must not take the batch
            pass
        out.failed_steps += 1
        kept = []
        for item_id, (text, *_, rec) in list(latest.items()):
            try:
                vector = np.asarray(encode([text]), np.float32)
                if vector.shape[0] != 1 or not np.isfinite(vector).all():
                    raise ValueError("the encoder gave a vector with NaN or infinity")
            except Exception as exc:  # noqa: BLE001 - that record's dead letter
                err = InvalidEvent("processing_error", f"{type(exc).__name__}: {exc}")
                out.dead_letters.append(rec.reject(err, self.letter_bytes))
                del latest[item_id]
                continue
            kept.append(vector[0])
        return np.stack(kept) if kept else np.zeros((0, 0), np.float32)


def _records(
    ids: Sequence[str],
    first_ms: Mapping[str, int],
    vectors_of: Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]],
    trainer: OnlineTrainer,
    table: str,
) -> list[VectorRecord]:
    if not ids:
        return []
    vectors, _ = vectors_of(ids)
    updates, _ = trainer.ps.meta(table, ids)
    return [
        # event_ms 0: changed only as a sampled negative, no event of its own to time
        VectorRecord(key, vec, max(int(n), 0), first_ms.get(key, 0))  # -1: content only
        for key, vec, n in zip(ids, vectors, updates.tolist(), strict=True)
    ]
