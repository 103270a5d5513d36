"""POST /events and the recommendation filters, in-process (the gateway's sink is a list here;
tests/integration/test_serving.py sends through a real broker)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from services.api.app import create_app
from services.api.gateway import MAX_BATCH, MAX_BODY_BYTES, GatewayUnavailable, MemorySink
from services.api.metrics import ServingMetrics
from services.api.seen import SeenItems
from services.api.state import ServingState
from stream.schemas import Interaction
from stream.vectors import VectorRecord

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def event(n: int, **over: object) -> dict[str, object]:
    return {"event_id": f"e{n}", "user_id": "u1", "item_id": f"i{n}", "type": "click",
            "ts": 1.0 + n, **over}  # fmt: skip


def make_state() -> ServingState:
    state = ServingState(dim=2, seen=SeenItems(per_user=10))
    vec = lambda *x: np.array(x, dtype=np.float32)  # noqa: E731
    state.apply_items(
        [VectorRecord("a", vec(1, 0), 3, 0), VectorRecord("b", vec(0.9, 0.3), 7, 0),
         VectorRecord("c", vec(0, 1), 1, 0)],
        now_ms=0,
    )  # fmt: skip
    state.apply_users([VectorRecord("u1", vec(1, 0), 1, 0)], now_ms=0)
    return state


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
def client(sink: MemorySink) -> TestClient:
    registry = CollectorRegistry()
    app = create_app(make_state(), registry, ServingMetrics.create(registry), sink=sink,
                     token=TOKEN)  # fmt: skip
    return TestClient(app)


def test_a_valid_batch_is_produced_whole(client: TestClient, sink: MemorySink) -> None:
    response = client.post("/events", json={"events": [event(1), event(2, weight=2)]},
                           headers=AUTH)  # fmt: skip
    assert response.status_code == 202 and response.json() == {"accepted": 2}
    assert [e.event_id for e in sink.events] == ["e1", "e2"]
    assert sink.events[1] == Interaction("e2", "u1", "i2", "click", 3.0, None, 2.0)


def test_a_batch_with_an_invalid_event_is_refused_whole_with_every_reason(
    client: TestClient, sink: MemorySink
) -> None:
    bad = [event(1), event(2, type="poke"), {"user_id": "u"}, event(4, ts=-1)]
    response = client.post("/events", json={"events": bad}, headers=AUTH)
    assert response.status_code == 400
    body = response.json()
    assert [(r["index"], r["reason"]) for r in body["rejected"]] == [
        (1, "bad_type"), (2, "missing_event_id"), (3, "bad_ts")]  # fmt: skip
    assert "3 of 4 events are invalid" in body["detail"]
    assert sink.events == []  # nothing produced
    metrics = client.get("/metrics").text
    assert 'streambed_api_gateway_events_rejected_total{reason="bad_type"} 1.0' in metrics


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b"{not json", "not valid JSON"), (b"[]", "must be a JSON object"),
     (json.dumps({"events": []}).encode(), "1..1000"),
     (json.dumps({"events": [event(n) for n in range(MAX_BATCH + 1)]}).encode(), "1..1000")],
)  # fmt: skip
def test_malformed_bodies_are_400_with_a_reason(
    client: TestClient, body: bytes, reason: str
) -> None:
    response = client.post("/events", content=body, headers=AUTH)
    assert response.status_code == 400 and reason in response.json()["detail"]


def test_the_gateway_needs_the_token(client: TestClient, sink: MemorySink) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = client.post("/events", json={"events": [event(1)]}, headers=headers)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert sink.events == []


def test_an_oversized_body_is_413(client: TestClient) -> None:
    response = client.post("/events", content=b" " * (MAX_BODY_BYTES + 1), headers=AUTH)
    assert response.status_code == 413

    def chunked() -> Iterator[bytes]:  # no content-length: counted while it streams in
        for _ in range(3):
            yield b" " * (MAX_BODY_BYTES // 2)

    response = client.post("/events", content=chunked(), headers=AUTH)
    assert response.status_code == 413 and "limit" in response.json()["detail"]


def test_without_a_token_the_gateway_is_off_and_cannot_be_turned_on() -> None:
    registry = CollectorRegistry()
    off = TestClient(create_app(make_state(), registry, ServingMetrics.create(registry)))
    assert off.post("/events", json={"events": [event(1)]}).status_code == 503
    with pytest.raises(ValueError, match="token"):
        create_app(make_state(), registry, ServingMetrics.create(CollectorRegistry()),
                   sink=MemorySink())  # fmt: skip


def test_a_broker_that_does_not_answer_is_503() -> None:
    class DownSink:
        def send(self, events: object) -> None:
            raise GatewayUnavailable("the broker did not acknowledge the batch: KafkaTimeoutError")

    registry = CollectorRegistry()
    app = create_app(make_state(), registry, ServingMetrics.create(registry), sink=DownSink(),
                     token=TOKEN)  # fmt: skip
    response = TestClient(app).post("/events", json={"events": [event(1)]}, headers=AUTH)
    assert response.status_code == 503 and "KafkaTimeoutError" in response.json()["detail"]


def test_recommendations_leave_out_excluded_and_seen_items() -> None:
    state = make_state()
    registry = CollectorRegistry()
    client = TestClient(create_app(state, registry, ServingMetrics.create(registry)))
    top = lambda url: [i["item_id"] for i in client.get(url).json()["items"]]  # noqa: E731
    assert top("/recommendations/u1?k=3") == ["a", "b", "c"]
    assert top("/recommendations/u1?k=3&exclude=a&exclude=c") == ["b"]
    assert top("/recommendations/u1?k=2&exclude_seen=true") == ["a", "b"]  # nothing seen yet
    state.apply_events([("u1", "a"), ("u2", "b")])
    assert top("/recommendations/u1?k=2&exclude_seen=true") == ["b", "c"]
    assert top("/recommendations/stranger?k=2&exclude=b") == ["a", "c"]  # popularity, filtered
    assert top("/items/a/similar?k=2&exclude=b") == ["c"]
    stats = client.get("/stats").json()
    assert stats["index_fresh_items"] == 3 and stats["index_graph_nodes"] == 0
