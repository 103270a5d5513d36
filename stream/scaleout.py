"""The scale-out worker: the two stages of :mod:`stream.split` on kafka-python, each stage's
outputs, changelog and input offsets committed in one Kafka transaction.

One process runs one loop with both stages; every process started with the same settings
joins the same two consumer groups (``<app id>-users`` on ``interactions``,
``<app id>-items`` on ``gradients`` and ``items``), so adding a worker, here or on another
machine, is starting one more process. A stage's rows live in its compacted changelog
topic; when the group hands a stage partitions (a start, a worker joining or dying) it drops
its state and reads its partitions' changelogs back, then resumes from the offsets committed
with them. Downstream consumers read ``read_committed``, so an aborted or never-committed
transaction (a kill -9 between begin and commit) is as if it never ran: each event's update
is applied exactly once, whichever process dies when.

Every ``commit_ms`` (and on a stop) a stage with work commits: the user stage sends its
users' vectors, the gradients, its dead letters and its changed user rows, then the
positions it has consumed to (with the events already taken of a batch record that a
micro-batch cut, in the offset's metadata); the item stage sends item vectors and item rows.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.partitioner.default import murmur2
from kafka.structs import OffsetAndMetadata

from paramserver.ps import ParameterServer
from stream.app import record_metrics, record_published
from stream.batching import BATCH_MS, BATCH_SIZE, Batcher
from stream.core import BatchOutput, RawRecord, expand
from stream.metrics import WorkerMetrics
from stream.schemas import LETTER_PAYLOAD_BYTES
from stream.split import (
    Gradient,
    ItemStage,
    UserStage,
    coalesce,
    pack_gradients,
    split_key,
    unpack_gradients,
    upsert_view,
    view_tables,
)
from stream.topics import Topics
from stream.training import ITEMS, TrainConfig

log = logging.getLogger("streambed.scaleout")


@dataclass(frozen=True)
class ScaleOutConfig:
    bootstrap: str = "127.0.0.1:9092"
    app_id: str = "streambed-worker"
    topics: Topics = field(default_factory=Topics)
    batch_size: int = BATCH_SIZE
    batch_ms: int = BATCH_MS
    # how often each stage commits its transaction (Kafka Streams' default under
    # exactly-once is 100 ms): a vector is visible to read_committed replicas after it
    commit_ms: int = 100
    # a partial micro-batch is trained once its window ended this long ago (wall clock)
    idle_grace_ms: int = 50
    session_timeout_s: float = 10.0
    # how long the broker keeps a dead worker's open transaction before aborting it; the
    # partitions' next owner waits for that before it reads their changelog
    transaction_timeout_s: float = 10.0
    letter_bytes: int = LETTER_PAYLOAD_BYTES
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.train.velocity:
            raise ValueError("--scale-out does not carry the velocity window yet: "
                             "run it with --velocity-weight 0")  # fmt: skip
        if self.train.calibrated:
            raise ValueError("--scale-out does not estimate the catalogue's moments yet: "
                             "run it without --calibrate")  # fmt: skip


def home(key: str, partitions: int) -> int:
    """The partition kafka-python's default partitioner gives a record keyed ``key``."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


class _Assignment(ConsumerRebalanceListener):
    """Notes what the group hands a stage; the loop restores before it processes again."""

    def __init__(self) -> None:
        self.partitions: set[int] = set()
        self.changed = False

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self.changed = True

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.partitions = {tp.partition for tp in assigned}
        self.changed = True


