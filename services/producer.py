"""The producer SDK: validated interaction events into Kafka with kafka-python.

Records are keyed by user id (so one user's events stay ordered on one
partition), batched by the client (``linger_ms``) and acknowledged by all
in-sync replicas (``acks='all'``). Invalid events are refused before they
reach the topic: :meth:`EventProducer.send` raises :class:`InvalidEvent`, and
:meth:`EventProducer.send_lines` routes them to the dead-letter topic with the
reason instead, so bulk loads lose nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaProducer
from kafka.producer.future import FutureRecordMetadata

from stream.schemas import Interaction, InvalidEvent, dead_letter, parse_event, validate_event
from stream.topics import Topics


@dataclass
class SendReport:
    sent: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)


class EventProducer:
    def __init__(
        self,
        bootstrap: str,
        topics: Topics | None = None,
        *,
        linger_ms: int = 5,
        batch_size: int = 64 * 1024,
        client_id: str = "streambed-producer",
    ) -> None:
        self.topics = topics or Topics()
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            acks="all",
            linger_ms=linger_ms,
            batch_size=batch_size,
            retries=5,
        )

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, event: Interaction | Mapping[str, Any]) -> FutureRecordMetadata:
        """Validate and send one event (asynchronously; ``flush`` waits for delivery, the
        returned future for this record's)."""
        if not isinstance(event, Interaction):
            event = validate_event(event)
        return self._producer.send(
            self.topics.interactions, key=event.user_id.encode(), value=event.to_json()
        )

    def deliver(self, events: Sequence[Interaction], timeout: float = 10.0) -> None:
        """Send validated events and wait until the broker has acknowledged every one
        (raises the first delivery error)."""
        futures = [self.send(event) for event in events]
        self._producer.flush(timeout=timeout)
        for future in futures:
            future.get(timeout=timeout)

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
        self._producer.flush(timeout=timeout)

    def close(self) -> None:
        self._producer.flush()
        self._producer.close()
