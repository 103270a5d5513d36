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

import base64
import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

# C0 and C1 control characters: in an id they break logs, line-based exports and numpy's
# string arrays (which drop trailing NULs, so "u\x00" would come back as "u")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")

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
# a batch record (a JSON array of events): under Kafka's default max.message.bytes (1 MiB)
MAX_BATCH_BYTES = 1_000_000
# ... of at most this many events: each bad element is a dead letter of its own, so without
# a cap 1 MB of "[1,1,1,...]" would write half a million letters (the SDK packs 500)
MAX_BATCH_EVENTS = 10_000
PACK = 500  # what the SDK packs into one batch record at most, by default
MAX_DEPTH = 16  # JSON nesting an event may have (an event is flat: 1)
# ts is seconds since the epoch; above this (the year 2286) it is almost surely milliseconds
MAX_TS = 1e10
MAX_CONTENT_CHARS = 8_192  # an item's title, and all its tags together
# a dead letter keeps at most this many bytes of the original record (its length and hash
# always), so a letter always fits the producer's limit whatever the record was
LETTER_PAYLOAD_BYTES = 4_096
LETTER_MAX_BYTES = 64 * 1024  # hard cap on a whole letter (Kafka's default limit is 1 MiB)
MAX_ERROR_CHARS = 300


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
        # fields in declaration order, None left out (dataclasses.asdict took 17 µs of this)
        body: dict[str, Any] = {"event_id": self.event_id, "user_id": self.user_id,
                                "item_id": self.item_id, "type": self.type,
                                "ts": self.ts}  # fmt: skip
        if self.session_id is not None:
            body["session_id"] = self.session_id
        if self.weight is not None:
            body["weight"] = self.weight
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
    # the common case in one C-level test each: printable ASCII has no control character
    # and no lone surrogate
    if type(value) is str and 0 < len(value) <= MAX_ID_LEN:  # noqa: SIM102 - one line each
        if value.isascii() and value.isprintable():
            return value
    if value is None:
        if required:
            raise InvalidEvent(f"missing_{field}", f"{field} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidEvent(
            f"bad_{field}", f"{field} must be a string or integer, got {type(value).__name__}"
        )
    if isinstance(value, int) and not -(10**MAX_ID_LEN) < value < 10**MAX_ID_LEN:
        raise InvalidEvent(f"bad_{field}", f"{field} must have 1..{MAX_ID_LEN} characters")
    text = str(value)
    if not text or len(text) > MAX_ID_LEN:
        raise InvalidEvent(f"bad_{field}", f"{field} must have 1..{MAX_ID_LEN} characters")
    _unicode(text, f"bad_{field}", field)
    control = _CONTROL.search(text)
    if control is not None:
        raise InvalidEvent(
            f"bad_{field}",
            f"{field} has a control character "
            f"U+{ord(control.group()):04X} at character {control.start()}",
        )
    return text


def _unicode(text: str, reason: str, what: str) -> None:
    """Refuse a string that cannot be written as UTF-8 (a JSON-escaped lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidEvent(
            reason,
            f"{what} is not valid Unicode: {_short(text[err.start : err.end])} "
            f"at character {err.start} (a lone surrogate cannot be encoded as UTF-8)",
        ) from None


def _number(raw: Mapping[str, Any], field: str) -> float | None:
    value = raw.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidEvent(f"bad_{field}", f"{field} must be a number, got {type(value).__name__}")
    try:
        number = float(value)  # an integer literal of any length: OverflowError past 1e308
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise InvalidEvent(f"bad_{field}", f"{field} must be a finite number, got {_short(value)}")
    return number


def _short(value: Any, limit: int = 60) -> str:
    """A bounded repr for error messages (a record may hold anything, of any size)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**limit:
        return f"an integer of ~{int(value.bit_length() * math.log10(2)) + 1} digits"
    if isinstance(value, (dict, list)):
        return f"a {type(value).__name__} of {len(value)}"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_event(
    raw: Any, event_types: Mapping[str, float] = DEFAULT_TYPE_WEIGHTS
) -> Interaction:
    """Turn a decoded JSON object into an :class:`Interaction`, or raise :class:`InvalidEvent`
    (and nothing else)."""
    return _guarded(lambda: _validate(raw, event_types))