class ScaleOutWorker:
    def __init__(
        self,
        config: ScaleOutConfig,
        metrics: WorkerMetrics,
        encode: Callable[[list[str]], np.ndarray] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.encode = encode
        t = config.topics
        common: dict[str, Any] = {
            "bootstrap_servers": config.bootstrap,
            "enable_auto_commit": False,
            "isolation_level": "read_committed",
            "auto_offset_reset": "earliest",
            "session_timeout_ms": int(config.session_timeout_s * 1000),
            "heartbeat_interval_ms": int(config.session_timeout_s * 1000 / 4),
            "fetch_max_wait_ms": 100,
            "max_poll_records": config.batch_size,
        }
        self.users_at = _Assignment()
        self.items_at = _Assignment()
        self.users_in = KafkaConsumer(group_id=f"{config.app_id}-users", **common)
        self.users_in.subscribe([t.interactions], listener=self.users_at)
        self.items_in = KafkaConsumer(group_id=f"{config.app_id}-items", **common)
        self.items_in.subscribe([t.gradients, t.items], listener=self.items_at)
        self.view_in = KafkaConsumer(**{**common, "group_id": None})
        me = uuid.uuid4().hex[:8]
        txn: dict[str, Any] = {
            "bootstrap_servers": config.bootstrap,
            "transaction_timeout_ms": int(config.transaction_timeout_s * 1000),
            "linger_ms": 5,
            # a commit sends thousands of rows and vectors: big batches, fewer wake-ups of
            # the sender thread (a new batch wakes it)
            "batch_size": 512 * 1024,
        }
        self.users_out = KafkaProducer(transactional_id=f"{config.app_id}-users-{me}", **txn)
        self.items_out = KafkaProducer(transactional_id=f"{config.app_id}-items-{me}", **txn)
        self.users_out.init_transactions()
        self.items_out.init_transactions()
        self.view = ParameterServer(view_tables(config.train))
        self.users: UserStage | None = None
        self.items: ItemStage | None = None
        self._user_work = _Pending()
        self._item_work = _Pending()
        self._items_committed: dict[TopicPartition, int] = {}
        self._users_committed: dict[int, tuple[int, int]] = {}

    # -- the loop ---------------------------------------------------------------------

    def run(self, should_stop: Callable[[], bool], max_seconds: float | None = None) -> None:
        """Run until ``should_stop()`` (checked between polls) or ``max_seconds``; commits
        what it did before it returns."""
        start = time.monotonic()
        self._follow_view(catch_up_s=30.0)
        last_users = last_items = time.monotonic()
        period = self.config.commit_ms / 1000
        try:
            while not should_stop():
                if max_seconds is not None and time.monotonic() - start > max_seconds:
                    break
                self._follow_view()
                self._poll_users()
                self._cut_idle()
                self._poll_items()
                now = time.monotonic()
                if now - last_users >= period:
                    self._commit_users()
                    last_users = now
                if now - last_items >= period:
                    self._commit_items()
                    last_items = now
            self._commit_users()
            self._commit_items()
        finally:
            for client in (self.users_in, self.items_in, self.view_in):
                client.close()
            for producer in (self.users_out, self.items_out):
                producer.close(timeout=5)

    # -- the item-row view -------------------------------------------------------------

    def _follow_view(self, catch_up_s: float = 0.0) -> None:
        """Apply new item-rows records to the view (first: assign and read to the end)."""
        topic = self.config.topics.item_rows
        if not self.view_in.assignment():
            found = self.view_in.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(found)]
            self.view_in.assign(tps)
            self.view_in.seek_to_beginning(*tps)
        deadline = time.monotonic() + catch_up_s
        while True:
            batch = self.view_in.poll(timeout_ms=0 if not catch_up_s else 200)
            by_table: dict[str, dict[str, bytes | None]] = {}
            for records in batch.values():
                for rec in records:
                    table, row_id = split_key(rec.key)
                    by_table.setdefault(table, {})[row_id] = rec.value
            for table, entries in by_table.items():
                upsert_view(self.view, table, entries)
            if not batch and (not catch_up_s or time.monotonic() > deadline
                              or self._at_end(self.view_in)):  # fmt: skip
                return

    @staticmethod
    def _at_end(consumer: KafkaConsumer) -> bool:
        tps = list(consumer.assignment())
        ends = consumer.end_offsets(tps)
        return all(consumer.position(tp) >= ends[tp] for tp in tps)

    # -- user stage ---------------------------------------------------------------------

    def _poll_users(self) -> None:
        batch = self.users_in.poll(timeout_ms=20)
        if self.users_at.changed:
            self._restore_users()
            return  # records fetched before the restore are read again from the offsets
        if self.users is None:
            return
        records = [
            RawRecord(r.value, r.timestamp, r.partition, r.offset, r.key)
            for recs in batch.values() for r in recs
        ]  # fmt: skip
        if not records:
            return
        closed, replayed = self.users.core.accept(records)
        if replayed:
            self.metrics.replayed.inc(replayed)
        for cut in closed:
            self._user_step(cut)

    def _cut_idle(self) -> None:
        if self.users is None:
            return
        now_ms = int(time.time() * 1000)
        for cut in self.users.core.batcher.flush_idle(now_ms, self.config.idle_grace_ms):
            self._user_step(cut)

    def _user_step(self, cut: list[RawRecord]) -> None:
        assert self.users is not None
        started = time.perf_counter()
        step = self.users.process(cut)
        self._user_work.outputs.append((step.out, len(cut), time.perf_counter() - started))
        self._user_work.gradients.extend(step.gradients)

    def _commit_users(self) -> None:
        stage, work = self.users, self._user_work
        if stage is None:
            return
        positions = {part: at for part, at in stage.core.checkpoint_positions().items()
                     if part in self.users_at.partitions}  # fmt: skip
        if not work.outputs and positions == self._users_committed:
            return
        t = self.config.topics
        parts = self.config.topics.partitions
        p = self.users_out
        p.begin_transaction()
        evicted: list[str] = []
        latest: dict[str, bytes] = {}
        for out, _, _ in work.outputs:
            for rec in out.users:
                latest[rec.key] = rec.encode()
            for user in out.evicted_users:
                latest.pop(user, None)
            evicted.extend(out.evicted_users)
            for letter in out.dead_letters:
                p.send(t.dlq, value=letter.payload)
        for user, value in latest.items():
            p.send(t.user_vectors, key=user.encode(), value=value)
        for user in evicted:
            p.send(t.user_vectors, key=user.encode(), value=None)
        by_owner: dict[int, list[Gradient]] = {}
        for g in coalesce(work.gradients):
            by_owner.setdefault(home(g.item, parts), []).append(g)
        for owner, gradients in by_owner.items():
            p.send(t.gradients, value=pack_gradients(gradients), partition=owner)
        for key, row in stage.changelog(evicted):
            p.send(t.user_rows, key=key, value=row, partition=home(split_key(key)[1], parts))
        offsets = {
            TopicPartition(t.interactions, part): OffsetAndMetadata(offset, str(index), -1)
            for part, (offset, index) in positions.items()
        }
        p.send_offsets_to_transaction(offsets, self.users_in.group_metadata())
        p.commit_transaction()
        for out, n, seconds in work.outputs:
            record_metrics(self.metrics, stage.core, out, n, seconds)
            record_published(self.metrics, out)
        self._user_work = _Pending()
        self._users_committed = positions

    def _restore_users(self) -> None:
        """Drop the user stage and read the assigned partitions' rows back."""
        self.users_at.changed = False
        self._user_work = _Pending()
        self._users_committed = {}
        cfg = self.config
        stage = UserStage(cfg.train, self.view, Batcher(cfg.batch_size, cfg.batch_ms),
                          cfg.letter_bytes)  # fmt: skip
        parts = sorted(self.users_at.partitions)
        stage.restore(self._read_changelog(cfg.topics.user_rows, parts))
        offsets, within = self._committed(self.users_in, cfg.topics.interactions, parts)
        stage.core.resume(offsets, within)
        self.users = stage
        self.metrics.partitions.labels(stage="users").set(len(parts))
        log.info("user stage: partitions %s, %d users restored", parts, len(stage.events))

    # -- item stage ---------------------------------------------------------------------

    def _poll_items(self) -> None:
        batch = self.items_in.poll(timeout_ms=5)
        if self.items_at.changed:
            self._restore_items()
            return
        stage = self.items
        if stage is None or not batch:
            return
        t = self.config.topics
        started = time.perf_counter()
        gradients: list[Gradient] = []
        content: list[RawRecord] = []
        for tp, recs in batch.items():
            for r in recs:
                if tp.topic == t.items:
                    content.append(RawRecord(r.value, r.timestamp, r.partition, r.offset, r.key))
                    continue
                try:
                    gradients.extend(unpack_gradients(r.value))
                except ValueError as err:  # not ours: counted, skipped
                    log.warning("gradients %d@%d: %s", tp.partition, r.offset, err)
                    self.metrics.dead_letters.labels(reason="bad_gradient").inc()
        out = BatchOutput()
        if content and self.encode is not None:
            added = stage.core.add_items(expand(content), self.encode)
            out.items.extend(added.items)
            out.dead_letters.extend(added.dead_letters)
        step = stage.apply(gradients)
        out.items.extend(step.items)
        out.evicted_items.extend(step.evicted)
        out.unadmitted = step.unadmitted
        self._item_work.outputs.append((out, len(gradients), time.perf_counter() - started))

    def _commit_items(self) -> None:
        stage, work = self.items, self._item_work
        if stage is None:
            return
        positions = {tp: self.items_in.position(tp) for tp in self.items_in.assignment()}
        if not work.outputs and positions == self._items_committed:
            return
        t = self.config.topics
        parts = t.partitions
        p = self.items_out
        p.begin_transaction()
        latest: dict[str, bytes | None] = {}
        evicted: list[str] = []
        for out, _, _ in work.outputs:
            for rec in out.items:
                latest[rec.key] = rec.encode()
            for item in out.evicted_items:
                latest[item] = None
            evicted.extend(out.evicted_items)
            for letter in out.dead_letters:
                p.send(t.dlq, value=letter.payload)
        for item, value in latest.items():
            p.send(t.item_vectors, key=item.encode(), value=value)
        for key, row in stage.changelog(evicted):
            p.send(t.item_rows, key=key, value=row, partition=home(split_key(key)[1], parts))
        # every record poll returned is in this transaction's outputs: the positions
        offsets = {tp: OffsetAndMetadata(at, "", -1) for tp, at in positions.items()}
        p.send_offsets_to_transaction(offsets, self.items_in.group_metadata())
        p.commit_transaction()
        for out, _, _ in work.outputs:
            record_published(self.metrics, out)
            for letter in out.dead_letters:
                self.metrics.dead_letters.labels(reason=letter.reason).inc()
            if out.unadmitted:
                self.metrics.unadmitted.inc(out.unadmitted)
        self.metrics.rows.labels(table=ITEMS).set(stage.ps.size(ITEMS))
        self._item_work = _Pending()
        self._items_committed = positions

    def _restore_items(self) -> None:
        self.items_at.changed = False
        self._item_work = _Pending()
        self._items_committed = {}
        stage = ItemStage(self.config.train, self.config.letter_bytes)
        parts = sorted(self.items_at.partitions)
        stage.restore(self._read_changelog(self.config.topics.item_rows, parts))
        for topic in (self.config.topics.gradients, self.config.topics.items):
            offsets, _ = self._committed(self.items_in, topic, parts)
            for part, offset in offsets.items():
                self.items_in.seek(TopicPartition(topic, part), offset)
        self.items = stage
        self.metrics.partitions.labels(stage="items").set(len(parts))
        log.info("item stage: partitions %s, %d items restored", parts, len(stage.events))

    # -- shared -------------------------------------------------------------------------

    def _read_changelog(self, topic: str, parts: list[int]) -> dict[str, dict[str, bytes]]:
        """The latest committed value of every row on ``parts`` of a changelog topic, by table
        (waits for a dead worker's open transaction there to be aborted)."""
        tables: dict[str, dict[str, bytes | None]] = {}
        if not parts:
            return {}
        reader = KafkaConsumer(
            bootstrap_servers=self.config.bootstrap, isolation_level="read_committed",
            enable_auto_commit=False, group_id=None,
        )  # fmt: skip
        try:
            tps = [TopicPartition(topic, p) for p in parts]
            reader.assign(tps)
            reader.seek_to_beginning(*tps)
            deadline = time.monotonic() + self.config.transaction_timeout_s + 30
            while not self._at_end(reader):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not read {topic} {parts} to its end: an open "
                                       "transaction was not resolved")  # fmt: skip
                for records in reader.poll(timeout_ms=200).values():
                    for rec in records:
                        table, row_id = split_key(rec.key)
                        tables.setdefault(table, {})[row_id] = rec.value
        finally:
            reader.close()
        return {t: {i: v for i, v in rows.items() if v is not None} for t, rows in tables.items()}

    @staticmethod
    def _committed(
        consumer: KafkaConsumer, topic: str, parts: list[int]
    ) -> tuple[dict[int, int], dict[int, int]]:
        """Per partition, the committed offset (the start without one) and the events of the
        record there already taken (the commit's metadata)."""
        offsets: dict[int, int] = {}
        within: dict[int, int] = {}
        tps = [TopicPartition(topic, p) for p in parts]
        begin = consumer.beginning_offsets(tps)
        for tp in tps:
            found = consumer.committed(tp, metadata=True)
            if found is None:
                offsets[tp.partition] = begin[tp]
                continue
            offsets[tp.partition] = found.offset
            within[tp.partition] = int(found.metadata or 0)
            consumer.seek(tp, found.offset)
        return offsets, within


@dataclass
class _Pending:
    """A stage's processed work not yet committed: outputs (with their record counts and
    step times) and, for the user stage, the gradients."""

    outputs: list[tuple[BatchOutput, int, float]] = field(default_factory=list)
    gradients: list[Gradient] = field(default_factory=list)
