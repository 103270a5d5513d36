"""Records sent as one produce batch per partition, not one ``send`` each.

A publication of the outbox is hundreds of keyed records at once. aiokafka's
``send`` costs per record: a metadata wait, the key hashed by a pure-Python
murmur2, a future, and faust's hooks around it; under a backlog that was ~13% of
the worker's CPU. :class:`BatchSender` groups the records by partition, with the
partition each key always had (aiokafka's own partitioner, so a compacted topic
keeps one partition per key; remembered per key), and fills aiokafka
``BatchBuilder``s, each sent with one ``send_batch``. The futures it returns are
the batches' deliveries: a checkpoint waits on them as it waited on each record's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

# remembered key -> partition pairs, per topic, before the memory is cleared (~100 B each)
MAX_REMEMBERED = 1_000_000


class BatchSender:
    """Sends keyed records through an aiokafka producer, one batch per partition at a time.

    ``producer``: returns the started ``AIOKafkaProducer`` (faust makes it at start).
    ``before_send``: called once before each batch is handed over (fault injection).
    """

    def __init__(self, producer: Callable[[], Any], before_send: Callable[[], None]) -> None:
        self._producer = producer
        self._before_send = before_send
        self._partition_of: dict[str, dict[bytes, int]] = {}
        self._partitions: dict[str, int] = {}

    def partitioner(self, topic: str) -> Callable[[bytes], int]:
        """The partition aiokafka's partitioner gives a key on ``topic`` (remembered)."""
        producer = self._producer()
        count = len(producer._metadata.partitions_for_topic(topic) or ())
        known = self._partition_of.setdefault(topic, {})
        if self._partitions.get(topic) != count or len(known) >= MAX_REMEMBERED:
            known.clear()  # partitions were added (or the memory is full): ask again
            self._partitions[topic] = count

        def partition(key: bytes) -> int:
            found = known.get(key)
            if found is None:
                found = known[key] = producer._partition(topic, None, key, None, key, None)
            return found

        return partition

    async def send(
        self, topic: str, records: Sequence[tuple[bytes, bytes | None]]
    ) -> list[asyncio.Future[Any]]:
        """Send ``(key, value)`` records (``None``: a tombstone), in order per partition; the
        delivery future of each batch sent."""
        if not records:
            return []
        producer = self._producer()
        await producer.client._wait_on_metadata(topic)  # the partition count, once
        partition_of = self.partitioner(topic)
        by_partition: dict[int, list[tuple[bytes, bytes | None]]] = {}
        for key, value in records:
            by_partition.setdefault(partition_of(key), []).append((key, value))
        sent = []
        for partition, rows in by_partition.items():
            batch = producer.create_batch()
            for key, value in rows:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    sent.append(await self._send(producer, batch, topic, partition))
                    batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        raise ValueError(f"a record of {len(value or b'')} bytes does not "
                                         f"fit in one batch of {topic}")  # fmt: skip
            sent.append(await self._send(producer, batch, topic, partition))
        return sent

    async def _send(self, producer: Any, batch: Any, topic: str, partition: int) -> Any:
        self._before_send()
        return await producer.send_batch(batch, topic, partition=partition)
