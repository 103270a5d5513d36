"""More workers, exactly once: two scale-out workers, each killed with SIGKILL mid-stream.

Two ``worker --scale-out`` processes share the user and item stages' partitions (four of
each) while events arrive, with malformed records among them. Each is killed -9 once and
restarted while the other keeps working, so partitions move both ways and a restarted
worker reads its rows back from the changelog topics. The second kill lands inside an open
transaction (a fault hook holds each of that worker's commits 0.4 s after everything is
sent and marks a file), so its outputs, rows and offsets were on the broker, uncommitted,
and must be aborted and redone. When every committed offset has
reached the end of its topic, each user's row must have learnt exactly that user's valid
events, and each item's row exactly the positives it was given: no event lost, none
applied twice. Every user and item also has a served vector.
"""

from __future__ import annotations

import os
import random
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from services.datagen import GeneratorConfig, InteractionGenerator
from services.kafka.topics import committed_lag, ensure_topics
from services.local import metric_sum
from services.producer import EventProducer
from stream.bootstrap import BootstrapConfig, bootstrap
from stream.schemas import DEFAULT_TYPE_WEIGHTS, Interaction, training_weight
from stream.split import Rows, by_table
from stream.topics import Topics
from stream.training import ITEMS, USERS
from tests.integration.processes import WorkerProcess

pytestmark = pytest.mark.integration

DIM = 16
LOG_LEVEL = os.environ.get("STREAMBED_TEST_WORKER_LOG", "WARNING")  # INFO: restores, moves
WORKER_ARGS = [
    "--dim", str(DIM), "--negatives", "8", "--batch-size", "128", "--batch-ms", "50",
    "--partitions", "4", "--session-timeout", "6", "--content-encoder", "none",
]  # fmt: skip


class Worker(WorkerProcess):
    def __init__(self, bootstrap: str, prefix: str, app_id: str, log: Path) -> None:
        super().__init__([
            sys.executable, "-m", "services.cli", "--log-level", LOG_LEVEL, "worker",
            "--scale-out", "--bootstrap", bootstrap, "--topic-prefix", prefix,
            "--app-id", app_id, *WORKER_ARGS,
        ], log)  # fmt: skip


