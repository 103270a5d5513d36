"""Exactly once, proved on a real broker: kill -9 the worker mid-stream, repeatedly.

One worker is killed with SIGKILL five times (and restarted each time) while
events arrive in two phases: three kills at random moments, two inside a
checkpoint (a fault hook holds each checkpoint 0.4 s after the producer's flush,
before the RocksDB commit, and marks a file when it does); a second worker consumes the same
topic without interruption. When both have checkpointed the end of the topic,
their RocksDB states must be bit-for-bit equal: every row, its optimizer state,
update count and slot, the admission filters, the frequency estimate and the
de-duplication window. Admission (min count 2) and TTL expiry are on, so both
take part, and the stream carries malformed records and duplicated event ids.
"""

from __future__ import annotations

import json
import random
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from paramserver.checkpoint import FILTER, decode_table
from paramserver.stores.rocks import RocksStore
from services.datagen import GeneratorConfig, InteractionGenerator
from services.kafka.topics import ensure_topics
from services.local import metric_sum
from services.producer import EventProducer
from stream.checkpoint import FREQ_ROW, OFFSETS, SEEN_ROW, TRAINER
from stream.core import WorkerCore
from stream.schemas import Interaction
from stream.topics import Topics
from stream.training import OnlineTrainer, TrainConfig
from tests.integration.processes import WorkerProcess

pytestmark = pytest.mark.integration

TRAIN = TrainConfig(dim=16, negatives=16, min_count=2, ttl_seconds=300.0)
WORKER_ARGS = [
    "--dim", "16", "--negatives", "16", "--min-count", "2", "--ttl-seconds", "300",
    "--batch-size", "128", "--batch-ms", "50", "--checkpoint-seconds", "1",
    "--idle-grace-ms", "300", "--partitions", "1", "--session-timeout", "6",
]  # fmt: skip


def stream_records(n: int) -> list[bytes]:
    gen = InteractionGenerator(GeneratorConfig(users=120, items=500, clusters=6, seed=5))
    events = [r.to_json() for r in gen.replay(n) if isinstance(r, Interaction)]
    rng = random.Random(5)
    out: list[bytes] = []
    for payload in events:
        out.append(payload)
        roll = rng.random()
        if roll < 0.01:
            out.append(b'{"event_id": "broken')  # malformed: dead-lettered
        elif roll < 0.03:
            out.append(payload)  # a redelivered event: same event_id
    return out


