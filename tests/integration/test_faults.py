"""Faults on a real broker: poison of every class, the broker gone for 20 s, topics that
are not the pipeline's, and a replica whose save was cut short.

The worker runs as `streambed worker` in its own process (tests/integration/
test_exactly_once.py has the kill -9 trials); each test has its own topics.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from services.kafka.broker import BrokerConfig, BrokerError, LocalBroker, free_port
from services.kafka.topics import TopicMismatch, prepare_topics
from services.local import metric_sum
from services.poison import poison
from services.producer import EventProducer
from stream.checkpoint import SEEN_ROW
from stream.topics import Topics
from stream.vectors import VectorRecord
from tests.integration.test_exactly_once import (
    TRAIN,
    Worker,
    durable_state,
    latest_per_key,
    stream_records,
)

pytestmark = pytest.mark.integration


def read_topic(bootstrap: str, topic: str, timeout: float = 60) -> list[bytes | None]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: list[bytes | None] = []
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < end[tp] for tp in tps):
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for records in consumer.poll(timeout_ms=500).values():
                out.extend(r.value for r in records)
        return out
    finally:
        consumer.close()


def seen_ids(db: Path) -> set[str]:
    from paramserver.stores.rocks import RocksStore

    store = RocksStore(db, read_only=True)
    try:
        return {key[len(SEEN_ROW) :].decode() for key, _ in store.scan(SEEN_ROW)}
    finally:
        store.close()


def test_poison_of_every_class_among_good_events(kafka_bootstrap: str, tmp_path: Path) -> None:
    """The report's hostile producer, again: every good event learnt, every bad one
    dead-lettered with its reason, the metrics agree, and the worker never went down."""
    tag = uuid.uuid4().hex[:8]
    prefix = f"p{tag}-"
    topics = Topics.with_prefix(prefix, partitions=1)
    good = [r for r in stream_records(3000) if b"broken" not in r]
    good = list(dict.fromkeys(good))  # no duplicates: every one must be learnt
    bad: list[tuple[str, bytes | None, str]] = []
    for round_ in range(3):  # three of each class, spread through the stream
        bad += poison(f"{tag}{round_}")
    worker = Worker(kafka_bootstrap, prefix, f"poison-{tag}", tmp_path, tmp_path / "w.log")
    worker.start()  # before its topics exist: it creates them (the broker does not)
    try:
        deadline = time.monotonic() + 90
        while not prepare_topics_exist(kafka_bootstrap, topics):
            assert worker.proc is not None and worker.proc.poll() is None, worker.log.read_text()
            assert time.monotonic() < deadline, "the worker did not create its topics"
            time.sleep(0.5)
        stride = len(good) // len(bad)
        total = 0
        with EventProducer(kafka_bootstrap, topics) as producer:
            for n, payload in enumerate(good):
                producer.send_raw(payload)
                total += 1
                if n % stride == 0 and n // stride < len(bad):
                    _, value, _ = bad[n // stride]
                    # (a null value needs a key: Kafka refuses a record with neither)
                    producer._producer.send(topics.interactions, key=b"k", value=value)
                    total += 1
            producer.flush()
        worker.wait_checkpointed(total, timeout=180)
        assert worker.proc is not None and worker.proc.poll() is None, "the worker went down"
        learnt = metric_sum(worker.metrics_url, "streambed_worker_events_total")
        dead = metric_sum(worker.metrics_url, "streambed_worker_dead_letters_total")
    finally:
        worker.stop()
    letters = [json.loads(v) for v in read_topic(kafka_bootstrap, topics.dlq) if v is not None]
    assert Counter(x["reason"] for x in letters) == Counter(reason for *_, reason in bad)
    assert max(len(json.dumps(x)) for x in letters) < 64 * 1024
    assert (learnt, dead) == (len(good), len(bad))
    wanted = {json.loads(p)["event_id"] for p in good}
    assert seen_ids(worker.db) == wanted  # each good event, in the durable state
    log = worker.log.read_text()
    assert "Traceback" not in log and "halted" not in log, log[-3000:]


def prepare_topics_exist(bootstrap: str, topics: Topics) -> bool:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return topics.interactions in admin.list_topics()
    finally:
        admin.close()


def test_topics_with_the_wrong_settings_are_refused(kafka_bootstrap: str) -> None:
    topics = Topics.with_prefix(f"r{uuid.uuid4().hex[:8]}-", partitions=2)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:  # as a broker's auto-creation would leave them: 1 partition, not compacted
        admin.create_topics([NewTopic(topics.interactions, 1, 1),
                             NewTopic(topics.item_vectors, 2, 1)])  # fmt: skip
    finally:
        admin.close()
    with pytest.raises(TopicMismatch) as err:
        prepare_topics(kafka_bootstrap, topics)
    message = str(err.value)
    assert "interactions has 1 partitions" in message and "cleanup.policy=delete" in message
    # and the project's broker does not create a topic on first use
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, max_block_ms=3000)
    try:
        with pytest.raises(Exception):  # noqa: B017 - KafkaTimeoutError: no such topic
            producer.send(f"nobody-made-{uuid.uuid4().hex}", b"x").get(timeout=5)
    finally:
        producer.close(timeout=5)


def test_interactions_are_stamped_by_the_broker(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The pipeline's interactions topic takes the broker's append time (the worker's batch
    cuts rely on it); one made elsewhere with producer stamps runs, with a warning."""
    ours = Topics.with_prefix(f"s{uuid.uuid4().hex[:8]}-", partitions=1)
    prepare_topics(kafka_bootstrap, ours)
    with EventProducer(kafka_bootstrap, ours) as producer:
        producer.send_raw(b"{}")
    consumer = KafkaConsumer(ours.interactions, bootstrap_servers=kafka_bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=10_000)  # fmt: skip
    try:
        record = next(iter(consumer))
    finally:
        consumer.close()
    assert record.timestamp_type == 1  # LogAppendTime
    assert "timestamp.type" not in caplog.text
    theirs = Topics.with_prefix(f"s{uuid.uuid4().hex[:8]}-", partitions=1)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(theirs.interactions, 1, 1)])  # producer stamps
    finally:
        admin.close()
    prepare_topics(kafka_bootstrap, theirs)
    assert "message.timestamp.type=CreateTime" in caplog.text


