"""End-to-end pipeline benchmark against the raw kafka-python consume rate.

One run, one machine, one broker:

* baseline: the generated events produced to a scratch topic and consumed back
  with a bare kafka-python consumer (bytes only) -- the ceiling for anything
  that reads this topic from Python;
* drain: the same events produced as fast as the SDK sends them into the live
  pipeline (faust worker -> PS -> vectors -> API replica); measured until the
  replica has applied every vector the worker published;
* paced: streams sent at each of ``--rates`` (``streambed replay``'s pacing), each
  for ``--paced-seconds``, so freshness (event produced -> its vector searchable) is
  measured at a steady rate; the highest rate whose freshness p99 stays under 1 s is
  the sustained rate;
* lone events: ``--lone`` single events, each sent and flushed once the previous one is
  searchable and the stream has been quiet for a second (the quiet path: the batcher's
  idle cut, not throughput).

Usage: ``python -m bench.e2e [--events 20000] [--rates 500 1000 2000] [--paced-seconds 15]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from services.datagen import GeneratorConfig, InteractionGenerator, ItemInfo
from services.kafka.topics import committed_lag
from services.local import LocalPipeline, PipelineConfig
from services.producer import EventProducer
from services.replay import Pace, replay, schedule
from stream.schemas import Interaction


def events(seed: int, n: int) -> list[Interaction]:
    gen = InteractionGenerator(GeneratorConfig(seed=seed))
    return [r for r in gen.replay(n) if not isinstance(r, ItemInfo)]


def raw_consume_rate(bootstrap: str, payloads: list[tuple[bytes, bytes]], partitions: int) -> float:
    """Events/s of a bare kafka-python consumer reading ``payloads`` back from a fresh topic."""
    topic = f"bench-raw-{int(time.time())}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, partitions, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for key, value in payloads:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    seen, started = 0, time.perf_counter()
    deadline = started + 120
    while seen < len(payloads) and time.perf_counter() < deadline:
        for records in consumer.poll(timeout_ms=100, max_records=5000).values():
            seen += len(records)
    elapsed = time.perf_counter() - started
    consumer.close()
    return seen / elapsed


def items_behind(pipe: LocalPipeline) -> bool:
    """Whether a scale-out worker's item stage has gradients left to apply (the worker's
    counters are the user stage's; the item stage publishes after them)."""
    if "--scale-out" not in pipe.config.worker_args:
        return False
    group, topics = f"{pipe.config.app_id}-scale-out", pipe.config.topics
    return committed_lag(pipe.bootstrap, group, topics.gradients, topics.partitions) > 0


