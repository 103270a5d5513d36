from __future__ import annotations

import threading

import numpy as np
import pytest

from services.ann.index import AnnIndex


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
    thread.start()
    for _ in range(300):
        assert len(index.search(unit(rng, 1, 8)[0], 5)) == 5
    thread.join()
    assert not errors and len(index) == 150