def test_log_ends_are_the_brokers_now_or_unknown(kafka_bootstrap: str) -> None:
    """The idle cut asks the broker for the log's end: the answer counts what was just
    appended, and no broker means no answer (not a guess), within its timeout."""
    import asyncio

    from faust.types import TP

    from stream.app import LogEnds

    topics = Topics.with_prefix(f"e{uuid.uuid4().hex[:8]}-", partitions=1)
    prepare_topics(kafka_bootstrap, topics)
    tp = TP(topic=topics.interactions, partition=0)
    with EventProducer(kafka_bootstrap, topics) as producer:
        for _ in range(3):
            producer.send_raw(b"{}")
    ends = LogEnds(kafka_bootstrap)
    try:
        assert asyncio.run(ends([tp])) == {tp: 3}
    finally:
        ends.close()
    began = time.monotonic()
    nobody = LogEnds(f"127.0.0.1:{free_port()}", timeout_s=1.0)
    try:
        assert asyncio.run(nobody([tp])) is None
        assert time.monotonic() - began < 5
    finally:
        nobody.close()


@pytest.fixture
def own_broker(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A broker of this test's own, to stop and start (the session's stays up)."""
    config = BrokerConfig(tmp_path_factory.mktemp("outage"), port=free_port(),
                          controller_port=free_port())  # fmt: skip
    broker = LocalBroker(config)
    try:
        broker.start(timeout=90)
    except (BrokerError, OSError) as err:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and no Kafka broker: {err}")
        pytest.skip(f"no Kafka broker: {err}")
    yield broker
    broker.stop()


def test_the_broker_gone_for_20_s_mid_stream(own_broker: LocalBroker, tmp_path: Path) -> None:
    """Stopped mid-backlog and started again: the worker carries on by itself and ends with
    the tables of a worker that never saw the outage."""
    bootstrap = own_broker.config.bootstrap
    tag = uuid.uuid4().hex[:8]
    prefix = f"o{tag}-"
    topics = Topics.with_prefix(prefix, partitions=1)
    records = stream_records(12_000)
    half = 2 * len(records) // 3
    backlog(bootstrap, prefix, records[:half])
    crashed = Worker(bootstrap, prefix, f"outage-{tag}", tmp_path, tmp_path / "outage.log")
    try:
        crashed.start()
        crashed.wait_checkpointed(1, timeout=120)  # the first checkpoint: mid-backlog
        stopped_at = crashed.checkpointed()
        assert own_broker.stop(), "the broker did not stop"
        time.sleep(20)
        own_broker.start(timeout=90)
        with EventProducer(bootstrap, topics) as producer:
            for payload in records[half:]:
                producer.send_raw(payload)
        crashed.wait_checkpointed(len(records), timeout=240)
    finally:
        crashed.stop()
    assert_as_steady(bootstrap, prefix, tmp_path, crashed.db, len(records), "the outage")
    halts = crashed.log.read_text().count("restarting from the last checkpoint")
    print(f"outage at checkpoint {stopped_at} of {len(records)}; worker halted and restarted "
          f"{halts} times; tables identical to the steady run")  # fmt: skip


def test_a_refused_send_halts_and_the_worker_recovers(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A send the producer refuses (the report's letter over the size limit, injected here)
    halts the worker: no checkpoint past it, the shutdown's included; the process starts
    again from its last checkpoint by itself and ends with the tables of a steady run."""
    tag = uuid.uuid4().hex[:8]
    prefix = f"f{tag}-"
    records = backlog(kafka_bootstrap, prefix, stream_records(8_000))
    halted = Worker(kafka_bootstrap, prefix, f"halt-{tag}", tmp_path, tmp_path / "halt.log")
    halted.env = {"STREAMBED_FAULT_FAIL_SEND_AT": "30"}
    try:
        halted.start()
        halted.wait_checkpointed(len(records), timeout=240)  # the same pid: it re-executed
    finally:
        halted.stop()
    log = halted.log.read_text()
    assert "worker halted, no further checkpoint: could not send" in log, log[-3000:]
    assert "restarting from the last checkpoint" in log and "no final checkpoint" in log
    assert_as_steady(kafka_bootstrap, prefix, tmp_path, halted.db, len(records), "the halt")


