"""A single-writer hnswlib index with an exact "fresh" buffer, keyed by string item ids.

Moving a vector inside an hnswlib graph (re-adding an existing label) repairs
its neighbourhood and runs at only ~0.8-2k updates/s here, far below the event
rate. So an upsert does not touch the graph. It writes the exact vector into
``truth`` (one *row* per id) and, when the vector moved, puts the row in a
*fresh buffer* that every query scans exactly (numpy) beside the graph; the
row's old graph node is ``mark_deleted`` so the graph never spends a result on
a stale position. An item is searchable at its new place the moment
:meth:`AnnIndex.upsert` returns. A background merger inserts buffered rows
into the graph a couple at a time, each as a *new* node (an insert is 3-8x
faster than moving a node), and re-scores every candidate from ``truth``. A
change smaller than ``drift`` (relative to the graph's copy) leaves the graph
alone: its score is still exact, only its place in the graph is a little old.

Deleted nodes (moved or evicted items) are reclaimed by compaction: when they
pass ``compact_at`` of the graph, a background thread builds a new graph from
the live vectors while the old one keeps serving, then swaps it in (rows that
changed meanwhile go back into the buffer). Rows -- the id map and the exact
vectors -- of evicted ids are reused at once. One lock: hnswlib is not safe for
a search concurrent with an insert (hnswlib#29, #562); the merger holds it for
``merge_chunk`` inserts at a time and yields to anyone waiting.

Examples
--------
>>> import numpy as np
>>> index = AnnIndex(dim=2, space="ip", capacity=2)
>>> index.upsert(["a", "b", "c"], np.array([[1, 0], [0, 1], [0.7, 0.7]], dtype=np.float32))
>>> index.pending                      # searchable now, not yet in the graph
3
>>> [item for item, _ in index.search(np.array([1.0, 0.1], dtype=np.float32), k=2)]
['a', 'c']
>>> index.merge(limit=100), index.pending
(3, 0)
>>> index.upsert(["a"], np.array([[0, -1]], dtype=np.float32))   # moved away
>>> [item for item, _ in index.search(np.array([1.0, 0.1], dtype=np.float32), k=2)]
['c', 'b']
>>> index.remove(["c"]), "c" in index, len(index)            # an evicted item
(1, False, 2)
>>> [item for item, _ in index.search(np.array([1.0, 0.1], dtype=np.float32), k=3)]
['b', 'a']
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

SPACES = ("ip", "cosine", "l2")
FORMAT = 2

log = logging.getLogger("streambed.index")


@dataclass(frozen=True)
class IndexConfig:
    """How a replica's index is built and kept fresh.

    ``fresh_capacity`` is where the writer starts merging itself (the merger is
    behind); ``0`` turns the buffer off, so every upsert goes into the graph
    before it returns (kept to measure against). ``compact_at`` is the share
    of deleted graph nodes that starts a rebuild.
    """

    space: str = "ip"
    capacity: int = 1024
    m: int = 16
    ef_construction: int = 100
    ef: int = 256
    fresh_capacity: int = 16384
    drift: float = 0.1
    merge_chunk: int = 2
    compact_at: float = 0.5
    compact_min: int = 1000  # deleted nodes below this never start a rebuild

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {self.space!r}")
        if self.fresh_capacity < 0 or self.merge_chunk < 1 or self.drift < 0:
            raise ValueError("fresh_capacity and drift must be >= 0, merge_chunk >= 1")
        if not 0 < self.compact_at <= 1:
            raise ValueError(f"compact_at must be in (0, 1], got {self.compact_at}")


@dataclass
class IndexStats:
    """Counters since the index was made (or loaded); the edge turns them into metrics."""

    upserts: int = 0  # vectors received
    buffered: int = 0  # vectors that went into the fresh buffer
    drift_skips: int = 0  # vectors that moved less than ``drift``: graph left as is
    graph_writes: int = 0  # vectors inserted into the graph (merges or direct)
    removals: int = 0
    compactions: int = 0


class _Graph:
    """One hnswlib graph whose nodes are never reused: a moved vector gets a new node."""

    def __init__(self, dim: int, config: IndexConfig, capacity: int) -> None:
        self.config = config
        self.hnsw = hnswlib.Index(space=config.space, dim=dim)
        self.hnsw.init_index(
            max_elements=max(1, capacity), M=config.m, ef_construction=config.ef_construction
        )
        self.hnsw.set_ef(config.ef)
        self.rows = np.full(max(1, capacity), -1, dtype=np.int64)  # node -> row; -1: deleted
        self.nodes = 0  # nodes ever inserted (hnswlib's element count)
        self.dead = 0

    @property
    def live(self) -> int:
        return self.nodes - self.dead

    def insert(self, rows: np.ndarray, vectors: np.ndarray, threads: int = 1) -> np.ndarray:
        end = self.nodes + len(rows)
        if end > len(self.rows):
            grown = max(end, 2 * len(self.rows))
            self.hnsw.resize_index(grown)
            self.rows = np.concatenate([self.rows, np.full(grown - len(self.rows), -1, np.int64)])
        nodes = np.arange(self.nodes, end, dtype=np.int64)
        # new labels may be inserted concurrently (re-adding an existing one may not)
        self.hnsw.add_items(vectors, nodes, num_threads=threads)
        self.rows[nodes] = rows
        self.nodes = end
        return nodes

    def delete(self, node: int) -> None:
        self.hnsw.mark_deleted(node)
        self.rows[node] = -1
        self.dead += 1

    def query(self, q: np.ndarray, n: int) -> np.ndarray:
        """Rows of the ``n`` nearest live nodes (hnswlib searches with max(ef, n) itself)."""
        nodes, _ = self.hnsw.knn_query(q.reshape(1, -1), k=n, num_threads=1)
        return self.rows[nodes[0].astype(np.int64)]

    def vectors(self, nodes: np.ndarray) -> np.ndarray:
        return np.asarray(self.hnsw.get_items(nodes.tolist()), dtype=np.float32)


class AnnIndex:
    def __init__(self, dim: int, config: IndexConfig | None = None, **options: Any) -> None:
        self.dim = dim
        self.config = replace(config or IndexConfig(), **options)
        self.space = self.config.space
        self.stats = IndexStats()
        rows = max(1, self.config.capacity)
        self._graph = _Graph(dim, self.config, rows)
        self._row: dict[str, int] = {}
        self._ids: list[str | None] = []  # row -> id; None: free
        self._free: list[int] = []  # rows of removed ids, for reuse
        self._truth = np.zeros((rows, dim), dtype=np.float32)  # row -> current vector
        self._node = np.full(rows, -1, dtype=np.int64)  # row -> live graph node, or -1
        self._fresh: dict[int, int] = {}  # row -> buffer slot, oldest first
        self._fresh_rows = np.zeros(max(1, self.config.fresh_capacity), dtype=np.int64)
        self._fresh_vecs = np.zeros((len(self._fresh_rows), dim), dtype=np.float32)
        self._lock = threading.Lock()
        self._waiting = 0  # threads other than the merger waiting for the lock
        self._waiting_lock = threading.Lock()
        self._changed: set[int] | None = None  # rows whose node changed during a compaction
        self._merger: threading.Thread | None = None
        self._compactor: threading.Thread | None = None
        self._stop = threading.Event()

    # -- reading ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and item_id in self._row

    @property
    def capacity(self) -> int:
        return int(self._graph.hnsw.get_max_elements())

    @property
    def pending(self) -> int:
        """Vectors in the fresh buffer, not yet merged into the graph."""
        return len(self._fresh)

    @property
    def graph_nodes(self) -> tuple[int, int]:
        """(live, deleted) nodes of the graph; deleted ones wait for a compaction."""
        return self._graph.live, self._graph.dead

    def set_ef(self, ef: int) -> None:
        """The graph's search breadth (recall against latency), from the next query on."""
        with self._turn():
            self.config = replace(self.config, ef=ef)
            self._graph.config = self.config
            self._graph.hnsw.set_ef(ef)

    def vector(self, item_id: str) -> np.ndarray | None:
        with self._turn():
            row = self._row.get(item_id)
            return None if row is None else self._truth[row].copy()

    def vectors(self, ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """The current vectors of those ``ids`` the index holds (in order), in one lock turn."""
        with self._turn():
            rows = [(i, self._row[i]) for i in ids if i in self._row]
            matrix = self._truth[[row for _, row in rows]].copy()
        return [i for i, _ in rows], matrix.reshape(len(rows), self.dim)

    def search(
        self, query: np.ndarray, k: int, exclude: Collection[str] = ()
    ) -> list[tuple[str, float]]:
        """Top-``k`` ids with scores (higher is closer), ``exclude`` left out.

        Scores are hnswlib's ``1 - distance`` computed from the exact vectors:
        the inner product for ``ip`` and ``cosine``, ``1 - |q - v|^2`` for ``l2``.
        """
        q = self._prepare(np.asarray(query, dtype=np.float32).reshape(1, self.dim))[0]
        if k <= 0:
            return []
        want = k + len(exclude)
        with self._turn():
            if not self._row:
                return []
            found: list[np.ndarray] = []
            if self._graph.live:
                found.append(self._graph_rows(q, min(self._graph.live, want)))
            if self._fresh:
                n = len(self._fresh)
                scores = self._score(self._fresh_vecs[:n], q)
                found.append(self._fresh_rows[np.argpartition(-scores, min(want, n) - 1)[:want]])
            rows = np.unique(np.concatenate(found))
            rows = rows[rows >= 0]
            scores = self._score(self._truth[rows], q)
            ids = [self._ids[row] for row in rows.tolist()]
        ranked = sorted(zip(ids, scores.tolist(), strict=True), key=lambda p: -p[1])
        return [(i, s) for i, s in ranked if i is not None and i not in exclude][:k]

    def _graph_rows(self, q: np.ndarray, n: int) -> np.ndarray:
        try:
            return self._graph.query(q, n)
        except RuntimeError:  # fewer than n live nodes reachable (many deleted): go exact
            live = np.flatnonzero(self._node[: len(self._ids)] >= 0)
            return live[np.argsort(-self._score(self._truth[live], q))[:n]]

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """The lock, taken ahead of the merger: it yields while anyone else waits."""
        with self._waiting_lock:
            self._waiting += 1
        try:
            self._lock.acquire()
        finally:
            with self._waiting_lock:
                self._waiting -= 1
        try:
            yield
        finally:
            self._lock.release()

    def _score(self, vectors: np.ndarray, q: np.ndarray) -> np.ndarray:
        if self.space == "l2":
            return np.asarray(1.0 - ((vectors - q) ** 2).sum(axis=1))
        return np.asarray(vectors @ q)

    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        if self.space != "cosine":
            return vectors
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.asarray(vectors / np.maximum(norms, 1e-30), dtype=np.float32)

    # -- writing (the single writer) ----------------------------------------------------

    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Make each id's current vector ``vectors[n]``; searchable when this returns."""
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        last = {item_id: n for n, item_id in enumerate(ids)}  # coalesce: the last one wins
        vectors = self._prepare(vectors[list(last.values())])
        with self._turn():
            rows = np.array([self._assign(item_id) for item_id in last], dtype=np.int64)
            self._truth[rows] = vectors
            self.stats.upserts += len(rows)
            if self.config.fresh_capacity == 0:
                for row in rows.tolist():
                    self._drop_node(row)
                self._insert(rows)
                return
            moved = self._moved(rows)
            self.stats.drift_skips += int((~moved).sum())
            for row in rows[moved].tolist():
                self._buffer(row)
            over = len(self._fresh) - self.config.fresh_capacity
            if over > 0:  # the merger is behind (or a replica is catching up): the writer helps
                self._merge_locked(over + self.config.merge_chunk)

    def remove(self, ids: Sequence[str]) -> int:
        """Drop ids (evicted items): their graph nodes are ``mark_deleted``, rows reused."""
        removed = 0
        with self._turn():
            for item_id in ids:
                row = self._row.pop(item_id, None)
                if row is None:
                    continue
                self._unbuffer(row)
                self._drop_node(row)
                self._ids[row] = None
                self._free.append(row)
                removed += 1
            self.stats.removals += removed
        return removed

    def merge(self, limit: int | None = None) -> int:
        """Insert up to ``limit`` (default ``merge_chunk``) of the oldest buffered vectors
        into the graph; returns how many moved."""
        with self._lock:
            return self._merge_locked(limit or self.config.merge_chunk)

    def start_merging(self, idle_seconds: float = 0.005) -> None:
        """Merge (and compact when due) in a background thread until :meth:`close`."""
        if self._merger is not None or self.config.fresh_capacity == 0:
            return
        self._stop.clear()
        self._merger = threading.Thread(
            target=self._merge_loop, args=(idle_seconds,), name="index-merger", daemon=True
        )
        self._merger.start()

    def close(self) -> None:
        self._stop.set()
        for thread in (self._merger, self._compactor):
            if thread is not None:
                thread.join(30.0)
        self._merger = self._compactor = None

    def _merge_loop(self, idle_seconds: float) -> None:
        while not self._stop.is_set():
            if self._waiting:  # queries and the writer first: a merge chunk can wait
                self._stop.wait(0.0001)
                continue
            if self._compaction_due():
                self._compactor = threading.Thread(
                    target=self.compact, name="index-compactor", daemon=True
                )
                self._compactor.start()
            if not self.merge():
                self._stop.wait(idle_seconds)

    def _compaction_due(self) -> bool:
        g = self._graph
        busy = self._compactor is not None and self._compactor.is_alive()
        return (
            not busy
            and g.dead >= self.config.compact_min
            and g.dead >= (self.config.compact_at * g.nodes)
        )

    def compact(self) -> bool:
        """Rebuild the graph from the live vectors, dropping deleted nodes, while the old
        graph keeps serving; returns False if stopped (or another compaction runs)."""
        with self._turn():
            if self._changed is not None:
                return False
            rows = np.flatnonzero(self._node[: len(self._ids)] >= 0)
            vectors = self._truth[rows].copy()
            self._changed = set()
        try:
            graph = _Graph(self.dim, self.config, max(2 * len(rows), 1024))
            for lo in range(0, len(rows), 5000):  # in slices, so a stop is heard
                if self._stop.is_set():
                    return False
                graph.insert(rows[lo : lo + 5000], vectors[lo : lo + 5000])
            with self._turn():
                node = np.full(len(self._node), -1, dtype=np.int64)
                node[rows] = np.arange(len(rows))
                changed, self._changed = self._changed, None
                old = self._graph
                self._graph, self._node = graph, node
                for row in changed:  # moved, merged or evicted since the copy
                    self._drop_node(row)
                    if self._ids[row] is not None and row not in self._fresh:
                        self._buffer(row)
                self.stats.compactions += 1
            log.info("compacted the graph: %d live nodes, %d deleted dropped", len(rows),
                     old.dead)  # fmt: skip
            return True
        finally:
            with self._turn():
                self._changed = None

    def _assign(self, item_id: str) -> int:
        row = self._row.get(item_id)
        if row is not None:
            return row
        if self._free:
            row = self._free.pop()
            self._ids[row] = item_id
        else:
            row = len(self._ids)
            self._ids.append(item_id)
            if row >= len(self._truth):
                extra = len(self._truth)
                self._truth = np.concatenate([self._truth, np.zeros_like(self._truth)])
                self._node = np.concatenate([self._node, np.full(extra, -1, np.int64)])
        self._row[item_id] = row
        return row

    def _drop_node(self, row: int) -> None:
        """Delete ``row``'s graph node, if it has one (``_insert`` gives it a new one)."""
        current = int(self._node[row])
        if current >= 0:
            self._graph.delete(current)
        self._node[row] = -1
        if self._changed is not None:
            self._changed.add(row)

    def _moved(self, rows: np.ndarray) -> np.ndarray:
        """Which rows' new vectors drifted from the graph's copy by ``drift`` or more."""
        nodes = self._node[rows]
        moved = nodes < 0
        if self.config.drift == 0:
            moved[:] = True
        elif not moved.all():
            old = self._graph.vectors(nodes[~moved])
            change = np.linalg.norm(self._truth[rows[~moved]] - old, axis=1)
            moved[~moved] = change >= self.config.drift * np.maximum(
                np.linalg.norm(old, axis=1), 1e-12
            )
        return moved

    def _buffer(self, row: int) -> None:
        slot = self._fresh.get(row)
        if slot is None:
            self._drop_node(row)  # its graph copy is stale from now on
            slot = len(self._fresh)
            if slot >= len(self._fresh_rows):
                self._fresh_rows = np.concatenate([self._fresh_rows, self._fresh_rows])
                self._fresh_vecs = np.concatenate([self._fresh_vecs, self._fresh_vecs])
            self._fresh[row] = slot
            self._fresh_rows[slot] = row
            self.stats.buffered += 1
        self._fresh_vecs[slot] = self._truth[row]

    def _unbuffer(self, row: int) -> None:
        slot = self._fresh.pop(row, None)
        if slot is None:
            return
        last = len(self._fresh)  # the slot of the buffer's last entry before the pop
        if slot != last:  # move the last entry into the hole
            moved = int(self._fresh_rows[last])
            self._fresh_rows[slot] = moved
            self._fresh_vecs[slot] = self._fresh_vecs[last]
            self._fresh[moved] = slot

    def _merge_locked(self, limit: int) -> int:
        rows = np.fromiter(itertools.islice(self._fresh, limit), dtype=np.int64)
        for row in rows.tolist():
            self._unbuffer(row)
        if rows.size:
            self._insert(rows)
        return int(rows.size)

    def _insert(self, rows: np.ndarray) -> None:
        nodes = self._graph.insert(rows, self._truth[rows], threads=1 if len(rows) < 64 else -1)
        self._node[rows] = nodes
        if self._changed is not None:
            self._changed.update(rows.tolist())
        self.stats.graph_writes += len(rows)

    # -- persistence --------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Write the graph, the exact vectors, the id map and the buffer into ``directory``.

        Queries wait only while the graph is written and the rest copied in memory;
        the copies go to disk after the lock is released."""
        directory.mkdir(parents=True, exist_ok=True)
        with self._turn():
            g = self._graph
            g.hnsw.save_index(str(directory / "graph.bin"))
            n = len(self._ids)
            arrays = {
                "truth": self._truth[:n].copy(),
                "free": np.array(self._free, dtype=np.int64),
                "node": self._node[:n].copy(),
                "node_rows": g.rows[: g.nodes].copy(),
                "fresh": np.fromiter(self._fresh, dtype=np.int64, count=len(self._fresh)),
            }
            ids = list(self._ids)
            meta = {"format": FORMAT, "dim": self.dim, "config": asdict(self.config),
                    "nodes": g.nodes, "dead": g.dead}  # fmt: skip
        arrays["ids"] = np.array([i or "" for i in ids], dtype=str)
        np.savez(directory / "index.npz", **arrays)  # type: ignore[arg-type]
        (directory / "index.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, directory: Path, dim: int, config: IndexConfig | None = None) -> AnnIndex:
        """An index as :meth:`save` left it; ``ValueError`` if it was made for another
        dimension or space (the caller then rebuilds from the topic)."""
        meta = json.loads((directory / "index.json").read_text())
        config = config or IndexConfig()
        saved = meta["config"]
        if meta.get("format") != FORMAT or meta["dim"] != dim or saved["space"] != config.space:
            raise ValueError(
                f"saved index is format {meta.get('format')}, dim {meta['dim']}, space "
                f"{saved['space']!r}; this replica wants format {FORMAT}, dim {dim}, "
                f"space {config.space!r}"
            )
        with np.load(directory / "index.npz", allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        n, nodes = len(arrays["ids"]), int(meta["nodes"])
        index = cls(dim, replace(config, capacity=max(config.capacity, n, 1)))
        graph = index._graph
        graph.hnsw.load_index(str(directory / "graph.bin"), max_elements=max(nodes, 1))
        graph.hnsw.set_ef(config.ef)
        graph.rows = np.full(max(nodes, 1), -1, dtype=np.int64)
        graph.rows[:nodes] = arrays["node_rows"]
        graph.nodes, graph.dead = nodes, int(meta["dead"])
        index._truth[:n] = arrays["truth"]
        index._node[:n] = arrays["node"]
        index._free = arrays["free"].tolist()
        free = set(index._free)
        index._ids = [None if row in free else str(i) for row, i in enumerate(arrays["ids"])]
        index._row = {i: row for row, i in enumerate(index._ids) if i is not None}
        for row in arrays["fresh"].tolist():
            index._buffer(row)
        index.stats = IndexStats()
        return index
