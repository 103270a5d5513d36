"""Consumer-lag gauges: the worker's (from faust's consumer) and the replica's (kafka-python),
with stand-in consumers; the real ones are read in tests/integration/test_observability.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from faust.types import TP
from kafka import TopicPartition
from prometheus_client import CollectorRegistry

from services.ann.updater import VectorTailer
from services.api.metrics import ServingMetrics
from services.api.state import ServingState
from stream.app import PartitionLag
from stream.metrics import WorkerMetrics
from stream.topics import Topics


def _event(partition: int, offset: int) -> Any:
    tp = TP(topic="interactions", partition=partition)  # what faust's messages carry
    return SimpleNamespace(message=SimpleNamespace(tp=tp, offset=offset))


def test_worker_lag_is_the_high_watermark_minus_the_next_offset() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics.create(registry)
    high = {0: 100, 1: None}  # partition 1: no fetch answered yet -> no sample
    lag = PartitionLag(metrics.consumer_lag, lambda tp: high[tp.partition])
    lag.processed([_event(0, 10), _event(0, 41), _event(1, 5), _event(0, 40)])

    def sample(p: str) -> float | None:
        return registry.get_sample_value(
            "streambed_worker_consumer_lag_records", {"topic": "interactions", "partition": p}
        )

    assert sample("0") == 100 - 42 and sample("1") is None
    high[0], high[1] = 42, 9  # caught up on 0; 1 answered
    lag.refresh()
    assert sample("0") == 0 and sample("1") == 9 - 6


def test_caught_up_only_at_every_known_high_watermark() -> None:
    """The idle timer closes a partial batch only when caught up: a consumer starved by a
    broker outage is not at the end of the log, and cutting there made batches (and so the
    tables) depend on when the broker went away."""
    high: dict[int, int | None] = {0: None}
    lag = PartitionLag(WorkerMetrics.create(CollectorRegistry()).consumer_lag,
                       lambda tp: high[tp.partition])  # fmt: skip
    assert lag.caught_up()  # nothing read yet: nothing pending either
    lag.processed([_event(0, 9)])
    assert not lag.caught_up()  # the watermark is unknown
    high[0] = 30
    assert not lag.caught_up()  # 20 records still to come (a stale watermark stays so)
    lag.processed([_event(0, 29)])
    assert lag.caught_up()
    # the idle timer asks the broker before closing a batch: a fresh end overrules the cache
    tp = _event(0, 0).message.tp
    assert not lag.caught_up({tp: 31}) and lag.caught_up({tp: 30}) and not lag.caught_up({})


def test_replica_lag_per_topic_partition() -> None:
    registry = CollectorRegistry()
    metrics = ServingMetrics.create(registry)
    tailer = VectorTailer("127.0.0.1:1", Topics(), ServingState(dim=2), metrics)
    parts = [TopicPartition("item-vectors", 0), TopicPartition("user-vectors", 0)]
    consumer = SimpleNamespace(highwater={parts[0]: 50, parts[1]: None}.get,
                               position={parts[0]: 20, parts[1]: 0}.get)  # fmt: skip
    tailer._lag(consumer, parts)  # type: ignore[arg-type]
    labels = {"topic": "item-vectors", "partition": "0"}
    assert registry.get_sample_value("streambed_api_consumer_lag_records", labels) == 30
    labels = {"topic": "user-vectors", "partition": "0"}
    assert registry.get_sample_value("streambed_api_consumer_lag_records", labels) is None


def test_faust_consumers_long_poll_for_the_configured_wait_only() -> None:
    """faust hard-codes a 1,500 ms fetch wait; the worker's consumer gets its own (no broker
    is contacted: aiokafka connects in start)."""
    import asyncio

    import faust

    from stream.app import prompt_fetches

    async def build() -> int:
        prompt_fetches(123)
        prompt_fetches(77)  # again: wraps faust's method once, the last wait wins
        app = faust.App("lag-test", broker="kafka://127.0.0.1:1", web_enabled=False)
        thread = app.consumer._new_consumer_thread()  # type: ignore[attr-defined]
        consumer = thread._create_worker_consumer(app.transport)
        return int(consumer._fetch_max_wait_ms)

    assert asyncio.run(build()) == 77