def backlog(bootstrap: str, prefix: str, records: list[bytes]) -> list[bytes]:
    """The pipeline's topics under ``prefix`` (one partition), ``records`` sent to them."""
    topics = Topics.with_prefix(prefix, partitions=1)
    prepare_topics(bootstrap, topics)
    with EventProducer(bootstrap, topics) as producer:
        for payload in records:
            producer.send_raw(payload)
    return records


def assert_as_steady(bootstrap: str, prefix: str, tmp: Path, db: Path, n: int, what: str) -> None:
    """A worker that never saw a fault, over the same topic to offset ``n``, ends with the
    durable state in ``db``, bit for bit."""
    steady = Worker(bootstrap, prefix, f"steady-{uuid.uuid4().hex[:8]}", tmp, tmp / "steady.log")
    try:
        steady.start()
        steady.wait_checkpointed(n, timeout=240)
    finally:
        steady.stop()
    a, b = durable_state(db), durable_state(steady.db)
    for key in a:
        assert a[key] == b[key], f"{key} differs after {what}"


def content_rows(db: Path) -> set[str]:
    """The item ids whose content row the durable state holds."""
    from paramserver.checkpoint import decode_table
    from paramserver.stores.rocks import RocksStore
    from stream.core import WorkerCore
    from stream.training import CONTENT, OnlineTrainer

    try:
        store = RocksStore(db, read_only=True)
    except Exception:  # noqa: BLE001 - not created yet
        return set()
    try:
        ps = WorkerCore(OnlineTrainer.create(TRAIN)).trainer.ps
        return set(decode_table(ps, CONTENT, store).strings)  # type: ignore[arg-type]
    finally:
        store.close()


