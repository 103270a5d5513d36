from __future__ import annotations

import numpy as np
import pytest

from paramserver.config import TableConfig
from paramserver.optim import Sgd
from paramserver.table import EmbeddingTable, initial_rows


def table(dim: int = 4, **kw: object) -> EmbeddingTable:
    return EmbeddingTable(TableConfig("t", dim=dim, initial_capacity=2, **kw))  # type: ignore[arg-type]


def ids(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


def test_pull_is_aligned_and_never_creates_rows() -> None:
    t = table()
    t.admit(ids(2), now=0.0)
    vectors, hit = t.pull(ids(1, 2, 1))
    assert hit.tolist() == [False, True, False]
    assert np.all(vectors[0] == 0) and np.all(vectors[2] == 0)
    assert np.array_equal(vectors[1], initial_rows(ids(2), 4, 0.1)[0])
    assert len(t) == 1 and not t.contains(ids(1))[0]
    t.meta(ids(1, 3))
    t.sample(10, np.random.default_rng(0))
    assert len(t) == 1


def test_any_64_bit_id_is_a_key_including_the_extremes() -> None:
    t = table(dim=2)
    extremes = ids(0, 1, 2**63, 2**64 - 1)
    assert t.admit(extremes, now=0).all()
    vectors, hit = t.pull(extremes)
    assert hit.all() and len({v.tobytes() for v in vectors}) == 4


def test_initialisation_is_deterministic_per_id_and_seeded() -> None:
    a, b = table(), table()
    a.admit(ids(7, 8), now=0)
    b.admit(ids(8, 7), now=0)
    assert np.array_equal(a.pull(ids(7, 8))[0], b.pull(ids(7, 8))[0])
    assert not np.array_equal(a.pull(ids(7))[0], a.pull(ids(8))[0])
    other_seed = table(seed=1)
    other_seed.admit(ids(7), now=0)
    assert not np.array_equal(other_seed.pull(ids(7))[0], a.pull(ids(7))[0])
    big = initial_rows(np.arange(20_000, dtype=np.uint64), 8, 0.1)
    assert abs(big.mean()) < 0.01 and abs(big.std() - 0.1) < 0.005


def test_distinct_ids_never_share_a_row_and_the_table_grows() -> None:
    t = table(dim=2, optimizer=Sgd(lr=0.1))
    keys = np.arange(
        0, 5000 * 2**40, 2**40, dtype=np.uint64
    )  # equal low bits: worst case for modulo
    t.admit(keys, now=0)
    t.push(keys[:1], np.ones((1, 2), dtype=np.float32), now=1)
    vectors, hit = t.pull(keys)
    assert hit.all() and len(t) == 5000
    assert len({v.tobytes() for v in vectors}) == 5000


def test_push_rejects_bad_input_without_touching_the_table() -> None:
    t = table()
    t.admit(ids(1), now=0)
    before = t.pull(ids(1))[0].copy()
    with pytest.raises(ValueError, match="shape"):
        t.push(ids(1), np.ones((1, 3)), now=1)
    with pytest.raises(ValueError, match="NaN"):
        t.push(ids(1), np.full((1, 4), np.nan), now=1)
    with pytest.raises(KeyError, match="admit"):
        t.push(ids(1, 99), np.ones((2, 4)), now=1)
    assert np.array_equal(t.pull(ids(1))[0], before)
    assert t.meta(ids(1))[0].tolist() == [0]


def test_admission_needs_min_count_sightings() -> None:
    t = table(min_count=3)
    assert t.admit(ids(5, 6), now=0).tolist() == [False, False]
    assert t.admit(ids(5, 5), now=1).tolist() == [True, True]  # sightings 2 and 3
    assert t.admit(ids(6), now=1).tolist() == [False]
    assert len(t) == 1 and t.stats.admissions == 1


def test_expiry_evicts_idle_rows_reuses_their_slots_and_reports_them() -> None:
    t = table(ttl_seconds=10.0)
    t.admit(ids(1, 2, 3), now=0)
    t.push(ids(2), np.ones((1, 4), dtype=np.float32), now=8)
    assert sorted(t.expire(now=15).tolist()) == [1, 3]
    assert t.contains(ids(1, 2, 3)).tolist() == [False, True, False]
    changes = t.drain_changes()
    assert sorted(changes.deleted.tolist()) == [1, 3]
    t.admit(ids(4), now=16)  # takes the lowest freed slot
    assert t.high_water == 3 and len(t) == 2
    assert t.stats.evictions == 2


def test_sample_reads_existing_rows_only() -> None:
    t = table()
    rng = np.random.default_rng(0)
    assert len(t.sample(5, rng)) == 0
    t.admit(ids(1, 2, 3), now=0)
    t.remove(ids(2))
    assert set(t.sample(200, rng).tolist()) == {1, 3}
    assert len(t) == 2


def test_drain_then_load_rows_restores_the_exact_layout() -> None:
    t = table(dim=3, ttl_seconds=5.0)
    t.admit(np.arange(10, dtype=np.uint64), now=0)
    t.push(ids(3, 4), np.ones((2, 3), dtype=np.float32), now=4)
    t.expire(now=6)
    changes = t.drain_changes()
    back = table(dim=3, ttl_seconds=5.0)
    live = ~np.isin(changes.keys, changes.deleted)
    changes.keys, changes.slots = changes.keys[live], changes.slots[live]
    changes.rows, changes.state = changes.rows[live], changes.state[live]
    changes.updates, changes.last_update = changes.updates[live], changes.last_update[live]
    back.load_rows(changes, t.high_water)
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    assert t.sample(20, rng_a).tolist() == back.sample(20, rng_b).tolist()
    t.admit(ids(50, 51), now=7)
    back.admit(ids(50, 51), now=7)
    assert np.array_equal(t.pull(ids(3, 4, 50, 51))[0], back.pull(ids(3, 4, 50, 51))[0])
    assert t.sample(20, rng_a).tolist() == back.sample(20, rng_b).tolist()


def test_bytes_per_row_stay_close_to_the_raw_vector() -> None:
    t = EmbeddingTable(TableConfig("t", dim=64, initial_capacity=50_000))
    t.admit(np.arange(50_000, dtype=np.uint64), now=0)
    # 256 B of vector; rowwise Adagrad adds 4, metadata 12, key 8, flags 2, index ~24
    assert t.nbytes / len(t) < 1.3 * 4 * 64


@pytest.mark.parametrize(
    "bad", [{"dim": 0}, {"min_count": 0}, {"ttl_seconds": 0.0}, {"initial_capacity": 0}]
)
def test_config_validation(bad: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError):
        TableConfig("t", **bad)