def _validate(raw: Any, event_types: Mapping[str, float]) -> Interaction:
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
        raise InvalidEvent(
            "bad_type", f"type must be one of {sorted(event_types)}, got {_short(kind)}"
        )
    ts = _number(raw, "ts")
    if ts is None:
        raise InvalidEvent("missing_ts", "ts is required (seconds since the epoch)")
    if not 0 <= ts <= MAX_TS:
        raise InvalidEvent(
            "bad_ts", f"ts must be seconds since the epoch within [0, {MAX_TS:.0e}], got {ts:.6g}"
        )
    weight = _number(raw, "weight")
    if weight is not None and not 0.0 <= weight <= 100.0:
        raise InvalidEvent("bad_weight", f"weight must be within [0, 100], got {weight:.6g}")
    assert event_id is not None and user_id is not None and item_id is not None
    return Interaction(event_id, user_id, item_id, kind, ts, session_id, weight)


def parse_event(
    payload: bytes | str | None, event_types: Mapping[str, float] = DEFAULT_TYPE_WEIGHTS
) -> Interaction:
    """Decode and validate one wire record. Raises :class:`InvalidEvent` and nothing else:
    whatever else goes wrong with one record is that record's reason ``invalid``.

    >>> parse_event(b'{"event_id":"e","user_id":"u","item_id":"i","type":"view","ts":1e999}')
    Traceback (most recent call last):
    ...
    stream.schemas.InvalidEvent: ts must be a finite number, got inf
    """
    return _guarded(lambda: _validate(decode_json(payload), event_types))


def _guarded(step: Callable[[], T]) -> T:
    try:
        return step()
    except InvalidEvent:
        raise
    except Exception as exc:  # noqa: BLE001 - one record's failure is that record's alone
        raise InvalidEvent("invalid", _clean(f"{type(exc).__name__}: {exc}")) from None


def decode_json(
    payload: bytes | str | None, limit: int = MAX_EVENT_BYTES, max_depth: int | None = MAX_DEPTH
) -> Any:
    """JSON of at most ``limit`` bytes and ``max_depth`` levels of nesting, or
    :class:`InvalidEvent` (``empty``, ``too_large``, ``too_deep``, ``bad_json``). With
    ``max_depth`` None the caller checks the depth (only the parser's own limit applies).

    >>> decode_json(b"[" * 40 + b"]" * 40)
    Traceback (most recent call last):
    ...
    stream.schemas.InvalidEvent: JSON nested over 16 levels deep
    """
    if payload is None:
        raise InvalidEvent("empty", "record has no value")
    size = len(payload) if isinstance(payload, bytes) else len(payload.encode("utf-8", "replace"))
    if size > limit:
        raise InvalidEvent("too_large", f"record is {size} bytes, limit {limit}")
    try:
        value = json.loads(payload)
    except RecursionError:  # CPython's decoder stops cleanly at the interpreter's limit
        limit_text = "the parser's limit" if max_depth is None else f"limit {max_depth}"
        raise InvalidEvent("too_deep", f"JSON nested too deep, {limit_text}") from None
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise InvalidEvent("bad_json", _clean(f"not valid JSON: {err}")) from None
    if max_depth is not None and _brackets(payload) > max_depth:  # deep enough to check
        _check_depth(value, max_depth)  # (a flat event has one bracket)
    return value


def _brackets(payload: bytes | str) -> int:
    """How many arrays and objects ``payload`` opens at most (its strings may hold some)."""
    if isinstance(payload, bytes):
        return payload.count(b"[") + payload.count(b"{")
    return payload.count("[") + payload.count("{")


def _flat_batch(value: Any, brackets: int) -> bool:
    """Whether a decoded value is an array of objects none of which holds an array or object:
    true when its text has one bracket per object and one for the array (brackets inside
    strings only add to the count). Cheaper than walking it by 15x.

    >>> count = lambda text: text.count("[") + text.count("{")
    >>> [_flat_batch(json.loads(t), count(t)) for t in ('[{"a": 1}, {}]', '[{"a": [1]}, 2]')]
    [True, False]
    """
    return (
        type(value) is list
        and brackets == len(value) + 1
        and all(type(e) is dict for e in value)
    )


