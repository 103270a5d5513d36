from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from services.ann.index import AnnIndex, IndexConfig, _Graph


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("space", ["ip", "cosine", "l2"])
def test_search_finds_the_exact_neighbours_on_a_small_index(space: str) -> None:
    rng = np.random.default_rng(0)
    vectors = unit(rng, 500, 16)
    index = AnnIndex(16, space=space, capacity=64, ef=200)
    ids = [f"i{n}" for n in range(500)]
    index.upsert(ids, vectors)
    query = unit(rng, 1, 16)[0]
    exact = [ids[j] for j in np.argsort(-(vectors @ query))[:10]]  # unit vectors: same order
    found = [i for i, _ in index.search(query, 10)]
    assert len(set(found) & set(exact)) >= 9
    scores = [s for _, s in index.search(query, 10)]
    assert scores == sorted(scores, reverse=True)


def test_upsert_replaces_in_place_and_exclude_filters() -> None:
    index = AnnIndex(2, capacity=4)
    index.upsert(["a", "b"], np.array([[1, 0], [0, 1]], dtype=np.float32))
    index.upsert(["a"], np.array([[0, 1]], dtype=np.float32))
    assert len(index) == 2
    assert index.vector("a").tolist() == [0.0, 1.0]
    assert [i for i, _ in index.search(np.array([0, 1], dtype=np.float32), 5, exclude={"b"})] == [
        "a"
    ]
    assert index.vector("zzz") is None
    assert index.search(np.array([1, 0], dtype=np.float32), 0) == []


def test_empty_index_and_bad_space() -> None:
    assert AnnIndex(3).search(np.ones(3, dtype=np.float32), 5) == []
    with pytest.raises(ValueError, match="space"):
        AnnIndex(3, space="manhattan")


def test_concurrent_reads_and_writes_take_turns() -> None:
    rng = np.random.default_rng(1)
    index = AnnIndex(8, capacity=16)
    index.upsert([f"i{n}" for n in range(100)], unit(rng, 100, 8))
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for n in range(200):
                index.upsert([f"i{n % 150}"], unit(np.random.default_rng(n), 1, 8))
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    thread = threading.Thread(target=writer)
    index.start_merging()
    thread.start()
    for _ in range(300):
        assert len(index.search(unit(rng, 1, 8)[0], 5)) == 5
    thread.join()
    index.close()
    assert not errors and len(index) == 150


def exact_top(vectors: np.ndarray, ids: list[str], query: np.ndarray, k: int) -> list[str]:
    return [ids[j] for j in np.argsort(-(vectors @ query))[:k]]


def test_an_upsert_is_searchable_before_any_graph_write() -> None:
    index = AnnIndex(2, capacity=4)
    index.upsert(["a", "b"], np.array([[1, 0], [0, 1]], dtype=np.float32))
    assert index.pending == 2 and index.stats.graph_writes == 0
    assert index.search(np.array([1, 0], dtype=np.float32), 1) == [("a", 1.0)]
    assert index.merge(limit=10) == 2 and index.pending == 0
    assert index.stats.graph_writes == 2
    assert index.search(np.array([1, 0], dtype=np.float32), 1) == [("a", 1.0)]


def test_a_moved_item_is_found_at_its_new_place_not_its_old_one() -> None:
    rng = np.random.default_rng(3)
    vectors = unit(rng, 300, 8)
    ids = [f"i{n}" for n in range(300)]
    index = AnnIndex(8, capacity=64)
    index.upsert(ids, vectors)
    index.merge(limit=1000)
    target = unit(rng, 1, 8)[0]
    old_place = vectors[7].copy()
    index.upsert(["i7"], target[None, :])  # far away: buffered, its graph copy set aside
    assert index.pending == 1
    assert index.search(target, 1)[0][0] == "i7"
    vectors[7] = target
    # results and scores are the exact ones for the new vectors, at the old place too
    for query in [old_place, *unit(rng, 20, 8)]:
        got = index.search(query, 5)
        assert [i for i, _ in got] == exact_top(vectors, ids, query, 5)
        assert np.allclose([s for _, s in got], np.sort(vectors @ query)[::-1][:5], atol=1e-5)


