"""A hostile producer against the worker and the gateway, this checkout against a baseline.

One broker (its own), and for each code tree (this one, and ``--baseline-repo``, e.g. a
``git worktree`` of an older commit) on its own topics:

* worker: a backlog of good events with poison of every class (``services.poison``)
  spread through it; ``streambed worker --state-dir`` from that tree, restarted like a
  supervisor would when it exits (at most ``--restarts`` times) until its durable offset
  is the end of the topic or ``--seconds`` pass. Counted afterwards from the durable
  state and the DLQ topic: good events learnt, good events dead-lettered, poison
  dead-lettered, worker exits, rows in the durable tables.
* gateway: each poison record as a one-event ``POST /events`` batch to that tree's app
  with its real Kafka sink; the status codes.

Usage: ``python -m bench.hostile [--baseline-repo DIR] [--good 3000] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from paramserver.stores.rocks import RocksStore
from services.datagen import GeneratorConfig, InteractionGenerator, ItemInfo
from services.kafka.broker import BrokerConfig, LocalBroker, free_port
from services.kafka.topics import ensure_topics
from services.local import metric_sum
from services.poison import poison
from services.producer import EventProducer
from stream.checkpoint import OFFSETS, SEEN_ROW
from stream.topics import Topics

HERE = Path(__file__).resolve().parent.parent

GATEWAY = r"""
import base64, json, sys
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from services.api.app import create_app
from services.api.gateway import KafkaSink
from services.api.metrics import ServingMetrics
from services.api.state import ServingState
from services.producer import EventProducer
from stream.topics import Topics

bootstrap, prefix = sys.argv[1], sys.argv[2]
cases = json.load(sys.stdin)
registry = CollectorRegistry()
sink = KafkaSink(EventProducer(bootstrap, Topics.with_prefix(prefix, partitions=1)))
app = create_app(ServingState(dim=8), registry, ServingMetrics.create(registry), sink=sink,
                 token="t")
client = TestClient(app, raise_server_exceptions=False)
out = {}
for name, value in cases:
    body = b'{"events": [' + base64.b64decode(value) + b']}'
    r = client.post("/events", content=body, headers={"Authorization": "Bearer t",
                                                      "Content-Type": "application/json"})
    out[name] = r.status_code
