"""No record lost to a bad one: per-record isolation, bounded dead letters, failure-safe
checkpoints, and property-based fuzzing of the validator, the core and the gateway.

The broker-backed version of the same is tests/integration/test_poison.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paramserver.stores import WriteSet
from paramserver.stores.memory import MemoryStore
from services.poison import poison, raw
from stream.checkpoint import commit_checkpoint, restore
from stream.core import RawRecord, WorkerCore
from stream.schemas import (
    LETTER_MAX_BYTES,
    MAX_BATCH_BYTES,
    Interaction,
    InvalidEvent,
    dead_letter,
    decode_json,
    parse_event,
)
from stream.training import OnlineTrainer, TrainConfig

CFG = TrainConfig(dim=4, negatives=2)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def good(n: int, user: str = "u") -> bytes:
    return Interaction(f"g{n}", f"{user}{n % 3}", f"i{n % 5}", "click", 10.0 + n).to_json()


def records(payloads: Sequence[bytes | None], start: int = 0) -> list[RawRecord]:
    return [RawRecord(p, 1000 + n, partition=0, offset=n) for n, p in enumerate(payloads, start)]


@pytest.mark.parametrize(("name", "payload", "reason"), poison(), ids=[p[0] for p in poison()])
def test_each_poison_is_its_own_dead_letter(name: str, payload: bytes | None, reason: str) -> None:
    core = WorkerCore(OnlineTrainer.create(CFG))
    out = core.process(records([good(0), payload, good(1)]))
    assert out.accepted == 2, name
    assert [d.reason for d in out.dead_letters] == [reason]
    letter = out.dead_letters[0].payload
    assert len(letter) <= LETTER_MAX_BYTES
    body = json.loads(letter)
    assert (body["reason"], body["partition"], body["offset"]) == (reason, 0, 1)
    if payload is not None:  # what was kept is the record's prefix, exactly
        kept = body["payload"]
        kept = base64.b64decode(kept) if body["payload_encoding"] == "base64" else kept.encode()
        assert payload.startswith(kept) and body["payload_bytes"] == len(payload)
        assert body["payload_sha256"] == hashlib.sha256(payload).hexdigest()
        assert body["truncated"] == (len(kept) < len(payload))
    store = MemoryStore()
    commit_checkpoint(core, store, "t")  # the checkpoint takes whatever got through
    assert restore(WorkerCore(OnlineTrainer.create(CFG)), store, "t") == {0: 3}


def test_all_poison_interleaved_with_good_events() -> None:
    bad = poison()
    payloads: list[bytes | None] = []
    for n, (_, payload, _) in enumerate(bad):
        payloads += [good(2 * n), payload, good(2 * n + 1)]
    out = WorkerCore(OnlineTrainer.create(CFG)).process(records(payloads))
    assert out.accepted == 2 * len(bad)
    assert [d.reason for d in out.dead_letters] == [reason for _, _, reason in bad]


def test_a_letter_stays_bounded_whatever_it_carries() -> None:
    err = InvalidEvent("bad_json", "x" * 100_000)
    for payload in (b"\x00" * 10**6, "\u4e2d".encode() * 10**5, b"\xff" * 10**6):
        letter = dead_letter(payload, err, max_payload=10**6, partition=1)
        assert len(letter) <= LETTER_MAX_BYTES, len(letter)
        assert json.loads(letter)["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    # a cut through a multi-byte character keeps the text, one character short
    body = json.loads(dead_letter("\u4e2d".encode() * 2000, err, max_payload=4096))
    assert body["payload_encoding"] == "utf-8" and body["payload"] == "\u4e2d" * 1365


class PoisonTrainer(OnlineTrainer):
    """A trainer whose step raises on any batch holding the item ``boom``."""

    def apply(self, events):  # type: ignore[no-untyped-def]
        if any(e.item_id == "boom" for e in events):
            raise FloatingPointError("boom in the step")
        return super().apply(events)


def test_a_failing_step_is_split_until_the_poison_is_found() -> None:
    core = WorkerCore(PoisonTrainer.create(CFG))
    payloads = [good(n) for n in range(20)]
    payloads[13] = raw(event_id="bad-one", item_id="boom")
    payloads[4] = raw(event_id="bad-two", item_id="boom")
    out = core.process(records(payloads))
    assert out.accepted == 18
    assert [json.loads(d.payload)["offset"] for d in out.dead_letters] == [4, 13]
    assert {d.reason for d in out.dead_letters} == {"processing_error"}
    assert "FloatingPointError" in json.loads(out.dead_letters[0].payload)["error"]
    assert out.failed_steps > 0
    # the failed events never entered the de-dup window: a fixed redelivery is judged again
    assert "bad-one" not in core.dedup and "g0" in core.dedup
    # and the 18 trained exactly as they would have without the poison among them
    clean = WorkerCore(OnlineTrainer.create(CFG))
    clean.process(records([p for n, p in enumerate(payloads) if n not in (4, 13)]))
    assert core.trainer.ps.size("items") == clean.trainer.ps.size("items")


class FlakyStore(MemoryStore):
    def __init__(self, fail: int) -> None:
        super().__init__()
        self.fail = fail

    def commit(self, writes: WriteSet) -> None:
        if self.fail:
            self.fail -= 1
            raise OSError("disk full")
        super().commit(writes)


def test_a_failed_checkpoint_keeps_its_changes_for_the_next() -> None:
    """The report's lost rows: a checkpoint that raised had drained the deltas, so the next
    one committed offsets without them. Now the drained changes are put back."""
    batches = [records([good(n) for n in range(k, k + 10)], start=k) for k in (0, 10, 20)]
    flaky, steady = FlakyStore(fail=2), MemoryStore()
    a, b = WorkerCore(OnlineTrainer.create(CFG)), WorkerCore(OnlineTrainer.create(CFG))
    for n, batch in enumerate(batches):
        a.process(batch)
        b.process(batch)
        if n < 2:
            with pytest.raises(OSError):
                commit_checkpoint(a, flaky, "t")
    commit_checkpoint(a, flaky, "t")
    commit_checkpoint(b, steady, "t")
    assert list(flaky.scan(b"")) == list(steady.scan(b""))
    a2, b2 = WorkerCore(OnlineTrainer.create(CFG)), WorkerCore(OnlineTrainer.create(CFG))
    assert restore(a2, flaky, "t") == restore(b2, steady, "t") == {0: 30}
    assert a2.trainer.ps.size("users") == 3 and a2.trainer.ps.size("items") == 5


# -- fuzzing ---------------------------------------------------------------------------------

WILD = st.one_of(
    st.none(), st.booleans(), st.integers(),
    st.integers(min_value=10**300, max_value=10**400), st.floats(allow_nan=True),
    st.text(max_size=40), st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3),
    st.text(st.characters(categories=["Cc"]), min_size=1, max_size=3),
    st.floats(min_value=1e9, max_value=2e10),  # event times near now and far ahead of it
    st.text(min_size=250, max_size=300), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.recursive(st.integers(), lambda c: st.lists(c, max_size=1), max_leaves=40),
)  # fmt: skip
FIELDS = ["event_id", "user_id", "item_id", "type", "ts", "session_id", "weight", "extra"]


@st.composite
def near_valid(draw: st.DrawFn) -> bytes:
    """A valid event with one to three fields replaced by something wild (or removed)."""
    body = {"event_id": draw(st.text(min_size=1, max_size=8)), "user_id": "u", "item_id": "i",
            "type": draw(st.sampled_from(["click", "view", "skip"])), "ts": 1.0}  # fmt: skip
    for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True)):
        if draw(st.booleans()) and name in body:
            del body[name]
        else:
            body[name] = draw(WILD)
    try:
        return json.dumps(body).encode()  # allow_nan: NaN and Infinity literals too
    except (ValueError, RecursionError):
        return b"{}"


def account(core: WorkerCore, payloads: list[bytes | None]) -> None:
    out = core.process(records(payloads))
    assert out.accepted + out.duplicates + len(out.dead_letters) == len(payloads)
    for letter in out.dead_letters:
        assert len(letter.payload) <= LETTER_MAX_BYTES
        json.loads(letter.payload)
    commit_checkpoint(core, MemoryStore(), "t")  # every accepted event id is encodable


@FUZZ
@given(st.lists(st.one_of(st.binary(max_size=300), st.none()), min_size=1, max_size=8))
def test_fuzz_raw_bytes_into_the_core(payloads: list[bytes | None]) -> None:
    account(WorkerCore(OnlineTrainer.create(CFG)), [good(0), *payloads, good(1)])


@FUZZ
@given(st.lists(near_valid(), min_size=1, max_size=8))
def test_fuzz_near_valid_events_into_the_core(payloads: list[bytes | None]) -> None:
    account(WorkerCore(OnlineTrainer.create(CFG)), [good(0), *payloads, good(1)])


@FUZZ
@given(st.lists(near_valid(), min_size=1, max_size=8), st.integers(0, 9))
def test_fuzz_near_valid_events_in_a_batch_record(payloads: list[bytes], at: int) -> None:
    """Each element is accepted, a duplicate or its own letter; the record ends wholly taken."""
    core = WorkerCore(OnlineTrainer.create(CFG))
    elements = [good(0), *payloads, good(1)]
    body = b"[" + b",".join(elements) + b"]"
    out = core.process([RawRecord(body, 1000, partition=0, offset=at)])
    assert out.accepted + out.duplicates + len(out.dead_letters) == len(elements)
    for letter in out.dead_letters:
        assert len(letter.payload) <= LETTER_MAX_BYTES
        assert json.loads(letter.payload)["offset"] == at
    assert core.checkpoint_positions() == {0: (at + 1, 0)}
    commit_checkpoint(core, MemoryStore(), "t")


@FUZZ
@given(near_valid())
def test_fuzz_the_validator_raises_invalid_event_only(payload: bytes) -> None:
    try:
        event = parse_event(payload)
    except InvalidEvent as err:
        assert err.reason and len(str(err)) <= 300
        return
    for text in (event.event_id, event.user_id, event.item_id, event.session_id or ""):
        text.encode("utf-8")  # what passes encodes
    assert parse_event(event.to_json()) == event  # and survives the wire


def test_decode_json_depth_and_size() -> None:
    assert decode_json(b'{"a": [[1]]}', max_depth=3) == {"a": [[1]]}
    for payload, reason in ((b'{"a": [[1]]}', "too_deep"), (b"x" * 20, "too_large")):
        with pytest.raises(InvalidEvent) as err:
            decode_json(payload, limit=10 if reason == "too_large" else 100, max_depth=2)
        assert err.value.reason == reason


# -- the gateway: the same validator, 4xx for every client problem ----------------------------


class WireSink:
    """Encodes each event as KafkaSink does (key and value), and checks the worker's
    validator would accept what the gateway accepted."""

    def __init__(self) -> None:
        self.events: list[Interaction] = []

    def send(self, events: Sequence[Interaction]) -> None:
        for e in events:
            e.user_id.encode()
            assert parse_event(e.to_json()) == e
        self.events.extend(events)


TOKEN = "fuzz-token"


@pytest.fixture(scope="module")
def gateway():  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient
    from prometheus_client import CollectorRegistry

    from services.api.app import create_app
    from services.api.metrics import ServingMetrics
    from services.api.seen import SeenItems
    from services.api.state import ServingState

    registry = CollectorRegistry()
    app = create_app(ServingState(dim=2, seen=SeenItems(per_user=4)), registry,
                     ServingMetrics.create(registry), sink=WireSink(), token=TOKEN)  # fmt: skip
    return TestClient(app)


def post(client, body: bytes):  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    return client.post("/events", content=body, headers=headers)


def test_the_gateway_answers_every_poison_4xx_with_its_reason(gateway) -> None:  # type: ignore[no-untyped-def]
    """The gateway re-encodes what it accepts (unknown fields dropped), so its limit is on the
    body (413), not on one event's original size."""
    for name, payload, reason in poison():
        if payload is None or reason == "too_large":
            continue
        response = post(gateway, b'{"events": [' + payload + b"]}")  # the bytes as they are
        assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
        got = response.json()
        reasons = [r["reason"] for r in got["rejected"]] or [got.get("reason")]
        # the body's reason or its own (a batch record's "[]" is, in a body, a non-object event)
        if reason in ("bad_json", "too_deep", "not_an_object", "empty_batch", "too_many_events"):
            assert reasons[0] in (reason, "bad_json", "too_deep", "not_an_object", None), (
                name,
                got,
            )
        else:
            assert reasons == [reason], (name, got)
    assert post(gateway, b"x" * (3 * 1024 * 1024)).status_code == 413
    assert post(gateway, b"[" * 100_000 + b"]" * 100_000).status_code == 400


