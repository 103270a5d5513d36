"""The scale-out worker: the two stages of :mod:`stream.split` on kafka-python, their outputs,
changelogs and input offsets committed in one Kafka transaction.

Every process started with the same settings joins one consumer group
(``<app id>-scale-out``) on ``interactions``, ``gradients`` and ``items``, all with the same
partition count: the range assignor gives a member partition p of each, so it runs the user
stage of interactions partition p and the item stage of gradients (and content) partition p.
Adding a worker, here or on another machine, is starting one more process. A stage's rows
live in its compacted changelog topic (``user-rows``, ``item-rows``; partition p holds the
rows of input partition p); when the group hands a worker partitions (a start, a worker
joining or dying) it drops its state and reads those partitions' changelogs back, then
resumes from the offsets committed with them. Downstream consumers read ``read_committed``,
so a transaction a kill -9 left open is as if it never ran: each event's update is applied
exactly once, whichever process dies when.

Every ``commit_ms`` (and on a stop) a worker with work commits one transaction: its users'
vectors, the gradients (one packed record per owning partition), dead letters, changed user
rows; item vectors and changed item rows; and the positions it has consumed to on all three
topics (with the events already taken of a batch record that a micro-batch cut, in the
offset's metadata).

One consumer and one producer per process, not one per stage: with two consumers a
kafka-python 3.0.12 ``poll`` with a short timeout twice never returned (waiting on the
group coordinator); a loop that stalls that long is caught by the :class:`Watchdog`, and
the worker starts again from its committed state (which exactly-once makes safe).
"""

from __future__ import annotations

import logging
import os
import threading
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

from paramserver.metrics import MeteredPS, PSMetrics
from paramserver.ps import ParameterServer
from stream import faults
from stream.batching import BATCH_MS, BATCH_SIZE, Batcher
from stream.bootstrap import Bootstrapped, load_into
from stream.core import BatchOutput, RawRecord, expand
from stream.metrics import WorkerMetrics
from stream.schemas import LETTER_PAYLOAD_BYTES
from stream.split import (
    Gradient,
    ItemStage,
    UserStage,
    boot_part,
    by_table,
    coalesce,
    follow,
    pack_gradients,
    split_key,
    unpack_gradients,
    view_tables,
)
from stream.topics import Topics
from stream.training import CONTENT, ITEMS, USERS, TrainConfig

log = logging.getLogger("streambed.scaleout")
ITEM_TABLES = (ITEMS, CONTENT)  # the item stage's (its users table stays empty)


@dataclass(frozen=True)
class ScaleOutConfig:
    bootstrap: str = "127.0.0.1:9092"
    app_id: str = "streambed-worker"
    topics: Topics = field(default_factory=Topics)
    batch_size: int = BATCH_SIZE
    batch_ms: int = BATCH_MS
    # how often a worker commits its transaction (Kafka Streams' default under
    # exactly-once is 100 ms): a vector is visible to read_committed replicas after it
    commit_ms: int = 100
    # a partial micro-batch is trained once its window ended this long ago (wall clock)
    idle_grace_ms: int = 50
    session_timeout_s: float = 10.0
    # how long the broker keeps a dead worker's open transaction before aborting it; the
    # partitions' next owner waits for that before it reads their changelog
    transaction_timeout_s: float = 10.0
    # a loop iteration that takes longer than this is a stall (Watchdog): the worker
    # restarts (or exits 75 with --exit-on-halt); a client call that never returns must not
    # hold the partitions
    stall_s: float = 60.0
    letter_bytes: int = LETTER_PAYLOAD_BYTES
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.train.velocity:
            raise ValueError("--scale-out does not carry the velocity window yet: "
                             "run it with --velocity-weight 0")  # fmt: skip
        if self.train.calibrated:
            raise ValueError("--scale-out does not estimate the catalogue's moments yet: "
                             "run it without --calibrate")  # fmt: skip

    @property
    def group(self) -> str:
        return f"{self.app_id}-scale-out"


