"""ANN benchmark: the replica's index against exact brute-force search (numpy), in one run.

* **update paths** (``--update-items`` items): existing items moved one at a time
  through hnswlib's in-place paths (re-adding the label -- the baseline -- and
  ``replace_deleted``), through the index without its buffer (delete + insert a new
  node) and with it; then freshness (update arrives -> searchable) with updates offered
  at each of ``--freshness-rates`` per second to one writer thread.

For each catalogue size (default 100k and 1M items of dim 64, with a spectrum matched
to the worker's learnt item vectors, see :func:`catalogue`):

* **static**: query latency p50/p99 and recall@10 of :class:`AnnIndex` against
  exact search over the same vectors (the baseline: ``vectors @ q`` + top-k), at
  ``--ef`` and each of ``--ef-sweep``;
* **while updates stream in**: a writer thread moves items at ``--update-rate``
  per second (steps drawn like the worker's, see :func:`moves`) while the index's
  merger folds them into the graph and the main thread queries; latency p50/p99,
  and recall@10 against exact search over the vectors as they are at that moment.

Usage: ``python -m bench.ann [--items 100000 1000000] [--seconds 10]``
(writes ``bench/results/ann.json``).
"""

from __future__ import annotations

import argparse
import gc
import json
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

from services.ann.index import AnnIndex, IndexConfig


def catalogue(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors whose spectrum matches the worker's learnt item vectors: ``WorkerCore``
    trained 64-d rows on 40k generated events and the normalised item vectors' singular
    values fell off like ``i^-0.35`` to a floor of 0.29 of the first (near-isotropic, which
    is the hard case for a graph index)."""
    rng = np.random.default_rng(seed)
    scale = np.maximum(np.arange(1, dim + 1, dtype=np.float32) ** -0.35, 0.29)
    rotation, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((dim, dim)))
    vectors = (rng.standard_normal((n, dim)).astype(np.float32) * scale) @ rotation.astype(
        np.float32
    )
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def exact(vectors: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    scores = vectors @ query
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top])]


def pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q)) if samples else float("nan")


def ms(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": pct(samples, 50) * 1e3, "p99_ms": pct(samples, 99) * 1e3}


@contextmanager
def no_gc() -> Iterator[None]:
    """Timed loops run with the cyclic GC paused (as ``timeit`` does): its pauses are the
    process's, not the index's."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def measure_queries(
    index: AnnIndex, ids: list[str], truth: np.ndarray, queries: np.ndarray, k: int
) -> dict[str, Any]:
    """Latency of ANN and of exact search, and recall@k of ANN, on the same queries."""
    with no_gc():
        return _measure_queries(index, ids, truth, queries, k)


def _measure_queries(
    index: AnnIndex, ids: list[str], truth: np.ndarray, queries: np.ndarray, k: int
) -> dict[str, Any]:
    ann_s, exact_s, hits = [], [], 0
    for q in queries:
        t0 = time.perf_counter()
        found = index.search(q, k)
        t1 = time.perf_counter()
        best = exact(truth, q, k)
        t2 = time.perf_counter()
        ann_s.append(t1 - t0)
        exact_s.append(t2 - t1)
        hits += len({i for i, _ in found} & {ids[j] for j in best})
    return {
        "ann": ms(ann_s),
        "exact": ms(exact_s),
        "recall_at_10": hits / (k * len(queries)),
        "p50_speedup_vs_exact": pct(exact_s, 50) / pct(ann_s, 50),
    }


def build(vectors: np.ndarray, ids: list[str], config: IndexConfig) -> tuple[AnnIndex, float]:
    index = AnnIndex(vectors.shape[1], config)
    started = time.perf_counter()
    for lo in range(0, len(ids), 50_000):
        index.upsert(ids[lo : lo + 50_000], vectors[lo : lo + 50_000])
    while index.merge(limit=50_000):
        pass
    return index, time.perf_counter() - started