@FUZZ
@given(st.lists(near_valid(), min_size=1, max_size=4))
def test_fuzz_the_gateway_never_answers_5xx(gateway, events: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    response = post(gateway, b'{"events": [' + b",".join(events) + b"]}")
    assert response.status_code in (202, 400, 413), response.text


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_raw_bodies_into_the_gateway(gateway, body: bytes) -> None:  # type: ignore[no-untyped-def]
    assert post(gateway, body).status_code in (202, 400, 413)


# -- the settler: the durable offset never passes work that is not durable --------------------


class FakeProducer:
    def __init__(self) -> None:
        self.flushed = 0

    async def flush(self) -> None:
        self.flushed += 1


class FakeApp:
    def __init__(self) -> None:
        self.producer = FakeProducer()


def settler_for(core: WorkerCore, store: MemoryStore):  # type: ignore[no-untyped-def]
    from prometheus_client import CollectorRegistry

    from stream.app import Settler
    from stream.metrics import WorkerMetrics

    metrics = WorkerMetrics.create(CollectorRegistry())
    return Settler(core, store, "t", metrics, interval=0.0), metrics


def test_a_failed_send_halts_the_settler_before_any_commit() -> None:
    import asyncio

    from stream.app import WorkerHalted

    async def scenario() -> None:
        core, store = WorkerCore(OnlineTrainer.create(CFG)), MemoryStore()
        settler, metrics = settler_for(core, store)
        core.process(records([good(0), good(1)]))
        assert await settler.checkpoint(FakeApp()) == {0: 2}  # nothing sent: fine
        core.process(records([good(2)], start=2))
        lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        lost.set_exception(OSError("MessageSizeTooLargeError"))
        settler.sent.append(lost)
        with pytest.raises(WorkerHalted, match="MessageSizeTooLarge"):
            await settler.checkpoint(FakeApp())
        assert restore(WorkerCore(OnlineTrainer.create(CFG)), store, "t") == {0: 2}
        with pytest.raises(WorkerHalted):  # and every later one, the shutdown's included
            await settler.checkpoint(FakeApp())
        assert metrics.halted._value.get() == 1

    asyncio.run(scenario())


def test_a_failing_store_is_retried_then_halts() -> None:
    import asyncio

    from stream.app import Settler, WorkerHalted

    async def scenario() -> None:
        core, store = WorkerCore(OnlineTrainer.create(CFG)), FlakyStore(fail=10)
        settler, metrics = settler_for(core, store)
        core.process(records([good(0)]))
        for _ in range(Settler.MAX_FAILURES - 1):
            assert await settler.checkpoint(FakeApp()) is None  # kept for the next try
        store.fail = 0
        assert await settler.checkpoint(FakeApp()) == {0: 1}  # the next try has it all
        assert restore(WorkerCore(OnlineTrainer.create(CFG)), store, "t") == {0: 1}
        assert metrics.checkpoint_failures._value.get() == Settler.MAX_FAILURES - 1
        store.fail = 10
        for _ in range(Settler.MAX_FAILURES - 1):
            await settler.checkpoint(FakeApp())
        with pytest.raises(WorkerHalted, match="in a row"):
            await settler.checkpoint(FakeApp())

    asyncio.run(scenario())


# -- the items topic: one item's text is that record's problem --------------------------------


def test_an_item_the_encoder_fails_on_is_its_own_dead_letter() -> None:
    from tests.unit.test_learning import content_trainer, text_of

    core = WorkerCore(content_trainer(content_init=False))
    calls: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        if any("boom" in t for t in texts):
            raise RuntimeError("the tokenizer choked")
        out = text_of(len(texts))
        out[[n for n, t in enumerate(texts) if "nan" in t]] = np.nan
        return out

    items = [(b"a", "lamp"), (b"b", "boom box"), (b"c", "desk"), (b"d", "nan bread")]
    out = core.add_items([RawRecord(json.dumps({"title": t}).encode(), 1000 + n, 0, n, key=k)
                          for n, (k, t) in enumerate(items)], encode)  # fmt: skip
    assert sorted(r.key for r in out.items) == ["a", "c"] and out.accepted == 2
    letters = [json.loads(d.payload) for d in out.dead_letters]
    assert [(x["reason"], x["offset"]) for x in letters] == [
        ("processing_error", 1), ("processing_error", 3)]  # fmt: skip
    assert "RuntimeError" in letters[0]["error"] and "NaN" in letters[1]["error"]
    assert out.failed_steps == 1 and len(calls) == 1 + len(items)  # the batch, then each


# -- the settler and the agents' guard -----------------------------------------------------------


class AckStream:
    def __init__(self) -> None:
        self.acked: list[object] = []

    async def ack(self, event: object) -> bool:
        self.acked.append(event)
        return True


def test_items_records_are_acked_only_once_a_checkpoint_holds_them() -> None:
    """faust's take_events acked an items record at once: a crash before the next checkpoint
    lost its content row for good. Now the settler acks them after a checkpoint."""
    import asyncio

    async def scenario() -> None:
        core, store = WorkerCore(OnlineTrainer.create(CFG)), FlakyStore(fail=1)
        settler, _ = settler_for(core, store)
        items = AckStream()
        settler.content.extend([(items, "item-1"), (items, "item-2")])
        assert settler.pending()
        await settler.settle(AckStream(), FakeApp())  # the commit fails: nothing acked
        assert items.acked == [] and len(settler.content) == 2
        await settler.settle(AckStream(), FakeApp())
        assert items.acked == ["item-1", "item-2"] and not settler.pending()

    asyncio.run(scenario())


def test_any_error_escaping_an_agent_halts_the_worker() -> None:
    from stream.app import WorkerHalted, halting

    core = WorkerCore(OnlineTrainer.create(CFG))
    settler, metrics = settler_for(core, MemoryStore())
    stopped: list[bool] = []
    settler.on_halt = lambda: stopped.append(True)
    guard = halting(settler, "the agent")
    with pytest.raises(WorkerHalted, match="the agent failed: KeyError"), guard:
        raise KeyError("metrics label")
    assert settler.halted and stopped == [True] and metrics.halted._value.get() == 1


@pytest.mark.parametrize(("name", "payload", "reason"), poison(), ids=[p[0] for p in poison()])
def test_poison_inside_a_batch_record_is_that_elements_letter(
    name: str, payload: bytes | None, reason: str
) -> None:
    """Every poison that still parses as JSON, put among 20 good events in one batch record:
    the good ones all train, and the poison is at most its own letter, at its index."""
    if payload is None:
        return
    goods = [good(n) for n in range(20)]
    body = b"[" + b",".join([*goods[:10], payload, *goods[10:]]) + b"]"
    try:
        json.loads(body)
    except (ValueError, RecursionError):
        return  # not JSON as a whole: the record is one letter (test_each_poison_...)
    if len(body) > MAX_BATCH_BYTES:
        return  # too large as a whole: the record is one letter
    core = WorkerCore(OnlineTrainer.create(CFG))
    out = core.process([RawRecord(body, 1000, partition=0, offset=5)])
    letters = [json.loads(d.payload) for d in out.dead_letters]
    assert out.accepted + len(letters) == 21 and out.accepted >= 20, (name, letters)
    assert all((x["offset"], x["index"]) == (5, 10) for x in letters), (name, letters)
    assert core.checkpoint_positions() == {0: (6, 0)}
