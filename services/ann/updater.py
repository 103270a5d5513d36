"""The single writer of a replica's index: tails the vector topics into :class:`ServingState`.

On start it loads the replica's last save (if ``save_dir`` has one that fits)
and seeks to the offsets it reflects; otherwise it reads ``item-vectors`` and
``user-vectors`` from the beginning (they are compacted, so the beginning is
the latest vector of every id). Then it follows them, saving every
``save_seconds`` and on stop. A record that does not decode is counted and
skipped. The index's background merger runs while the tailer does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from kafka import KafkaConsumer, TopicPartition

from services.api.metrics import ServingMetrics
from services.api.state import ServingState
from stream.schemas import training_weight, valid_events
from stream.topics import Topics
from stream.vectors import VectorRecord

log = logging.getLogger("streambed.tailer")
LAG_SECONDS = 0.5  # how often the consumer-lag gauges are refreshed


@dataclass(frozen=True)
class TailerConfig:
    save_dir: Path | None = None  # None: never save
    load_dir: Path | None = None  # where to look for a save on start; None: save_dir
    save_seconds: float = 60.0
    # how long a fetch waits at the broker when there is nothing new (data ends it at once):
    # at 20 ms an idle replica took 0.15 cores and cost the broker 0.2, at 100 ms 0.06 and
    # 0.12, with lone events as fresh (p99 0.151 vs 0.156 s, bench.e2e --lone 20)
    poll_ms: int = 100
    seen_seconds: float = 3600.0  # how far back to read interactions when there is no save


class VectorTailer(threading.Thread):
    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        state: ServingState,
        metrics: ServingMetrics,
        config: TailerConfig | None = None,
    ) -> None:
        super().__init__(name="vector-tailer", daemon=True)
        self.bootstrap = bootstrap
        self.topics = topics
        self.state = state
        self.metrics = metrics
        self.config = config or TailerConfig()
        self.poll_ms = self.config.poll_ms
        self.caught_up = threading.Event()
        self.started_from: str = ""  # "snapshot" or "topics", once known
        self._stop_event = threading.Event()

    def stop(self, timeout: float = 15.0) -> None:
        self._stop_event.set()
        self.join(timeout)

    def run(self) -> None:
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            client_id="streambed-api-tailer",
            fetch_max_wait_ms=self.poll_ms,
            # scale-out workers write vectors in transactions: never serve an aborted one
            # (the same as read_uncommitted for the single worker's plain producer)
            isolation_level="read_committed",
        )
        try:
            partitions = self._wait_for_partitions(consumer)
            if not partitions:
                return
            consumer.assign(partitions)
            end = self._seek(consumer, partitions)
            self.state.index.start_merging()
            last_save, dirty = time.monotonic(), False
            last_lag = 0.0
            while not self._stop_event.is_set():
                try:
                    batch = consumer.poll(timeout_ms=self.poll_ms, max_records=5000)
                    for tp, records in batch.items():
                        self._apply(tp.topic, records)
                        dirty = True
                except Exception:  # the replica's only writer must outlive any one poll
                    log.exception("tailer poll failed; retrying in 1 s")
                    self._stop_event.wait(1.0)
                    continue
                if time.monotonic() - last_lag >= LAG_SECONDS:
                    self._lag(consumer, partitions)
                    last_lag = time.monotonic()
                if not self.caught_up.is_set() and all(
                    consumer.position(tp) >= end[tp] for tp in partitions
                ):
                    self.caught_up.set()
                    log.info("caught up: %d items", len(self.state.index))
                if dirty and time.monotonic() - last_save >= self.config.save_seconds:
                    dirty = not self._save(consumer, partitions)
                    last_save = time.monotonic()
            if dirty:
                self._save(consumer, partitions)
        finally:
            self.state.index.close()
            consumer.close()

    def _seek(
        self, consumer: KafkaConsumer, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """Resume from the last save if it fits the topics as they are; else from the start.
        Returns the partitions' end offsets (being there is being caught up)."""
        saved = None
        source = self.config.load_dir or self.config.save_dir
        if source is not None:
            try:
                saved = self.state.restore(source)
            except Exception as err:  # noqa: BLE001 - any damage: rebuild from the topics
                log.warning("not using the save in %s (%s); rebuilding from the topics",
                            source, err)  # fmt: skip
                self.state.reset()
                self.metrics.restores.labels(result="rejected").inc()
        log_start = consumer.beginning_offsets(partitions)
        end = consumer.end_offsets(partitions)
        begin = self._starts(consumer, log_start, end)
        if saved is not None:
            resume = {tp: saved.get(tp.topic, {}).get(tp.partition, begin[tp]) for tp in partitions}
            for tp in partitions:  # seen items are best effort: an offset gone from the log
                if tp.topic == self.topics.interactions and not (  # restarts from `begin`
                    log_start[tp] <= resume[tp] <= end[tp]
                ):
                    resume[tp] = begin[tp]
            if all(log_start[tp] <= resume[tp] <= end[tp] for tp in partitions):
                for tp, offset in resume.items():
                    consumer.seek(tp, offset)
                log.info("loaded %d items from %s; catching up", len(self.state.index), source)
                self.metrics.restores.labels(result="snapshot").inc()
                self.metrics.index_items.set(len(self.state.index))
                self.metrics.users.set(self.state.users)
                self.started_from = "snapshot"
                return end
            # offsets outside the topics (recreated, or truncated by retention): rebuild
            log.warning("the save's offsets are outside the topics; rebuilding from them")
            self.metrics.restores.labels(result="rejected").inc()
            self.state.reset()
        for tp, offset in begin.items():
            consumer.seek(tp, offset)
        self.metrics.restores.labels(result="topics").inc()
        self.started_from = "topics"
        return end

    def _starts(
        self,
        consumer: KafkaConsumer,
        log_start: dict[TopicPartition, int],
        end: dict[TopicPartition, int],
    ) -> dict[TopicPartition, int]:
        """Where a replica without a save starts: the vector topics (compacted) from the
        beginning, ``interactions`` from ``seen_seconds`` ago."""
        begin = dict(log_start)
        recent = [tp for tp in begin if tp.topic == self.topics.interactions]
        if recent:
            since_ms = int((time.time() - self.config.seen_seconds) * 1000)
            found = consumer.offsets_for_times({tp: since_ms for tp in recent})
            for tp in recent:
                begin[tp] = found[tp].offset if found.get(tp) is not None else end[tp]
        return begin

    def _save(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> bool:
        if self.config.save_dir is None:
            return True
        offsets: dict[str, dict[int, int]] = {}
        for tp in partitions:
            offsets.setdefault(tp.topic, {})[tp.partition] = consumer.position(tp)
        started = time.perf_counter()
        try:
            self.state.save(self.config.save_dir, offsets)
        except OSError:
            log.exception("saving the replica to %s failed", self.config.save_dir)
            return False
        self.metrics.snapshot_seconds.observe(time.perf_counter() - started)
        return True

    def _lag(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        """Per partition: the high watermark the last fetch saw minus the position."""
        for tp in partitions:
            high = consumer.highwater(tp)
            if high is not None:
                labels = {"topic": tp.topic, "partition": str(tp.partition)}
                self.metrics.consumer_lag.labels(**labels).set(max(0, high - consumer.position(tp)))

    def _wait_for_partitions(self, consumer: KafkaConsumer) -> list[TopicPartition]:
        names: tuple[str, ...] = (self.topics.item_vectors, self.topics.user_vectors)
        if self.state.follows_events:
            names += (self.topics.interactions,)
        while not self._stop_event.is_set():
            found = {t: consumer.partitions_for_topic(t) for t in names}
            if all(found.values()):
                return [TopicPartition(t, p) for t in names for p in sorted(found[t] or ())]
            log.info("waiting for topics %s", [t for t, p in found.items() if not p])
            self._stop_event.wait(1.0)
        return []

    def _apply(self, topic: str, records: list) -> None:  # type: ignore[type-arg]
        """Apply records in order: runs of vectors in bulk, tombstones (evictions) between them."""
        if topic == self.topics.interactions:
            self._apply_events(records)
            return
        run: list = []  # type: ignore[type-arg]
        for rec in records:
            if rec.value is not None:
                run.append(rec)
                continue
            self._apply_vectors(topic, run)
            run = []
            key = rec.key.decode("utf-8", "replace") if rec.key else ""
            if topic == self.topics.item_vectors:
                self.state.remove_items([key])
                self.metrics.index_items.set(len(self.state.index))
            else:
                self.state.remove_users([key])
                self.metrics.users.set(self.state.users)
            self.metrics.evictions_applied.labels(kind=self._kind(topic)).inc()
        self._apply_vectors(topic, run)

    def _apply_events(self, records: list) -> None:  # type: ignore[type-arg]
        pairs, positives, kinds = [], [], Counter[str]()
        # invalid events are the worker's to dead-letter; here they are simply not seen
        for event in (e for rec in records for e in valid_events(rec.value)):
            pairs.append((event.user_id, event.item_id))
            if training_weight(event) > 0:  # what popularity counts, as the evaluator does
                positives.append(event.item_id)
            kinds[event.type] += 1
        self.state.apply_events(pairs)
        self.state.count_popular(positives)
        for kind, n in kinds.items():
            self.metrics.interactions_seen.labels(type=kind).inc(n)

    def _kind(self, topic: str) -> str:
        return "item" if topic == self.topics.item_vectors else "user"

    def _apply_vectors(self, topic: str, records: list) -> None:  # type: ignore[type-arg]
        decoded: list[VectorRecord] = []
        dim = self.state.index.dim
        for rec in records:
            try:
                vector = VectorRecord.decode(rec.value)
            except (ValueError, KeyError, TypeError):
                vector = None
            if (
                vector is None
                or vector.vector.shape != (dim,)
                or not np.isfinite(vector.vector).all()
            ):
                # a foreign or mis-configured writer (e.g. another --dim) must not stop the replica
                self.metrics.bad_vectors.inc()
                shape = None if vector is None else vector.vector.shape
                log.warning("skipped a bad vector record at %s offset %s (shape %s, this "
                            "replica's --dim %d)", topic, rec.offset, shape, dim)  # fmt: skip
                continue
            decoded.append(vector)
        if not decoded:
            return
        now_ms = int(time.time() * 1000)
        if topic == self.topics.item_vectors:
            kind, ages = "item", self.state.apply_items(decoded, now_ms)
            self.metrics.index_items.set(len(self.state.index))
        else:
            kind, ages = "user", self.state.apply_users(decoded, now_ms)
            self.metrics.users.set(self.state.users)
        self.metrics.vectors_applied.labels(kind=kind).inc(len(decoded))
        fresh = self.metrics.freshness_seconds.labels(kind=kind)  # one lookup, not one a vector
        for age in ages:
            fresh.observe(age)
