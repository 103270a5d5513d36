"""BatchSender against a real broker: every key on the partition a per-record send gives it,
in order, tombstones kept, big publications split over several batches."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.partitioner.default import murmur2

from stream.publisher import BatchSender

PARTITIONS = 3


def _topic(bootstrap: str) -> str:
    name = f"publisher-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(name, PARTITIONS, 1)])
    admin.close()
    return name


def _read(bootstrap: str, topic: str, n: int) -> dict[int, list[tuple[bytes, bytes | None]]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    out: dict[int, list[tuple[bytes, bytes | None]]] = {p: [] for p in range(PARTITIONS)}
    for _ in range(100):  # bounded: 100 polls of at most 200 ms
        for tp, records in consumer.poll(timeout_ms=200).items():
            out[tp.partition].extend((r.key, r.value) for r in records)
        if sum(map(len, out.values())) >= n:
            break
    consumer.close()
    return out


async def _publish(bootstrap: str, topic: str, rounds: list[list[tuple[bytes, bytes | None]]],
                   fail_at: int = 0) -> int:  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=16 * 1024, acks="all")
    await producer.start()
    calls = 0

    def before_send() -> None:
        nonlocal calls
        calls += 1
        if calls == fail_at:
            raise RuntimeError("refused")

    try:
        sender = BatchSender(lambda: producer, before_send)
        futures = []
        for records in rounds:
            futures += await sender.send(topic, records)
        await producer.flush()
        assert all(f.done() and f.exception() is None for f in futures)
        return len(futures)
    finally:
        await producer.stop()


def test_keys_land_where_a_keyed_send_puts_them(kafka_bootstrap: str) -> None:
    topic = _topic(kafka_bootstrap)
    value = b"v" * 300  # 16 KiB batches: ~50 records each, so a round spans several
    first = [(f"i{n}".encode(), value + b"1") for n in range(400)]
    second = [(f"i{n}".encode(), value + b"2") for n in range(0, 400, 2)]
    second += [(f"i{n}".encode(), None) for n in range(1, 400, 4)]  # tombstones
    batches = asyncio.run(_publish(kafka_bootstrap, topic, [first, second]))
    assert batches > 2 * PARTITIONS  # split within a partition, not only across them

    got = _read(kafka_bootstrap, topic, len(first) + len(second))
    assert sum(map(len, got.values())) == len(first) + len(second)
    last: dict[bytes, bytes | None] = {}
    for partition, records in got.items():
        for key, val in records:
            # Kafka's default partitioner (murmur2, as Java's and every aiokafka send)
            assert (murmur2(key) & 0x7FFFFFFF) % PARTITIONS == partition
            last[key] = val
    for n in range(400):  # per key, the later round won: order kept within a partition
        expected = None if n % 4 == 1 else value + (b"2" if n % 2 == 0 else b"1")
        assert last[f"i{n}".encode()] == expected


def test_a_refused_batch_raises_to_the_caller(kafka_bootstrap: str) -> None:
    topic = _topic(kafka_bootstrap)
    records = [(f"u{n}".encode(), b"x" * 300) for n in range(300)]
    with pytest.raises(RuntimeError, match="refused"):
        asyncio.run(_publish(kafka_bootstrap, topic, [records], fail_at=3))