def test_items_content_survives_a_kill_9(kafka_bootstrap: str, tmp_path: Path) -> None:
    """Items records are acked only once a checkpoint holds their content rows. Before, faust
    committed them within a second of embedding while the rows waited for a checkpoint that
    only interactions brought: killed then, the rows were lost for good."""
    tag = uuid.uuid4().hex[:8]
    prefix = f"c{tag}-"
    topics = Topics.with_prefix(prefix, partitions=1)
    prepare_topics(kafka_bootstrap, topics)
    worker = Worker(kafka_bootstrap, prefix, f"items-{tag}", tmp_path, tmp_path / "items.log")
    worker.args += ["--content-encoder", "minilm"]
    names = [f"item{n}" for n in range(30)]
    worker.start()
    try:
        with EventProducer(kafka_bootstrap, topics) as producer:
            for n, name in enumerate(names):
                producer.send_item(name, {"title": f"hiking boots model {n}", "tags": ["outdoor"]})
            producer.send_item("bad-one", {"title": ""})  # missing_content: its dead letter
            producer.flush()
        deadline = time.monotonic() + 120
        while len(latest_per_key(kafka_bootstrap, topics.item_vectors)) < len(names):
            assert worker.proc is not None and worker.proc.poll() is None, worker.log.read_text()
            assert time.monotonic() < deadline, "the items were not embedded"
            time.sleep(0.5)
        time.sleep(3)  # past faust's commit interval (1 s): the items were committed before
        worker.kill9()
        worker.start()
        deadline = time.monotonic() + 120
        while content_rows(worker.db) != set(names):
            assert worker.proc is not None and worker.proc.poll() is None, worker.log.read_text()
            assert time.monotonic() < deadline, (
                f"{len(content_rows(worker.db))} of {len(names)} content rows are durable"
            )
            time.sleep(0.5)
        # and once a checkpoint holds them, the records are acked: the group's committed
        # offset reaches the end of the items topic (no redelivery on every restart)
        deadline = time.monotonic() + 60
        while committed(kafka_bootstrap, f"items-{tag}", topics.items) < len(names) + 1:
            assert time.monotonic() < deadline, "the items records were never acked"
            time.sleep(0.5)
    finally:
        worker.stop()
    letters = [json.loads(v) for v in read_topic(kafka_bootstrap, topics.dlq) if v is not None]
    assert {x["reason"] for x in letters} == {"missing_content"}


def committed(bootstrap: str, group: str, topic: str) -> int:
    """The consumer group's committed offset on partition 0 of ``topic`` (-1: none)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                             enable_auto_commit=False)  # fmt: skip
    try:  # committed() asks the group's coordinator without joining the group
        offset = consumer.committed(TopicPartition(topic, 0))
    finally:
        consumer.close()
    return -1 if offset is None else offset


def test_a_replica_with_a_cut_save_rebuilds(kafka_bootstrap: str, tmp_path: Path) -> None:
    """kill -9 a replica, cut its saved graph.bin in half: one clear line and a rebuild
    from the compacted topic, never a crash loop or a wrong index."""
    import urllib.request

    tag = uuid.uuid4().hex[:8]
    prefix = f"c{tag}-"
    topics = Topics.with_prefix(prefix, partitions=1)
    prepare_topics(kafka_bootstrap, topics)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    rng = np.random.default_rng(3)
    ids = [f"item{n}" for n in range(400)]
    for key in ids:
        vec = rng.normal(size=8).astype(np.float32)
        value = VectorRecord(key, vec, 1, int(time.time() * 1000)).encode()
        producer.send(topics.item_vectors, key=key.encode(), value=value)
    producer.flush()
    producer.close()
    port = free_port()
    save = tmp_path / "save"
    args = [sys.executable, "-m", "services.cli", "--log-level", "INFO", "api",
            "--bootstrap", kafka_bootstrap, "--topic-prefix", prefix, "--partitions", "1",
            "--dim", "8", "--port", str(port), "--save-dir", str(save),
            "--save-seconds", "1"]  # fmt: skip
    log_path = tmp_path / "api.log"

    def start() -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as log:
            return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)  # fmt: skip

    def health(proc: subprocess.Popen[bytes]) -> dict[str, object]:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    body = json.loads(r.read())
                if body["caught_up"] and body["items"] == len(ids):
                    return body  # type: ignore[no-any-return]
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"replica not ready; {log_path.read_text()[-3000:]}")

    proc = start()
    try:
        health(proc)
        deadline = time.monotonic() + 30
        while not list(save.glob("snapshot-*/MANIFEST.json")):
            assert time.monotonic() < deadline, "no save was written"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        for graph in save.glob("snapshot-*/graph.bin"):  # every save kept: none to fall back to
            graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
        before = log_path.read_text()
        proc = start()
        body = health(proc)  # rebuilt from the topic: every item, the same vectors' count
        assert body["items"] == len(ids)
        time.sleep(1.5)  # and it keeps running (no crash loop), saving a good copy again
        assert proc.poll() is None
        after = log_path.read_text()[len(before) :]
        assert "Traceback" not in after
        assert "damaged replica save" in after and "rebuilding from the topics" in after
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