def test_a_change_below_the_drift_threshold_leaves_the_graph_but_scores_exactly() -> None:
    index = AnnIndex(2, capacity=4, drift=0.05)
    index.upsert(["a", "b"], np.array([[1, 0], [0, 1]], dtype=np.float32))
    index.merge(limit=10)
    index.upsert(["a"], np.array([[1.01, 0]], dtype=np.float32))  # 1% move
    assert index.pending == 0 and index.stats.drift_skips == 1 and index.stats.graph_writes == 2
    (item, score), *_ = index.search(np.array([1, 0], dtype=np.float32), 1)
    assert item == "a" and score == pytest.approx(1.01)
    index.upsert(["a"], np.array([[1.2, 0]], dtype=np.float32))  # 20%: buffered
    assert index.pending == 1 and index.stats.drift_skips == 1


def test_without_a_buffer_every_upsert_writes_the_graph() -> None:
    index = AnnIndex(2, capacity=2, fresh_capacity=0)
    index.upsert(["a", "b", "c"], np.eye(3, 2, dtype=np.float32))
    assert index.pending == 0 and index.stats.graph_writes == 3 and index.capacity >= 3


def test_a_full_buffer_makes_the_writer_merge() -> None:
    rng = np.random.default_rng(4)
    index = AnnIndex(8, capacity=8, fresh_capacity=4, merge_chunk=2)
    vectors = unit(rng, 50, 8)
    ids = [f"i{n}" for n in range(50)]
    for n in range(0, 50, 5):
        index.upsert(ids[n : n + 5], vectors[n : n + 5])
        assert index.pending <= 4
    assert len(index) == 50 and index.stats.graph_writes >= 46
    query = unit(rng, 1, 8)[0]
    assert [i for i, _ in index.search(query, 5)] == exact_top(vectors, ids, query, 5)


def test_evicted_rows_are_reused_and_compaction_drops_deleted_nodes() -> None:
    rng = np.random.default_rng(5)
    index = AnnIndex(8, capacity=16)
    vectors = unit(rng, 16, 8)
    ids = [f"i{n}" for n in range(16)]
    index.upsert(ids, vectors)
    index.merge(limit=100)
    assert index.graph_nodes == (16, 0)
    assert index.remove(["i3", "i4", "nope"]) == 2 and len(index) == 14
    fresh = unit(rng, 2, 8)
    index.upsert(["new1", "new2"], fresh)
    index.merge(limit=100)
    assert len(index._ids) == 16  # the evicted ids' rows were reused
    assert index.graph_nodes == (16, 2)  # their old nodes are deleted, not yet reclaimed
    moved = unit(rng, 1, 8)
    index.upsert(["i5"], moved)  # a big move: old node deleted, row buffered
    assert index.graph_nodes == (15, 3) and index.pending == 1
    assert index.compact()
    assert index.graph_nodes == (15, 0) and index.pending == 1  # the buffer survives
    assert index.search(fresh[0], 1)[0][0] == "new1"
    assert index.search(moved[0], 1)[0][0] == "i5"
    assert not {"i3", "i4"} & {i for i, _ in index.search(fresh[0], 16)}
    assert index.capacity >= 15


def test_a_compaction_keeps_what_changed_while_it_ran() -> None:
    rng = np.random.default_rng(8)
    vectors = unit(rng, 400, 8)
    ids = [f"i{n}" for n in range(400)]
    index = AnnIndex(8, capacity=64, ef=200)
    index.upsert(ids, vectors)
    index.merge(limit=1000)
    index.remove(ids[:100])
    # simulate writes landing between the compactor's copy and its swap
    real_insert = _Graph.insert
    calls = []

    def insert_then_write(graph: _Graph, rows: np.ndarray, vecs: np.ndarray, threads: int = 1):
        nodes = real_insert(graph, rows, vecs, threads)
        if not calls and graph is not index._graph:  # the compactor's new graph, once
            calls.append(1)  # the writer and the merger carry on while it is built
            index.upsert(["i200", "late"], unit(rng, 2, 8))
            index.merge(limit=10)
            index.remove(["i300"])
        return nodes

    _Graph.insert = insert_then_write  # type: ignore[method-assign]
    try:
        assert index.compact()
    finally:
        _Graph.insert = real_insert  # type: ignore[method-assign]
    assert calls
    truth = {i: index.vector(i) for i in ids[100:] + ["late"] if i != "i300"}
    assert set(truth) == {i for i in ids[100:] + ["late"] if i in index}
    keys = list(truth)
    matrix = np.stack([truth[i] for i in keys])
    for query in unit(rng, 30, 8):
        got = [i for i, _ in index.search(query, 5)]
        assert got == exact_top(matrix, keys, query, 5)
    assert index.graph_nodes[1] <= 2  # only what moved during the rebuild