def batch_record(bodies: Sequence[bytes]) -> bytes:
    """Encoded events (``Interaction.to_json``) as one batch record: a JSON array of them.
    The worker reads it as the events one by one (each validated, de-duplicated and
    dead-lettered on its own); a producer keeps it under ``MAX_BATCH_BYTES``.

    >>> events = [Interaction("e1", "u", "i", "view", 1.0), Interaction("e2", "u", "j", "like", 2)]
    >>> record = batch_record([e.to_json() for e in events])
    >>> [validate_event(raw).event_id for raw in decode_batch(record)]
    ['e1', 'e2']
    """
    return b"[" + b",".join(bodies) + b"]"


def is_batch(payload: bytes | None) -> bool:
    """Whether a record claims to be a batch: its value is a JSON array (an event is an
    object, so no valid single event looks like one)."""
    return payload is not None and payload.lstrip(b" \t\r\n")[:1] == b"["


@dataclass(frozen=True)
class Refused:
    """An element of a batch record refused before validation, with why."""

    error: InvalidEvent
    value: Any


def decode_batch(payload: bytes | None) -> list[Any]:
    """The decoded elements of a batch record, or :class:`InvalidEvent` for the record as a
    whole (``bad_json``, ``too_large`` past ``MAX_BATCH_BYTES``, ``too_deep`` past what the
    JSON parser takes, ``empty_batch``, ``too_many_events`` past ``MAX_BATCH_EVENTS``). An
    element nested deeper than an event may be is replaced by :class:`Refused` with its own
    ``too_deep`` (the others stand); each element is still to be validated.

    >>> decode_batch(b"[]")
    Traceback (most recent call last):
    ...
    stream.schemas.InvalidEvent: a batch record holds no events
    >>> [getattr(e, "error", e) for e in decode_batch(b'[1, ' + b"[" * 40 + b"]" * 40 + b"]")]
    [1, InvalidEvent('JSON nested over 16 levels deep')]
    """
    # the depth rule is each element's, checked below (the parser's limit is the record's)
    value = _guarded(lambda: decode_json(payload, MAX_BATCH_BYTES, max_depth=None))
    if not isinstance(value, list):
        raise InvalidEvent("not_a_batch", f"a batch record is a JSON array, got {_short(value)}")
    if not value:
        raise InvalidEvent("empty_batch", "a batch record holds no events")
    if len(value) > MAX_BATCH_EVENTS:
        raise InvalidEvent(
            "too_many_events", f"a batch record holds {len(value)} events, limit {MAX_BATCH_EVENTS}"
        )
    assert payload is not None  # decode_json refused None
    brackets = _brackets(payload)
    if brackets > MAX_DEPTH and not _flat_batch(value, brackets):
        for n, element in enumerate(value):
            if isinstance(element, (dict, list)):
                try:
                    _check_depth(element, MAX_DEPTH)
                except InvalidEvent as err:
                    value[n] = Refused(err, element)
    return value


def valid_events(
    payload: bytes | None, event_types: Mapping[str, float] = DEFAULT_TYPE_WEIGHTS
) -> list[Interaction]:
    """The valid events of one record, a single event or a batch record, leaving out the
    invalid ones (for readers of the topic other than the worker, which dead-letters them).

    >>> one = b'{"event_id":"a","user_id":"u","item_id":"i","type":"view","ts":1}'
    >>> [e.event_id for e in valid_events(b"[" + one + b", 7]")]
    ['a']
    """
    try:
        if not is_batch(payload):
            return [parse_event(payload, event_types)]
        elements = decode_batch(payload)
    except InvalidEvent:
        return []
    events = []
    for raw in elements:
        if isinstance(raw, Refused):
            continue
        try:
            events.append(validate_event(raw, event_types))
        except InvalidEvent:
            continue
    return events


def element_bytes(value: Any) -> bytes:
    """One decoded element of a batch record as JSON bytes again (for its dead letter)."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        return text.encode("utf-8", "surrogatepass")
    except Exception:  # noqa: BLE001 - the letter keeps what can be shown
        pass
    try:
        return _clean(repr(value)).encode()
    except Exception:  # noqa: BLE001 - e.g. RecursionError: nothing to show but the reason
        return b"<an element that cannot be shown>"


def _check_depth(value: Any, max_depth: int) -> None:
    """Walk the decoded value without recursion; too_deep past ``max_depth`` levels."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise InvalidEvent("too_deep", f"JSON nested over {max_depth} levels deep")
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))


