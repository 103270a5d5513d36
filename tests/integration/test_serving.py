"""Retrieval replicas on a real broker: side by side, saved and restored from an offset,
the event gateway producing to Kafka, and exclude-seen fed by the interactions topic."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.partitioner.default import murmur2
from prometheus_client import CollectorRegistry

from services.ann.index import IndexConfig
from services.ann.updater import TailerConfig, VectorTailer
from services.api.app import create_app
from services.api.gateway import KafkaSink
from services.api.metrics import ServingMetrics
from services.api.seen import SeenItems
from services.api.state import ServingState
from services.kafka.topics import ensure_topics
from services.producer import EventProducer
from stream.schemas import valid_events
from stream.topics import Topics
from stream.vectors import VectorRecord

pytestmark = pytest.mark.integration
DIM = 8


def wait_for(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return result


@pytest.fixture
def topics(kafka_bootstrap: str) -> Topics:
    names = Topics.with_prefix(f"s{uuid.uuid4().hex[:8]}-", partitions=2)
    ensure_topics(kafka_bootstrap, names)
    return names


class Replica:
    """A replica's state and tailer, in-process (the API process wires the same parts)."""

    def __init__(self, bootstrap: str, topics: Topics, config: TailerConfig, seen: bool = False,
                 popular_window: int = 0):  # fmt: skip
        self.registry = CollectorRegistry()
        self.metrics = ServingMetrics.create(self.registry)
        self.state = ServingState(DIM, IndexConfig(capacity=16, merge_chunk=4),
                                  seen=SeenItems() if seen else None,
                                  popular_window=popular_window)  # fmt: skip
        self.tailer = VectorTailer(bootstrap, topics, self.state, self.metrics, config)

    def __enter__(self) -> Replica:
        self.tailer.start()
        assert wait_for(self.tailer.caught_up.is_set), "replica did not catch up"
        return self

    def __exit__(self, *exc: object) -> None:
        self.tailer.stop()

    def applied(self) -> float:
        value = self.registry.get_sample_value(
            "streambed_api_vectors_applied_total", {"kind": "item"}
        )
        return value or 0.0


