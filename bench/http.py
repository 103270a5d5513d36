"""HTTP benchmark: recommendation latency under load against the API's cheapest endpoint.

One run starts one API server process (uvicorn, one worker; the replica's real app and
index, filled with ``--items`` random vectors and ``--users`` users, while a thread in it
moves ``--updates-per-s`` item vectors per second as the tailer would), then drives it from
this process with ``concurrency`` client threads on keep-alive connections:

* **baseline**: ``GET /healthz`` (routing, middleware, JSON; no index) -- the floor of the
  HTTP stack on this machine;
* ``GET /recommendations/{user}?k=10`` (user vector -> ANN -> JSON);
* ``GET /recommendations/{user}?k=10&exclude_seen=true`` (plus a seen-items filter);
* what being watched costs: the live page's two polls (``/live/data`` every second,
  ``/live/projection?n=400`` every two, computed here on every request; the API caches
  it for a second) and a Prometheus scrape of ``/metrics``.

Usage: ``python -m bench.http [--items 100000] [--seconds 5] [--concurrency 1 4 16]``
(writes ``bench/results/http.json``). Client and server share the machine's cores.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from services.kafka.broker import free_port


def serve(args: argparse.Namespace) -> None:
    """The server side (run in its own process by :func:`main`)."""
    import uvicorn
    from prometheus_client import CollectorRegistry

    from services.ann.index import IndexConfig
    from services.api.app import create_app
    from services.api.live import LiveView
    from services.api.metrics import ServingMetrics
    from services.api.seen import SeenItems
    from services.api.state import ServingState
    from stream.schemas import EVENT_TYPES
    from stream.vectors import VectorRecord

    rng = np.random.default_rng(0)
    state = ServingState(args.dim, IndexConfig(capacity=args.items), seen=SeenItems())
    items = rng.standard_normal((args.items, args.dim)).astype(np.float32)
    ids = [f"i{n}" for n in range(args.items)]
    for lo in range(0, args.items, 20_000):
        state.apply_items([VectorRecord(ids[n], items[n], 1, 0)
                           for n in range(lo, min(lo + 20_000, args.items))], now_ms=0)  # fmt: skip
    while state.index.merge(limit=50_000):
        pass
    users = rng.standard_normal((args.users, args.dim)).astype(np.float32)
    state.apply_users([VectorRecord(f"u{n}", users[n], 1, 0) for n in range(args.users)], 0)
    state.apply_events([(f"u{n}", ids[int(j)]) for n in range(args.users)
                        for j in rng.integers(0, args.items, 20)])  # fmt: skip
    state.index.start_merging()

    def updates() -> None:  # the tailer's work, at a steady rate
        urng, per_tick = np.random.default_rng(1), max(1, args.updates_per_s // 50)
        while args.updates_per_s > 0:
            picks = urng.integers(0, args.items, per_tick)
            moved = items[picks] + 0.1 * urng.standard_normal((per_tick, args.dim))
            state.apply_items([VectorRecord(ids[int(j)], v.astype(np.float32), 2, 0)
                               for j, v in zip(picks, moved, strict=True)], now_ms=0)  # fmt: skip
            time.sleep(1 / 50)

    threading.Thread(target=updates, daemon=True).start()
    registry = CollectorRegistry()
    metrics = ServingMetrics.create(registry).initialise(EVENT_TYPES)
    live = LiveView(state, metrics, points_seconds=0.0)  # every request computes (uncached)
    app = create_app(state, registry, metrics, live=live)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


def drive(port: int, paths: list[str], concurrency: int, seconds: float) -> dict[str, Any]:
    """``concurrency`` threads issuing GETs for ``seconds``; latency percentiles and rate."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    deadline = time.perf_counter() + seconds

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        pick = random.Random(n)
        while time.perf_counter() < deadline:
            path = pick.choice(paths)
            started = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            latencies[n].append(time.perf_counter() - started)
            errors[n] += response.status != 200
        conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = np.array([x for per in latencies for x in per])
    return {
        "requests": int(flat.size),
        "errors": int(sum(errors)),
        "req_per_s": flat.size / seconds,
        "p50_ms": float(np.percentile(flat, 50) * 1e3),
        "p99_ms": float(np.percentile(flat, 99) * 1e3),
    }


def wait_ready(port: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("the API server did not come up")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--updates-per-s", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="bench/results/http.json")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args)
        return {}
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.http", "--serve", "--port", str(port),
         "--items", str(args.items), "--users", str(args.users), "--dim", str(args.dim),
         "--updates-per-s", str(args.updates_per_s)],
    )  # fmt: skip
    try:
        wait_ready(port)
        users = [f"u{n}" for n in range(args.users)]
        endpoints = {
            "healthz (baseline)": ["/healthz"],
            "recommendations k=10": [f"/recommendations/{u}?k=10" for u in users],
            "recommendations k=10, exclude_seen": [
                f"/recommendations/{u}?k=10&exclude_seen=true" for u in users
            ],
            # what watching the replica costs it: the live page's polls and a scrape
            "live page: /live/data": ["/live/data"],
            "live page: /live/projection n=400 (uncached)": ["/live/projection?n=400"],
            "Prometheus scrape: /metrics": ["/metrics"],
        }
        results: dict[str, Any] = {"args": vars(args), "runs": {}}
        for concurrency in args.concurrency:
            row = {name: drive(port, paths, concurrency, args.seconds)
                   for name, paths in endpoints.items()}  # fmt: skip
            results["runs"][concurrency] = row
    finally:
        server.terminate()
        server.wait(30)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(report(results))
    return results


def report(results: dict[str, Any]) -> str:
    a = results["args"]
    lines = [f"{a['items']:,} items x {a['dim']}-d, {a['users']:,} users, "
             f"{a['updates_per_s']:,} item updates/s in the server, {a['seconds']:.0f} s per cell",
             "clients  endpoint                                      req/s    p50 ms   p99 ms   "
             "p50 vs baseline"]  # fmt: skip
    for concurrency, row in results["runs"].items():
        base = row["healthz (baseline)"]["p50_ms"]
        for name, r in row.items():
            lines.append(f"{concurrency:>7}  {name:<44} {r['req_per_s']:>7,.0f}  "
                         f"{r['p50_ms']:>7.2f}  {r['p99_ms']:>7.2f}   {r['p50_ms'] / base:>5.2f}x"
                         + (f"  ({r['errors']} errors)" if r["errors"] else ""))  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
