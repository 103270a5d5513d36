"""Wire types for interaction events, and their validation.

One module, used by producers (SDK, CLI) and by the stream worker alike, so a
record that the producer accepts is exactly a record the worker accepts.

Examples
--------
>>> ev = parse_event(b'{"event_id":"e1","user_id":"u1","item_id":7,"type":"click","ts":1.5}')
>>> ev.item_id, ev.type, ev.weight
('7', 'click', None)
>>> try:
...     parse_event(b'{"event_id": "e2", "user_id": "u1", "item_id": "i", "type": "poke", "ts": 1}')
... except InvalidEvent as err:
...     print(err.reason, "-", err)
bad_type - type must be one of ['click', 'like', 'purchase', 'skip', 'view'], got 'poke'
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

EVENT_TYPES: tuple[str, ...] = ("view", "click", "like", "purchase", "skip")

# Default training weights per event type. A skip is a (weak) negative signal: its
# weight is applied with the opposite sign by the training step.
DEFAULT_TYPE_WEIGHTS: Mapping[str, float] = {
    "view": 0.25,
    "click": 1.0,
    "like": 2.0,
    "purchase": 4.0,
    "skip": -0.25,
}

MAX_ID_LEN = 256
MAX_EVENT_BYTES = 16_384


class InvalidEvent(ValueError):
    """An event that fails validation; ``reason`` is a short stable code for metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Interaction:
    """One user-item interaction, as carried on the ``interactions`` topic.

    ``ts`` is the event time in seconds since the epoch. Ids are strings on the
    wire; integer ids are accepted and turned into their decimal string.
    """

    event_id: str
    user_id: str
    item_id: str
    type: str
    ts: float
    session_id: str | None = None
    weight: float | None = None

    def to_json(self) -> bytes:
        body = {k: v for k, v in asdict(self).items() if v is not None}
        return json.dumps(body, separators=(",", ":")).encode()


def training_weight(
    event: Interaction, type_weights: Mapping[str, float] = DEFAULT_TYPE_WEIGHTS
) -> float:
    """How much an event counts in training: its type's weight times its own ``weight``
    (absent: 1). Positive events are those with a weight above 0.

    >>> training_weight(Interaction("e", "u", "i", "like", 1.0, weight=0.5))
    1.0
    >>> training_weight(Interaction("e", "u", "i", "click", 1.0, weight=0.0))
    0.0
    """
    own = 1.0 if event.weight is None else event.weight
    return type_weights.get(event.type, 0.0) * own


def _id(raw: Mapping[str, Any], field: str, *, required: bool = True) -> str | None:
    value = raw.get(field)
    if value is None:
        if required:
            raise InvalidEvent(f"missing_{field}", f"{field} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidEvent(
            f"bad_{field}", f"{field} must be a string or integer, got {type(value).__name__}"
        )
    text = str(value)
    if not text or len(text) > MAX_ID_LEN:
        raise InvalidEvent(f"bad_{field}", f"{field} must have 1..{MAX_ID_LEN} characters")
    return text


def _number(raw: Mapping[str, Any], field: str) -> float | None:
    value = raw.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidEvent(f"bad_{field}", f"{field} must be a finite number, got {value!r}")
    return float(value)


def validate_event(
    raw: Any, event_types: Mapping[str, float] = DEFAULT_TYPE_WEIGHTS
) -> Interaction:
    """Turn a decoded JSON object into an :class:`Interaction`, or raise :class:`InvalidEvent`."""
    if not isinstance(raw, Mapping):
        raise InvalidEvent(
            "not_an_object", f"event must be a JSON object, got {type(raw).__name__}"
        )
    event_id = _id(raw, "event_id")
    user_id = _id(raw, "user_id")
    item_id = _id(raw, "item_id")
    session_id = _id(raw, "session_id", required=False)
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in event_types:
        raise InvalidEvent("bad_type", f"type must be one of {sorted(event_types)}, got {kind!r}")
    ts = _number(raw, "ts")
    if ts is None:
        raise InvalidEvent("missing_ts", "ts is required (seconds since the epoch)")
    if ts < 0:
        raise InvalidEvent("bad_ts", f"ts must be >= 0, got {ts}")
    weight = _number(raw, "weight")
    if weight is not None and not 0.0 <= weight <= 100.0:
        raise InvalidEvent("bad_weight", f"weight must be within [0, 100], got {weight}")
    assert event_id is not None and user_id is not None and item_id is not None
    return Interaction(event_id, user_id, item_id, kind, ts, session_id, weight)


def parse_event(
    payload: bytes | str | None, event_types: Mapping[str, float] = DEFAULT_TYPE_WEIGHTS
) -> Interaction:
    """Decode and validate one wire record."""
    return validate_event(_decode(payload), event_types)


def _decode(payload: bytes | str | None) -> Any:
    if payload is None:
        raise InvalidEvent("empty", "record has no value")
    if len(payload) > MAX_EVENT_BYTES:
        raise InvalidEvent("too_large", f"record is {len(payload)} bytes, limit {MAX_EVENT_BYTES}")
    try:
        return json.loads(payload)
    except (UnicodeDecodeError, ValueError) as err:
        raise InvalidEvent("bad_json", f"not valid JSON: {err}") from None


def dead_letter(payload: bytes | str | None, err: InvalidEvent, **context: Any) -> bytes:
    """The ``interactions.dlq`` record for a rejected payload: the reason and the original bytes."""
    original = payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else payload
    body = {"reason": err.reason, "error": str(err), "payload": original, **context}
    return json.dumps(body, separators=(",", ":")).encode()


def parse_item(
    key: bytes | None, payload: bytes | str | None
) -> tuple[str, str, list[str], float | None]:
    """An ``items`` record (key: item id; value: ``{"title", "tags"?, "ts"?}``) -> (id, title,
    tags, event time or None)."""
    if not key:
        raise InvalidEvent("missing_item_id", "an items record needs its item id as the key")
    try:
        item_id = key.decode()
    except UnicodeDecodeError:
        raise InvalidEvent("bad_item_id", "the item id key must be UTF-8") from None
    if len(item_id) > MAX_ID_LEN:
        raise InvalidEvent("bad_item_id", f"item id must have 1..{MAX_ID_LEN} characters")
    raw = _decode(payload)
    if not isinstance(raw, Mapping):
        raise InvalidEvent("not_an_object", "an item must be a JSON object")
    title, tags = raw.get("title", ""), raw.get("tags", [])
    if not isinstance(title, str) or not isinstance(tags, list):
        raise InvalidEvent("bad_content", "title must be a string and tags a list")
    if not all(isinstance(t, str) for t in tags):
        raise InvalidEvent("bad_content", "tags must be strings")
    if not title.strip() and not any(t.strip() for t in tags):
        raise InvalidEvent("missing_content", "an item needs a title or tags")
    return item_id, title, tags, _number(raw, "ts")