class Worker(WorkerProcess):
    def __init__(self, bootstrap: str, prefix: str, app_id: str, state: Path, log: Path) -> None:
        super().__init__([
            sys.executable, "-m", "services.cli", "--log-level", "WARNING", "worker",
            "--bootstrap", bootstrap, "--topic-prefix", prefix, "--app-id", app_id,
            "--state-dir", str(state), *WORKER_ARGS,
        ], log)  # fmt: skip
        self.db = state / app_id

    def processed(self) -> float:
        try:
            return sum(
                metric_sum(self.metrics_url, name)
                for name in ("streambed_worker_events_total",
                             "streambed_worker_dead_letters_total",
                             "streambed_worker_duplicate_events_total")
            )  # fmt: skip
        except OSError:
            return 0.0

    def checkpointed(self) -> int:
        """The interactions offset the durable state reflects (-1: no checkpoint yet)."""
        try:
            store = RocksStore(self.db, read_only=True)
        except Exception:  # noqa: BLE001 - not created yet, or mid-creation
            return -1
        try:
            raw = store.get(OFFSETS)
            return -1 if raw is None else int(json.loads(raw)["partitions"].get("0", -1))
        finally:
            store.close()

    def wait_checkpointed(self, offset: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.checkpointed() < offset:
            assert self.proc is not None and self.proc.poll() is None, f"worker died; {self.log}"
            assert time.monotonic() < deadline, (
                f"checkpoint at {self.checkpointed()}, wanted {offset}; see {self.log}"
            )
            time.sleep(0.25)


def latest_per_key(bootstrap: str, topic: str) -> dict[str, bytes | None]:
    """The last value of every key on a topic (None: a tombstone), read to its end."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        latest: dict[str, bytes | None] = {}
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < end[tp] for tp in tps):
            assert time.monotonic() < deadline, "could not read the vector topic to its end"
            for records in consumer.poll(timeout_ms=500).values():
                for rec in records:
                    latest[rec.key.decode()] = rec.value
        return latest
    finally:
        consumer.close()


def durable_state(db: Path) -> dict[str, object]:
    """Everything the checkpoint holds, decoded, for an exact comparison."""
    store = RocksStore(db, read_only=True)
    try:
        core = WorkerCore(OnlineTrainer.create(TRAIN))
        ps = core.trainer.ps
        state: dict[str, object] = {}
        for name in ("users", "items"):
            delta = decode_table(ps, name, store)  # type: ignore[arg-type]
            c = delta.changes
            order = np.argsort(c.keys)
            state[name] = {
                "keys": c.keys[order].tolist(),
                "strings": [delta.strings[i] for i in order],
                "slots": c.slots[order].tolist(),
                "rows": c.rows[order].tobytes(),
                "state": c.state[order].tobytes(),
                "updates": c.updates[order].tolist(),
                "last": c.last_update[order].tolist(),
                "high": delta.high_water,
            }
            state[f"filter-{name}"] = store.get(FILTER + name.encode())
        state["frequency"] = list(store.scan(FREQ_ROW))
        state["seen"] = list(store.scan(SEEN_ROW))
        state["trainer"] = store.get(TRAINER)
        state["offsets"] = store.get(OFFSETS)
        return state
    finally:
        store.close()


def test_kill_9_mid_stream_leaves_the_tables_of_an_uninterrupted_run(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    prefix = f"x{tag}-"
    topics = Topics.with_prefix(prefix, partitions=1)
    ensure_topics(kafka_bootstrap, topics)
    records = stream_records(19_000)
    half = len(records) // 2
    # sent in this order: the first half, 2,000 before the first kill inside a checkpoint,
    # the rest but 2,000 while the worker is down, the last 2,000 before the second such kill
    chunks = [records[half : half + 2_000], records[-2_000:]]
    second = records[half + 2_000 : -2_000]
    rng = random.Random(7)
    began = time.monotonic()

    crashed = Worker(kafka_bootstrap, prefix, f"crash-{tag}", tmp_path, tmp_path / "crash.log")
    mark = tmp_path / "in-checkpoint"
    crashed.env = {"STREAMBED_FAULT_CHECKPOINT_PAUSE_S": "0.4", "STREAMBED_FAULT_MARK": str(mark)}
    inside = 0  # kills that landed inside a checkpoint
    redone = 0.0  # records a killed worker had processed past its last durable checkpoint
    try:
        with EventProducer(kafka_bootstrap, topics) as producer:
            for payload in records[:half]:  # a backlog: the worker is busy whenever it is killed
                producer.send_raw(payload)
            producer.flush()
            crashed.start()
            start = 0
            for kill in range(5):
                crashed.wait_checkpointed(start + 1, timeout=120)  # durable progress first
                processed = crashed.processed()  # a lower bound: scraped before the kill
                if kill in (1, 3):  # inside the next checkpoint, before it commits
                    mark.unlink(missing_ok=True)
                    # records the worker has not seen, so that a checkpoint is due however
                    # fast it got through the backlog (a worker that caught up writes none)
                    fresh = chunks.pop(0)
                    for payload in fresh:
                        producer.send_raw(payload)
                    producer.flush()
                    deadline = time.monotonic() + 30
                    while not mark.exists():
                        assert time.monotonic() < deadline, "no checkpoint began"
                        time.sleep(0.01)
                    time.sleep(rng.uniform(0.0, 0.2))
                    before = crashed.checkpointed()
                    crashed.kill9()
                    inside += crashed.checkpointed() == before  # it never committed
                else:
                    time.sleep(rng.uniform(0.0, 1.0))  # a random moment between checkpoints
                    crashed.kill9()
                durable = crashed.checkpointed()
                redone += start + processed - durable
                start = durable
                if kill == 1:  # the second phase arrives while the worker is down
                    for payload in second:
                        producer.send_raw(payload)
                    producer.flush()
                crashed.start()
        crashed.wait_checkpointed(len(records), timeout=240)
    finally:
        crashed.stop()

    crash_seconds = time.monotonic() - began
    steady = Worker(kafka_bootstrap, prefix, f"steady-{tag}", tmp_path, tmp_path / "steady.log")
    try:
        steady.start()
        steady.wait_checkpointed(len(records), timeout=240)
    finally:
        steady.stop()

    assert crashed.checkpointed() == steady.checkpointed() == len(records)
    a, b = durable_state(crashed.db), durable_state(steady.db)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == b[key], f"{key} differs between the killed and the steady worker"
    users, items = a["users"], a["items"]
    # (how many rows survive expiry depends on which rows were sampled as negatives late on)
    assert len(users["keys"]) >= 5 and len(items["keys"]) >= 20  # type: ignore[index]
    assert a["filter-items"] is not None  # admission was on and is part of the state
    assert users["high"] > len(users["keys"])  # type: ignore[index]  # expiry freed slots
    # evictions were published: ids whose last record is a tombstone have no row
    latest = latest_per_key(kafka_bootstrap, topics.item_vectors)
    evicted = {key for key, value in latest.items() if value is None}
    assert evicted and not evicted & set(items["strings"])  # type: ignore[index]
    # the kills landed mid-stream: work past a checkpoint was lost and done again, not twice
    assert redone > 0, "no kill landed between checkpoints; the test proved nothing"
    assert inside == 2, "a kill meant for inside a checkpoint missed it"
    n_users, n_items = len(users["keys"]), len(items["keys"])  # type: ignore[index]
    steady_seconds = time.monotonic() - began - crash_seconds
    print(
        f"{len(records)} records; 5 kills ({inside} inside a checkpoint); {redone:.0f} "
        f"processed past a checkpoint before a kill and redone; killed run {crash_seconds:.0f} "
        f"s, steady run {steady_seconds:.0f} s; "
        f"rows users={n_users} items={n_items}"
    )


def test_a_checkpoint_ahead_of_its_topic_is_refused(kafka_bootstrap: str) -> None:
    from services.kafka.topics import checkpoint_mismatch

    topics = Topics.with_prefix(f"m{uuid.uuid4().hex[:8]}-", partitions=1)
    ensure_topics(kafka_bootstrap, topics)
    with EventProducer(kafka_bootstrap, topics) as producer:
        for n in range(5):
            producer.send_raw(b"x%d" % n)
    assert checkpoint_mismatch(kafka_bootstrap, topics.interactions, {0: 5}) is None
    ahead = checkpoint_mismatch(kafka_bootstrap, topics.interactions, {0: 9})
    assert ahead and "recreated" in ahead and "checkpoint 9 > end 5" in ahead
    extra = checkpoint_mismatch(kafka_bootstrap, topics.interactions, {0: 1, 3: 1})
    assert extra and "[3]" in extra
    assert checkpoint_mismatch(kafka_bootstrap, "no-such-topic-" + uuid.uuid4().hex, {0: 1}) is None


def test_a_clean_stop_checkpoints_the_work_done(kafka_bootstrap: str, tmp_path: Path) -> None:
    """SIGTERM mid-backlog: the durable state covers what was processed, not an old checkpoint."""
    tag = uuid.uuid4().hex[:8]
    prefix = f"q{tag}-"
    topics = Topics.with_prefix(prefix, partitions=1)
    ensure_topics(kafka_bootstrap, topics)
    records = stream_records(19_000)
    with EventProducer(kafka_bootstrap, topics) as producer:
        for payload in records:
            producer.send_raw(payload)
    worker = Worker(kafka_bootstrap, prefix, f"stop-{tag}", tmp_path, tmp_path / "stop.log")
    worker.args += ["--checkpoint-seconds", "3600"]  # no periodic checkpoint while busy
    try:
        worker.start()
        deadline = time.monotonic() + 120
        while worker.processed() < 2000:
            assert worker.proc is not None and worker.proc.poll() is None, f"see {worker.log}"
            assert time.monotonic() < deadline, f"no progress; see {worker.log}"
            time.sleep(0.2)
        assert worker.checkpointed() == -1  # busy: nothing durable yet
        processed = worker.processed()
    finally:
        worker.stop()  # SIGTERM
    durable = worker.checkpointed()
    assert processed <= durable < len(records), (processed, durable)
