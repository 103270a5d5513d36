"""The walking skeleton end to end on a real broker: events in Kafka change recommendations."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from services.datagen import GeneratorConfig, InteractionGenerator, ItemInfo
from services.local import LocalPipeline
from services.producer import EventProducer
from stream.schemas import Interaction

pytestmark = pytest.mark.integration

GEN = InteractionGenerator(GeneratorConfig(users=150, items=600, clusters=6, seed=11))
HISTORY = [r for r in GEN.replay(4000) if isinstance(r, Interaction)]


def wait_for(check: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; bounded by ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


@pytest.fixture(scope="module")
def learnt(pipeline: LocalPipeline) -> LocalPipeline:
    """The pipeline after it has learnt a generated history."""
    with EventProducer(pipeline.bootstrap, pipeline.config.topics) as producer:
        for event in HISTORY:
            producer.send(event)
    assert wait_for(lambda: pipeline.consumed() >= len(HISTORY), timeout=120), (
        f"consumed {pipeline.consumed()} of {len(HISTORY)}; see {pipeline.log_path('worker')}"
    )
    return pipeline


def top_clusters(pipe: LocalPipeline, user: str) -> tuple[list[str], Counter[int]]:
    body = pipe.get(f"/recommendations/{user}?k=10")
    assert body["strategy"] == "personal"
    items = [i["item_id"] for i in body["items"]]
    return items, Counter(GEN.cluster_of(i) for i in items)


def test_recommendations_move_toward_what_the_user_just_interacted_with(
    learnt: LocalPipeline,
) -> None:
    activity = Counter(e.user_id for e in HISTORY)
    # a user with some history (a vector of its own), not one of the heaviest
    user = min((u for u, n in activity.items() if n >= 8), key=lambda u: (activity[u], u))
    assert wait_for(lambda: learnt.get(f"/recommendations/{user}")["strategy"] == "personal", 30)
    before_items, before = top_clusters(learnt, user)
    target = min(range(GEN.config.clusters), key=lambda c: (before[c], c))
    targets = sorted(GEN.items_in_cluster(target), key=lambda i: -GEN.item_pop[int(i[1:])])[:6]
    with EventProducer(learnt.bootstrap, learnt.config.topics) as producer:
        for n in range(12):
            kind = ("click", "like", "purchase")[n % 3]
            producer.send(Interaction(f"move-{n}", user, targets[n % 6], kind, 2e9 + n))

    def moved() -> Counter[int] | None:
        # the user's and the items' new vectors reach the replica on two topics, so an
        # intermediate top-10 may show only part of the move: wait for the whole of it
        _, now = top_clusters(learnt, user)
        return now if now[target] >= before[target] + 2 else None

    after = wait_for(moved, timeout=20)
    _, last = top_clusters(learnt, user)
    assert after, (
        f"{user}'s top-10 did not gain 2 cluster-{target} items in 20 s "
        f"(before {dict(before)}, last seen {dict(last)})"
    )


def test_malformed_events_land_in_the_dlq_and_the_worker_keeps_going(
    learnt: LocalPipeline,
) -> None:
    topics = learnt.config.topics
    bad = {
        b"{this is not json": "bad_json",
        json.dumps({"event_id": "x1", "user_id": "u", "item_id": "i", "type": "poke",
                    "ts": 1}).encode(): "bad_type",
        json.dumps({"event_id": "x2", "item_id": "i", "type": "view", "ts": 1}).encode():
            "missing_user_id",
    }  # fmt: skip
    with EventProducer(learnt.bootstrap, topics) as producer:
        for payload in bad:
            producer.send_raw(payload, key=b"bad")
        producer.send(Interaction("after-bad-1", "dlq-user", "dlq-item", "click", 2e9))

    # the valid event that came after the bad ones is learnt: its item becomes searchable
    def item_indexed() -> bool:
        try:
            learnt.get("/items/dlq-item/similar?k=1")
            return True
        except OSError:  # 404 until the vector arrives
            return False

    assert wait_for(item_indexed, timeout=20)
    assert learnt.alive("worker")

    consumer = KafkaConsumer(bootstrap_servers=learnt.bootstrap, group_id=None,
                             enable_auto_commit=False, consumer_timeout_ms=1000)  # fmt: skip
    tp = TopicPartition(topics.dlq, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    letters: dict[str, str] = {}
    deadline = time.monotonic() + 20
    while len(letters) < len(bad) and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            for r in records:
                body = json.loads(r.value)
                letters[body["payload"]] = body["reason"]
    consumer.close()
    assert letters == {payload.decode(): reason for payload, reason in bad.items()}
    for reason in set(bad.values()):
        assert (
            learnt.worker_metric(f'streambed_worker_dead_letters_total{{reason="{reason}"}}') >= 1
        )


def test_a_duplicated_event_is_applied_once(learnt: LocalPipeline) -> None:
    before_events = learnt.worker_metric("streambed_worker_events_total")
    before_dups = learnt.worker_metric("streambed_worker_duplicate_events_total")
    event = Interaction("dup-event-1", "dup-user", "dup-item", "like", 2e9)
    with EventProducer(learnt.bootstrap, learnt.config.topics) as producer:
        producer.send(event)
        producer.flush()
        producer.send(event)
    assert wait_for(
        lambda: learnt.worker_metric("streambed_worker_duplicate_events_total") >= before_dups + 1,
        timeout=20,
    )
    assert learnt.worker_metric("streambed_worker_events_total") == before_events + 1


def test_freshness_is_measured_and_exported(learnt: LocalPipeline) -> None:
    stats = learnt.get("/stats")
    assert stats["items"] > 0 and stats["users"] > 0
    fresh = stats["freshness_seconds"]
    assert fresh["samples"] > 0 and 0 <= fresh["p50"] <= fresh["p99"]
    import urllib.request

    with urllib.request.urlopen(learnt.api_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert 'streambed_api_freshness_seconds_count{kind="item"}' in text


def test_item_content_and_generated_titles_reach_the_items_topic(learnt: LocalPipeline) -> None:
    topics = learnt.config.topics
    info = next(r for r in GEN.replay(2000) if isinstance(r, ItemInfo))
    with EventProducer(learnt.bootstrap, topics) as producer:
        producer.send_item(info.item_id, {"title": info.title, "tags": list(info.tags)})
    consumer = KafkaConsumer(topics.items, bootstrap_servers=learnt.bootstrap, group_id=None,
                             auto_offset_reset="earliest", consumer_timeout_ms=10_000)  # fmt: skip
    found = next((json.loads(r.value) for r in consumer if r.key == info.item_id.encode()), None)
    consumer.close()
    assert found == {"item_id": info.item_id, "title": info.title, "tags": list(info.tags)}


def test_the_sdk_packs_events_into_batch_records_in_user_order(learnt: LocalPipeline) -> None:
    """The learnt history went out as batch records: fewer records than events, each one
    partition's events, every user's events on its key's partition and in the order sent;
    and one event alone leaves after the linger, with no flush."""
    from kafka.partitioner.default import murmur2

    topic = learnt.config.topics.interactions
    consumer = KafkaConsumer(bootstrap_servers=learnt.bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    records = []
    for _ in range(200):  # bounded: stops once a poll brings nothing more
        got = consumer.poll(timeout_ms=500, max_records=10_000)
        if not got and records:
            break
        records.extend(r for batch in got.values() for r in batch)
    mine = {e.event_id for e in HISTORY}
    per_user: dict[str, list[str]] = {}
    packed = 0
    for rec in records:
        if rec.value is None or not rec.value.startswith(b"["):  # the other tests' records
            continue
        body = json.loads(rec.value)
        packed += 1
        for event in body:
            if event["event_id"] in mine:
                user = event["user_id"]
                assert (murmur2(user.encode()) & 0x7FFFFFFF) % len(tps) == rec.partition
                per_user.setdefault(user, []).append(event["event_id"])
    expected: dict[str, list[str]] = {}
    for e in HISTORY:
        expected.setdefault(e.user_id, []).append(e.event_id)
    assert per_user == expected  # every event once, each user's in the order sent
    assert packed < len(HISTORY) / 10

    producer = EventProducer(learnt.bootstrap, learnt.config.topics, linger_ms=5)
    try:
        before = consumer.end_offsets(tps)
        producer.send(Interaction("lone-1", "lone-user", "i1", "click", 2e9))  # and no flush
        moved = lambda: [tp for tp in tps if consumer.end_offsets([tp])[tp] > before[tp]]  # noqa: E731
        (tp,) = wait_for(moved, timeout=10)
        consumer.seek(tp, before[tp])
        (rec,) = consumer.poll(timeout_ms=5000)[tp]
        assert [e["event_id"] for e in json.loads(rec.value)] == ["lone-1"]
    finally:
        producer.close()
        consumer.close()
