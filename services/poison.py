"""Hostile records of every class the worker and the gateway have met, each with the reason
it must be dead-lettered (or refused) with: for load tests (``bench.burst``) and the tests.

Each entry is (name, raw record value, expected reason). The ones marked in the comments
once crashed a worker or lost a batch (see docs/reliability.md).
"""

from __future__ import annotations

import json
from typing import Any

GOOD = {"event_id": "e", "user_id": "u", "item_id": "i", "type": "click", "ts": 1.5}


def event(**over: Any) -> dict[str, Any]:
    body = dict(GOOD)
    body.update(over)
    return {k: v for k, v in body.items() if v is not _DROP}


_DROP = object()


def raw(**over: Any) -> bytes:
    """A near-valid event as JSON text; escapes keep lone surrogates as the wire carries them."""
    return json.dumps(event(**over)).encode()


def poison(tag: str = "p") -> list[tuple[str, bytes | None, str]]:
    """One record of each class; ``tag`` keeps event ids apart between uses."""
    huge = "9" * 400
    return [
        # crashed the agent: a letter over the producer's 1 MB limit
        ("one_megabyte", raw(event_id=f"{tag}-big", pad="x" * 1_000_000), "too_large"),
        ("not_utf8_300k", b"\xff\xfe\xfa" * 100_000, "too_large"),
        ("not_utf8_small", b'{"event_id": "\xff\xfe"}', "bad_json"),
        # took their whole batch to the DLQ as processing_error
        ("ts_400_digits", raw(event_id=f"{tag}-ts").replace(b"1.5", huge.encode()), "bad_ts"),
        ("weight_400_digits",
         raw(event_id=f"{tag}-w", weight=1).replace(b'"weight": 1', b'"weight": ' + huge.encode()),
         "bad_weight"),  # fmt: skip
        ("nested_brackets", b"[" * 5000 + b"]" * 5000, "too_deep"),
        ("nested_in_field", raw(event_id=f"{tag}-n").replace(b'"ts": 1.5', b'"ts": ' + b"[" * 3000
                                                              + b"]" * 3000), "too_deep"),
        ("nested_objects", b'{"a":' * 2000 + b"1" + b"}" * 2000, "too_deep"),
        ("surrogate_user", raw(event_id=f"{tag}-su", user_id="u\ud800"), "bad_user_id"),
        # crashed the checkpoint: a de-dup id that cannot be encoded
        ("surrogate_event", raw(event_id=f"{tag}\udfff"), "bad_event_id"),
        ("surrogate_item", raw(event_id=f"{tag}-si", item_id="\udc80i"), "bad_item_id"),
        ("surrogate_session", raw(event_id=f"{tag}-ss", session_id="s\ud83d"), "bad_session_id"),
        # the ordinary malformed
        ("bad_json", b'{"event_id": "broken', "bad_json"),
        ("empty", None, "empty"),
        ("blank", b"", "bad_json"),
        # a JSON array is a batch record: these fail as a whole (its events each on their own)
        ("empty_batch", b"[]", "empty_batch"),
        ("batch_bad_json", b'[{"event_id": "x", "user_id"', "bad_json"),
        ("batch_of_20k_ones", b"[" + b",".join([b"1"] * 20_000) + b"]", "too_many_events"),
        ("string", b'"hello"', "not_an_object"),
        ("nan_ts", raw(event_id=f"{tag}-nan").replace(b"1.5", b"NaN"), "bad_ts"),
        ("inf_weight", raw(event_id=f"{tag}-inf", weight=1).replace(b'"weight": 1',
                                                                    b'"weight": -Infinity'),
         "bad_weight"),  # fmt: skip
        ("ts_1e300", raw(event_id=f"{tag}-e300", ts=1e300), "bad_ts"),
        ("ts_in_ms", raw(event_id=f"{tag}-ms", ts=1.7e12), "bad_ts"),
        ("ts_negative", raw(event_id=f"{tag}-neg", ts=-1), "bad_ts"),
        ("ts_string", raw(event_id=f"{tag}-tss", ts="12"), "bad_ts"),
        ("missing_ts", raw(event_id=f"{tag}-nots", ts=_DROP), "missing_ts"),
        ("bad_type", raw(event_id=f"{tag}-type", type="poke"), "bad_type"),
        ("type_list", raw(event_id=f"{tag}-tl", type=["click"]), "bad_type"),
        ("missing_user", raw(event_id=f"{tag}-nou", user_id=_DROP), "missing_user_id"),
        ("float_item", raw(event_id=f"{tag}-fi", item_id=1.5), "bad_item_id"),
        ("bool_user", raw(event_id=f"{tag}-bu", user_id=True), "bad_user_id"),
        ("long_id", raw(event_id=f"{tag}-li", item_id="i" * 300), "bad_item_id"),
        ("int_id_300_digits", raw(event_id=f"{tag}-id300").replace(b'"item_id": "i"',
                                                                 b'"item_id": ' + b"7" * 300),
         "bad_item_id"),  # fmt: skip
        ("int_5000_digits", raw(event_id=f"{tag}-i5k").replace(b"1.5", b"1" * 5000), "bad_json"),
        ("empty_id", raw(event_id=""), "bad_event_id"),
        ("dict_id", raw(event_id={"x": 1}), "bad_event_id"),
        ("weight_high", raw(event_id=f"{tag}-wh", weight=101), "bad_weight"),
        ("trailing_garbage", raw(event_id=f"{tag}-tg") + b" trailing", "bad_json"),
        # control characters: NUL is dropped from numpy string arrays ("u\x00" -> "u")
        ("nul_in_user", raw(event_id=f"{tag}-nul", user_id="u\x00"), "bad_user_id"),
        ("newline_in_item", raw(event_id=f"{tag}-nl", item_id="i\nj"), "bad_item_id"),
        ("c1_in_event", raw(event_id=f"{tag}\x85"), "bad_event_id"),
        ("raw_control_byte", raw(event_id=f"{tag}-e").replace(b'-e"', b'\x01"'), "bad_json"),
    ]
