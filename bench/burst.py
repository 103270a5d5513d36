"""A burst: 100k events (1% poison of every class) sent at once into the live pipeline.

One run, one machine, one broker (its own). The pipeline (worker with a RocksDB state
dir, and an API replica) starts idle; then the burst is produced as fast as the client
sends it. Every ``--sample-s`` the benchmark records each process's resident memory
(``/proc/PID/status`` VmRSS) and the worker's progress, until the worker has finished
with every record and checkpointed it. Then it checks nothing was lost: the durable
offset is the end of the topic, every good event id is in the durable de-dup window,
and the DLQ holds one letter per poison record.

Baselines, measured in the same run: memory against the **idle pipeline's** RSS just
before the burst (peak / idle), and throughput against a **bare kafka-python consumer**
reading the same records back from a scratch topic.

Usage: ``python -m bench.burst [--events 100000] [--poison-every 100]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.e2e import raw_consume_rate
from paramserver.stores.rocks import RocksStore
from services.datagen import GeneratorConfig, InteractionGenerator, ItemInfo
from services.local import LocalPipeline, PipelineConfig
from services.poison import poison
from services.producer import EventProducer
from stream.checkpoint import OFFSETS, SEEN_ROW


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def burst(n: int, poison_every: int, seed: int) -> tuple[list[tuple[bytes | None, bytes | None]],
                                                        set[str], int]:  # fmt: skip
    """(key, value) records: ``n`` generated events with a poison record after every
    ``poison_every``-th; the good event ids; the number of poison records."""
    gen = InteractionGenerator(GeneratorConfig(seed=seed))
    good = [r for r in gen.replay(n) if not isinstance(r, ItemInfo)]
    records: list[tuple[bytes | None, bytes | None]] = []
    bad = 0
    corpus: list[tuple[str, bytes | None, str]] = []
    for k, event in enumerate(good, start=1):
        records.append((event.user_id.encode(), event.to_json()))
        if poison_every and k % poison_every == 0:
            if not corpus:
                corpus = poison(f"b{k}")
            _, value, _ = corpus.pop()
            records.append((b"poison", value))
            bad += 1
    return records, {e.event_id for e in good}, bad


def durable(db: Path) -> tuple[int, set[str]]:
    store = RocksStore(db, read_only=True)
    try:
        raw = store.get(OFFSETS)
        offsets = json.loads(raw)["partitions"] if raw else {}
        seen = {k[len(SEEN_ROW) :].decode() for k, _ in store.scan(SEEN_ROW)}
        return sum(int(o) for o in offsets.values()), seen
    finally:
        store.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    records, good_ids, bad = burst(args.events, args.poison_every, args.seed)
    state = Path(tempfile.mkdtemp(prefix="streambed-burst-"))
    cfg = PipelineConfig(state, partitions=args.partitions)
    with LocalPipeline(cfg) as pipe:
        raw = raw_consume_rate(pipe.bootstrap, [(k or b"", v or b"") for k, v in records],
                               args.partitions)  # fmt: skip
        time.sleep(2.0)  # settle: the idle pipeline's memory is the baseline
        idle = {name: rss_mb(pipe.pid(name)) for name in ("worker", "api")}
        curve: list[dict[str, Any]] = []
        started = time.monotonic()

        def sample() -> float:
            done = pipe.consumed()
            curve.append({"t": round(time.monotonic() - started, 2), "done": int(done),
                          **{f"{name}_rss_mb": rss_mb(pipe.pid(name))
                             for name in ("worker", "api")}})  # fmt: skip
            return done

        with EventProducer(pipe.bootstrap, cfg.topics) as producer:
            last = 0.0
            for key, value in records:
                producer._producer.send(cfg.topics.interactions, key=key, value=value)
                if time.monotonic() - last >= args.sample_s:
                    sample()
                    last = time.monotonic()
            producer.flush()
        produced_s = time.monotonic() - started
        deadline = started + args.timeout
        while sample() < len(records):
            assert pipe.alive("worker"), f"the worker died; see {pipe.log_path('worker')}"
            if time.monotonic() > deadline:
                raise TimeoutError(f"not caught up in {args.timeout} s: {curve[-1]}")
            time.sleep(args.sample_s)
        caught_up_s = time.monotonic() - started
        time.sleep(2.5)  # the idle timer's checkpoint
        sample()
        dlq = int(pipe.worker_metric("streambed_worker_dead_letters_total"))
        pipe.stop_process("worker")  # SIGTERM: the final checkpoint
    offset, seen = durable(state / "worker" / cfg.app_id)
    peak = {name: max((c[f"{name}_rss_mb"] or 0) for c in curve) for name in ("worker", "api")}
    eps = len(records) / caught_up_s
    return {
        "records": len(records), "good": len(good_ids), "poison": bad,
        "partitions": args.partitions,
        "produce_seconds": produced_s, "caught_up_seconds": caught_up_s,
        "worker_records_per_s": eps, "baseline_raw_consume_per_s": raw,
        "ratio_worker_to_raw_consume": eps / raw,
        "idle_rss_mb": idle, "peak_rss_mb": peak,
        "ratio_peak_to_idle_rss": {k: peak[k] / v for k, v in idle.items() if v},
        "final_rss_mb": {k: curve[-1][f"{k}_rss_mb"] for k in ("worker", "api")},
        "lost": {"durable_offset": offset, "good_ids_missing": len(good_ids - seen),
                 "dead_lettered": dlq},  # fmt: skip
        "curve": curve,
    }  # fmt: skip


def report(r: dict[str, Any]) -> str:
    lines = [
        f"{r['records']:,} records ({r['good']:,} good, {r['poison']:,} poison) over "
        f"{r['partitions']} partitions, produced in {r['produce_seconds']:.1f} s",
        f"caught up after {r['caught_up_seconds']:.1f} s: {r['worker_records_per_s']:,.0f} "
        f"records/s; baseline bare kafka-python consume {r['baseline_raw_consume_per_s']:,.0f}/s"
        f" (ratio {r['ratio_worker_to_raw_consume']:.3f})",
    ]
    for name in ("worker", "api"):
        lines.append(
            f"{name} RSS: idle {r['idle_rss_mb'][name]:.0f} MB (baseline), peak "
            f"{r['peak_rss_mb'][name]:.0f} MB (x{r['ratio_peak_to_idle_rss'].get(name, 0):.2f}),"
            f" after {r['final_rss_mb'][name]:.0f} MB"
        )
    lost = r["lost"]
    lines.append(
        f"durable offset {lost['durable_offset']:,} of {r['records']:,}; good ids missing from "
        f"the state: {lost['good_ids_missing']}; dead-lettered {lost['dead_lettered']} of "
        f"{r['poison']}"
    )
    step = max(1, len(r["curve"]) // 12)
    lines.append("t (s)  done      worker MB  api MB")
    for c in r["curve"][::step] + r["curve"][-1:]:
        lines.append(f"{c['t']:6.1f} {c['done']:8,d}  {c['worker_rss_mb'] or 0:9.0f} "
                     f"{c['api_rss_mb'] or 0:7.0f}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--poison-every", type=int, default=100, help="0: no poison")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--sample-s", type=float, default=0.5)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out", default="bench/results/burst.json")
    args = parser.parse_args(argv)
    results = run(args)
    print(report(results))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
