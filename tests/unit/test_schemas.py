from __future__ import annotations

import json

import pytest

from stream.schemas import (
    MAX_EVENT_BYTES,
    Interaction,
    InvalidEvent,
    dead_letter,
    parse_event,
    validate_event,
)

GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "click", "ts": 1.0}


def test_valid_event_round_trips_through_the_wire_format() -> None:
    event = validate_event({**GOOD, "session_id": "s", "weight": 2})
    assert parse_event(event.to_json()) == event
    assert event == Interaction("e1", "u1", "i1", "click", 1.0, "s", 2.0)


def test_integer_ids_become_strings() -> None:
    event = validate_event({**GOOD, "user_id": 42, "item_id": 7})
    assert (event.user_id, event.item_id) == ("42", "7")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{nope", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b"[1, 2]", "not_an_object"),
        (None, "empty"),
        (json.dumps({**GOOD, "type": "poke"}).encode(), "bad_type"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "user_id"}).encode(), "missing_user_id"),
        (json.dumps({**GOOD, "item_id": ""}).encode(), "bad_item_id"),
        (json.dumps({**GOOD, "item_id": True}).encode(), "bad_item_id"),
        (json.dumps({**GOOD, "item_id": "x" * 300}).encode(), "bad_item_id"),
        (json.dumps({**GOOD, "event_id": 1.5}).encode(), "bad_event_id"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "ts"}).encode(), "missing_ts"),
        (json.dumps({**GOOD, "ts": -1}).encode(), "bad_ts"),
        (json.dumps({**GOOD, "ts": "yesterday"}).encode(), "bad_ts"),
        (b'{"event_id":"e","user_id":"u","item_id":"i","type":"view","ts":NaN}', "bad_ts"),
        (json.dumps({**GOOD, "weight": 1e9}).encode(), "bad_weight"),
        (b" " * (MAX_EVENT_BYTES + 1), "too_large"),
    ],
)
def test_invalid_events_carry_a_stable_reason(payload: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidEvent) as err:
        parse_event(payload)
    assert err.value.reason == reason
    assert str(err.value)


def test_dead_letter_keeps_the_original_bytes_and_reason() -> None:
    with pytest.raises(InvalidEvent) as err:
        parse_event(b"{oops")
    record = json.loads(dead_letter(b"{oops", err.value, partition=2, offset=9))
    assert record["reason"] == "bad_json"
    assert record["payload"] == "{oops"
    assert (record["partition"], record["offset"]) == (2, 9)


def test_custom_event_types() -> None:
    event = validate_event({**GOOD, "type": "share"}, {"share": 1.0})
    assert event.type == "share"
    with pytest.raises(InvalidEvent):
        validate_event(GOOD, {"share": 1.0})