def _clean(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """Bounded, UTF-8-safe text for an error message."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dead_letter(
    payload: bytes | str | None,
    err: InvalidEvent,
    max_payload: int = LETTER_PAYLOAD_BYTES,
    **context: Any,
) -> bytes:
    """The ``interactions.dlq`` record for a rejected payload: reason, error, and the first
    ``max_payload`` bytes of the original with its full length and SHA-256. The kept bytes are
    UTF-8 text when they are valid UTF-8, else base64 (lossless, 4/3 the size, where JSON
    escapes of raw bytes grew a letter ~6x). Always under ``LETTER_MAX_BYTES``.

    >>> letter = json.loads(dead_letter(b"\\xff" * 10_000, InvalidEvent("bad_json", "no")))
    >>> letter["payload_bytes"], letter["truncated"], letter["payload_encoding"]
    (10000, True, 'base64')
    >>> len(base64.b64decode(letter["payload"]))
    4096
    """
    if isinstance(payload, str):
        payload = payload.encode("utf-8", "surrogatepass")
    body: dict[str, Any] = {"reason": err.reason, "error": _clean(str(err))}
    if payload is None:
        body["payload"] = None
    else:
        kept = payload[: max(max_payload, 0)]
        text, encoding = _as_text(kept, truncated=len(kept) < len(payload))
        body.update(
            payload=text, payload_encoding=encoding, payload_bytes=len(payload),
            payload_sha256=hashlib.sha256(payload).hexdigest(),
            truncated=len(kept) < len(payload),
        )  # fmt: skip
    body.update({k: v for k, v in context.items() if k not in body})
    letter = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(letter) > LETTER_MAX_BYTES:  # a huge context or max_payload: keep the evidence only
        body.update(payload=None, payload_encoding=None, truncated=True)
        body = {k: (_clean(v) if isinstance(v, str) else v) for k, v in body.items()}
        letter = json.dumps(body, separators=(",", ":")).encode()
    return letter


def _as_text(kept: bytes, truncated: bool) -> tuple[str, str]:
    try:
        return kept.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as err:
        # a cut through a multi-byte character at the end is still text, one char shorter
        if truncated and err.start >= len(kept) - 3 and err.reason == "unexpected end of data":
            return kept[: err.start].decode("utf-8"), "utf-8"
        return base64.b64encode(kept).decode("ascii"), "base64"


def parse_item(
    key: bytes | None, payload: bytes | str | None
) -> tuple[str, str, list[str], float | None]:
    """An ``items`` record (key: item id; value: ``{"title", "tags"?, "ts"?}``) -> (id, title,
    tags, event time or None)."""
    if not key:
        raise InvalidEvent("missing_item_id", "an items record needs its item id as the key")
    try:
        text = key.decode()
    except UnicodeDecodeError:
        raise InvalidEvent("bad_item_id", "the item id key must be UTF-8") from None
    item_id = _guarded(lambda: _id({"item_id": text}, "item_id"))  # as an event's item_id
    assert item_id is not None
    return _guarded(lambda: _item_content(item_id, payload))


def _item_content(
    item_id: str, payload: bytes | str | None
) -> tuple[str, str, list[str], float | None]:
    raw = decode_json(payload)
    if not isinstance(raw, Mapping):
        raise InvalidEvent("not_an_object", "an item must be a JSON object")
    title, tags = raw.get("title", ""), raw.get("tags", [])
    if not isinstance(title, str) or not isinstance(tags, list):
        raise InvalidEvent("bad_content", "title must be a string and tags a list")
    if not all(isinstance(t, str) for t in tags):
        raise InvalidEvent("bad_content", "tags must be strings")
    if len(title) + sum(len(t) for t in tags) > MAX_CONTENT_CHARS:
        raise InvalidEvent("bad_content", f"title and tags exceed {MAX_CONTENT_CHARS} characters")
    for text in (title, *tags):
        _unicode(text, "bad_content", "the title or a tag")
    if not title.strip() and not any(t.strip() for t in tags):
        raise InvalidEvent("missing_content", "an item needs a title or tags")
    return item_id, title, tags, _number(raw, "ts")
