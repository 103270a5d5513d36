"""Where the CPU goes: CPU-seconds per event of each process of the local pipeline.

One run, one machine, its own broker (``LocalPipeline``: broker, worker, API replica; this
process is the producer). After a warm-up (fresh JVMs and a cold worker cost several times
more per event for their first seconds):

* drain: ``--events`` generated events sent as fast as the SDK packs them, until the
  replica has applied every vector the worker published;
* paced: ``--rate`` events/s for ``--seconds`` through ``streambed replay``'s pacing.

For each phase it prints the events/s and each process's CPU per event (user + system
time from ``/proc/PID/stat``) with its share of the box's total, against the baseline of
the same run: a bare kafka-python consumer reading the events back (as ``bench.e2e``).
With ``--py-spy worker`` (or ``api``) and py-spy on PATH, the drain is also sampled and
the named process's samples are summed by the stage they pass through (training step,
served-vector composition, validation, publishing, checkpoints, ...).

Usage: ``python -m bench.profile [--events 150000] [--rate 10000 --seconds 20]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from bench.e2e import events, raw_consume_rate, wait_drained
from services.local import LocalPipeline, PipelineConfig
from services.producer import EventProducer
from services.replay import Pace, replay, schedule

TICK = os.sysconf("SC_CLK_TCK")
PROCESSES = ("worker", "api", "broker")

# the worker's stages, by a frame each stack passes through (first match wins)
STAGES = (
    ("training step", ("WorkerCore._train",)),
    ("served vectors (composition)", ("_records",)),
    ("expanding batch records", ("WorkerCore.accept",)),
    ("validation, de-duplication", ("WorkerCore.process",)),
    ("publishing", ("send_outbox", "build_app.<locals>.publish", "Sender", "MessageAccumulator")),
    ("checkpoints", ("Settler.settle", "Settler.checkpoint", "commit_checkpoint")),
    ("faust records to RawRecord", ("build_app.<locals>.train",)),
    ("/metrics requests", ("WSGIRequestHandler", "process_request_thread")),
    ("consumer (aiokafka / kafka-python)", ("Fetcher", "AIOKafkaConsumer", "KafkaConsumer")),
    ("index (hnswlib)", ("AnnIndex",)),
    ("replica: interactions", ("_apply_events",)),
    ("replica: vectors", ("_apply_vectors",)),
)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def pids(pipe: LocalPipeline) -> dict[str, int]:
    found = {name: pipe.pid(name) for name in ("worker", "api")}
    if pipe.broker is not None:
        found["broker"] = int(pipe.broker.pid_file.read_text())
    return {name: pid for name, pid in found.items() if pid is not None}


class Meter:
    """CPU-seconds of each process between two readings."""

    def __init__(self, procs: dict[str, int]) -> None:
        self.procs = procs
        self.start = self._read()

    def _read(self) -> dict[str, float]:
        return {**{n: cpu_seconds(p) for n, p in self.procs.items()}, "producer": own_cpu()}

    def per_event(self, n: int) -> dict[str, float]:
        """Microseconds of CPU per event of each process since the meter started."""
        end = self._read()
        return {k: (end[k] - self.start[k]) / n * 1e6 for k in end}


def spy(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy")
    if exe is None:
        print("py-spy is not on PATH: no samples (pip install py-spy)", flush=True)
        return None
    return subprocess.Popen(
        [exe, "record", "-p", str(pid), "-r", "50", "-f", "raw", "-o", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def stages(raw: Path) -> dict[str, float]:
    """Share of py-spy's samples by stage (``STAGES``; the rest is "other")."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        stack, n = line.rsplit(" ", 1)
        frames = [f.split(" (")[0] for f in stack.split(";")]
        name = next((stage for stage, marks in STAGES
                     if any(m in f for f in frames for m in marks)), "other")  # fmt: skip
        counts[name] += int(n)
    total = sum(counts.values()) or 1
    return {name: counts[name] / total for name, _ in counts.most_common()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    state = Path(tempfile.mkdtemp(prefix="streambed-profile-"))
    out: dict[str, Any] = {"events": args.events, "rate": args.rate, "seconds": args.seconds}
    config = PipelineConfig(state, bootstrap=args.bootstrap, partitions=args.partitions,
                            topic_prefix=f"profile-{uuid.uuid4().hex[:8]}-" if args.bootstrap
                            else "", app_id=f"profile-{uuid.uuid4().hex[:8]}")  # fmt: skip
    with LocalPipeline(config) as pipe:
        drain = events(args.seed, args.events)
        # the same events as the drain: a baseline over fewer would read a colder broker
        payloads = [(e.user_id.encode(), e.to_json()) for e in drain]
        out["raw_kafka_python_consume_eps"] = raw_consume_rate(
            pipe.bootstrap, payloads, args.partitions
        )
        procs = pids(pipe)
        with EventProducer(pipe.bootstrap, pipe.config.topics) as producer:
            warm = events(args.seed + 100, args.warmup)
            for e in warm:
                producer.send(e)
            producer.flush()
            done = len(warm)
            wait_drained(pipe, done)

            sampler = spy(procs[args.py_spy], state / "spy.txt") if args.py_spy else None
            meter, start = Meter(procs), time.monotonic()
            for e in drain:
                producer.send(e)
            producer.flush()
            done += len(drain)
            seconds = wait_drained(pipe, done) - start
            out["drain"] = {"eps": len(drain) / seconds, "cpu_us": meter.per_event(len(drain))}
            if sampler is not None:
                sampler.send_signal(signal.SIGINT)
                sampler.wait(60)
                out["drain"]["stages"] = stages(state / "spy.txt")

            if args.rate > 0:
                paced = events(args.seed + 1, int(args.rate * args.seconds))
                meter, t0 = Meter(procs), time.time()
                report = replay(schedule(paced, Pace(rate=args.rate)), producer)
                done += len(paced)
                wait_drained(pipe, done)
                fresh = pipe.get(f"/stats?since={t0}")["freshness_seconds"]
                out["paced"] = {"eps": report.rate, "cpu_us": meter.per_event(len(paced)),
                                "freshness_s": fresh}  # fmt: skip
    return out


def report(r: dict[str, Any]) -> str:
    raw = r["raw_kafka_python_consume_eps"]
    lines = [f"baseline  raw kafka-python consume : {raw:9.0f} ev/s"]
    for phase in ("drain", "paced"):
        if phase not in r:
            continue
        p = r[phase]
        total = sum(p["cpu_us"].values())
        # a paced rate is the one asked for: only the drain's is a ratio to the baseline
        ratio = f" (ratio to baseline {p['eps'] / raw:.3f})" if phase == "drain" else ""
        lines.append(f"{phase:5s}     {p['eps']:9.0f} ev/s{ratio}, CPU {total:.0f} us/event in "
                     f"all = {total * p['eps'] / 1e6:.2f} cores")  # fmt: skip
        for name, us in sorted(p["cpu_us"].items(), key=lambda kv: -kv[1]):
            lines.append(f"  {name:9s} {us:6.1f} us/event ({us / total:5.1%} of the total)")
        if "freshness_s" in p:
            lines.append(f"  freshness {p['freshness_s']}")
        for name, share in p.get("stages", {}).items():
            lines.append(f"  sampled: {share:5.1%} {name}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=150_000, help="drained as fast as sent")
    parser.add_argument("--warmup", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=10_000.0, help="paced events/s (0: none)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--bootstrap", help="a running broker (default: start one; its CPU "
                        "is then counted too)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--py-spy", choices=("worker", "api"), help="sample it during the drain")
    parser.add_argument("--out", default="bench/results/profile.json")
    args = parser.parse_args(argv)
    results = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(report(results), flush=True)
    return results


if __name__ == "__main__":
    main()
