"""The commands a user types, run as subprocesses against a real broker."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from services.kafka.broker import free_port
from services.local import LocalPipeline
from stream.schemas import valid_events

pytestmark = pytest.mark.integration


def streambed(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_kafka_up_status_down(tmp_path: Path, kafka_bootstrap: str) -> None:
    # kafka_bootstrap: skip/fail exactly as the other integration tests when no broker can run
    port, controller = str(free_port()), str(free_port())
    common = ["--data-dir", str(tmp_path / "k"), "--port", port, "--controller-port", controller]
    down = streambed("kafka", "status", *common)
    assert down.returncode == 3 and "not running" in down.stdout
    try:
        up = streambed("kafka", "up", *common)
        assert up.returncode == 0, up.stderr
        assert f"127.0.0.1:{port}" in up.stdout
        status = streambed("kafka", "status", *common)
        assert status.returncode == 0 and "running" in status.stdout
    finally:
        stopped = streambed("kafka", "down", *common)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert streambed("kafka", "status", *common).returncode == 3


def test_produce_sends_valid_lines_and_dead_letters_the_rest(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    prefix = f"cli{uuid.uuid4().hex[:6]}-"
    kafka = ["--bootstrap", kafka_bootstrap, "--topic-prefix", prefix]
    created = streambed("topics", *kafka)
    assert created.returncode == 0 and f"{prefix}interactions" in created.stdout

    events = tmp_path / "events.jsonl"
    generated = streambed("generate", "--events", "50", "--seed", "4", "--out", str(events))
    assert generated.returncode == 0
    with events.open("a") as f:
        f.write("not json at all\n\n")
        f.write(json.dumps({"event_id": "b", "user_id": "u", "item_id": "i", "type": "x",
                            "ts": 1}) + "\n")  # fmt: skip
    result = streambed("produce", *kafka, "--quiet", str(events))
    assert result.returncode == 0, result.stderr
    assert "sent 50 events; 2 dead-lettered" in result.stdout

    def read(topic: str) -> list[bytes]:
        consumer = KafkaConsumer(
            topic, bootstrap_servers=kafka_bootstrap, group_id=None,
            auto_offset_reset="earliest", consumer_timeout_ms=5000,
        )  # fmt: skip
        values = [r.value for r in consumer]
        consumer.close()
        return values

    sent = [e for value in read(f"{prefix}interactions") for e in valid_events(value)]
    assert len(sent) == 50  # in batch records: the SDK packs them
    assert all(value.startswith(b"[") for value in read(f"{prefix}interactions"))

    letters = [json.loads(v) for v in read(f"{prefix}interactions.dlq")]
    assert sorted((d["reason"], d["line"], d["source"]) for d in letters) == [
        ("bad_json", 51, "producer"),
        ("bad_type", 53, "producer"),
    ]

    one_each = streambed("produce", *kafka, "--quiet", "--pack", "1", str(events))
    assert one_each.returncode == 0, one_each.stderr
    values = read(f"{prefix}interactions")
    singles = [v for v in values if v.startswith(b"{")]
    assert len(singles) == 50 and len(values) < 100  # 50 one-event records after the packed


def test_replay_paces_events_and_reports_rate_lag_and_freshness(
    tmp_path: Path, pipeline: LocalPipeline
) -> None:
    events = tmp_path / "events.jsonl"
    made = streambed("generate", "--events", "400", "--seed", "8", "--out", str(events))
    assert made.returncode == 0
    with events.open("a") as f:
        f.write("{broken\n")
    config = pipeline.config
    common = ["--bootstrap", pipeline.bootstrap, "--topic-prefix", config.topic_prefix,
              "--api", pipeline.api_url, "--group", config.app_id, "--quiet"]  # fmt: skip
    report = tmp_path / "report.json"
    result = streambed("replay", *common, "--file", str(events), "--rate", "400",
                       "--json", str(report))  # fmt: skip
    assert result.returncode == 0, result.stderr
    body = json.loads(report.read_text())
    assert body["sent"] == 400 and body["dead_lettered"] == {"bad_json": 1}
    assert 200 <= body["achieved_rate"] <= 440  # paced, not as fast as possible
    assert body["lag_after_drain"] is not None and sum(body["lag_after_drain"].values()) == 0
    item = body["freshness_from_metrics"]["item"]
    assert item["samples"] > 0 and 0 < item["p50"] <= item["p95"] <= item["p99"]
    assert "events/s" in result.stdout and "freshness (item vectors" in result.stdout
    assert "consumer lag after draining:       0 events" in result.stdout

    bounded = streambed("replay", *common, "--generate", "100000", "--speedup", "1000",
                        "--duration", "2", "--drain-seconds", "0")  # fmt: skip
    assert bounded.returncode == 0, bounded.stderr
    assert "(stopped at --duration)" in bounded.stdout
    refused = streambed("replay", *common, "--generate", "10", "--rate", "5", "--speedup", "2")
    assert refused.returncode == 2 and "not both" in refused.stderr

    # the replica saves on SIGTERM, and a restarted one starts from that save; first the
    # cut-short replay's last records must be through (its drain was 0 s), or a vector
    # arriving between this read and the save makes the save one item larger
    items, since = pipeline.get("/healthz")["items"], time.monotonic()
    deadline = since + 60
    while time.monotonic() - since < 2.0 and time.monotonic() < deadline:
        time.sleep(0.2)
        now = pipeline.get("/healthz")["items"]
        if now != items:
            items, since = now, time.monotonic()
    pipeline.stop_process("api")
    assert (config.state_dir / "api" / "LATEST").exists()
    pipeline.start_api()
    assert pipeline.get("/healthz")["items"] == items
    log = pipeline.log_path("api").read_text()
    assert f"loaded {items} items from {config.state_dir / 'api'}" in log