def send_vectors(bootstrap: str, topic: str, vectors: dict[str, np.ndarray | None]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    now = int(time.time() * 1000)
    for key, vec in vectors.items():
        value = None if vec is None else VectorRecord(key, vec, 1, now).encode()
        producer.send(topic, key=key.encode(), value=value)
    producer.flush()
    producer.close()


def vectors(n: int, seed: int, prefix: str = "i") -> dict[str, np.ndarray | None]:
    rng = np.random.default_rng(seed)
    return {f"{prefix}{j}": rng.standard_normal(DIM).astype(np.float32) for j in range(n)}


def test_two_replicas_side_by_side_serve_the_same_items(
    kafka_bootstrap: str, topics: Topics
) -> None:
    first = vectors(60, 1)
    send_vectors(kafka_bootstrap, topics.item_vectors, first)
    send_vectors(kafka_bootstrap, topics.item_vectors, {"i3": None})  # an eviction
    with Replica(kafka_bootstrap, topics, TailerConfig()) as a, \
            Replica(kafka_bootstrap, topics, TailerConfig()) as b:  # fmt: skip
        assert len(a.state.index) == len(b.state.index) == 59
        later = vectors(20, 2, prefix="new")
        send_vectors(kafka_bootstrap, topics.item_vectors, later)
        assert wait_for(lambda: len(a.state.index) == len(b.state.index) == 79)
        query = np.ones(DIM, dtype=np.float32)
        assert a.state.index.search(query, 10) == b.state.index.search(query, 10)
        assert "i3" not in a.state.index and "i3" not in b.state.index
        live = {k: v for k, v in (first | later).items() if k != "i3" and v is not None}
        keys = list(live)
        matrix = np.stack([live[k] for k in keys])
        exact = [keys[j] for j in np.argsort(-(matrix @ query))[:10]]
        assert [i for i, _ in a.state.index.search(query, 10)] == exact


def test_a_new_replica_loads_the_last_save_and_catches_up_from_its_offset(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    send_vectors(kafka_bootstrap, topics.item_vectors, vectors(100, 3))
    send_vectors(kafka_bootstrap, topics.user_vectors, vectors(5, 4, prefix="u"))
    saves = tmp_path / "replica-a"
    with Replica(kafka_bootstrap, topics, TailerConfig(save_dir=saves, save_seconds=3600)) as a:
        assert a.applied() == 100
    assert (saves / "LATEST").exists()  # written on stop
    moved = vectors(30, 5)  # i0..i29 move
    send_vectors(kafka_bootstrap, topics.item_vectors, moved | {"i99": None})
    config = TailerConfig(save_dir=tmp_path / "replica-b", load_dir=saves)
    with Replica(kafka_bootstrap, topics, config) as b:
        assert b.tailer.started_from == "snapshot"
        assert b.applied() == 30  # only what came after the save's offsets
        assert len(b.state.index) == 99 and "i99" not in b.state.index and b.state.users == 5
        assert np.allclose(b.state.index.vector("i7"), moved["i7"])
        restores = b.registry.get_sample_value("streambed_api_restores_total",
                                               {"result": "snapshot"})  # fmt: skip
        assert restores == 1


def test_a_save_that_does_not_fit_is_ignored_and_the_replica_rebuilds(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    send_vectors(kafka_bootstrap, topics.item_vectors, vectors(40, 6))
    saves = tmp_path / "saves"
    with Replica(kafka_bootstrap, topics, TailerConfig(save_dir=saves)):
        pass
    meta = next(saves.glob("snapshot-*")) / "index.json"
    body = json.loads(meta.read_text())
    meta.write_text(json.dumps({**body, "dim": DIM * 2}))  # written by a replica of another dim
    with Replica(kafka_bootstrap, topics, TailerConfig(save_dir=saves)) as b:
        assert b.tailer.started_from == "topics" and len(b.state.index) == 40
        assert b.registry.get_sample_value("streambed_api_restores_total",
                                           {"result": "rejected"}) == 1  # fmt: skip


def test_the_gateway_produces_to_kafka_and_the_replica_learns_what_was_seen(
    kafka_bootstrap: str, topics: Topics
) -> None:
    send_vectors(kafka_bootstrap, topics.item_vectors, vectors(10, 7))
    send_vectors(kafka_bootstrap, topics.user_vectors, {"u1": np.ones(DIM, dtype=np.float32)})
    with Replica(kafka_bootstrap, topics, TailerConfig(), seen=True, popular_window=100) as replica:
        sink = KafkaSink(EventProducer(kafka_bootstrap, topics))
        assert replica.state.popular(1)[0][1] == 1.0  # update counts: the window is empty
        app = create_app(replica.state, replica.registry, replica.metrics, sink=sink, token="t")
        client = TestClient(app)
        top = client.get("/recommendations/u1?k=3").json()["items"][0]["item_id"]
        events = [{"event_id": f"g{n}", "user_id": "u1", "item_id": top, "type": "click",
                   "ts": time.time()} for n in range(3)]  # fmt: skip
        sent_at = time.time()
        response = client.post("/events", json={"events": events},
                               headers={"Authorization": "Bearer t"})  # fmt: skip
        assert response.status_code == 202, response.text
        sink.close()
        assert wait_for(lambda: top in replica.state.seen_by("u1"))
        filtered = client.get("/recommendations/u1?k=3&exclude_seen=true").json()["items"]
        assert top not in {i["item_id"] for i in filtered} and len(filtered) == 3
        # the three clicks made it the most popular item now (the window follows the topic)
        assert replica.state.popular(1) == [(top, 3.0)]
        stranger = client.get("/recommendations/stranger?k=1").json()
        assert stranger["strategy"] == "popular" and stranger["items"][0]["item_id"] == top
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=None,
                             consumer_timeout_ms=5000)  # fmt: skip
    parts = [TopicPartition(topics.interactions, p) for p in range(2)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    got = [(r.partition, e, r.timestamp) for r in consumer for e in valid_events(r.value)]
    consumer.close()
    assert sorted(e.event_id for _, e, _ in got) == ["g0", "g1", "g2"]
    # packed into batch records on u1's partition (the SDK's, as a keyed record would be)
    (partition,) = {p for p, _, _ in got}
    assert partition == (murmur2(b"u1") & 0x7FFFFFFF) % 2
    assert all(e.user_id == "u1" and ts / 1000 >= sent_at - 1 for _, e, ts in got)


def test_a_save_older_than_the_seen_window_still_loads_and_reads_on_from_its_offset(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    send_vectors(kafka_bootstrap, topics.item_vectors, vectors(10, 8))
    saves = tmp_path / "saves"

    def send_events(items: list[str]) -> None:
        with EventProducer(kafka_bootstrap, topics) as producer:
            for n, item in enumerate(items):
                producer.send({"event_id": f"{item}-{n}", "user_id": "u1", "item_id": item,
                               "type": "view", "ts": time.time()})  # fmt: skip

    send_events(["i1", "i2"])
    with Replica(kafka_bootstrap, topics, TailerConfig(save_dir=saves), seen=True) as a:
        assert wait_for(lambda: a.state.seen_by("u1") == {"i1", "i2"})
    send_events(["i3"])  # after the save
    time.sleep(1.5)
    # a replica without a save would read only the last 0.5 s of interactions (none)
    config = TailerConfig(save_dir=saves, seen_seconds=0.5)
    with Replica(kafka_bootstrap, topics, config, seen=True) as b:
        assert b.tailer.started_from == "snapshot"
        assert wait_for(lambda: b.state.seen_by("u1") == {"i1", "i2", "i3"})