def test_recall_against_exact_search_while_a_merger_runs() -> None:
    rng = np.random.default_rng(6)
    n, dim = 3000, 16
    vectors = unit(rng, n, dim)
    ids = [f"i{j}" for j in range(n)]
    index = AnnIndex(dim, capacity=256, ef=100, fresh_capacity=512)
    index.upsert(ids, vectors)  # most of it merged by the writer: the buffer holds 512
    index.start_merging()
    try:
        hits = 0
        for step in range(40):
            moved = rng.choice(n, 25, replace=False)
            vectors[moved] = unit(rng, 25, dim)
            index.upsert([ids[j] for j in moved], vectors[moved])
            query = unit(rng, 1, dim)[0]
            found = {i for i, _ in index.search(query, 10)}
            hits += len(found & set(exact_top(vectors, ids, query, 10)))
            if step == 20:
                time.sleep(0.2)  # let the merger work
    finally:
        index.close()
    assert hits / 400 >= 0.9
    assert index.stats.graph_writes > n - 512


@pytest.mark.parametrize("space", ["ip", "cosine", "l2"])
def test_save_and_load_round_trip(tmp_path: Path, space: str) -> None:
    rng = np.random.default_rng(7)
    vectors = unit(rng, 200, 8) * 2
    ids = [f"i{n}" for n in range(200)]
    index = AnnIndex(8, space=space, capacity=32)
    index.upsert(ids, vectors)
    index.merge(limit=150)  # 50 still buffered
    index.remove(["i1", "i170"])  # one from the graph, one from the buffer
    index.save(tmp_path / "snap")
    back = AnnIndex.load(tmp_path / "snap", 8, IndexConfig(space=space))
    assert len(back) == 198 and back.pending == index.pending and "i1" not in back
    for query in unit(rng, 10, 8):
        assert back.search(query, 10) == index.search(query, 10)
    back.upsert(["brand-new"], vectors[:1])  # takes a freed label
    assert len(back._ids) == 200
    with pytest.raises(ValueError, match="dim"):
        AnnIndex.load(tmp_path / "snap", 4, IndexConfig(space=space))


def test_bad_index_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="merge_chunk"):
        IndexConfig(merge_chunk=0)


def test_the_merger_starts_a_compaction_when_deleted_nodes_pile_up() -> None:
    rng = np.random.default_rng(9)
    n, dim = 300, 8
    vectors = unit(rng, n, dim)
    ids = [f"i{j}" for j in range(n)]
    index = AnnIndex(dim, capacity=64, ef=100, compact_min=50, compact_at=0.3, drift=0.0)
    index.upsert(ids, vectors)
    index.start_merging(idle_seconds=0.001)
    try:
        for _ in range(6):  # every item moves: each move deletes a graph node
            moved = rng.choice(n, 60, replace=False)
            vectors[moved] = unit(rng, 60, dim)
            index.upsert([ids[j] for j in moved], vectors[moved])
            deadline = time.monotonic() + 10
            while index.pending and time.monotonic() < deadline:
                time.sleep(0.01)
        deadline = time.monotonic() + 10
        while index.stats.compactions == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        index.close()
    assert index.stats.compactions >= 1
    live, deleted = index.graph_nodes
    assert live + index.pending == n and deleted < 0.3 * (live + deleted) + 60
    for query in unit(rng, 20, dim):
        assert [i for i, _ in index.search(query, 5)] == exact_top(vectors, ids, query, 5)
