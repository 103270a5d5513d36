"""The producer SDK: validated interaction events into Kafka with kafka-python.

Events are partitioned by user id (so one user's events stay ordered on one
partition) and acknowledged by all in-sync replicas (``acks='all'``). By default
they travel packed: up to ``pack`` events of one partition in one *batch record*
(a JSON array of events, see docs/architecture.md), sent when it is full or its
first event has waited ``linger_ms`` (20 ms; then every partition's together, in
one produce request: kafka-python's network thread costs per request, measured at
3,000 ev/s as the SDK's CPU per event 159 µs at 5 ms, 128 at 10 and 91 at 20).
The worker reads a batch record as its events one by one (each validated,
de-duplicated and dead-lettered alone), so packing changes nothing but the cost:
the worker's per-record overhead is paid once per batch record, not per event.
``pack=1`` sends one keyed record per event, for other consumers of the topic that
expect that. Invalid events are refused before they reach the topic:
:meth:`EventProducer.send` raises :class:`InvalidEvent`, and
:meth:`EventProducer.send_lines` routes them to the dead-letter topic with the
reason instead, so bulk loads lose nothing.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaProducer
from kafka.partitioner.default import murmur2
from kafka.producer.future import FutureRecordMetadata

from stream.schemas import (
    MAX_BATCH_BYTES,
    PACK,
    Interaction,
    InvalidEvent,
    batch_record,
    dead_letter,
    parse_event,
    validate_event,
)
from stream.topics import Topics


@dataclass
class SendReport:
    sent: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)


@dataclass
class _Packed:
    """Events of one partition waiting to leave as one batch record."""

    since: float  # monotonic time of the first one
    bodies: list[bytes] = field(default_factory=list)
    size: int = 2  # bytes of the record they make: "[" + ",".join(bodies) + "]"


class EventProducer:
    def __init__(
        self,
        bootstrap: str,
        topics: Topics | None = None,
        *,
        linger_ms: int = 20,
        batch_size: int = 64 * 1024,
        client_id: str = "streambed-producer",
        pack: int = PACK,
    ) -> None:
        if pack < 1:
            raise ValueError(f"pack is the events per record at most (>= 1), got {pack}")
        self.topics = topics or Topics()
        self.pack, self.linger = pack, linger_ms / 1000
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            acks="all",
            # packed: the packing lingers; kafka-python waits 2 ms more so that the batch
            # records of all partitions, flushed together, share one produce request
            linger_ms=linger_ms if pack == 1 else min(linger_ms, 2),
            batch_size=max(batch_size, MAX_BATCH_BYTES + 1024) if pack > 1 else batch_size,
            max_request_size=max(MAX_BATCH_BYTES + 64 * 1024, 1_048_576),
            retries=5,
        )
        self._partitions: list[int] | None = None
        self._packs: dict[int, _Packed] = {}
        self._lock = threading.Condition()
        self._closed = False
        self._linger_thread: threading.Thread | None = None

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, event: Interaction | Mapping[str, Any]) -> None:
        """Validate and send one event (asynchronously: ``flush`` waits for its delivery)."""
        if not isinstance(event, Interaction):
            event = validate_event(event)
        with self._lock:
            self._add(event)

    def deliver(self, events: Sequence[Interaction], timeout: float = 10.0) -> None:
        """Send validated events and wait until the broker has acknowledged every one
        (raises the first delivery error)."""
        with self._lock:
            self._send_all()  # events sent before these go first
            futures = [f for f in map(self._add, events) if f is not None]
            futures += self._send_all()
        self._producer.flush(timeout=timeout)
        for future in futures:
            future.get(timeout=timeout)

    def _add(self, event: Interaction) -> FutureRecordMetadata | None:
        """Send one event, or add it to its partition's pack (the lock held); the future of
        a record this sent."""
        key, body = event.user_id.encode(), event.to_json()
        if self.pack == 1:
            return self._producer.send(self.topics.interactions, key=key, value=body)
        partition = self._partition(key)
        packed = self._packs.get(partition)
        sent = None
        if packed is not None and packed.size + len(body) + 1 > MAX_BATCH_BYTES:
            sent = self._send_pack(partition)
            packed = None
        if packed is None:
            packed = self._packs[partition] = _Packed(time.monotonic())
            self._start_lingering()
        packed.bodies.append(body)
        packed.size += len(body) + (len(packed.bodies) > 1)
        if len(packed.bodies) >= self.pack:
            return self._send_pack(partition)
        return sent

    def _partition(self, key: bytes) -> int:
        if self._partitions is None:
            found = self._producer.partitions_for(self.topics.interactions)
            self._partitions = sorted(found) if found else [0]
        # as kafka-python's default partitioner places a keyed record
        return self._partitions[(murmur2(key) & 0x7FFFFFFF) % len(self._partitions)]

    def _send_pack(self, partition: int) -> FutureRecordMetadata:
        """Send one partition's waiting events as a batch record (the lock held)."""
        value = batch_record(self._packs.pop(partition).bodies)
        return self._producer.send(self.topics.interactions, value=value, partition=partition)

    def _send_all(self) -> list[FutureRecordMetadata]:
        """Send every partition's waiting events (the lock held)."""
        return [self._send_pack(partition) for partition in list(self._packs)]

    def _start_lingering(self) -> None:
        """Wake the thread that sends what has waited ``linger_ms`` (the lock held)."""
        if self._linger_thread is None:
            self._linger_thread = threading.Thread(
                target=self._linger, name="streambed-producer-linger", daemon=True
            )
            self._linger_thread.start()
        self._lock.notify()

    def _linger(self) -> None:
        with self._lock:
            while not self._closed:
                if not self._packs:
                    self._lock.wait()
                    continue
                now = time.monotonic()
                if any(now - packed.since >= self.linger for packed in self._packs.values()):
                    self._send_all()  # all together: one request
                if self._packs:
                    oldest = min(packed.since for packed in self._packs.values())
                    self._lock.wait(max(oldest + self.linger - now, 0.0005))

    def send_raw(self, payload: bytes, key: bytes | None = None) -> None:
        """Send bytes unvalidated, as a foreign producer might (the worker will judge them)."""
        self._producer.send(self.topics.interactions, key=key, value=payload)

    def send_item(self, item_id: str, content: Mapping[str, Any]) -> None:
        """Item content (title, tags, ...) for the compacted ``items`` topic."""
        body = json.dumps({"item_id": item_id, **content}, separators=(",", ":")).encode()
        self._producer.send(self.topics.items, key=item_id.encode(), value=body)

    def send_lines(
        self, lines: Iterable[bytes | str], report: SendReport | None = None
    ) -> SendReport:
        """Send JSON lines; a line that is not a valid event goes to the DLQ with its reason."""
        report = report or SendReport()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                event = parse_event(line)
            except InvalidEvent as err:
                self.send_dead_letter(line, err, line=number)
                report.dead_lettered[err.reason] += 1
                continue
            self.send(event)
            report.sent += 1
        return report

    def send_dead_letter(self, payload: bytes | str, err: InvalidEvent, **context: Any) -> None:
        """A rejected input to ``interactions.dlq``, with its reason and where it came from."""
        record = dead_letter(payload, err, source="producer", **context)
        self._producer.send(self.topics.dlq, value=record)

    def flush(self, timeout: float | None = 30.0) -> None:
        """Send every waiting event and wait until the broker has them all."""
        with self._lock:
            self._send_all()
        self._producer.flush(timeout=timeout)

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._closed = True
            self._lock.notify()
        if self._linger_thread is not None:
            self._linger_thread.join(timeout=5)
        self._producer.close()

