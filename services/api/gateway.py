"""The event gateway behind ``POST /events``: validate a batch with the one schema module,
then produce it to Kafka and wait for the broker's acknowledgement.

All or nothing: a batch with any invalid event is refused whole, with every
event's reason, so a client fixes and resends it (duplicate ``event_id``s are
applied once by the worker, so a retry is safe). The request's JSON schema in
the OpenAPI document is written from the same constants the validator uses.

Examples
--------
>>> sink = MemorySink()
>>> check_batch({"events": [{"event_id": "e1", "user_id": "u", "item_id": "i",
...                          "type": "click", "ts": 1.0}]})[0].item_id
'i'
>>> try:
...     check_batch({"events": [{"event_id": "e2", "user_id": "u", "type": "poke", "ts": 1}]})
... except BatchRejected as err:
...     [(r["index"], r["reason"]) for r in err.rejected]
[(0, 'missing_item_id')]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from kafka.errors import KafkaError

from stream.schemas import (
    EVENT_TYPES,
    MAX_ID_LEN,
    MAX_TS,
    Interaction,
    InvalidEvent,
    validate_event,
)

if TYPE_CHECKING:
    from services.producer import EventProducer

MAX_BATCH = 1000
MAX_BODY_BYTES = 2 * 1024 * 1024

# an id: 1..256 characters, no control characters (lone surrogates are refused too, which
# JSON Schema cannot say: a string is Unicode by definition there)
_ID = {
    "oneOf": [
        {"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN,
         "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]*$"},
        {"type": "integer"},
    ]
}  # fmt: skip


EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["event_id", "user_id", "item_id", "type", "ts"],
    "properties": {
        "event_id": _ID,
        "user_id": _ID,
        "item_id": _ID,
        "type": {"type": "string", "enum": list(EVENT_TYPES)},
        "ts": {"type": "number", "minimum": 0, "maximum": MAX_TS,
               "description": "event time, unix seconds"},
        "session_id": {"oneOf": [*_ID["oneOf"], {"type": "null"}]},
        "weight": {
            "oneOf": [{"type": "number", "minimum": 0, "maximum": 100}, {"type": "null"}]
        },  # fmt: skip
    },
}
BATCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["events"],
    "properties": {
        "events": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH, "items": EVENT_SCHEMA}
    },
    "example": {
        "events": [
            {
                "event_id": "e1",
                "user_id": "u1",
                "item_id": "i9",
                "type": "click",
                "ts": 1700000000.5,
            }
        ]
    },  # fmt: skip
}


class BatchRejected(ValueError):
    """A batch refused whole; ``rejected`` lists ``{index, reason, error}`` per bad event."""

    def __init__(self, message: str, rejected: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.rejected = rejected


class GatewayUnavailable(RuntimeError):
    """The broker did not acknowledge the batch in time."""


class EventSink(Protocol):
    def send(self, events: Sequence[Interaction]) -> None:
        """Produce ``events`` and return once the broker has them (or raise
        :class:`GatewayUnavailable`)."""


class MemorySink:
    """Keeps what it is sent (tests; a gateway without a broker)."""

    def __init__(self) -> None:
        self.events: list[Interaction] = []

    def send(self, events: Sequence[Interaction]) -> None:
        self.events.extend(events)


def check_batch(body: Any) -> list[Interaction]:
    """The events of a ``POST /events`` body, or :class:`BatchRejected` with every reason."""
    if not isinstance(body, dict) or not isinstance(body.get("events"), list):
        raise BatchRejected('the body must be a JSON object {"events": [...]}', [])
    raw = body["events"]
    if not 1 <= len(raw) <= MAX_BATCH:
        raise BatchRejected(f"a batch holds 1..{MAX_BATCH} events, got {len(raw)}", [])
    events, rejected = [], []
    for index, item in enumerate(raw):
        try:
            events.append(validate_event(item))
        except InvalidEvent as err:
            rejected.append({"index": index, "reason": err.reason, "error": str(err)})
    if rejected:
        raise BatchRejected(f"{len(rejected)} of {len(raw)} events are invalid", rejected)
    return events


class KafkaSink:
    """Produces through the SDK and waits for every record's acknowledgement."""

    def __init__(self, producer: EventProducer, timeout: float = 10.0) -> None:
        self._producer = producer
        self._timeout = timeout

    def send(self, events: Sequence[Interaction]) -> None:
        try:
            self._producer.deliver(events, self._timeout)
        except (KafkaError, TimeoutError) as err:  # an outage: the client should retry later
            raise GatewayUnavailable(
                f"the broker did not acknowledge the batch: {type(err).__name__}"
            ) from err

    def close(self) -> None:
        self._producer.close()