def records(n: int, seed: int = 11) -> tuple[list[Interaction], list[bytes]]:
    """Valid events and, among them, the raw bytes of a few malformed records."""
    gen = InteractionGenerator(GeneratorConfig(users=150, items=400, clusters=6, seed=seed))
    events = [e for e in gen.replay(n) if isinstance(e, Interaction)]
    events = list({e.event_id: e for e in events}.values())  # one of each id
    rng = random.Random(seed)
    poison = [b'{"event_id": "cut', b"[1,2", b'{"user_id": 7}']
    return events, [rng.choice(poison) for _ in range(n // 200)]


def read_all(bootstrap: str, topic: str) -> dict[bytes, bytes | None]:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
        isolation_level="read_committed", consumer_timeout_ms=3000,
    )  # fmt: skip
    try:
        return {rec.key: rec.value for rec in consumer}
    finally:
        consumer.close()


def learnt_counts(rows: dict[bytes, bytes | None], table: str) -> dict[str, int]:
    live = {i: v for i, v in by_table(rows.items()).get(table, {}).items() if v is not None}
    decoded = Rows.decode(live, DIM)
    return dict(zip(decoded.ids, decoded.events.tolist(), strict=True))


def test_two_workers_killed_mid_stream_apply_each_event_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    prefix, app_id = f"so{tag}-", f"so-{tag}"
    topics = Topics.with_prefix(prefix, partitions=4)
    ensure_topics(kafka_bootstrap, topics, scale_out=True)
    events, poison = records(6000)
    workers = [Worker(kafka_bootstrap, prefix, app_id, tmp_path / f"w{i}.log") for i in (0, 1)]
    mark = tmp_path / "in-transaction"
    workers[0].env = {"STREAMBED_FAULT_CHECKPOINT_PAUSE_S": "0.4",
                      "STREAMBED_FAULT_MARK": str(mark)}  # fmt: skip
    producer = EventProducer(kafka_bootstrap, topics)
    try:
        for w in workers:
            w.start()
        chunks = [events[i : i + 500] for i in range(0, len(events), 500)]
        plan = {3: 1, 7: 0}  # after these chunks, kill -9 this worker and start it again
        for n, chunk in enumerate(chunks):
            producer.deliver(chunk)
            if n == 2:
                for payload in poison:
                    producer.send_raw(payload)
            time.sleep(0.4)
            if n in plan:
                w = workers[plan[n]]
                if w is workers[0]:  # inside a commit: wait for the next one to begin
                    mark.unlink(missing_ok=True)
                    deadline = time.monotonic() + 30
                    while not mark.exists():
                        assert time.monotonic() < deadline, "no transaction began"
                        time.sleep(0.01)
                w.kill9()
                w.env = {}  # restarted without the fault hook
                w.start()
        producer.flush()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert all(w.alive() for w in workers), [w.log.read_text()[-3000:] for w in workers]
            lags = (
                committed_lag(kafka_bootstrap, f"{app_id}-scale-out", topics.interactions, 4),
                committed_lag(kafka_bootstrap, f"{app_id}-scale-out", topics.gradients, 4),
            )
            if lags == (0, 0):
                break
            time.sleep(1.0)
        else:
            pytest.fail(f"the workers did not catch up: lags {lags}")
        time.sleep(1.0)  # a last gradient commit may still reach the item stage
        assert committed_lag(kafka_bootstrap, f"{app_id}-scale-out", topics.gradients, 4) == 0
    finally:
        producer.close()
        for w in workers:
            w.stop()
    users_expected = Counter(e.user_id for e in events)
    items_expected = Counter(
        e.item_id for e in events if training_weight(e, DEFAULT_TYPE_WEIGHTS) > 0
    )
    users = learnt_counts(read_all(kafka_bootstrap, topics.user_rows), USERS)
    items = learnt_counts(read_all(kafka_bootstrap, topics.item_rows), ITEMS)
    assert users == dict(users_expected)
    assert {i: n for i, n in items.items() if n} == dict(items_expected)
    user_vectors = read_all(kafka_bootstrap, topics.user_vectors)
    item_vectors = read_all(kafka_bootstrap, topics.item_vectors)
    assert {k.decode() for k in user_vectors} == set(users_expected)
    assert set(items_expected) <= {k.decode() for k in item_vectors}
    letters = read_all(kafka_bootstrap, topics.dlq)
    assert letters, "the malformed records were dead-lettered"


def test_workers_start_from_a_bootstrap_once_per_partition(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Two workers started together with --init-from: each partition's users and items are
    seeded from the bootstrap exactly once (whoever owns it first), published, and carried
    through the changelog: an item's count is the bootstrap's history plus what it learnt."""
    gen = InteractionGenerator(GeneratorConfig(users=60, items=150, clusters=4, seed=3))
    history = [e for e in gen.replay(2000) if isinstance(e, Interaction)]
    boot = bootstrap(history, {}, BootstrapConfig(dim=DIM, epochs=1))
    boot_file = tmp_path / "boot.pt"
    boot.save(boot_file)
    tag = uuid.uuid4().hex[:8]
    prefix, app_id = f"sb{tag}-", f"sb-{tag}"
    topics = Topics.with_prefix(prefix, partitions=4)
    ensure_topics(kafka_bootstrap, topics, scale_out=True)
    workers = [Worker(kafka_bootstrap, prefix, app_id, tmp_path / f"w{i}.log") for i in (0, 1)]
    for w in workers:
        w.args += ["--init-from", str(boot_file)]
    fresh = [e for e in records(1500, seed=4)[0] if e.item_id in set(boot.items)]
    producer = EventProducer(kafka_bootstrap, topics)
    try:
        for w in workers:
            w.start()
        deadline = time.monotonic() + 120
        while set(boot.users) - {k.decode() for k in read_all(kafka_bootstrap,
                                                                topics.user_vectors)}:  # fmt: skip
            assert time.monotonic() < deadline, "the bootstrap's users were not published"
            assert all(w.alive() for w in workers), [w.log.read_text()[-3000:] for w in workers]
            time.sleep(1.0)
        producer.deliver(fresh)
        group = f"{app_id}-scale-out"
        while (committed_lag(kafka_bootstrap, group, topics.interactions, 4),
               committed_lag(kafka_bootstrap, group, topics.gradients, 4)) != (0, 0):
            assert time.monotonic() < deadline + 60, "the workers did not catch up"
            time.sleep(1.0)
        # the dashboards' parameter-server series come from the workers' stages too
        time.sleep(0.5)
        rows = sum(metric_sum(w.metrics_url, "streambed_ps_rows") for w in workers)
        calls = sum(metric_sum(w.metrics_url, "streambed_ps_requests_total") for w in workers)
        assert rows >= len(boot.users) + len(boot.items) and calls > 0, (rows, calls)
    finally:
        producer.close()
        for w in workers:
            w.stop()
    boot_counts = dict(zip(boot.items, boot.item_counts.astype(int).tolist(), strict=True))
    learnt = Counter(e.item_id for e in fresh if training_weight(e, DEFAULT_TYPE_WEIGHTS) > 0)
    items = learnt_counts(read_all(kafka_bootstrap, topics.item_rows), ITEMS)
    assert {i: n for i, n in items.items() if n} == {
        i: boot_counts.get(i, 0) + learnt[i] for i in set(boot_counts) | set(learnt)
        if boot_counts.get(i, 0) + learnt[i]}  # fmt: skip
    users = learnt_counts(read_all(kafka_bootstrap, topics.user_rows), USERS)
    assert set(boot.users) <= set(users)
    assert {k.decode() for k in read_all(kafka_bootstrap, topics.item_vectors)} >= set(boot.items)