sink.close()
print(json.dumps(out))
"""


def good_events(n: int, seed: int) -> list[bytes]:
    gen = InteractionGenerator(GeneratorConfig(users=150, items=600, seed=seed))
    return [r.to_json() for r in gen.replay(n) if not isinstance(r, ItemInfo)]


def letters(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                out.extend(json.loads(r.value) for r in records if r.value)
        return out
    finally:
        consumer.close()


def original(letter: dict[str, Any]) -> bytes:
    payload = letter.get("payload") or ""
    if letter.get("payload_encoding") == "base64":
        return base64.b64decode(payload)
    return payload.encode("utf-8", "surrogatepass")


def durable(db: Path) -> dict[str, Any]:
    try:
        store = RocksStore(db, read_only=True)
    except Exception:  # noqa: BLE001 - never created
        return {"offset": 0, "seen": set(), "rows": 0}
    try:
        raw = store.get(OFFSETS)
        offsets = json.loads(raw)["partitions"] if raw else {}
        seen = {k[len(SEEN_ROW) :].decode() for k, _ in store.scan(SEEN_ROW)}
        rows = sum(1 for _ in store.scan(b"r/"))
        return {"offset": sum(int(o) for o in offsets.values()), "seen": seen, "rows": rows}
    finally:
        store.close()


def run_worker(repo: Path, bootstrap: str, args: argparse.Namespace, state: Path) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    prefix = f"h{tag}-"
    topics = Topics.with_prefix(prefix, partitions=1)
    ensure_topics(bootstrap, topics)  # an older worker does not create its topics
    good = good_events(args.good, args.seed)
    bad: list[tuple[str, bytes | None, str]] = []
    for n in range(args.rounds):
        bad += poison(f"{tag}{n}")
    stride = max(1, len(good) // len(bad))
    total = 0
    with EventProducer(bootstrap, topics) as producer:
        for n, payload in enumerate(good):
            producer.send_raw(payload)
            total += 1
            if n % stride == 0 and n // stride < len(bad):
                producer._producer.send(topics.interactions, key=b"k", value=bad[n // stride][1])
                total += 1
        producer.flush()
    app_id = f"hostile-{tag}"
    port = free_port()
    cmd = [sys.executable, "-m", "services.cli", "--log-level", "WARNING", "worker",
           "--bootstrap", bootstrap, "--topic-prefix", prefix, "--partitions", "1",
           "--app-id", app_id, "--state-dir", str(state), "--metrics-port", str(port),
           "--dim", "16", "--negatives", "8", "--session-timeout", "6"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(repo)}
    log_path = state / f"{app_id}.log"
    exits, proc = 0, None
    deadline = time.monotonic() + args.seconds
    db = state / app_id
    try:
        while time.monotonic() < deadline:
            if proc is None or proc.poll() is not None:
                if proc is not None:
                    exits += 1
                    if exits > args.restarts:
                        break
                with open(log_path, "ab") as log:
                    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=log,
                                            stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)  # fmt: skip
            if durable(db)["offset"] >= total:
                break
            time.sleep(0.5)
        time.sleep(1.0)
        learnt_metric = metric_sum(f"http://127.0.0.1:{port}/metrics",
                                   "streambed_worker_events_total")  # fmt: skip
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
    state_now = durable(db)
    text = log_path.read_text(errors="replace")
    wanted = {json.loads(p)["event_id"] for p in good}
    good_set = set(good)
    dlq = letters(bootstrap, topics.dlq)
    good_lettered = sum(1 for x in dlq if original(x) in good_set)
    return {
        "records": total, "good": len(wanted), "poison": len(bad),
        "good_learnt": len(wanted & state_now["seen"]),
        "good_dead_lettered": good_lettered,
        "poison_dead_lettered": len(dlq) - good_lettered,
        "dlq_reasons": dict(Counter(x["reason"] for x in dlq)),
        "worker_exits": exits, "durable_offset": state_now["offset"],
        "durable_rows": state_now["rows"], "events_metric_last_process": learnt_metric,
        "agent_crashes": text.count("Crashed reason="), "halts": text.count("worker halted"),
        "tracebacks_in_log": text.count("Traceback"),
    }  # fmt: skip


def run_gateway(repo: Path, bootstrap: str) -> dict[str, Any]:
    prefix = f"g{uuid.uuid4().hex[:8]}-"
    ensure_topics(bootstrap, Topics.with_prefix(prefix, partitions=1))
    cases = [(name, base64.b64encode(value).decode()) for name, value, _ in poison("gw")
             if value is not None]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", GATEWAY, bootstrap, prefix], cwd=repo,
                          env={**os.environ, "PYTHONPATH": str(repo)}, input=json.dumps(cases),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    codes: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return {"codes": codes, "by_status": dict(Counter(str(c) for c in codes.values()))}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-repo", help="an older checkout to compare with")
    parser.add_argument("--good", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3, help="records of each poison class")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--out", default="bench/results/hostile.json")
    args = parser.parse_args(argv)
    trees = [("this", HERE)]
    if args.baseline_repo:
        trees.insert(0, ("baseline", Path(args.baseline_repo).resolve()))
    root = Path(tempfile.mkdtemp(prefix="streambed-hostile-"))
    config = BrokerConfig(root / "kafka", port=free_port(), controller_port=free_port())
    broker = LocalBroker(config)
    broker.start(timeout=90)
    results: dict[str, Any] = {}
    try:
        for label, repo in trees:
            state = root / label
            state.mkdir()
            results[label] = {"repo": str(repo),
                              "worker": run_worker(repo, broker.config.bootstrap, args, state),
                              "gateway": run_gateway(repo, broker.config.bootstrap)}  # fmt: skip
            print(report(label, results[label]), flush=True)
    finally:
        broker.stop()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return results


def report(label: str, r: dict[str, Any]) -> str:
    w, g = r["worker"], r["gateway"]
    return "\n".join([
        f"[{label}] {r['repo']}",
        f"  worker: good learnt {w['good_learnt']}/{w['good']}, good dead-lettered "
        f"{w['good_dead_lettered']}, poison dead-lettered {w['poison_dead_lettered']}/"
        f"{w['poison']}",
        f"  crashes: agent {w['agent_crashes']}, process exits {w['worker_exits']}, halts "
        f"{w['halts']}, tracebacks {w['tracebacks_in_log']}; durable offset "
        f"{w['durable_offset']}/{w['records']}, durable rows {w['durable_rows']}",
        f"  dlq reasons: {w['dlq_reasons']}",
        f"  gateway status codes: {g.get('by_status', g)}",
    ])  # fmt: skip


if __name__ == "__main__":
    main()