def home(key: str, partitions: int) -> int:
    """The partition kafka-python's default partitioner gives a record keyed ``key``."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


class Watchdog:
    """Calls ``on_stall(seconds)`` (once) when no :meth:`beat` has come for ``stall_s``: a
    loop blocked in a client call that never returns must not hold its partitions.

    >>> now = [0.0]
    >>> fired = []
    >>> dog = Watchdog(10.0, fired.append, clock=lambda: now[0])
    >>> now[0] = 9.0; dog.check(), fired
    (False, [])
    >>> now[0] = 11.0; dog.check(), fired
    (True, [11.0])
    >>> dog.beat(); now[0] = 12.0; dog.check(), fired   # fires once
    (False, [11.0])
    """

    def __init__(self, stall_s: float, on_stall: Callable[[float], object],
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.stall_s, self.on_stall, self.clock = stall_s, on_stall, clock
        self._last = clock()
        self._fired = False

    def beat(self) -> None:
        self._last = self.clock()

    def check(self) -> bool:
        """Whether this look found a stall (and called ``on_stall``)."""
        stalled = self.clock() - self._last
        if self._fired or stalled <= self.stall_s:
            return False
        self._fired = True
        self.on_stall(stalled)
        return True

    def watch(self, done: threading.Event, every_s: float = 1.0) -> None:
        """Look every ``every_s`` until ``done`` (a thread's target)."""
        while not done.wait(every_s):
            self.check()


def exit_on_stall(stalled: float) -> None:
    """The default stall action: log it and end the process (exit 75) for a supervisor."""
    log.error("the worker's loop made no progress for %.0f s (a Kafka client call that did "
              "not return): exiting for a restart", stalled)  # fmt: skip
    logging.shutdown()
    os._exit(75)


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
        boot: Bootstrapped | None = None,
        ps_metrics: PSMetrics | None = None,
        on_stall: Callable[[float], object] = exit_on_stall,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.encode = encode
        # a bootstrap: the towers of every stage, and the first rows of partitions that
        # have no state yet (the item view starts from all its item rows)
        self.boot = boot
        self.ps_metrics = ps_metrics  # the user stage's PS calls, both stages' table counters
        t = config.topics
        common: dict[str, Any] = {
            "bootstrap_servers": config.bootstrap,
            "enable_auto_commit": False,
            "isolation_level": "read_committed",
            "auto_offset_reset": "earliest",
            "fetch_max_wait_ms": 100,
        }
        self.assignment = _Assignment()
        self.consumer = KafkaConsumer(
            group_id=config.group, **common, max_poll_records=config.batch_size,
            session_timeout_ms=int(config.session_timeout_s * 1000),
            heartbeat_interval_ms=int(config.session_timeout_s * 1000 / 4),
        )  # fmt: skip
        self.consumer.subscribe([t.interactions, t.gradients, t.items], listener=self.assignment)
        self.view_in = KafkaConsumer(**{**common, "group_id": None})
        self._check_partitions()
        self.producer = KafkaProducer(
            bootstrap_servers=config.bootstrap,
            transactional_id=f"{config.app_id}-{uuid.uuid4().hex[:12]}",
            transaction_timeout_ms=int(config.transaction_timeout_s * 1000),
            linger_ms=5,
            # a commit sends thousands of rows and vectors: big batches, fewer wake-ups of
            # the sender thread (a new batch wakes it)
            batch_size=512 * 1024,
        )  # fmt: skip
        self.producer.init_transactions()
        self.view = ParameterServer(view_tables(config.train))
        if boot is not None:
            self.view.put(ITEMS, boot.items, boot.item_rows, now=boot.last_ts,
                          updates=boot.item_counts.astype(np.uint32))  # fmt: skip
        self.users: UserStage | None = None
        self.items: ItemStage | None = None
        self._work = _Pending()
        self._committed: dict[TopicPartition, tuple[int, int]] = {}
        self.watchdog = Watchdog(config.stall_s, on_stall)

    def _check_partitions(self) -> None:
        """Partition p of each input topic, its changelog's partition p and the content of
        partition p hold the same rows: every topic must have the configured count."""
        t = self.config.topics
        wrong = []
        for topic in (t.interactions, t.items, t.gradients, t.user_rows, t.item_rows):
            found = self.view_in.partitions_for_topic(topic)
            if found is None or len(found) != t.partitions:
                wrong.append(f"{topic} has {len(found) if found else 'no'} partitions")
        if wrong:
            raise ValueError("the scale-out worker needs every topic with --partitions "
                             f"{t.partitions}: " + ", ".join(wrong))  # fmt: skip

    # -- the loop ---------------------------------------------------------------------

    def run(self, should_stop: Callable[[], bool], max_seconds: float | None = None) -> None:
        """Run until ``should_stop()`` (checked between polls) or ``max_seconds``; commits
        what it did before it returns."""
        start = time.monotonic()
        done = threading.Event()
        self.watchdog.beat()
        threading.Thread(target=self.watchdog.watch, args=(done,), name="streambed-watchdog",
                         daemon=True).start()  # fmt: skip
        self._follow_view(catch_up_s=30.0)
        last = time.monotonic()
        period = self.config.commit_ms / 1000
        try:
            while not should_stop():
                self.watchdog.beat()
                if max_seconds is not None and time.monotonic() - start > max_seconds:
                    break
                self._follow_view()
                quiet = not self._poll()
                self._cut_idle()
                # every commit_ms under load; at once when a poll came back empty, so a lone
                # event is not held for the timer at each of its two stages
                if time.monotonic() - last >= period or (quiet and not self._work.empty):
                    self._commit()
                    last = time.monotonic()
            self._commit()
        finally:
            done.set()
            for client in (self.consumer, self.view_in):
                client.close()
            self.producer.close(timeout=5)

    def _poll(self) -> bool:
        """Poll once and process what came; whether any record did."""
        batch = self.consumer.poll(timeout_ms=20)
        if self.assignment.changed:
            self._restore()
            return True  # records fetched before the restore are read again from the offsets
        if self.users is None or self.items is None or not batch:
            return False
        t = self.config.topics
        users: list[RawRecord] = []
        content: list[RawRecord] = []
        gradients: list[Gradient] = []
        for tp, recs in batch.items():
            if tp.topic == t.interactions:
                users.extend(RawRecord(r.value, r.timestamp, r.partition, r.offset, r.key)
                             for r in recs)  # fmt: skip
            elif tp.topic == t.items:
                content.extend(RawRecord(r.value, r.timestamp, r.partition, r.offset, r.key)
                               for r in recs)  # fmt: skip
            else:
                for r in recs:
                    try:
                        gradients.extend(unpack_gradients(r.value))
                    except ValueError as err:  # not ours: counted, skipped
                        log.warning("%s %d@%d: %s", tp.topic, tp.partition, r.offset, err)
                        self.metrics.dead_letters.labels(reason="bad_gradient").inc()
        if users:
            closed, replayed = self.users.core.accept(users)
            if replayed:
                self.metrics.replayed.inc(replayed)
            for cut in closed:
                self._user_step(cut)
        if content or gradients:
            self._item_step(content, gradients)
        return True

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
        self._work.users.append((step.out, len(cut), time.perf_counter() - started))
        self._work.gradients.extend(step.gradients)

    def _item_step(self, content: list[RawRecord], gradients: list[Gradient]) -> None:
        assert self.items is not None
        started = time.perf_counter()
        out = BatchOutput()
        if content and self.encode is not None:
            added = self.items.core.add_items(expand(content), self.encode)
            out.items.extend(added.items)
            out.dead_letters.extend(added.dead_letters)
        step = self.items.apply(gradients)
        out.items.extend(step.items)
        out.evicted_items.extend(step.evicted)
        out.unadmitted = step.unadmitted
        self._work.items.append((out, len(gradients), time.perf_counter() - started))

    def _positions(self) -> dict[TopicPartition, tuple[int, int]]:
        """Where this worker has consumed to: interactions as far as its tables reflect
        (offset, events of that record taken), the item stage's topics as far as polled."""
        assert self.users is not None
        t = self.config.topics
        owned, taken = self.assignment.partitions, self.users.core.checkpoint_positions()
        out = {TopicPartition(t.interactions, p): at for p, at in taken.items() if p in owned}
        for tp in self.consumer.assignment():
            if tp.topic != t.interactions:
                out[tp] = (self.consumer.position(tp), 0)
        return out

    def _commit(self) -> None:
        users, items, work = self.users, self.items, self._work
        if users is None or items is None:
            return
        positions = self._positions()
        if work.empty and positions == self._committed:
            return
        t = self.config.topics
        parts = t.partitions
        p = self.producer
        p.begin_transaction()
        sent: dict[str, tuple[int, int]] = {}
        for kind, outs, topic, stage, rows in (
            ("user", work.users, t.user_vectors, users, t.user_rows),
            ("item", work.items, t.item_vectors, items, t.item_rows),
        ):
            vectors, evicted = _latest(outs, kind)
            for row_id, value in vectors.items():
                p.send(topic, key=row_id.encode(), value=value)
            sent[kind] = _tally(vectors)
            for key, row in stage.changelog(evicted):
                p.send(rows, key=key, value=row, partition=home(split_key(key)[1], parts))
            for out, _, _ in outs:
                for letter in out.dead_letters:
                    p.send(t.dlq, value=letter.payload)
        by_owner: dict[int, list[Gradient]] = {}
        for g in coalesce(work.gradients):
            by_owner.setdefault(home(g.item, parts), []).append(g)
        for owner, gradients in by_owner.items():
            p.send(t.gradients, value=pack_gradients(gradients), partition=owner)
        offsets = {tp: OffsetAndMetadata(offset, str(index), -1)
                   for tp, (offset, index) in positions.items()}  # fmt: skip
        p.send_offsets_to_transaction(offsets, self.consumer.group_metadata())
        faults.checkpoint_pause()  # the crash tests' kill -9 inside an open transaction
        p.commit_transaction()
        self._committed = positions
        self._work = _Pending()
        self._count(work, sent)

    def _count(self, work: _Pending, sent: dict[str, tuple[int, int]]) -> None:
        """Metrics of committed work only: a replay after a crash counts nothing twice.
        ``sent``: vectors and tombstones written, by kind (the last of each key)."""
        assert self.users is not None and self.items is not None
        for kind, (vectors, tombstones) in sent.items():
            self.metrics.published(kind, vectors, tombstones)
        for out, n, seconds in work.users:
            self.metrics.record(out, n, seconds)
        for out, _, _ in work.items:
            for letter in out.dead_letters:
                self.metrics.dead_letters.labels(reason=letter.reason).inc()
            if out.unadmitted:
                self.metrics.unadmitted.inc(out.unadmitted)
        self.metrics.rows.labels(table=ITEMS).set(self.items.ps.size(ITEMS))
        self.metrics.rows.labels(table=USERS).set(self.users.ps.local.size(USERS))
        if self.ps_metrics is not None:
            self.ps_metrics.mirror(self.users.ps.local)
            self.ps_metrics.mirror(self.items.ps, ITEM_TABLES)
        self._lag()

    def _lag(self) -> None:
        """Consumer lag per partition, from the watermarks the consumer last saw (no broker
        call: a partition not fetched since is stale)."""
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is not None:
                lag = max(0, high - self.consumer.position(tp))
                labels = {"topic": tp.topic, "partition": str(tp.partition)}
                self.metrics.consumer_lag.labels(**labels).set(lag)

    def _seed(self, users: UserStage, items: ItemStage, fresh: list[int]) -> None:
        """The bootstrap's towers for both stages and its counts for the user stage's
        frequency estimate; the rows of the users and items of ``fresh`` partitions (no
        changelog, no committed offset), whose vectors go out with the first commit."""
        boot = self.boot
        assert boot is not None
        for trainer in (users.core.trainer, items.core.trainer):
            load_into(trainer, boot, rows=False)
        users.core.trainer.frequency.add(dict(zip(boot.items, boot.item_counts.tolist(),
                                                  strict=True)))  # fmt: skip
        if not fresh:
            return
        n, owned = self.config.topics.partitions, set(fresh)
        part = boot_part(boot, lambda u: home(u, n) in owned, lambda i: home(i, n) in owned)
        self._work.users.append((users.seed(part), 0, 0.0))
        self._work.items.append((items.seed(part), 0, 0.0))
        log.info("partitions %s start from the bootstrap: %d users, %d items", fresh,
                 len(part.users), len(part.items))  # fmt: skip

    def _restore(self) -> None:
        """Drop both stages and read the assigned partitions' rows back."""
        self.assignment.changed = False
        self._work = _Pending()
        self._committed = {}
        cfg, t = self.config, self.config.topics
        parts = sorted(self.assignment.partitions)
        pm = self.ps_metrics
        meter = None if pm is None else (lambda api: MeteredPS(api, pm))  # noqa: E731
        users = UserStage(cfg.train, self.view, Batcher(cfg.batch_size, cfg.batch_ms),
                          cfg.letter_bytes, meter)  # fmt: skip
        items = ItemStage(cfg.train, cfg.letter_bytes)
        user_rows, logged = self._read_changelog(t.user_rows, parts)
        users.restore(user_rows)
        item_rows, logged_items = self._read_changelog(t.item_rows, parts)
        items.restore(item_rows)
        offsets, within, started = self._committed_offsets(t.interactions, parts)
        users.core.resume(offsets, within)
        for topic in (t.gradients, t.items):
            self._committed_offsets(topic, parts)
        if self.boot is not None:
            self._seed(users, items, [p for p in parts if p not in logged | logged_items
                                      and p not in started])  # fmt: skip
        self.users, self.items = users, items
        if pm is not None:
            pm.rebase(users.ps.local)
            pm.rebase(items.ps, ITEM_TABLES)
        for stage in ("users", "items"):
            self.metrics.partitions.labels(stage=stage).set(len(parts))
        log.info("partitions %s: %d users and %d items restored", parts, len(users.events),
                 len(items.events))  # fmt: skip

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
            self.watchdog.beat()
            batch = self.view_in.poll(timeout_ms=0 if not catch_up_s else 200)
            follow(self.view, ((r.key, r.value) for recs in batch.values() for r in recs))
            if not batch and (not catch_up_s or time.monotonic() > deadline
                              or self._at_end(self.view_in)):  # fmt: skip
                return

    @staticmethod
    def _at_end(consumer: KafkaConsumer) -> bool:
        tps = list(consumer.assignment())
        ends = consumer.end_offsets(tps)
        return all(consumer.position(tp) >= ends[tp] for tp in tps)

    # -- shared -------------------------------------------------------------------------

    def _read_changelog(
        self, topic: str, parts: list[int]
    ) -> tuple[dict[str, dict[str, bytes]], set[int]]:
        """The latest committed value of every row on ``parts`` of a changelog topic, by table
        (waits for a dead worker's open transaction there to be aborted), and the partitions
        that had any record."""
        tables: dict[str, dict[str, bytes | None]] = {}
        logged: set[int] = set()
        if not parts:
            return {}, logged
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
                self.watchdog.beat()  # reading is progress
                for records in reader.poll(timeout_ms=200).values():
                    by_table(((r.key, r.value) for r in records), into=tables)
                    logged.update(r.partition for r in records)
        finally:
            reader.close()
        live = {t: {i: v for i, v in rows.items() if v is not None} for t, rows in tables.items()}
        return live, logged

    def _committed_offsets(
        self, topic: str, parts: list[int]
    ) -> tuple[dict[int, int], dict[int, int], set[int]]:
        """Per partition, the committed offset (the start without one) and the events of the
        record there already taken (the commit's metadata), and the partitions with a
        committed offset; the consumer seeks there."""
        consumer = self.consumer
        offsets: dict[int, int] = {}
        within: dict[int, int] = {}
        tps = [TopicPartition(topic, p) for p in parts]
        begin = consumer.beginning_offsets(tps)
        for tp in tps:
            found = consumer.committed(tp, metadata=True)
            if found is None:
                offsets[tp.partition] = begin[tp]
            else:
                offsets[tp.partition] = found.offset
                within[tp.partition] = int(found.metadata or 0)
            consumer.seek(tp, offsets[tp.partition])
        # a partition with a commit has one even at 0 events taken: within holds them all
        return offsets, within, set(within)


def _latest(
    outs: list[tuple[BatchOutput, int, float]], kind: str
) -> tuple[dict[str, bytes | None], list[str]]:
    """The last vector (None: a tombstone) of each ``kind`` ("user" or "item") key over a
    commit's outputs, and the keys evicted."""
    vectors: dict[str, bytes | None] = {}
    evicted: list[str] = []
    for out, _, _ in outs:
        for rec in out.users if kind == "user" else out.items:
            vectors[rec.key] = rec.encode()
        gone = out.evicted_users if kind == "user" else out.evicted_items
        vectors.update(dict.fromkeys(gone))
        evicted.extend(gone)
    return vectors, evicted


def _tally(vectors: dict[str, bytes | None]) -> tuple[int, int]:
    """(vectors, tombstones) among the values a commit wrote."""
    tombstones = sum(1 for v in vectors.values() if v is None)
    return len(vectors) - tombstones, tombstones


@dataclass
class _Pending:
    """Work done and not yet committed: each stage's outputs (with their record counts and
    step times) and the user stage's gradients."""

    users: list[tuple[BatchOutput, int, float]] = field(default_factory=list)
    items: list[tuple[BatchOutput, int, float]] = field(default_factory=list)
    gradients: list[Gradient] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.users or self.items or self.gradients)
