"""More workers: the drain of one backlog by 1 and N scale-out workers, against the single
worker and a raw kafka-python consume of the same events, all in one run on one broker.

Each configuration gets its own topics and the same generated events. Its workers start
on empty topics; once one event has gone through and (scale-out) every worker owns
partitions of both stages, the rest are sent as fast as the SDK sends them (packed), and
the rate is those events over the time from that send to the last one counted. Startup,
torch's import and the group's first rebalances are not timed; the producer shares the
cores throughout, as in ``bench.e2e``'s drain. A scale-out drain ends when the user stage
has counted every event and the item stage has committed every gradient. No replica
indexes the vectors here: this measures the workers' data plane.

Usage: ``python -m bench.scale [--events 30000] [--workers 2] [--partitions 4]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.e2e import events, raw_consume_rate
from services.kafka.broker import BrokerConfig, LocalBroker, free_port
from services.kafka.topics import committed_lag, ensure_topics
from services.local import metric_sum
from services.producer import EventProducer
from stream.schemas import Interaction
from stream.topics import Topics

EVENTS = "streambed_worker_events_total"
PARTITIONS = "streambed_worker_partitions"


def settled(urls: list[str], partitions: int) -> bool:
    """Whether every worker owns partitions of both stages and together they own them all
    (the group's rebalances after the workers' start are over)."""
    for stage in ("users", "items"):
        name = f'{PARTITIONS}{{stage="{stage}"}}'
        owned = [metric_sum(u, name) for u in urls]
        if sum(owned) != partitions or (len(urls) <= partitions and min(owned) == 0):
            return False
    return True


def drain(
    bootstrap: str, topics: Topics, history: list[Interaction], workers: int, scale_out: bool,
    state: Path, extra: list[str],
) -> dict[str, Any]:  # fmt: skip
    app_id = f"bench-{topics.interactions}"
    procs, urls = [], []
    for k in range(workers):
        port = free_port()
        urls.append(f"http://127.0.0.1:{port}/metrics")
        args = [
            sys.executable, "-m", "services.cli", "--log-level", "WARNING", "worker",
            "--bootstrap", bootstrap, "--topic-prefix", topics.interactions[: -len("interactions")],
            "--partitions", str(topics.partitions), "--app-id", app_id,
            "--metrics-port", str(port), "--state-dir", str(state / f"w{k}"), *extra,
        ]  # fmt: skip
        if scale_out:
            args.append("--scale-out")
        log = open(state / f"{app_id}-{k}.log", "ab")  # noqa: SIM115 - closed below
        procs.append((subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=dict(os.environ)), log))

    def check() -> float:
        if any(p.poll() is not None for p, _ in procs):
            raise RuntimeError(f"a worker exited; see {state}")
        return sum(metric_sum(u, EVENTS) for u in urls)

    try:
        with EventProducer(bootstrap, topics) as producer:
            # warm up: one event through, and (scale-out) every worker owning partitions
            producer.deliver(history[:1])
            deadline = time.monotonic() + 180
            while check() < 1 or (scale_out and not settled(urls, topics.partitions)):
                if time.monotonic() > deadline:
                    owned = {st: [metric_sum(u, f'{PARTITIONS}{{stage="{st}"}}') for u in urls]
                             for st in ("users", "items")}  # fmt: skip
                    raise TimeoutError(f"{workers} worker(s) did not start (counted {check()} "
                                       f"events, partitions owned {owned}); see {state}")
                time.sleep(0.2)
            first = time.monotonic()
            producer.deliver(history[1:])
        n = len(history)
        deadline = time.monotonic() + 600
        while check() < n or (scale_out and committed_lag(
                bootstrap, f"{app_id}-scale-out", topics.gradients, topics.partitions) > 0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{workers} worker(s) did not drain {n} events")
            time.sleep(0.1)
        end = time.monotonic()
    finally:
        for p, log in procs:
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
            log.close()
    seconds = end - first
    return {"workers": workers, "scale_out": scale_out, "seconds": seconds,
            "eps": (n - 1) / seconds}  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    history = events(args.seed, args.events)
    state = Path(tempfile.mkdtemp(prefix="streambed-scale-"))
    broker = None
    if args.bootstrap:  # a broker already running (the tests'): topics of this run's own
        bs = args.bootstrap
    else:
        broker = LocalBroker(BrokerConfig(state / "kafka", port=free_port(),
                                          controller_port=free_port()))  # fmt: skip
        broker.start(timeout=120)
        bs = broker.config.bootstrap
    extra = args.worker_args.split()
    tag = uuid.uuid4().hex[:6]
    try:
        raw = raw_consume_rate(bs, [(e.user_id.encode(), e.to_json()) for e in history],
                               args.partitions)  # fmt: skip
        runs = [("single", 1, False), ("scale1", 1, True), (f"scale{args.workers}",
                                                             args.workers, True)]
        results = {}
        for name, workers, scale_out in runs:
            topics = Topics.with_prefix(f"{name}-{tag}-", partitions=args.partitions)
            ensure_topics(bs, topics, scale_out=scale_out)
            results[name] = drain(bs, topics, history, workers, scale_out, state, extra)
            print(f"{name:>8}: {results[name]['eps']:>8.0f} ev/s "
                  f"({workers} worker(s), {results[name]['seconds']:.1f} s)", flush=True)
    finally:
        if broker is not None:
            broker.stop()
    many = results[f"scale{args.workers}"]
    return {
        "events": len(history), "partitions": args.partitions, "cpus": os.cpu_count(),
        "raw_kafka_python_consume_eps": raw, "runs": results,
        "ratio_single_to_raw": results["single"]["eps"] / raw,
        "ratio_scale1_to_single": results["scale1"]["eps"] / results["single"]["eps"],
        "ratio_scaleN_to_scale1": many["eps"] / results["scale1"]["eps"],
        "ratio_scaleN_to_raw": many["eps"] / raw,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", default="",
                        help="use this broker (default: start one for the run)")  # fmt: skip
    parser.add_argument("--worker-args", default="--content-encoder none",
                        help="flags for every worker")  # fmt: skip
    parser.add_argument("--out", default="bench/results/scale.json")
    args = parser.parse_args(argv)
    r = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2))
    print(f"baseline raw kafka-python consume: {r['raw_kafka_python_consume_eps']:.0f} ev/s "
          f"({r['events']} events, {r['partitions']} partitions, {r['cpus']} CPUs)")
    print(f"single worker / raw             : {r['ratio_single_to_raw']:.3f}")
    print(f"1 scale-out worker / single     : {r['ratio_scale1_to_single']:.3f}")
    print(f"{args.workers} scale-out workers / 1        : {r['ratio_scaleN_to_scale1']:.3f}")
    print(f"{args.workers} scale-out workers / raw      : {r['ratio_scaleN_to_raw']:.3f}")
    return r


if __name__ == "__main__":
    main()