def wait_drained(pipe: LocalPipeline, consumed: int, timeout: float = 300) -> float:
    """Wait until the worker consumed ``consumed`` events and the API applied all it published."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = pipe.worker_metric("streambed_worker_events_total")
        published = pipe.worker_metric("streambed_worker_vectors_published_total")
        applied = pipe.api_metric("streambed_api_vectors_applied_total")
        if done >= consumed and applied >= published and not items_behind(pipe):
            return time.monotonic()
        time.sleep(0.1)  # each look renders the worker's /metrics: ~10% of its CPU at 20 Hz
    raise TimeoutError("pipeline did not drain")


def run(args: argparse.Namespace) -> dict[str, Any]:
    history = events(args.seed, args.events)
    state = Path(tempfile.mkdtemp(prefix="streambed-bench-"))
    worker_args = tuple(args.worker_args.split())
    with LocalPipeline(
        PipelineConfig(state, partitions=args.partitions, worker_args=worker_args)
    ) as pipe:
        payloads = [(e.user_id.encode(), e.to_json()) for e in history]
        raw = raw_consume_rate(pipe.bootstrap, payloads, args.partitions)

        with EventProducer(pipe.bootstrap, pipe.config.topics) as producer:
            t0 = time.time()
            start = time.monotonic()
            for e in history:
                producer.send(e)
            producer.flush()
            produce_seconds = time.monotonic() - start
            end = wait_drained(pipe, len(history))
            drain_rate = len(history) / (end - start)
            drain_fresh = pipe.get(f"/stats?since={t0}")["freshness_seconds"]

            consumed, paced = len(history), []
            for n, rate in enumerate(args.rates):
                # a seed per stream: event ids ("g<seed>-n") never repeat another stream's
                stream = events(args.seed + 1 + n, int(rate * args.paced_seconds))
                t1 = time.time()
                report = replay(schedule(stream, Pace(rate=rate)), producer)
                consumed += len(stream)
                wait_drained(pipe, consumed)
                fresh = pipe.get(f"/stats?since={t1}")["freshness_seconds"]
                paced.append({"target_eps": rate, "achieved_eps": report.rate,
                              "freshness_s": fresh})  # fmt: skip
                print(f"paced {rate}/s: sent at {report.rate:.0f}/s, freshness {fresh}", flush=True)
            lone_fresh = lone_events(pipe, producer, args.lone, args.seed + 1 + len(args.rates))
            consumed += args.lone
    sustained = [p["achieved_eps"] for p in paced if (p["freshness_s"]["p99"] or 99) < 1.0]
    return {
        "events": len(history),
        "partitions": args.partitions,
        "raw_kafka_python_consume_eps": raw,
        "pipeline_drain_eps": drain_rate,
        "produce_seconds": produce_seconds,
        "ratio_pipeline_to_raw": drain_rate / raw,
        "drain_freshness_s": drain_fresh,
        "paced": paced,
        "highest_rate_with_p99_under_1s": max(sustained, default=None),
        "lone_events_freshness_s": lone_fresh,
    }


def lone_events(pipe: LocalPipeline, producer: EventProducer, n: int, seed: int) -> Any:
    """Freshness of ``n`` events sent one at a time into a quiet pipeline (bounded: 10 s
    per event at most)."""
    t0 = time.time()
    for event in events(seed, n):
        time.sleep(1.0)  # quiet: the batcher's window and idle grace have long passed
        done = pipe.worker_metric("streambed_worker_events_total")
        producer.send(event)
        producer.flush()
        wait_drained(pipe, int(done) + 1, timeout=10)
    return pipe.get(f"/stats?since={t0}")["freshness_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rates", type=float, nargs="+", default=[500.0, 1000.0, 2000.0])
    parser.add_argument("--paced-seconds", type=float, default=15.0)
    parser.add_argument("--lone", type=int, default=20, help="single events on a quiet stream")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--worker-args",
        default="",
        help="extra worker flags, e.g. \"--state-dir ''\" or --checkpoint-seconds 5",
    )
    parser.add_argument("--out", default="bench/results/e2e.json")
    args = parser.parse_args()
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))

    def pct(f: dict) -> str:  # type: ignore[type-arg]
        if not f["samples"]:
            return "no samples"
        return f"p50 {f['p50']:.3f}s  p95 {f['p95']:.3f}s  p99 {f['p99']:.3f}s  (n={f['samples']})"

    print(
        f"baseline  raw kafka-python consume : {result['raw_kafka_python_consume_eps']:>9.0f} ev/s"
    )
    print(f"pipeline  drain (produce->indexed) : {result['pipeline_drain_eps']:>9.0f} ev/s"
          f"   ratio to baseline {result['ratio_pipeline_to_raw']:.3f}")  # fmt: skip
    print(f"freshness while draining a backlog : {pct(result['drain_freshness_s'])}")
    for p in result["paced"]:
        print(f"freshness paced at {p['achieved_eps']:>5.0f} ev/s         : "
              f"{pct(p['freshness_s'])}")  # fmt: skip
    print(f"freshness of lone events (quiet)   : {pct(result['lone_events_freshness_s'])}")
    best = result["highest_rate_with_p99_under_1s"]
    print("highest paced rate with freshness p99 < 1 s: "
          + ("none of those tried" if best is None else f"{best:.0f} ev/s"))  # fmt: skip


if __name__ == "__main__":
    main()