def moves(rng: np.random.Generator, vectors: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """New vectors for ``picks``, moved as the worker moves item vectors: the relative change
    per published update is log-normal around 6% (measured: ``WorkerCore`` on 30k generated
    events published 154 item vectors per 256-event batch with relative changes p10 0.017,
    p50 0.063, p90 0.32, p99 0.66)."""
    old = vectors[picks]
    direction = rng.standard_normal(old.shape).astype(np.float32)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    size = rng.lognormal(np.log(0.063), 1.1, (len(picks), 1)).astype(np.float32)
    new = old + size * np.linalg.norm(old, axis=1, keepdims=True) * direction
    return new / np.linalg.norm(new, axis=1, keepdims=True)


def while_updating(
    index: AnnIndex, vectors: np.ndarray, ids: list[str], args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    """Queries against a writer moving items at ``update_rate`` while the merger runs."""
    rng = np.random.default_rng(seed)
    stop = threading.Event()
    applied = [0]
    lock = threading.Lock()  # guards `vectors` between the writer and the exact baseline

    def writer() -> None:
        wrng = np.random.default_rng(seed + 1)
        per_tick, started = max(1, args.update_rate // 100), time.perf_counter()
        while not stop.is_set():
            picks = wrng.choice(len(ids), per_tick, replace=False)
            with lock:
                new = moves(wrng, vectors, picks)
                vectors[picks] = new
                index.upsert([ids[j] for j in picks], new)
            applied[0] += per_tick
            wait = started + applied[0] / args.update_rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)

    writes_before = index.stats.graph_writes
    gc.collect()
    gc.disable()  # re-enabled below; see no_gc
    index.start_merging()
    thread = threading.Thread(target=writer, daemon=True)
    started = time.perf_counter()
    thread.start()
    ann_s, hits, asked = [], 0, 0
    deadline = started + args.seconds
    while time.perf_counter() < deadline:
        q = catalogue(1, vectors.shape[1], int(rng.integers(1 << 30)))[0]
        t0 = time.perf_counter()
        index.search(q, 10)
        ann_s.append(time.perf_counter() - t0)
        if len(ann_s) % 10 == 0:  # recall on every tenth query (exact search is slow at 1M)
            with lock:
                now = index.search(q, 10)
                best = exact(vectors, q, 10)
            hits += len({i for i, _ in now} & {ids[j] for j in best})
            asked += 10
    stop.set()
    thread.join()
    gc.enable()
    elapsed = time.perf_counter() - started
    index.close()
    return {
        "ann": ms(ann_s),
        "queries": len(ann_s),
        "recall_at_10": hits / max(asked, 1),
        "updates_per_s": applied[0] / elapsed,
        "merged_into_graph_per_s": (index.stats.graph_writes - writes_before) / elapsed,
        "buffer_at_end": index.pending,
        "drift_skips": index.stats.drift_skips,
    }


class ReaddInPlace:
    """The baseline update path: an hnswlib graph whose labels are moved in place (re-added)."""

    def __init__(self, base: np.ndarray, config: IndexConfig, replace_deleted: bool = False):
        self.graph = hnswlib.Index(space=config.space, dim=base.shape[1])
        self.graph.init_index(2 * len(base), M=config.m, ef_construction=config.ef_construction,
                              allow_replace_deleted=replace_deleted)  # fmt: skip
        self.graph.add_items(base, np.arange(len(base)), num_threads=-1)
        self.replace_deleted = replace_deleted
        self.next_label = len(base)

    def upsert(self, labels: list[int], vectors: np.ndarray) -> None:
        if not self.replace_deleted:
            self.graph.add_items(vectors, labels, num_threads=1)
            return
        for label, v in zip(labels, vectors, strict=True):  # evict, then a new id takes the slot
            self.graph.mark_deleted(label)
            self.graph.add_items(v[None, :], [self.next_label], num_threads=1, replace_deleted=True)
            self.next_label += 1


def update_paths(
    vectors: np.ndarray, ids: list[str], config: IndexConfig, args: argparse.Namespace
) -> dict[str, Any]:
    """Moving existing items: hnswlib in place (the baseline) vs our graph write (delete +
    insert a new node) vs the buffered upsert; throughput one at a time, and freshness
    at each of ``freshness_rates``."""
    n = min(len(ids), args.update_items)
    base = vectors[:n].copy()
    rng = np.random.default_rng(11)
    picks = rng.choice(n, 2000, replace=False)
    new = moves(rng, base, picks)
    contenders: dict[str, Any] = {
        "hnswlib_readd": lambda: ReaddInPlace(base, config),
        "hnswlib_replace_deleted": lambda: ReaddInPlace(base, config, replace_deleted=True),
        "graph_only": lambda: build(base, ids[:n], replace(config, fresh_capacity=0))[0],
        "fresh_buffer": lambda: build(base, ids[:n], config)[0],
    }
    out: dict[str, Any] = {}
    for name, make in contenders.items():
        keys: list[Any] = list(range(n)) if name.startswith("hnswlib") else ids[:n]
        index = make()
        started = time.perf_counter()
        for j, v in zip(picks.tolist(), new, strict=True):
            index.upsert([keys[j]], v[None, :])
        row: dict[str, Any] = {"upserts_per_s": len(picks) / (time.perf_counter() - started)}
        if name != "hnswlib_replace_deleted":
            for rate in args.freshness_rates:
                row[str(rate)] = freshness(index, base, keys, rate, args.freshness_seconds)
        out[name] = row
        print(f"update path {name}: {json.dumps(row)}", flush=True)
    return out


def freshness(index: Any, base: np.ndarray, keys: list[Any], rate: int, seconds: float
              ) -> dict[str, float]:  # fmt: skip
    """Updates arrive at ``rate``/s for ``seconds``; one writer applies what has queued up
    (coalesced, up to 256 at a time); freshness = arrival -> the upsert has returned."""
    inbox: queue.Queue[tuple[float, int, np.ndarray] | None] = queue.Queue()
    ages: list[float] = []
    rng = np.random.default_rng(12)

    def writer() -> None:
        while (item := inbox.get()) is not None:
            batch = [item]
            while not inbox.empty() and len(batch) < 256:
                nxt = inbox.get()
                if nxt is None:
                    inbox.put(None)
                    break
                batch.append(nxt)
            index.upsert([keys[j] for _, j, _ in batch], np.stack([v for _, _, v in batch]))
            done = time.perf_counter()
            ages.extend(done - at for at, _, _ in batch)

    if isinstance(index, AnnIndex):
        index.start_merging()
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    total = int(rate * seconds)
    started = time.perf_counter()
    for sent in range(total):
        j = int(rng.integers(len(keys)))
        inbox.put((time.perf_counter(), j, moves(rng, base, np.array([j]))[0]))
        wait = started + (sent + 1) / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
    sending = time.perf_counter() - started
    inbox.put(None)
    thread.join(timeout=300)
    if isinstance(index, AnnIndex):
        index.close()
    return {"p50_s": pct(ages, 50), "p99_s": pct(ages, 99), "applied": len(ages),
            "sent": total, "offered_per_s": total / sending}  # fmt: skip


def run_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    config = IndexConfig(space="ip", capacity=n, m=args.m, ef_construction=args.ef_construction,
                         ef=args.ef, fresh_capacity=args.fresh_capacity, drift=args.drift,
                         merge_chunk=args.merge_chunk)  # fmt: skip
    vectors = catalogue(n, args.dim, seed=n)
    ids = [f"i{j}" for j in range(n)]
    index, build_s = build(vectors, ids, config)
    print(f"[{n:,} items] built in {build_s:.1f} s ({n / build_s:,.0f} items/s)", flush=True)
    queries = catalogue(args.queries, args.dim, seed=n + 1)
    static = measure_queries(index, ids, vectors, queries, 10)
    print(f"[{n:,}] static: {json.dumps(static)}", flush=True)
    sweep = {}
    for ef in args.ef_sweep:
        index.set_ef(ef)
        sweep[ef] = measure_queries(index, ids, vectors, queries[: args.queries // 2], 10)
        print(f"[{n:,}] ef={ef}: {json.dumps(sweep[ef])}", flush=True)
    index.set_ef(config.ef)
    live = while_updating(index, vectors, ids, args, seed=n + 2)
    print(f"[{n:,}] while updating: {json.dumps(live)}", flush=True)
    return {"items": n, "build_seconds": build_s, "static": static, "ef_sweep": sweep,
            "while_updating": live}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0, help="querying while updating")
    parser.add_argument(
        "--update-rate", type=int, default=2000, help="item updates per second while querying"
    )
    parser.add_argument("--freshness-rates", type=int, nargs="+", default=[2000, 8000])
    parser.add_argument("--update-items", type=int, default=100_000,
                        help="catalogue size for the update-path comparison")  # fmt: skip
    parser.add_argument("--freshness-seconds", type=float, default=4.0)
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=100)
    parser.add_argument("--ef", type=int, default=256)
    parser.add_argument("--ef-sweep", type=int, nargs="*", default=[64, 128, 512])
    parser.add_argument("--fresh-capacity", type=int, default=16384)
    parser.add_argument("--drift", type=float, default=0.1)
    parser.add_argument("--merge-chunk", type=int, default=2)
    parser.add_argument("--out", default="bench/results/ann.json")
    args = parser.parse_args(argv)
    config = IndexConfig(space="ip", m=args.m, ef_construction=args.ef_construction, ef=args.ef,
                         fresh_capacity=args.fresh_capacity, drift=args.drift,
                         merge_chunk=args.merge_chunk)  # fmt: skip
    updates = update_paths(catalogue(args.update_items, args.dim, 5),
                           [f"i{j}" for j in range(args.update_items)], config, args)  # fmt: skip
    print(f"update paths: {json.dumps(updates)}", flush=True)
    results = {"args": vars(args), "update_paths": updates,
               "sizes": [run_size(n, args) for n in args.items]}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(report(results))
    return results


def report(results: dict[str, Any]) -> str:
    u, args = results["update_paths"], results["args"]
    base = u["hnswlib_readd"]["upserts_per_s"]
    rates = args["freshness_rates"]
    head = "".join(f"   freshness p50 / p99 at {r}/s" for r in rates)
    lines = ["", f"moving existing items ({args['update_items']:,} items)        "
             f"updates/s  vs re-add{head}"]  # fmt: skip
    labels = {"hnswlib_readd": "hnswlib re-add in place (baseline)",
              "hnswlib_replace_deleted": "hnswlib replace_deleted slot",
              "graph_only": "streambed, no buffer (new node)",
              "fresh_buffer": "streambed, fresh buffer"}  # fmt: skip
    for name, label in labels.items():
        r = u[name]
        line = f"  {label:<38} {r['upserts_per_s']:>10,.0f}  {r['upserts_per_s'] / base:>7.1f}x"
        for rate in rates:
            f = r.get(str(rate))
            line += (
                ""
                if f is None
                else (f"   {f['p50_s']:.4f} / {f['p99_s']:.4f} s ({f['applied']}/{f['sent']})")
            )
        lines.append(line)
    lines.append("")
    lines.append("items      mode              ANN p50 / p99 ms   exact p50 ms   recall@10")
    for size in results["sizes"]:
        s, w = size["static"], size["while_updating"]
        lines.append(f"{size['items']:>9,}  static ef={args['ef']:<5}   "
                     f"{s['ann']['p50_ms']:.3f} / {s['ann']['p99_ms']:.3f}     "
                     f"{s['exact']['p50_ms']:.2f}          {s['recall_at_10']:.4f}  "
                     f"({s['p50_speedup_vs_exact']:.1f}x exact's speed at p50)")  # fmt: skip
        for ef, r in size["ef_sweep"].items():
            lines.append(f"{'':>9}  static ef={ef:<5}   {r['ann']['p50_ms']:.3f} / "
                         f"{r['ann']['p99_ms']:.3f}     {r['exact']['p50_ms']:.2f}"
                         f"          {r['recall_at_10']:.4f}"
                         f"  ({r['p50_speedup_vs_exact']:.1f}x)")  # fmt: skip
        lines.append(f"{'':>9}  while updating    {w['ann']['p50_ms']:.3f} / "
                     f"{w['ann']['p99_ms']:.3f}                    {w['recall_at_10']:.4f}  "
                     f"({w['updates_per_s']:,.0f} updates/s, {w['merged_into_graph_per_s']:,.0f}/s "
                     f"merged, {w['drift_skips']:,} under the drift threshold)")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
