"""The faust-streaming worker: a thin agent around :class:`stream.core.WorkerCore`.

The agent reads ``interactions`` as raw bytes in micro-batches
(``take_events(batch_size, within=batch_ms)``), hands them to the pure core, and
writes what comes back: dead letters to ``interactions.dlq`` and the changed
user and item vectors to their compacted topics.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import faust

from stream.core import BatchOutput, RawRecord, WorkerCore
from stream.metrics import WorkerMetrics
from stream.schemas import InvalidEvent
from stream.topics import Topics
from stream.training import TrainConfig

log = logging.getLogger("streambed.worker")


@dataclass(frozen=True)
class WorkerConfig:
    bootstrap: str = "127.0.0.1:9092"
    app_id: str = "streambed-worker"
    topics: Topics = field(default_factory=Topics)
    batch_size: int = 256
    batch_ms: int = 50
    train: TrainConfig = field(default_factory=TrainConfig)

    def faust_settings(self) -> dict[str, object]:
        return {
            "broker": f"kafka://{self.bootstrap}",
            "key_serializer": "raw",
            "value_serializer": "raw",
            "store": "memory://",
            "web_enabled": False,
            "consumer_auto_offset_reset": "earliest",
            "broker_commit_interval": 1.0,
            "producer_acks": -1,
            "producer_linger_ms": 5,
            "topic_partitions": self.topics.partitions,
            "topic_replication_factor": 1,
        }


def build_app(config: WorkerConfig, core: WorkerCore, metrics: WorkerMetrics) -> faust.App:
    app = faust.App(config.app_id, **config.faust_settings())
    topics = config.topics
    interactions = app.topic(topics.interactions, key_type=bytes, value_type=bytes)

    @app.agent(interactions)
    async def train(stream: faust.StreamT) -> None:  # pragma: no cover - exercised via Kafka
        async for events in stream.take_events(config.batch_size, within=config.batch_ms / 1000):
            records = [
                RawRecord(
                    value=e.value,
                    timestamp_ms=int(e.message.timestamp * 1000),
                    partition=e.message.partition,
                    offset=e.message.offset,
                )
                for e in events
            ]
            started = time.perf_counter()
            out = process_safely(core, records)
            # straight to the producer: Topic.send's channel machinery costs ~0.4 ms a record
            send = app.producer.send
            for letter in out.dead_letters:
                await send(topics.dlq, None, letter.payload, None, None, None)
            for rec in out.items:
                await send(topics.item_vectors, rec.key.encode(), rec.encode(), None, None, None)
            for rec in out.users:
                await send(topics.user_vectors, rec.key.encode(), rec.encode(), None, None, None)
            record_metrics(metrics, core, out, len(records), time.perf_counter() - started)

    return app


def process_safely(core: WorkerCore, records: list[RawRecord]) -> BatchOutput:
    """Run the core; if it fails on a batch, dead-letter that batch instead of crashing."""
    try:
        return core.process(records)
    except Exception as exc:  # noqa: BLE001 - a worker must survive any one batch
        log.exception("micro-batch of %d records failed; sending it to the DLQ", len(records))
        err = InvalidEvent("processing_error", f"{type(exc).__name__}: {exc}")
        out = BatchOutput()
        out.dead_letters = [r.reject(err) for r in records]
        return out


def record_metrics(
    metrics: WorkerMetrics, core: WorkerCore, out: BatchOutput, n: int, seconds: float
) -> None:
    metrics.batch_seconds.observe(seconds)
    metrics.batch_events.observe(n)
    for kind, count in out.by_type.items():
        metrics.events.labels(type=kind).inc(count)
    for letter in out.dead_letters:
        metrics.dead_letters.labels(reason=letter.reason).inc()
    if out.duplicates:
        metrics.duplicates.inc(out.duplicates)
    if out.loss is not None:
        metrics.loss.set(out.loss)
    if out.oldest_event_ms is not None:
        metrics.event_age_seconds.observe(max(0.0, time.time() - out.oldest_event_ms / 1000))
    metrics.vectors_published.labels(kind="item").inc(len(out.items))
    metrics.vectors_published.labels(kind="user").inc(len(out.users))
    metrics.rows.labels(table="users").set(len(core.trainer.users))
    metrics.rows.labels(table="items").set(len(core.trainer.items))
