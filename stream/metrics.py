"""Prometheus metrics of the stream worker, created on an injected registry.

Examples
--------
>>> from prometheus_client import CollectorRegistry
>>> reg = CollectorRegistry()
>>> m = WorkerMetrics.create(reg)
>>> m.events.labels(type="click").inc(3)
>>> reg.get_sample_value("streambed_worker_events_total", {"type": "click"})
3.0
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from stream.core import BatchOutput

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class WorkerMetrics:
    events: Counter
    dead_letters: Counter
    duplicates: Counter
    batch_seconds: Histogram
    batch_events: Histogram
    event_age_seconds: Histogram
    loss: Gauge
    vectors_published: Counter
    vectors_coalesced: Counter
    velocity_republished: Counter
    rows: Gauge
    unadmitted: Counter
    evictions_published: Counter
    replayed: Counter
    checkpoint_seconds: Histogram
    checkpoint_writes: Counter
    content_items: Counter
    content_seconds: Histogram
    consumer_lag: Gauge
    checkpoint_failures: Counter
    failed_steps: Counter
    halted: Gauge
    partitions: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry, prefix: str = "streambed_worker") -> WorkerMetrics:
        r, p = registry, prefix
        return cls(
            events=Counter(f"{p}_events", "Valid events consumed", ["type"], registry=r),
            dead_letters=Counter(f"{p}_dead_letters", "Records sent to the DLQ", ["reason"],
                                 registry=r),
            duplicates=Counter(f"{p}_duplicate_events", "Events dropped as duplicate event_id",
                               registry=r),
            batch_seconds=Histogram(f"{p}_batch_seconds", "Micro-batch processing time",
                                    buckets=LATENCY_BUCKETS, registry=r),
            batch_events=Histogram(f"{p}_batch_events", "Records per micro-batch",
                                   buckets=(1, 4, 16, 64, 128, 256, 512, 1024, 4096), registry=r),
            event_age_seconds=Histogram(
                f"{p}_event_age_seconds", "Produce time to processed, oldest event of a batch",
                buckets=LATENCY_BUCKETS, registry=r),
            loss=Gauge(f"{p}_training_loss", "Loss of the last micro-batch", registry=r),
            vectors_published=Counter(f"{p}_vectors_published", "Vectors written", ["kind"],
                                      registry=r),
            vectors_coalesced=Counter(
                f"{p}_vectors_coalesced",
                "Vector versions not published: a later micro-batch changed the row again "
                "before the publication (or evicted it)", registry=r),
            velocity_republished=Counter(
                f"{p}_velocity_republished_items",
                "Item vectors published again with no event of their own: their velocity "
                "level moved as they aged (included in vectors_published)", registry=r),
            rows=Gauge(f"{p}_ps_rows", "Rows in the parameter server", ["table"], registry=r),
            unadmitted=Counter(f"{p}_unadmitted_events",
                               "Events not trained on: user or item not yet admitted", registry=r),
            evictions_published=Counter(f"{p}_evictions_published",
                                        "Tombstones written for expired rows", ["kind"],
                                        registry=r),
            replayed=Counter(f"{p}_replayed_records",
                             "Records skipped on restart: already in the checkpoint", registry=r),
            checkpoint_seconds=Histogram(f"{p}_checkpoint_seconds",
                                         "Producer flush + RocksDB write batch",
                                         buckets=LATENCY_BUCKETS, registry=r),
            checkpoint_writes=Counter(f"{p}_checkpoint_writes",
                                      "Keys put or deleted by checkpoints", registry=r),
            content_items=Counter(f"{p}_content_items",
                                  "Items embedded from the items topic", registry=r),
            content_seconds=Histogram(f"{p}_content_seconds",
                                      "Embedding and serving a batch of new items' content",
                                      buckets=LATENCY_BUCKETS, registry=r),
            consumer_lag=Gauge(f"{p}_consumer_lag_records",
                               "Records on the partition not yet processed by this worker "
                               "(high watermark minus position)", ["topic", "partition"],
                               registry=r),
            checkpoint_failures=Counter(
                f"{p}_checkpoint_failures",
                "Checkpoints that failed (their changes are kept for the next try)", registry=r),
            failed_steps=Counter(
                f"{p}_failed_training_steps",
                "Training steps that raised and were split to isolate the poison", registry=r),
            halted=Gauge(f"{p}_halted",
                         "1 when the worker stopped without checkpointing (an output it could "
                         "not make durable); it restarts from its last checkpoint", registry=r),
            partitions=Gauge(f"{p}_partitions",
                             "Input partitions a scale-out stage owns (users: interactions; "
                             "items: gradients and items)", ["stage"], registry=r),
        )  # fmt: skip

    def record(self, out: BatchOutput, n: int, seconds: float) -> None:
        """Count one micro-batch of ``n`` records: its events by type, dead letters, failed
        steps, duplicates, loss and the age of its oldest event."""
        self.batch_seconds.observe(seconds)
        self.batch_events.observe(n)
        for kind, count in out.by_type.items():
            self.events.labels(type=kind).inc(count)
        for letter in out.dead_letters:
            self.dead_letters.labels(reason=letter.reason).inc()
        if out.failed_steps:
            self.failed_steps.inc(out.failed_steps)
        if out.duplicates:
            self.duplicates.inc(out.duplicates)
        if out.loss is not None:
            self.loss.set(out.loss)
        if out.oldest_event_ms is not None:
            self.event_age_seconds.observe(max(0.0, time.time() - out.oldest_event_ms / 1000))
        if out.aged:
            self.velocity_republished.inc(out.aged)
        if out.unadmitted:
            self.unadmitted.inc(out.unadmitted)

    def published(self, kind: str, vectors: int, tombstones: int) -> None:
        """Count vectors and tombstones of ``kind`` ("item" or "user") written."""
        self.vectors_published.labels(kind=kind).inc(vectors)
        self.evictions_published.labels(kind=kind).inc(tombstones)

    def initialise(self, event_types: Iterable[str]) -> WorkerMetrics:
        """Create the known label values at zero, so a rate over them is 0, not absent."""
        for kind in event_types:
            self.events.labels(type=kind)
        for kind in ("item", "user"):
            self.vectors_published.labels(kind=kind)
            self.evictions_published.labels(kind=kind)
        return self
