"""The single writer of a replica's index: tails the vector topics into :class:`ServingState`.

It reads ``item-vectors`` and ``user-vectors`` from the beginning (they are
compacted, so the beginning is the latest vector of every id) and then follows
them. A record that does not decode is counted and skipped.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
from kafka import KafkaConsumer, TopicPartition

from services.api.metrics import ServingMetrics
from services.api.state import ServingState
from stream.topics import Topics
from stream.vectors import VectorRecord

log = logging.getLogger("streambed.tailer")


class VectorTailer(threading.Thread):
    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        state: ServingState,
        metrics: ServingMetrics,
        *,
        poll_ms: int = 20,
    ) -> None:
        super().__init__(name="vector-tailer", daemon=True)
        self.bootstrap = bootstrap
        self.topics = topics
        self.state = state
        self.metrics = metrics
        self.poll_ms = poll_ms
        self.caught_up = threading.Event()
        self._stop_event = threading.Event()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_event.set()
        self.join(timeout)

    def run(self) -> None:
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            client_id="streambed-api-tailer",
            fetch_max_wait_ms=self.poll_ms,
        )
        try:
            partitions = self._wait_for_partitions(consumer)
            if not partitions:
                return
            consumer.assign(partitions)
            consumer.seek_to_beginning(*partitions)
            end = consumer.end_offsets(partitions)
            while not self._stop_event.is_set():
                try:
                    batch = consumer.poll(timeout_ms=self.poll_ms, max_records=5000)
                    for tp, records in batch.items():
                        self._apply(tp.topic, records)
                except Exception:  # the replica's only writer must outlive any one poll
                    log.exception("tailer poll failed; retrying in 1 s")
                    self._stop_event.wait(1.0)
                    continue
                if not self.caught_up.is_set() and all(
                    consumer.position(tp) >= end[tp] for tp in partitions
                ):
                    self.caught_up.set()
                    log.info("caught up: %d items", len(self.state.index))
        finally:
            consumer.close()

    def _wait_for_partitions(self, consumer: KafkaConsumer) -> list[TopicPartition]:
        names = (self.topics.item_vectors, self.topics.user_vectors)
        while not self._stop_event.is_set():
            found = {t: consumer.partitions_for_topic(t) for t in names}
            if all(found.values()):
                return [TopicPartition(t, p) for t in names for p in sorted(found[t] or ())]
            log.info("waiting for topics %s", [t for t, p in found.items() if not p])
            self._stop_event.wait(1.0)
        return []

    def _apply(self, topic: str, records: list) -> None:  # type: ignore[type-arg]
        """Apply records in order: runs of vectors in bulk, tombstones (evictions) between them."""
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
                log.warning("skipped a bad vector record at %s offset %s", topic, rec.offset)
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
        for age in ages:
            self.metrics.freshness_seconds.labels(kind=kind).observe(age)
